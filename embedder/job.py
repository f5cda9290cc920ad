"""One ``extract`` run: list the input, find what the cache lacks, embed only that, commit.

Re-running on the same input embeds only new or changed files and continues an interrupted run; files that
left the input leave the cache. A rerun with nothing to do loads no weights and decodes no image.
"""
from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field

import h5py
import numpy as np
import PIL
import sklearn
import torch
import torchvision
from tqdm import tqdm

from . import __version__
from .backbones import (layer_dims, load_backbone, model_failed, preprocessing_for, resolve_layers,
                        resolve_weights, skeleton)
from .batches import ImageDataset, batches
from .cache import CacheReader, CacheWriter, settings_key
from .decode import DEFAULT_MAX_PIXELS, file_digest
from .errors import FeaturebankError
from .features import POOLINGS, FeatureExtractor, autocast_for, embed_uint8, resolve_device
from .sources import Listing, list_images

DEFAULT_CACHE_DIR = "cache"


@dataclass
class ExtractSummary:
    cache: str
    rows: int  # rows in the cache after the run
    embedded: int  # images pushed through the model by this run
    reused: int  # rows kept from earlier runs
    removed: int  # rows dropped because their file left the input
    failed: list[dict] = field(default_factory=list)  # every file without a row: {path, reason}
    new_failures: int = 0
    ignored: int = 0  # non-image, hidden and system files
    classes: list[str] = field(default_factory=list)
    layers: dict[str, int] = field(default_factory=dict)  # layer → vector length
    device: str = ""
    seconds: float = 0.0
    images_per_second: float = 0.0
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def library_versions() -> dict[str, str]:
    return {"featurebank": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": np.__version__, "h5py": h5py.__version__, "pillow": PIL.__version__,
            "scikit-learn": sklearn.__version__, "python": sys.version.split()[0]}


def default_cache_path(listing: Listing, settings: dict, backbone: str, cache_dir: str | None = None) -> str:
    """``cache/<input>-<backbone>-<hash of settings and input>.h5``: other settings, another file."""
    folder = cache_dir or os.environ.get("FEATUREBANK_CACHE_DIR") or DEFAULT_CACHE_DIR
    named = listing.source.split(":", 1)[1]
    if listing.kind in ("csv", "list"):
        named = os.path.splitext(named)[0]
    stem = "-".join(p for p in named.rstrip("/").split("/")[-2:] if p)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("._") or "input"
    key = settings_key({**settings, "source": listing.source})[:8]
    return os.path.join(folder, f"{stem}-{backbone}-{key}.h5")


def extract(source, cache: str | None = None, *, backbone: str = "resnet50", weights: str | None = "DEFAULT",
            layers=None, pooling: str = "avg", resize: int | None = None, crop: int | None = None,
            draft: bool = True, precision: str = "fp32", device: str = "auto", batch_size: int = 32,
            workers: int | None = None, seed: int = 0, layout: str = "auto", strict: bool = False,
            max_pixels: int = DEFAULT_MAX_PIXELS, cache_dir: str | None = None,
            progress: bool = False) -> ExtractSummary:
    """Embed every image of ``source`` (a folder, manifest, list file, or a :class:`Listing`) into the HDF5 cache
    ``cache`` (default: under ``cache/``)."""
    started = time.perf_counter()
    if pooling not in POOLINGS:
        raise FeaturebankError(f"unknown pooling {pooling!r}: choose one of {', '.join(POOLINGS)}")
    if batch_size < 1:
        raise FeaturebankError("--batch-size must be at least 1")
    spec = resolve_weights(backbone, weights, seed)
    dev = resolve_device(device)
    autocast_for(dev, precision)  # refuse fp16 on the CPU before any work
    listing = source if isinstance(source, Listing) else list_images(source, layout)
    shape = skeleton(backbone)
    layers = resolve_layers(shape, layers)
    preprocessing = preprocessing_for(backbone, spec).overridden(resize, crop, draft)
    settings = {"backbone": backbone, "weights": spec.identity, "layers": layers, "pooling": pooling,
                "preprocessing": preprocessing.to_dict(), "precision": precision}
    path = os.path.abspath(cache or default_cache_path(listing, settings, backbone, cache_dir))
    info = {"weights_file": spec.path, "input_kind": listing.kind, "versions": library_versions()}

    with CacheWriter(path, settings, listing.source, listing.root, info) as writer:
        todo = _plan(listing, writer)
        listed, planned = {item.path for item in listing.items}, {item.path for item in todo}
        removed = sum(1 for p, e in writer.entries.items() if p not in listed and e.reason is None)
        reused = sum(1 for item in listing.items if not item.error and item.path not in planned
                     and writer.entries[item.path].reason is None)
        new_failures = sum(1 for item in listing.items if item.error)
        embedded, loop_seconds = 0, 0.0
        if todo:
            embedded, failures, loop_seconds = _embed(todo, listing, writer, backbone, spec, resize, crop, draft,
                                                      layers, pooling, precision, dev, batch_size, workers,
                                                      max_pixels, progress)
            new_failures += failures
        if writer.dims is None:  # nothing was ever embedded: the sizes come from the architecture
            writer.dims = layer_dims(shape, layers, pooling, preprocessing.crop)
        writer.commit([(i.path, i.label, i.group) for i in listing.items],
                      {i.path: (i.size, i.mtime_ns, i.error) for i in listing.items if i.error})

    reader = CacheReader(path)
    failed = [{"path": p, "reason": r} for p, r in zip(reader.failures["path"], reader.failures["reason"])]
    summary = ExtractSummary(
        cache=path, rows=len(reader), embedded=embedded,
        reused=reused, removed=removed, failed=failed, new_failures=new_failures, ignored=listing.ignored,
        classes=reader.classes, layers=reader.dims, device=str(dev), seconds=round(time.perf_counter() - started, 3),
        images_per_second=round(len(todo) / loop_seconds, 2) if loop_seconds else 0.0, settings=settings)
    if strict and failed:
        first = "; ".join(f"{f['path']}: {f['reason']}" for f in failed[:3])
        raise FeaturebankError(f"{len(failed)} file(s) could not be embedded (--strict): {first}"
                               f"{' ...' if len(failed) > 3 else ''}; the {summary.rows} good rows are saved in {path}")
    return summary


def _plan(listing: Listing, writer: CacheWriter) -> list:
    """The items the cache has no up-to-date entry for. Same size and mtime: up to date; same size and
    another mtime: compared by content digest (a touched or copied file is not embedded again)."""
    todo = []
    for item in listing.items:
        if item.error:
            continue
        entry = writer.entries.get(item.path)
        if entry is not None and entry.size == item.size:
            if entry.mtime_ns == item.mtime_ns:
                continue
            try:
                same = entry.digest and file_digest(listing.full_path(item)) == entry.digest
            except OSError:
                same = False
            if same:
                writer.touch(item.path, item.size, item.mtime_ns)
                continue
        todo.append(item)
    return todo


def _embed(todo, listing, writer, backbone, spec, resize, crop, draft, layers, pooling, precision, dev,
           batch_size, workers, max_pixels, progress) -> tuple[int, int, float]:
    """Push ``todo`` through the model; each finished batch is committed to the cache as it completes.
    Returns how many images got a row, how many failed, and the seconds of the loop (start-up excluded)."""
    model = load_backbone(backbone, spec, resize=resize, crop=crop, draft=draft)
    prep = model.preprocessing
    extractor = FeatureExtractor(model.model, layers, pooling).to(dev)
    dataset = ImageDataset([listing.full_path(item) for item in todo], prep, max_pixels)
    embedded = failures = 0
    started = time.perf_counter()
    with tqdm(total=len(todo), unit="img", disable=not progress, file=sys.stderr, dynamic_ncols=True,
              desc=f"{backbone} → {os.path.basename(writer.path)}") as bar:
        for batch in batches(dataset, batch_size, workers, pin_memory=dev.type == "cuda", device_type=dev.type):
            if batch.indices:
                try:
                    features = embed_uint8(extractor, batch.images, prep, dev, precision)
                except (RuntimeError, AssertionError) as exc:  # torch._assert raises AssertionError
                    raise model_failed(prep.crop, exc) from None
            elif writer.dims is None:
                writer.dims = layer_dims(model.model, layers, pooling, prep.crop)
            if not batch.indices:
                features = {layer: np.empty((0, writer.dims[layer]), np.float32) for layer in layers}
            good = [todo[i] for i in batch.indices]
            bad = [todo[i] for i, _, _ in batch.failures]
            writer.write_batch(
                rows={"path": [i.path for i in good], "label": [i.label for i in good],
                      "group": [i.group for i in good], "size": [i.size for i in good],
                      "mtime_ns": [i.mtime_ns for i in good], "digest": batch.digests},
                features=features,
                failures={"path": [i.path for i in bad], "reason": [r for _, r, _ in batch.failures],
                          "digest": [d for _, _, d in batch.failures], "size": [i.size for i in bad],
                          "mtime_ns": [i.mtime_ns for i in bad]})
            embedded, failures = embedded + len(good), failures + len(bad)
            bar.update(len(good) + len(bad))
    return embedded, failures, time.perf_counter() - started
