"""Fixtures: small generated image folders (good and bad files), and the shared real photos when present."""
from __future__ import annotations

import io
import pathlib

import numpy as np
import pytest
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
HYMENOPTERA = SHARED / "data" / "hymenoptera"
FLOWERS = SHARED / "data" / "flowers"
MOBILENET_V2 = SHARED / "weights" / "mobilenet_v2-imagenet.pth"

# A small, fast setting used by most tests: random resnet18 (seeded) on 64 px crops.
FAST = dict(backbone="resnet18", weights="none", resize=72, crop=64, batch_size=4, workers=0)


def need(path: pathlib.Path):
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared data and weights of this project live in ../shared)")
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
    damaged[at:at + 30] = bytes(30)  # a broken zlib stream inside a valid PNG header
    (folder / "corrupt.png").write_bytes(bytes(damaged))
    return {"empty.jpg": "empty file", "truncated.jpg": "truncated image", "notes.jpg": "not an image file",
            "folder.jpg": "is a directory", "corrupt.png": "corrupt image"}


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "images"
    paths = write_tree(root)
    return root, paths
