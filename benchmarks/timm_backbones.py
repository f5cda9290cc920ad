"""CPU images/s of timm backbones, one run: the model alone per engine, and `extract` end to end.

    python benchmarks/timm_backbones.py [--images 16] [--batch 8] [--write]

Random weights (speed does not depend on them; no download here), the model's own preprocessing from its
pretrained config. For each backbone:
  (a) the model alone on a uint8 batch already decoded: torch fp32, ONNX Runtime fp32 and int8 (calibrated on the
      same photos), best of 2 after a warm-up;
  (b) `embedder.extract` end to end on hymenoptera photos (decode, resize, model, HDF5), torch and ONNX Runtime
      fp32, its engine prepared by an earlier run (the one-time export is reported beside it).
``--write`` appends the table to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PHOTOS = ROOT.parent / "shared" / "data" / "hymenoptera"
BACKBONES = [
    ("timm:efficientnet_b0", None),
    ("timm:vit_small_patch14_dinov2", 224),
    ("timm:convnext_tiny", None),
    ("timm:vit_base_patch16_siglip_224", None),
    ("timm:vit_small_patch14_dinov2", None),
]  # cheapest first


def photos(folder: pathlib.Path, n: int) -> pathlib.Path:
    files = (
        sorted((PHOTOS / "train" / "ants").iterdir())[: n // 2]
        + sorted((PHOTOS / "train" / "bees").iterdir())[: n - n // 2]
    )
    for f in files:
        (folder / f.parent.name).mkdir(parents=True, exist_ok=True)
        os.symlink(f, folder / f.parent.name / f.name)
    return folder


def rate(engine, batch: np.ndarray) -> float:
    engine(batch)  # warm-up
    best = 0.0
    for _ in range(2):
        t = time.perf_counter()
        engine(batch)
        best = max(best, len(batch) / (time.perf_counter() - t))
    return best


def measure(name: str, crop: int | None, images: pathlib.Path, n_batch: int, workdir: str) -> dict:
    import embedder
    from embedder.backbones.registry import check_backbone, default_preprocessing, load_backbone
    from embedder.engines.engine import Prepared, open_engine
    from embedder.kernel.settings import Int8
    from embedder.kernel.store import EngineStore
    from embedder.resolve import Request, resolve

    prep = default_preprocessing(check_backbone(name))
    resize = None if crop is None else int(crop * prep.resize / prep.crop)
    store = EngineStore(os.path.join(workdir, "engines"))
    resolved = resolve(Request(name, "none", resize=resize, crop=crop))
    settings = resolved.settings
    size = settings.preprocessing.crop
    model = load_backbone(name, "none", resize=resize, crop=crop).model
    decoded = np.stack(
        [
            settings.preprocessing.to_array(__import__("PIL.Image").Image.open(p).convert("RGB"))
            for p in sorted(images.rglob("*.jpg"))
        ]
    )
    batch = decoded[:n_batch]
    row = {"backbone": name, "px": size, "dim": sum(resolved.dims.values())}
    prepared = Prepared()
    for label, kwargs in (("torch", dict(engine="torch")), ("onnxruntime", dict(engine="onnxruntime"))):
        engine = open_engine(settings, store, lambda: model, batch_size=n_batch, prepared=prepared, **kwargs)
        row[label] = rate(engine, batch)
    row["export_s"] = prepared.seconds
    try:
        from dataclasses import replace

        int8 = replace(settings, precision="int8", int8=Int8(images=len(decoded), calibration_set="bench"))
        engine = open_engine(
            int8, store, lambda: model, batch_size=n_batch, prepared=Prepared(), calibration=lambda: [decoded]
        )
        row["int8"] = rate(engine, batch)
    except Exception as exc:  # noqa: BLE001 - reported in the table
        row["int8"] = f"fails: {str(exc)[:60]}"
    for label in ("torch", "onnxruntime"):
        opts = dict(
            backbone=name,
            weights="none",
            resize=resize,
            crop=crop,
            batch_size=n_batch,
            engine=label,
            engine_dir=os.path.join(workdir, "engines"),
        )
        embedder.extract(str(images), os.path.join(workdir, f"warm-{name[5:]}-{label}-{size}.h5"), **opts)
        t = time.perf_counter()
        s = embedder.extract(str(images), os.path.join(workdir, f"{name[5:]}-{label}-{size}.h5"), **opts)
        row[f"extract_{label}"] = s.embedded / (time.perf_counter() - t)
    return row


def table(rows: list[dict], n_images: int, n_batch: int, load: str) -> str:
    def fmt(v):
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = [
        "## timm backbones on the CPU (`python benchmarks/timm_backbones.py`)",
        "",
        f"Random weights (speed does not depend on them), the model's own preprocessing; one run on a shared 2-core "
        f"machine whose load average was {load} (other jobs running): compare the ratios in a row more than the "
        f"absolute numbers. Model alone: a batch of {n_batch} decoded hymenoptera photos, best of 2 after a warm-up. "
        f"`extract`: {n_images} hymenoptera train photos end to end (decode, resize, model, HDF5), its engine "
        f"exported by an earlier run. images/s.",
        "",
        "| backbone | input px | vector | torch fp32 | ONNX Runtime fp32 | ONNX Runtime int8 | extract (torch) | "
        "extract (ONNX Runtime) | one-time export s |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backbone']} | {r['px']} | {r['dim']} | {fmt(r['torch'])} | {fmt(r['onnxruntime'])} | "
            f"{fmt(r['int8'])} | {fmt(r['extract_torch'])} | {fmt(r['extract_onnxruntime'])} | "
            f"{r['export_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--only", help="comma-separated backbone names")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        images = photos(pathlib.Path(workdir) / "photos", args.images)
        for name, crop in BACKBONES:
            if args.only and name not in args.only.split(","):
                continue
            t = time.perf_counter()
            rows.append(measure(name, crop, images, args.batch, workdir))
            print(rows[-1], f"{time.perf_counter() - t:.0f} s", flush=True)
    load = f"{load} at the start, {' / '.join(f'{v:.1f}' for v in os.getloadavg())} at the end"
    text = table(rows, args.images, args.batch, load)
    print(text)
    if args.write:
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as fh:
            fh.write("\n<!-- timm_backbones.py: begin -->\n" + text + "<!-- timm_backbones.py: end -->\n")


if __name__ == "__main__":
    main()
