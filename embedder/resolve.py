"""What the user typed → ``ExtractionSettings`` (weights identity, node names, preprocessing, vector sizes).

Working this out needs torchvision (enum names, tracing the graph for node names, the weights' transforms),
which takes seconds to import. The answer depends only on the options, the torchvision version and, for a weights
file, the file; so it is recorded in the engine folder and a repeat run reads it back without importing torch.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace

from embedder.kernel.settings import ExtractionSettings, Int8
from embedder.kernel.store import EngineStore
from embedder.kernel.versions import version_of

from .options import ExtractOptions


@dataclass(frozen=True)
class Request:
    """Extraction options as given, before anything is looked up: the fields of ``ExtractOptions`` that the vectors
    depend on (``job.request_of`` makes one from them by name), with their defaults."""

    backbone: str = ExtractOptions.backbone
    weights: str | None = ExtractOptions.weights
    seed: int = ExtractOptions.seed
    layers: tuple[str, ...] | None = ExtractOptions.layers
    pooling: str = ExtractOptions.pooling
    resize: int | None = ExtractOptions.resize
    crop: int | None = ExtractOptions.crop
    draft: bool = ExtractOptions.draft
    precision: str = ExtractOptions.precision
    int8: Int8 | None = None  # calibration options (its calibration_set is filled in once drawn)

    def __post_init__(self):
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple([self.layers] if isinstance(self.layers, str) else self.layers))
        if self.precision == "int8" and self.int8 is None:
            object.__setattr__(self, "int8", Int8())


@dataclass(frozen=True)
class Resolved:
    settings: ExtractionSettings
    dims: dict  # layer → vector length
    weights_file: str | None  # the local file, when the weights are one
    weights_arg: str | None  # what load_backbone takes to rebuild the model (a name, a path, or "none")
    seed: int = 0


def _memo_key(request: Request) -> dict:
    from . import __version__

    key = {
        **asdict(request),
        "int8": None,
        "featurebank": __version__,
        "torch": version_of("torch"),
        "torchvision": version_of("torchvision"),
    }
    if str(request.backbone).startswith("timm:"):
        key["timm"] = version_of("timm")
    weights = request.weights
    if weights is not None and str(weights).lower() != "none" and os.path.isfile(os.fspath(weights)):
        path = os.path.abspath(os.fspath(weights))
        st = os.stat(path)
        # a file replaced by another of the same size and mtime (cp -p, rsync -a) still has another inode or ctime,
        # which no user tool sets: the recorded sha256 is reused only for this very file
        key["weights"] = {
            "path": path,
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "ctime_ns": st.st_ctime_ns,
            "inode": st.st_ino,
            "device": st.st_dev,
        }
    return json.loads(json.dumps(key))  # as it reads back from the record: tuples become lists


def resolve(request: Request, store: EngineStore | None = None) -> Resolved:
    """The settings of ``request``; read from the store's records when this exact request was resolved before."""
    key = _memo_key(request) if store is not None else None

    def read(hit: dict) -> Resolved:
        settings = ExtractionSettings.from_dict(hit["settings"])
        if request.int8 is not None:
            settings = replace(settings, precision="int8", int8=request.int8)
        return Resolved(settings, dict(hit["dims"]), hit["weights_file"], hit["weights_arg"], request.seed)

    found = store.record("resolved", key, read) if store is not None and key is not None else None
    if found is not None:
        return found
    resolved = _resolve_with_torch(request)
    if store is not None and key is not None:
        plain = replace(
            resolved.settings, precision=request.precision if request.precision != "int8" else "fp32", int8=None
        )
        store.put_record(
            "resolved",
            key,
            {
                "settings": plain.to_dict(),
                "dims": resolved.dims,
                "weights_file": resolved.weights_file,
                "weights_arg": resolved.weights_arg,
            },
        )
    return resolved


def _resolve_with_torch(request: Request) -> Resolved:
    from embedder.backbones.registry import canonical_name, preprocessing_for, resolve_layers, resolve_weights, skeleton

    spec = resolve_weights(request.backbone, request.weights, request.seed)
    name = canonical_name(request.backbone, spec)
    prep = preprocessing_for(name, spec).overridden(request.resize, request.crop, request.draft)
    shape = skeleton(name, prep.crop)
    layers = resolve_layers(shape, request.layers)
    settings = ExtractionSettings(
        name, spec.identity, tuple(layers), request.pooling, prep, request.precision, request.int8
    )
    from embedder.backbones.features import layer_dims

    dims = layer_dims(shape, layers, request.pooling, prep.crop)
    weights_arg = spec.path if spec.kind == "file" else ("none" if spec.kind == "none" else spec.identity)
    if spec.kind == "timm":
        weights_arg = "DEFAULT"  # the tag is in the canonical name
    return Resolved(settings, dims, spec.path, weights_arg, request.seed)
