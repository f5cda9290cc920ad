"""What checking the trunk store when it is opened costs (``finetune --augment views``): a store the size of
flowers' (2,569 images x 4 views of MobileNetV2's last-2-blocks cut, 160 x 7 x 7 float16: 130 MB in parts of one
training batch, 32 images x 4 views) opened with every check (regular files, index schema, rows' type, shape and
count, every value finite) against opening its parts memory-mapped without them, as the store did before.

    python benchmarks/trunk_store_open.py [--images 2569] [--repeats 3]

Synthetic rows (the check reads bytes, it does not care what they mean); the store is written once into a temporary
folder, then each way is timed ``--repeats`` times, alternating, with the files in the page cache (a second run of
``finetune`` reads a store it wrote or read shortly before), and once after dropping them from it where the
machine allows (``posix_fadvise(DONTNEED)``: not a guarantee).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from workflows.finetune.trunk import TrunkStore  # noqa: E402

ROW = (160, 7, 7)
SETTINGS = {"backbone": "mobilenet_v2", "weights": "synthetic", "precision": "fp32", "preprocessing": {}, "cut": "x"}


def unchecked(parts: str) -> int:
    """The parts opened as before: the key list read, the rows memory-mapped, nothing checked."""
    rows = 0
    for name in sorted(os.listdir(parts)):
        if name.endswith(".json"):
            base = os.path.join(parts, name[:-5])
            with open(base + ".json", encoding="utf-8") as fh:
                keys = json.load(fh)
            rows += len(np.load(base + ".npy", mmap_mode="r")) if keys else 0
    return rows


def drop_cache(parts: str) -> None:
    for name in os.listdir(parts):
        fd = os.open(os.path.join(parts, name), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2569)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as root:
        store = TrunkStore(root, SETTINGS, ROW)
        batch = 32
        for start in range(0, args.images, batch):
            n = min(batch, args.images - start)
            keys = [(f"{i:032x}", v) for i in range(start, start + n) for v in ("center", "flip", "crop0", "crop1")]
            store.write(keys, rng.standard_normal((len(keys), *ROW)).astype(np.float16))
        size = sum(os.path.getsize(os.path.join(store.parts, f)) for f in os.listdir(store.parts))
        times: dict[str, list[float]] = {"checked": [], "unchecked": []}
        for _ in range(args.repeats):
            for way in ("checked", "unchecked"):
                started = time.perf_counter()
                rows = len(TrunkStore(root, SETTINGS, ROW).index) if way == "checked" else unchecked(store.parts)
                times[way].append(time.perf_counter() - started)
                assert rows == 4 * args.images, rows
        cold = {}
        for way in ("checked", "unchecked"):
            drop_cache(store.parts)
            started = time.perf_counter()
            TrunkStore(root, SETTINGS, ROW) if way == "checked" else unchecked(store.parts)
            cold[way] = time.perf_counter() - started
    print(f"store: {args.images} images x 4 views of {ROW} float16, {size / 1e6:.0f} MB in {len(store.arrays)} parts")
    print(f"load: {os.getloadavg()[0]:.1f} (1 min), {os.cpu_count()} cores")
    print(f"| open | warm, median of {args.repeats} (s) | warm, each (s) | after dropping the page cache (s) |")
    print("|---|--:|---|--:|")
    for way in ("checked", "unchecked"):
        each = ", ".join(f"{t:.3f}" for t in times[way])
        print(f"| {way} | {np.median(times[way]):.3f} | {each} | {cold[way]:.3f} |")
    ratio = np.median(times["checked"]) / max(np.median(times["unchecked"]), 1e-9)
    print(f"checked / unchecked, warm: {ratio:.1f}x")


if __name__ == "__main__":
    main()
