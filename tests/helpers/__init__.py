"""Helpers for the tests: small generated image folders (good and bad files), synthetic caches, the shared real
photos when present, and small assertions. Import them with ``from helpers import ...`` (setup.cfg puts tests/ on
sys.path, so this works in every pytest import mode); conftest.py keeps the fixtures only."""

from __future__ import annotations

import io
import os
import pathlib
import threading

import numpy as np
import pytest
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
SHARED = ROOT.parent / "shared"


def _real(name: str, kind: str) -> pathlib.Path:
    """A real photo folder or checkpoint for the tests that need one: in $FEATUREBANK_SAMPLES or the checkout's
    samples/ (as docs/offline.md fetches them: samples/NAME), else in ../shared beside the checkout (laid out as
    data/NAME and weights/NAME). The first that exists; the last place tried when none does (the test skips)."""
    places = [pathlib.Path(p) for p in (os.environ.get("FEATUREBANK_SAMPLES"), ROOT / "samples") if p]
    candidates = [place / name for place in places] + [SHARED / kind / name]
    return next((c for c in candidates if c.exists()), candidates[-1])


HYMENOPTERA = _real("hymenoptera", "data")
FLOWERS = _real("flowers", "data")
MOBILENET_V2 = _real("mobilenet_v2-imagenet.pth", "weights")

# A small, fast setting used by most tests: random resnet18 (seeded) on 64 px crops.
FAST = dict(backbone="resnet18", weights="none", resize=72, crop=64, batch_size=4, workers=0)
# the same settings on the command line, less the batch size
FAST_ARGS = ["-b", "resnet18", "-w", "none", "--resize", "72", "--crop", "64", "--workers", "0"]


def rows_close(a: np.ndarray, b: np.ndarray, rel: float = 1e-4) -> float:
    """Largest difference of a row relative to that row's largest magnitude (the engines' 1e-4 rule), asserted."""
    worst = float((np.abs(a - b).max(1) / np.maximum(np.abs(b).max(1), 1e-12)).max())
    assert worst < rel, worst
    return worst


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity."""
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def need(path: pathlib.Path):
    if not path.exists():
        pytest.skip(f"{path} is absent (real photos and checkpoints: fetch them into samples/ as docs/offline.md says)")
    return path


def photo(seed: int, size=(96, 80)) -> Image.Image:
    """A reproducible picture with structure (not noise alone), different for each seed."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.integers(0, 256, 3)
    arr = np.stack([(base[c] + (xx * (c + 1) + yy * (3 - c)) * rng.integers(1, 5)) % 256 for c in range(3)], axis=-1)
    arr = (arr + rng.integers(0, 40, arr.shape)).clip(0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def write_tree(root: pathlib.Path, classes=("cats", "dogs", "owls"), per_class=3, start=0) -> list[str]:
    """Class-per-folder JPEGs and PNGs; returns their paths relative to root, in sorted order."""
    paths = []
    seed = start
    for cls in classes:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            ext = ".jpg" if i % 2 == 0 else ".png"
            rel = f"{cls}/img{i:02d}{ext}"
            photo(seed, (96 + 8 * i, 80)).save(root / rel)
            paths.append(rel)
            seed += 1
    return sorted(paths)


def write_bad_files(folder: pathlib.Path) -> dict[str, str]:
    """Bad files of every kind in ``folder``; returns name → expected start of the reason."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    good = folder / "_whole.jpg"
    photo(99, (200, 160)).save(good, quality=90)
    data = good.read_bytes()
    good.unlink()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "notes.jpg").write_text("this is not an image\n")
    (folder / "folder.jpg").mkdir()
    png = io.BytesIO()
    photo(98, (64, 64)).save(png, "PNG")
    damaged = bytearray(png.getvalue())
    at = damaged.index(b"IDAT") + 44
    damaged[at : at + 30] = bytes(30)  # a broken zlib stream inside a valid PNG header
    (folder / "corrupt.png").write_bytes(bytes(damaged))
    return {
        "empty.jpg": "empty file",
        "truncated.jpg": "truncated image",
        "notes.jpg": "not an image file",
        "folder.jpg": "is a directory",
        "corrupt.png": "corrupt image",
    }


SYNTHETIC_SETTINGS = {
    "backbone": "resnet18",
    "weights": "none:seed=0",
    "layers": ["flatten", "layer3"],
    "pooling": "avg",
    "precision": "fp32",
    "preprocessing": {
        "resize": 72,
        "crop": 64,
        "interpolation": "bilinear",
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "draft": True,
    },
}


def digest(i: int) -> str:
    """A content digest for synthetic row ``i``, unique and, like a real one, distinct in its first 8 bytes (a
    model file keeps those: ``modelfile.fingerprints``)."""
    return f"{i:016x}" * 2


def synthetic_cache(
    path,
    counts=(12, 10, 8),
    dim=16,
    seed=0,
    groups=None,
    labels=True,
    digests=None,
    centers=None,
    features=None,
    classes=None,
):
    """A cache written through CacheWriter with Gaussian blobs instead of images: one blob per class, so the
    classes are learnable but overlap. Returns (X of layer "flatten", y); "layer3" holds a transform of half of X."""
    from embedder.cache.hdf5 import CacheWriter

    rng = np.random.default_rng(seed)
    classes = [f"class{i}" for i in range(len(counts))] if classes is None else list(classes)
    y = np.repeat(np.arange(len(counts)), counts)
    centers = rng.normal(0, 1.0, (len(counts), dim)) if centers is None else centers
    X = centers[y] + rng.normal(0, 1.5, (len(y), dim)) if features is None else features
    n = len(y)
    paths = [f"{classes[c]}/img{i:03d}.jpg" for i, c in enumerate(y)]
    rows = {
        "path": paths,
        "label": [classes[c] if labels else "" for c in y],
        "group": list(groups) if groups is not None else [""] * n,
        "size": [100] * n,
        "mtime_ns": [1] * n,
        "digest": list(digests) if digests is not None else [digest(i) for i in range(n)],
    }
    feats = {"flatten": X.astype(np.float32), "layer3": (X[:, : dim // 2] * 2 + 1).astype(np.float32)}
    empty = {k: [] for k in ("path", "reason", "digest", "size", "mtime_ns")}
    with CacheWriter(str(path), SYNTHETIC_SETTINGS, "classes:/synthetic", "/synthetic", {"weights_file": None}) as w:
        w.write_batch(rows, feats, empty)
        w.commit(list(zip(paths, rows["label"], rows["group"])), {})
    return X.astype(np.float32), y


def finishes(fn, seconds=20.0):
    """``fn()``'s result, failing the test (instead of hanging it) when it does not return in time."""
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - raised again in the test's thread
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{fn} did not return within {seconds} s"
    if "error" in out:
        raise out["error"]
    return out["value"]
