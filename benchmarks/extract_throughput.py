"""Throughput of `extract` against the model alone and against the PyTorch tutorial's loop, in one run.

    python benchmarks/extract_throughput.py [--data ../shared/data/hymenoptera/train] [--backbone mobilenet_v2]

Prints a table of images/s and ratios to model-only speed. Uses ../shared/weights/mobilenet_v2-imagenet.pth when
present (weights only matter for realism, not for speed).
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

import torch
import torchvision
from torch.utils.data import DataLoader

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import embedder  # noqa: E402
from embedder.backbones import load_backbone, resolve_layers  # noqa: E402
from embedder.features import FeatureExtractor  # noqa: E402

SHARED = ROOT.parent / "shared"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED / "data" / "hymenoptera" / "train"))
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--weights", default=str(SHARED / "weights" / "mobilenet_v2-imagenet.pth"))
    parser.add_argument("--batch-size", type=int, default=32)
    opts = parser.parse_args()
    if not os.path.isdir(opts.data):
        print(f"skipped: {opts.data} is absent")
        return 0
    weights = opts.weights if os.path.exists(opts.weights) else "none"
    backbone = load_backbone(opts.backbone, weights)
    prep = backbone.preprocessing
    extractor = FeatureExtractor(backbone.model, resolve_layers(backbone.model), "avg")
    n = sum(1 for _ in pathlib.Path(opts.data).rglob("*.*"))

    x = prep.normalize(torch.randint(0, 255, (opts.batch_size, 3, prep.crop, prep.crop), dtype=torch.uint8))
    with torch.inference_mode():
        extractor(x)
        t = time.perf_counter()
        reps = max(2, n // opts.batch_size)
        for _ in range(reps):
            extractor(x)
        model_only = reps * opts.batch_size / (time.perf_counter() - t)

    tf = torchvision.transforms.Compose([
        torchvision.transforms.Resize(prep.resize), torchvision.transforms.CenterCrop(prep.crop),
        torchvision.transforms.ToTensor(), torchvision.transforms.Normalize(prep.mean, prep.std)])
    folder = torchvision.datasets.ImageFolder(opts.data, tf, is_valid_file=lambda p: not p.endswith(".gif"))
    t = time.perf_counter()
    with torch.inference_mode():
        for images, _ in DataLoader(folder, batch_size=opts.batch_size, num_workers=0):
            extractor(images)
    tutorial = len(folder) / (time.perf_counter() - t)

    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (0, 1):
            t = time.perf_counter()
            summary = embedder.extract(opts.data, os.path.join(tmp, f"c{workers}.h5"), backbone=opts.backbone,
                                       weights=weights, batch_size=opts.batch_size, workers=workers)
            runs[workers] = (summary.embedded / (time.perf_counter() - t), summary.images_per_second)
        t = time.perf_counter()
        embedder.extract(opts.data, os.path.join(tmp, "c1.h5"), backbone=opts.backbone, weights=weights, workers=1)
        rerun = time.perf_counter() - t

    print(f"{opts.backbone} on {opts.data} ({summary.embedded} images), batch {opts.batch_size}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} cores")
    print("| pipeline | images/s | of model-only |")
    print("|---|---|---|")
    print(f"| model alone (random uint8 batches, no decoding) | {model_only:.1f} | 100 % |")
    print(f"| tutorial loop (ImageFolder, PIL transforms, DataLoader without workers) | {tutorial:.1f} | {100 * tutorial / model_only:.0f} % |")
    for workers, (end_to_end, loop) in runs.items():
        how = "decoding in a worker process" if workers else "decoding in turn with inference"
        print(f"| featurebank extract --workers {workers}, its loop ({how}, HDF5 parts) | {loop:.1f} | {100 * loop / model_only:.0f} % |")
        print(f"| featurebank extract --workers {workers}, end to end (+ start-up: weights, tracing, merge) | {end_to_end:.1f} | {100 * end_to_end / model_only:.0f} % |")
    print(f"\nrerun with nothing to do: {rerun:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
