"""The backbone registry: a name resolves to a model, its preprocessing, its layer names, its blocks (for
fine-tuning) and its identity for the settings. Two sources: every torchvision classification model by its name,
and timm's models as ``timm:NAME[.TAG]`` (``embedder.backbones.timm``). Engines, fine-tuning and export ask this
module, never a library directly. Layers are feature-extraction node names (torch.fx) in both.

Weights are one of
- a torchvision weights name (``IMAGENET1K_V2``, ``ResNet50_Weights.IMAGENET1K_V2``, ``DEFAULT``): loaded through
  torchvision's weights API and its ``$TORCH_HOME`` cache; ``DEFAULT`` is recorded under its real name;
- a local state-dict file: recorded by its sha256;
- ``none``: random initialization from a recorded seed, so that re-runs give the same features;
- for timm: ``DEFAULT`` (the name's tag, else timm's default tag) or a tag, through timm's hub cache
  (``$HF_HOME``), recorded as ``ARCH.TAG``; local files may also be ``.safetensors``.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import functools
import io
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torchvision.models import get_model, get_model_weights, list_models
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from embedder.kernel.errors import (
    FeaturebankError,
    FileProblem,
    IncompatibleSettings,
    InvalidValue,
    MissingFile,
    UnknownBackbone,
    first_line,
)
from embedder.kernel.preprocess import MAX_SIDE, Preprocessing

from . import timm as timm_source
from .statedicts import head_outputs, load_checkpoint, parameter_blocks, parameters_on_meta, read_state_dict
from .timm import is_timm_model, is_timm_name

PENULTIMATE = "penultimate"  # alias of the node that feeds the classification head
AUX_HEADS = {"inception_v3": "AuxLogits.", "googlenet": "aux1."}


@dataclass(frozen=True)
class Weights:
    kind: str  # "torchvision", "timm", "file" or "none"
    identity: str  # what the cache records: enum name, "sha256:<hex>" or "none:seed=<n>"
    enum: Any = None  # a torchvision WeightsEnum member
    path: str | None = None
    seed: int | None = None

    @property
    def file(self) -> str:
        """The checkpoint's path, for the ``file`` kind (which always has one)."""
        if self.path is None:
            raise InvalidValue(f"{self.identity} weights have no file")
        return self.path

    def describe(self) -> str:
        return f"{self.identity} ({os.path.basename(self.file)})" if self.kind == "file" else self.identity


@dataclass
class Backbone:
    """A frozen model in eval mode with what it needs to be used and recorded."""

    name: str
    model: nn.Module
    weights: Weights
    preprocessing: Preprocessing
    categories: list[str] | None = None  # ImageNet class names when the weights' metadata has them


def list_backbones(source: str = "torchvision", pattern: str | None = None) -> list[str]:
    """Backbone names of a source: torchvision's models, or timm's pretrained ``timm:ARCH.TAG`` names; ``pattern``
    is a shell pattern (``*dinov2*``)."""
    if source == "timm":
        return [timm_source.PREFIX + n for n in timm_source.list_names(pattern)]
    import fnmatch

    names = sorted(list_models(module=torchvision.models))
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def describe_backbones(source: str = "torchvision", pattern: str | None = None) -> list[dict]:
    """What ``featurebank backbones`` lists: torchvision's models with their feature sizes and weights; timm's
    pretrained names with their preprocessing (read from the configs: no model is built)."""
    rows = []
    for name in list_backbones(source, pattern):
        if source == "timm":
            try:
                prep = default_preprocessing(name)
            except FeaturebankError:  # a non-square input or timm's border crop: listed, not usable
                continue
            rows.append(
                {
                    "name": name,
                    "resize": prep.resize,
                    "crop": prep.crop,
                    "interpolation": prep.interpolation,
                    "mean": list(prep.mean),
                    "std": list(prep.std),
                }
            )
            continue
        enum = weights_enum(name)
        prep = default_preprocessing(name)
        rows.append(
            {
                "name": name,
                "features": feature_dim(name),
                "default_weights": f"{enum.__name__}.{enum.DEFAULT.name}",
                "weights": list(enum.__members__),
                "resize": prep.resize,
                "crop": prep.crop,
            }
        )
    return rows


def check_backbone(name: str) -> str:
    """The canonical name: a torchvision name as it is, ``timm:ARCH.TAG`` for timm (the default tag filled in)."""
    if is_timm_name(name):
        return timm_source.check_name(name)
    names = list_backbones()
    if name in names:
        return name
    close = difflib.get_close_matches(name, names, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else "; `featurebank backbones` lists them"
    raise UnknownBackbone(f"unknown backbone {name!r}{hint}")


def weights_enum(name: str):
    """The torchvision weights enum of a backbone (``ResNet50_Weights``): names, transforms, metadata."""
    return get_model_weights(name)


def default_preprocessing(name: str) -> Preprocessing:
    """The family's standard preprocessing, for a local file or random weights: that of its first torchvision
    weights (the classic recipe, e.g. resize 256 and crop 224), not of newer recipes such as resize 232.
    For timm: that of the name's pretrained config."""
    if is_timm_name(name):
        return timm_source.preprocessing(name)
    try:
        return Preprocessing.from_transforms(next(iter(weights_enum(name))).transforms())
    except Exception:
        return Preprocessing()


def sha256_file(path: str) -> str:
    from embedder.kernel.store import weights_digest

    return weights_digest(path)  # a regular file of bounded size, read no further than its size: never a hang


CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".tar", ".safetensors")


def is_checkpoint(path: str) -> bool:
    """A checkpoint's name (a state dict: ``--weights``, ``finetune``'s ``best.pth``), by its suffix."""
    return str(path).lower().endswith(CHECKPOINT_SUFFIXES)


def looks_like_file(weights: str) -> bool:
    return os.sep in weights or "/" in weights or is_checkpoint(weights)


def resolve_weights(name: str, weights: str | None, seed: int = 0) -> Weights:
    """Turn what the user typed into a recorded identity, without loading anything big."""
    typed, name = name, check_backbone(name)
    if weights is None or str(weights).lower() == "none":
        return Weights("none", f"none:seed={int(seed)}", seed=int(seed))
    weights = os.fspath(weights)
    if os.path.isfile(weights) or looks_like_file(weights):
        if not os.path.isfile(weights):
            raise MissingFile(f"weights file not found: {weights}")
        path = os.path.abspath(weights)
        return Weights("file", f"sha256:{sha256_file(path)}", path=path)
    if is_timm_name(name):
        return Weights("timm", timm_source.weights_tag(typed, weights)[len(timm_source.PREFIX) :])
    enum_cls = weights_enum(name)
    short = weights.split(".", 1)[1] if weights.startswith(enum_cls.__name__ + ".") else weights
    if short == "DEFAULT":
        member = enum_cls.DEFAULT
    elif short in enum_cls.__members__:
        member = enum_cls[short]
    else:
        choices = ", ".join(["DEFAULT", *enum_cls.__members__, "none", "a path to a .pth file"])
        raise InvalidValue(f"unknown weights {weights!r} for {name}: choose one of {choices}")
    return Weights("torchvision", f"{enum_cls.__name__}.{member.name}", enum=member)


def head_name(model: nn.Module) -> str:
    """The classification head: the last Linear (a Conv2d for SqueezeNet); timm's pretrained config names it."""
    if is_timm_model(model):
        return timm_source.head_name(model)
    heads = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return heads[-1]


def head_inputs(model: nn.Module) -> int:
    """Length of the head's input (the default features), also when the head is an Identity (timm, no classes)."""
    if is_timm_model(model):
        return timm_source.head_inputs(model)
    head = model.get_submodule(head_name(model))
    return head.in_features if isinstance(head, nn.Linear) else head.in_channels


def skeleton(name: str, size: int | None = None, **kwargs) -> nn.Module:
    """The architecture with parameters on the meta device: for shapes and names, in a fraction of a second.
    ``size``: the input size a timm model with a fixed input size (a ViT) is built for (default: its own)."""
    if is_timm_name(name):
        return timm_source.skeleton(name, size, **kwargs)
    with parameters_on_meta(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_model(check_backbone(name), weights=None, **kwargs).eval()


def feature_dim(name: str) -> int:
    """Size of the default (penultimate) features: the head's input."""
    return head_inputs(skeleton(name))


def _load_file(name: str, weights: Weights) -> nn.Module:
    state = read_state_dict(weights.file)
    kwargs = {}
    probe = skeleton(name)
    head = head_name(probe)
    outputs = head_outputs(state, f"{head}.weight", head_inputs(probe), weights.path)
    if outputs is not None and outputs != probe.get_submodule(head).weight.shape[0]:
        kwargs["num_classes"] = outputs
    if name in AUX_HEADS:
        kwargs["aux_logits"] = any(k.startswith(AUX_HEADS[name]) for k in state)
        kwargs["init_weights"] = False
    model = skeleton(name, **kwargs)
    try:
        result = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as exc:
        mismatch = str(exc).strip().splitlines()[-1].strip()
        raise IncompatibleSettings(f"weights file {weights.path} does not fit {name}: {mismatch}") from None
    if result.missing_keys or result.unexpected_keys:
        parts = []
        if result.missing_keys:
            parts.append(f"{len(result.missing_keys)} missing keys ({', '.join(result.missing_keys[:3])}, ...)")
        if result.unexpected_keys:
            parts.append(
                f"{len(result.unexpected_keys)} unexpected keys ({', '.join(result.unexpected_keys[:3])}, ...)"
            )
        raise IncompatibleSettings(f"weights file {weights.path} does not fit {name}: {'; '.join(parts)}")
    return model.float()


def output_node(name: str) -> str:
    """The graph node that returns the logits of the classification head (the last node)."""
    return node_names(skeleton(name))[-1]


def file_metadata(path: str) -> dict:
    """What a checkpoint written by ``featurebank finetune`` carries besides its tensors: ``classes`` (its head's
    class names) and ``preprocessing`` (that of the weights it was fine-tuned from). Empty for a plain state dict
    and for a ``.safetensors`` file (tensors only)."""
    if path.lower().endswith(".safetensors"):
        return {}
    return _file_metadata(os.path.abspath(path), os.stat(path).st_mtime_ns)


def recorded_backbone(path: str | None) -> str | None:
    """The backbone a checkpoint written by ``featurebank finetune`` records (None for any other weights)."""
    if not path or not is_checkpoint(path) or not os.path.isfile(path):
        return None
    name = (file_metadata(path).get("featurebank") or {}).get("backbone")
    return name if isinstance(name, str) and name else None


@functools.lru_cache(maxsize=8)
def _file_metadata(path: str, mtime_ns: int) -> dict:
    obj = load_checkpoint(path)  # a file that cannot be read is one line here, not "{}" and a wrong guess later
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
        return {}
    return {k: v for k, v in obj.items() if k in ("classes", "preprocessing", "featurebank")}


def head_classes(name: str, weights: str | Weights | None, seed: int = 0) -> list[str]:
    """Class names of the backbone's own head: from the torchvision weights' metadata, those a fine-tuned
    checkpoint carries, or the standard ImageNet-1k list for a local checkpoint whose head has 1000 outputs."""
    spec = weights if isinstance(weights, Weights) else resolve_weights(name, weights, seed)
    if spec.kind == "timm":
        return timm_source.imagenet_classes(canonical_name(name, spec))
    if spec.kind == "none":
        raise InvalidValue("random weights have no classes: give --weights DEFAULT or an ImageNet checkpoint file")
    if spec.kind == "torchvision":
        categories = spec.enum.meta.get("categories")
        if not categories:
            raise InvalidValue(f"{spec.identity} carries no class names")
        return list(categories)
    classes = file_metadata(spec.file).get("classes")
    if classes:
        if not isinstance(classes, list) or not all(isinstance(c, str) and "\0" not in c for c in classes):
            raise FileProblem(f"weights file {spec.path} records classes that are not a list of names")
        return list(classes)
    state = timm_source.read_state(spec.file) if is_timm_name(name) else read_state_dict(spec.file)
    probe = skeleton(name)
    head = f"{head_name(probe)}.weight"
    outputs = head_outputs(state, head, head_inputs(probe), spec.path)
    if outputs != 1000:
        raise InvalidValue(
            f"{spec.path} has a head of {outputs} outputs, not ImageNet's 1000: train a "
            f"featurebank model on its features instead"
        )
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return list(_IMAGENET_CATEGORIES)


def _load_torchvision(name: str, weights: Weights) -> nn.Module:
    url = weights.enum.url
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(url).path))
    said = io.StringIO()  # torch.hub prints "Downloading: ..." on stdout, where --json output goes
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(said):
            warnings.simplefilter("ignore")
            model = get_model(name, weights=weights.enum, progress=False)
        sys.stderr.write(said.getvalue())
        return model
    except Exception as exc:
        if os.path.exists(cached):
            raise FileProblem(f"cannot load {weights.identity} from {cached}: {first_line(exc)}") from None
        raise FeaturebankError(
            f"cannot download {weights.identity} ({type(exc).__name__}; no network?): save {url} as {cached} "
            f"(or set TORCH_HOME), or pass a local checkpoint with --weights path/to/file.pth"
        ) from None


def canonical_name(name: str, weights: Weights) -> str:
    """What the settings record as the backbone: for timm, ``timm:ARCH.TAG`` of the weights' tag when they are
    timm's (``--weights TAG`` on ``timm:ARCH``), else of the name."""
    if weights.kind == "timm":
        return timm_source.PREFIX + weights.identity
    return check_backbone(name)


def load_backbone(
    name: str,
    weights: str | Weights | None = "DEFAULT",
    seed: int = 0,
    resize: int | None = None,
    crop: int | None = None,
    draft: bool | None = None,
) -> Backbone:
    """Build ``name`` with ``weights`` in eval mode with frozen parameters, plus its preprocessing."""
    name = check_backbone(name)
    spec = weights if isinstance(weights, Weights) else resolve_weights(name, weights, seed)
    if is_timm_name(name):
        name = canonical_name(name, spec)
        prep = preprocessing_for(name, spec).overridden(resize, crop, draft)
        if spec.kind == "timm":
            model = timm_source.pretrained(name, prep.crop)
        elif spec.kind == "file":
            model = timm_source.from_file(name, spec.file, prep.crop)
        else:
            model = timm_source.random(name, spec.seed or 0, prep.crop)
        model.eval().requires_grad_(False)
        return Backbone(name, model, spec, prep)
    if spec.kind == "torchvision":
        model = _load_torchvision(name, spec)
    elif spec.kind == "file":
        model = _load_file(name, spec)
    else:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed(spec.seed)
            model = get_model(name, weights=None)
    model.eval().requires_grad_(False)
    categories = spec.enum.meta.get("categories") if spec.kind == "torchvision" else None
    return Backbone(name, model, spec, preprocessing_for(name, spec).overridden(resize, crop, draft), categories)


def preprocessing_for(name: str, weights: Weights) -> Preprocessing:
    """What the weights carry (torchvision, or a fine-tuned checkpoint), else the family's standard preprocessing."""
    if weights.kind == "torchvision":
        return Preprocessing.from_transforms(weights.enum.transforms())
    if weights.kind == "timm":
        return timm_source.preprocessing(timm_source.PREFIX + weights.identity)
    if weights.kind == "file" and not weights.file.lower().endswith(".safetensors"):
        stored = file_metadata(weights.file).get("preprocessing")
        if stored:
            return recorded_preprocessing(stored, weights.path)
    return default_preprocessing(name)


def recorded_preprocessing(stored, path: str | None) -> Preprocessing:
    """The preprocessing a checkpoint records, checked field by field: a crafted or damaged record (no ``mean``,
    a string, a size of -1, an unknown interpolation) is one line naming what is wrong."""
    try:
        return _recorded_preprocessing(stored)
    except ValueError as exc:
        raise FileProblem(
            f"weights file {path} records a preprocessing that is not valid ({exc}); was it written by featurebank "
            f"finetune? Save its state dict alone to use the backbone's standard preprocessing"
        ) from None


def _numbers(value, name: str, positive: bool = False) -> tuple[float, float, float]:
    import math

    ok = isinstance(value, (list, tuple)) and len(value) == 3
    ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    if not ok or (positive and any(v <= 0 for v in value)):
        raise ValueError(f"{name} is not three numbers{' above 0' if positive else ''}")
    return tuple(float(v) for v in value)  # type: ignore[return-value]


def _recorded_preprocessing(stored) -> Preprocessing:
    from embedder.kernel.preprocess import PIL_FILTERS

    if not isinstance(stored, dict):
        raise ValueError(f"it is not a mapping but {type(stored).__name__}")
    fields = set(Preprocessing.__dataclass_fields__)
    unknown = sorted(str(k) for k in stored if k not in fields)
    missing = [k for k in ("resize", "crop", "mean", "std") if k not in stored]
    if unknown or missing:
        raise ValueError(", ".join([f"lacks {k}" for k in missing] + [f"has an unknown field {k!r}" for k in unknown]))
    for key in ("resize", "crop"):
        value = stored[key]
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_SIDE:
            raise ValueError(f"{key} is not a whole number of pixels ({value!r})")
    if stored.get("interpolation", "bilinear") not in PIL_FILTERS:
        raise ValueError(f"interpolation {stored['interpolation']!r} is not one of {', '.join(PIL_FILTERS)}")
    if not isinstance(stored.get("draft", True), bool):
        raise ValueError("draft is not true or false")
    if stored.get("crop_mode", "center") not in ("center", "squash"):
        raise ValueError(f"crop_mode {stored['crop_mode']!r} is not center or squash")
    return Preprocessing(
        **{**stored, "mean": _numbers(stored["mean"], "mean"), "std": _numbers(stored["std"], "std", positive=True)}
    )


def node_names(model: nn.Module) -> list[str]:
    if is_timm_model(model):
        try:
            return timm_source.node_names(model)
        except Exception as exc:
            raise FeaturebankError(
                f"timm cannot trace this model for feature extraction: {str(exc).splitlines()[0]}"
            ) from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return get_graph_node_names(model.eval())[1]
        except Exception as exc:
            raise FeaturebankError(
                f"torchvision cannot trace this model for feature extraction: {first_line(exc)}"
            ) from None


def resolve_layers(model: nn.Module, layers=None) -> list[str]:
    """Node names to extract; ``None`` or ``penultimate`` mean the input of the classification head.
    A module name (``layer3``) stands, as in torchvision, for the last node inside that module."""
    names = node_names(model)
    wanted = list(layers) if layers else [PENULTIMATE]
    resolved = []
    for layer in wanted:
        if layer == PENULTIMATE:
            layer = names[names.index(head_name(model)) - 1]
        elif layer not in names and not any(n.startswith(layer + ".") for n in names):
            close = difflib.get_close_matches(layer, names, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise InvalidValue(f"unknown layer {layer!r}{hint}; `featurebank layers BACKBONE` lists them")
        if layer not in resolved:
            resolved.append(layer)
    return resolved


def layer_shapes(model: nn.Module | str, size: int | None = None, nodes=None) -> list[tuple[str, tuple[int, ...]]]:
    """Output shapes (without the batch dimension) of ``nodes`` (default: every node) of a model, or of a
    backbone named by a string, for a ``size x size`` input. Computed on the meta device: no arithmetic."""
    if isinstance(model, str):
        size = size or default_preprocessing(model).crop
        model = skeleton(model, size)
    if size is None:
        raise InvalidValue("layer_shapes of a model needs the input size it is measured for (size=)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = copy.deepcopy(model).to("meta").eval()
        nodes = list(nodes) if nodes else node_names(model)
        body = feature_body(model, nodes)
        try:
            outputs = body(torch.empty(1, 3, size, size, device="meta"))
        except Exception as exc:
            raise model_failed(size, exc) from None
    return [(n, tuple(out.shape[1:])) for n, out in outputs.items() if isinstance(out, torch.Tensor)]


def model_failed(size: int, exc: Exception) -> FeaturebankError:
    """A model that cannot take the chosen input (a ViT built for another image size, say) is a settings error."""
    first = first_line(exc)
    return InvalidValue(f"the model cannot run on {size}x{size} inputs ({first}); choose another --crop/--resize")


def feature_body(model: nn.Module, layers: list[str]) -> nn.Module:
    """A module returning ``{layer: output}`` for node names (torch.fx; timm's tracer for timm models)."""
    if is_timm_model(model):
        return timm_source.feature_body(model, layers)
    return create_feature_extractor(model, return_nodes={layer: layer for layer in layers})


def tokens(model: nn.Module) -> tuple[int, bool]:
    """How a token sequence (N x T x D) of this model starts: (prefix tokens that never enter an average, whether
    the first is a class token). ``(0, False)`` for torchvision's models, which average every token."""
    return timm_source.prefix_tokens(model)


CONTAINERS = ("features", "classifier", "trunk_output", "blocks")  # top-level sequences whose items are blocks


def block_names(model: nn.Module) -> list[str]:
    """The backbone's blocks in forward order, head excluded: ``layer1``..``layer4`` for a ResNet (its stages),
    ``features.0``..``features.18`` for MobileNetV2, ``features.N`` stages for EfficientNet and ConvNeXt,
    ``Mixed_*`` for Inception; timm's ``stages.N`` and ``blocks.N`` (``timm_source.block_names``).
    ``finetune --unfreeze N`` trains the last N of them."""
    if is_timm_model(model):
        return timm_source.block_names(model)
    head = head_name(model)

    def depth(parts: list[str]) -> int:
        if parts[0] == "encoder" and len(parts) > 2 and parts[1] == "layers":  # ViT: encoder.layers.encoder_layer_N
            return 3
        return 2 if parts[0] in CONTAINERS and len(parts) > 1 else 1

    return parameter_blocks(model, head, depth)
