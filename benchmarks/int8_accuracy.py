"""fp32 against each int8 scheme on the CPU at hand, with the real MobileNetV2 ImageNet weights, on flowers and
hymenoptera: the cosine to fp32, the linear probe's accuracy on val/, images/s; the default's choice; then the
cosine of each scheme on ResNet-50 (random weights: no real checkpoint is available here).

    python benchmarks/int8_accuracy.py [--datasets flowers,hymenoptera] [--schemes u8s8,u8s8-reduce,...]

For each dataset and scheme: `extract train/` (int8 calibrated on 256 train images), then val/ with train's int8
engine (as --calibration-from does: val images are never calibrated on); fp32 alike. The probe is the zoo's
`logreg:C=0.1`, fit on train's rows, scored once on val's. "default" is `--precision int8` as a user runs it
(scheme auto: this CPU's ladder and the cosine bounds), whatever it chose (fp32, with the reason said, when no
scheme held). Images/s: ONNX Runtime alone on 32 of the
calibration images, every engine interleaved, best of 3 (the machine may be busy: compare ratios within one run).
Flowers chose the bound and the ladder; hymenoptera is the held-out check. Writes its tables into RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"
WEIGHTS = SHARED / "weights" / "mobilenet_v2-imagenet.pth"
SCHEMES = "u8s8,u8s8-reduce,u8s8-reduce+8,u8s8-tensor,u8u8"


def as_int8(scheme: str):
    from embedder.kernel.settings import Int8

    if scheme == "default":
        return Int8()
    name, _, layers = scheme.partition("+")
    return Int8(scheme=name, fp32_layers=int(layers or 0))


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def probe(train: str, val: str) -> tuple[float, np.ndarray, np.ndarray]:
    import embedder
    from classifiers import make_classifier

    Xtr, ytr, _ = embedder.load(train)
    Xva, yva, _ = embedder.load(val)
    pred = make_classifier("logreg:C=0.1").fit(Xtr, ytr).predict(Xva)
    return 100 * float(np.mean(pred == yva)), pred, Xva


def speeds(engines: dict, images: np.ndarray) -> dict:
    rates = dict.fromkeys(engines, 0.0)
    for engine in engines.values():
        engine(images)  # warm-up
    for _ in range(3):
        for name, engine in engines.items():
            t = time.perf_counter()
            engine(images)
            rates[name] = max(rates[name], len(images) / (time.perf_counter() - t))
    return rates


def dataset_rows(name: str, schemes: list[str], tmp: pathlib.Path, engine_dir: str) -> list[str]:
    import embedder
    from embedder.cache.hdf5 import CacheReader
    from embedder.engines.engine import OnnxEngine
    from embedder.job import int8_of_cache
    from embedder.kernel.settings import ExtractionSettings

    data = SHARED / "data" / name
    common = dict(backbone="mobilenet_v2", weights=str(WEIGHTS), engine_dir=engine_dir, progress=False)
    fp32_train = embedder.extract(str(data / "train"), str(tmp / f"{name}-train-fp32.h5"), **common)
    fp32_val = embedder.extract(str(data / "val"), str(tmp / f"{name}-val-fp32.h5"), **common)
    base, base_pred, base_X = probe(fp32_train.cache, fp32_val.cache)
    engines = {"fp32": OnnxEngine(os.path.join(engine_dir, fp32_train.engine["model"]), _settings(fp32_train))}
    rows, found = [], {}
    for scheme in schemes:
        t0 = time.perf_counter()
        train = embedder.extract(
            str(data / "train"),
            str(tmp / f"{name}-train-{scheme}.h5"),
            precision="int8",
            int8=as_int8(scheme),
            **common,
        )
        settings = ExtractionSettings.from_dict(train.settings)
        if settings.precision == "fp32":  # the default fell back: fp32 rows, and the reason said
            rows.append(f"| {name} | {scheme}: fp32 | {train.notes[0] if train.notes else ''} | | | | | |")
            continue
        wanted, folder = int8_of_cache(train.cache)
        val = embedder.extract(
            str(data / "val"), str(tmp / f"{name}-val-{scheme}.h5"), precision="int8", int8=wanted, **common
        )
        seconds = time.perf_counter() - t0
        acc, pred, X = probe(train.cache, val.cache)
        calib = next(iter(CacheReader(train.cache).info["int8"]["cosine_to_fp32"].values()))
        cos = cosines(base_X, X)
        label = scheme if scheme != "default" else f"default ({settings.int8.name})"
        engines[label] = OnnxEngine(os.path.join(folder, train.engine["model"]), settings)
        found[label] = (calib, cos, acc, int(np.sum(pred != base_pred)), seconds, train.prepared, train.notes)
    from embedder.inputs.batches import ImageDataset, ThreadBatches
    from embedder.inputs.sources import list_images
    from embedder.kernel.preprocess import Preprocessing

    listing = list_images(str(data / "train"))
    images = next(
        iter(ThreadBatches(ImageDataset([listing.full_path(i) for i in listing.items[:32]], Preprocessing()), 32))
    ).images
    rates = speeds(engines, images)
    rows.insert(
        0,
        f"| {name} | fp32 | 1 / 1 | 1 / 1 | {base:.2f} | – | {rates['fp32']:.1f} (1.00x) | "
        f"{fp32_train.prepared_seconds:.0f} s |",
    )
    for label, (calib, cos, acc, changed, _seconds, prepared, notes) in found.items():
        rows.append(
            f"| {name} | {label} | {calib['mean']:.4f} / {calib['min']:.4f} | {cos.mean():.4f} / {cos.min():.4f} | "
            f"{acc:.2f} ({acc - base:+.2f}) | {changed} | {rates[label]:.1f} ({rates[label] / rates['fp32']:.2f}x) | "
            f"{sum(float(p.split(' in ')[1].split(' s')[0]) for p in prepared if p.startswith('calibrated')):.0f} s |"
        )
        if label.startswith("default") and notes:
            rows.append(f"| {name} | default, said | {notes[0]} | | | | | |")
    return rows


def _settings(summary):
    from embedder.kernel.settings import ExtractionSettings

    return ExtractionSettings.from_dict(summary.settings)


def resnet50_rows(schemes: list[str], tmp: pathlib.Path, engine_dir: str) -> list[str]:
    """The cosine to fp32 on the 245 hymenoptera train images (all of them calibrate), random ResNet-50."""
    import embedder
    from embedder.cache.hdf5 import CacheReader

    rows = []
    folder = SHARED / "data" / "hymenoptera" / "train"
    for scheme in schemes:
        s = embedder.extract(
            str(folder),
            str(tmp / f"r50-{scheme}.h5"),
            backbone="resnet50",
            weights="none",
            precision="int8",
            int8=as_int8(scheme),
            engine_dir=engine_dir,
        )
        if s.settings["precision"] == "fp32":
            rows.append(f"| resnet50 (random) | {scheme}: fp32 | {s.notes[0] if s.notes else ''} |")
            continue
        c = next(iter(CacheReader(s.cache).info["int8"]["cosine_to_fp32"].values()))
        name = scheme if scheme != "default" else f"default ({as_scheme(s.settings)})"
        rows.append(f"| resnet50 (random) | {name} | {c['mean']:.4f} / {c['min']:.4f} on {c['images']} |")
        print(rows[-1], flush=True)
    return rows


def as_scheme(settings: dict) -> str:
    from embedder.kernel.settings import ExtractionSettings

    return ExtractionSettings.from_dict(settings).int8.name


def main() -> int:
    global SHARED, WEIGHTS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="flowers,hymenoptera")
    parser.add_argument("--schemes", default=SCHEMES, help="comma-separated; 'default' is added")
    parser.add_argument("--skip-schemes", default="", help="DATASET:SCHEME,... not run (u8u8 is slow on AVX2)")
    parser.add_argument("--resnet50", default="u8s8,u8s8-reduce,default", help="schemes for ResNet-50 ('' none)")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    parser.add_argument("--shared", default=str(SHARED), help="the folder of data/ and weights/")
    opts = parser.parse_args()
    SHARED = pathlib.Path(opts.shared)
    WEIGHTS = SHARED / "weights" / "mobilenet_v2-imagenet.pth"
    if not WEIGHTS.exists():
        print(f"skipped: {WEIGHTS} is absent")
        return 0
    from embedder.engines.cpu import current_cpu
    from embedder.engines.quantize import bound_text, ladder

    cpu = current_cpu()
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip().split("load average:")[-1]
    skip = set(opts.skip_schemes.split(",")) if opts.skip_schemes else set()
    rows = [
        "| data | scheme | cosine to fp32, calibration images (mean / worst) | cosine on val/ (mean / worst) | "
        "probe on val/: accuracy % (vs fp32) | val predictions changed | ORT images/s (vs fp32) | one-time (export or calibration) |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        engine_dir = str(tmp / "engines")
        for name in opts.datasets.split(","):
            if not (SHARED / "data" / name).is_dir():
                print(f"skipped {name}: absent")
                continue
            schemes = [s for s in [*opts.schemes.split(","), "default"] if f"{name}:{s}" not in skip]
            rows += dataset_rows(name, schemes, tmp, engine_dir)
            print(*rows, sep="\n", flush=True)
        r50 = resnet50_rows([s for s in opts.resnet50.split(",") if s], tmp, engine_dir)
    text = "\n".join(
        [
            f"CPU: {cpu.describe()}. Load average at the start {load} (2 cores shared with other work: images/s "
            f"are ratios within one run, interleaved). {time.strftime('%Y-%m-%d')}.",
            f"MobileNetV2, `../shared/weights/mobilenet_v2-imagenet.pth`, the penultimate layer. int8: ONNX Runtime "
            f"static QDQ, uint8 activations, MinMax on 256 train images, each output's tail in fp32. This CPU's "
            f"ladder: {', '.join(f'{s}+{n}' if n else s for s, n in ladder(cpu))}; bound {bound_text()} (cosine to "
            f"fp32 on the calibration images). Flowers chose them; hymenoptera is the held-out check.",
            "",
            *rows,
            "",
            "| backbone | scheme | cosine to fp32 on the calibration images (mean / worst) |",
            "|---|---|--:|",
            *r50,
        ]
    )
    print(text)
    from cpu_engines import write_section

    write_section(pathlib.Path(opts.results), text, "int8_accuracy.py", "int8 schemes against fp32")
    return 0


if __name__ == "__main__":
    sys.exit(main())
