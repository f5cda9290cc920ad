"""CPU extraction, one run, same photos: engines against the model alone, decoding, the tutorial loop.

    python benchmarks/cpu_engines.py [--models resnet18,resnet50,mobilenet_v2] [--rounds 2] [--skip-memory]
                                     [--schemes u8s8,u8s8-reduce,u8s8-reduce+8,u8s8-tensor,u8u8] [--skip-cv]

For each model (random weights, 224 px, batch 32), on the 398 hymenoptera photos (train + val):
  (a) images/s of the model alone per engine (torch eager, torch channels_last, ONNX Runtime fp32 and int8);
  (b) decoding alone (Pillow, resize and crop, one thread per core);
  (c) the CPU-work limit 1 / (1/a + 1/b): decoding and the model share the same cores;
  (d) the tutorial loop (benchmarks/tutorial_loop.py), a whole process;
  (e) `featurebank extract` end to end, a whole process, fp32 and int8, its engine prepared by an earlier run
      (the one-time export, measuring and calibration are reported beside it).
(d) and (e) alternate, ``--rounds`` times each; the table gives their mean. Then: peak memory at 1,000 and 10,000
images (the photos repeated under other names), an unchanged re-run of 1,000 images, and `featurebank cv`
against scikit-learn's cross_validate on the same arrays and folds. With ``--schemes``: ONNX Runtime's images/s of
each int8 scheme against fp32 (the model alone, interleaved, best of 3), each calibrated on 256 of the photos.
Writes its tables into benchmarks/RESULTS.md, in a section of this CPU's int8 kind (VNNI and AVX2 machines keep one
each).
"""

from __future__ import annotations

import argparse
import json
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
PHOTOS = SHARED / "data" / "hymenoptera"
MAXRSS = (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
    "sys.stderr.write(r.stderr); print(r.stdout.strip()); "
    "print('maxrss', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)


def cpu() -> tuple[str, str]:
    """The CPU's model and the instruction sets int8 depends on (``embedder.engines.cpu``), with its int8 kind."""
    from embedder.engines.cpu import current_cpu

    here = current_cpu()
    flags = "unknown" if here.flags is None else (" ".join(here.flags) or "-")
    return here.model, f"{flags} (int8 kind {here.int8_kind})"


def photo_farm(folder: pathlib.Path, copies: int = 1, limit: int | None = None) -> int:
    """ants/ and bees/ of train and val, as symbolic links (``copies`` times under other names)."""
    n = 0
    for c in range(copies):
        for split in ("train", "val"):
            for cls in ("ants", "bees"):
                (folder / cls).mkdir(parents=True, exist_ok=True)
                for f in sorted((PHOTOS / split / cls).iterdir()):
                    if limit is not None and n >= limit:
                        return n
                    os.symlink(f, folder / cls / f"{c:03d}-{split}-{f.name}")
                    n += 1
    return n


def run(cmd: list[str], env: dict) -> tuple[float, str]:
    t = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{out.stderr[-2000:]}")
    return time.perf_counter() - t, out.stdout


def extract_cmd(folder, cache, model, precision="fp32", extra=()):
    return [
        sys.executable,
        "-m",
        "cli",
        "extract",
        str(folder),
        "-b",
        model,
        "-w",
        "none",
        "--cache",
        str(cache),
        "--precision",
        precision,
        "--json",
        *extra,
    ]


def model_only(engine, n: int = 32, reps: int = 3) -> float:
    images = np.random.default_rng(0).integers(0, 256, (n, 3, 224, 224), dtype=np.uint8)
    engine(images)
    t = time.perf_counter()
    for _ in range(reps):
        engine(images)
    return reps * n / (time.perf_counter() - t)


def decode_only(folder: pathlib.Path) -> float:
    from embedder.inputs.batches import ImageDataset, ThreadBatches
    from embedder.inputs.sources import list_images
    from embedder.kernel.preprocess import Preprocessing

    listing = list_images(str(folder))
    dataset = ImageDataset([listing.full_path(i) for i in listing.items], Preprocessing())
    for _ in ThreadBatches(dataset, 32):  # warm the file cache, as every other measurement finds it
        pass
    t = time.perf_counter()
    n = sum(len(b.indices) + len(b.failures) for b in ThreadBatches(dataset, 32))
    return n / (time.perf_counter() - t)


def int8_choice(summary: dict) -> str:
    """The scheme ``--precision int8`` chose on this CPU and its mean cosine to fp32, or its fallback to fp32."""
    from embedder.cache.hdf5 import CacheReader
    from embedder.kernel.settings import ExtractionSettings

    settings = ExtractionSettings.from_dict(summary["settings"])
    if settings.int8 is None:
        return "fp32: " + "; ".join(summary["notes"])
    c = next(iter(CacheReader(summary["cache"]).info["int8"]["cosine_to_fp32"].values()))
    return f"{settings.int8.name} ({c['mean']:.4f})"


def engines_of(model: str, store_dir: str, prep_summary: dict, int8_summary: dict):
    import torch

    from embedder.backbones.registry import load_backbone
    from embedder.engines.engine import OnnxEngine, TorchEngine, onnx_name
    from embedder.kernel.settings import ExtractionSettings
    from embedder.kernel.store import EngineStore

    settings = ExtractionSettings.from_dict(prep_summary["settings"])
    int8 = ExtractionSettings.from_dict(int8_summary["settings"])
    net = load_backbone(model, "none").model
    store = EngineStore(store_dir)
    return {
        "torch eager": TorchEngine(net, settings, torch.device("cpu"), channels_last=False),
        "torch channels_last": TorchEngine(net, settings, torch.device("cpu"), channels_last=True),
        "onnxruntime fp32": OnnxEngine(store.find_model(onnx_name(settings))[0], settings),
        "onnxruntime int8": OnnxEngine(store.find_model(onnx_name(int8))[0], int8)
        if int8.precision == "int8"
        else OnnxEngine(store.find_model(onnx_name(settings))[0], settings),  # int8 fell back to fp32
    }


def scheme_speeds(model: str, photos: pathlib.Path, tmp: pathlib.Path, schemes: list[str]) -> dict:
    """ORT images/s of fp32 and each int8 scheme (SCHEME[+N]: N convolutions kept in fp32), interleaved, best of 3."""
    import embedder
    from embedder.engines.engine import OnnxEngine, onnx_name
    from embedder.kernel.settings import ExtractionSettings, Int8
    from embedder.kernel.store import EngineStore

    folder = str(tmp / "engines-schemes")
    store = EngineStore(folder)
    common = dict(backbone=model, weights="none", engine="onnxruntime", engine_dir=folder, progress=False)
    fp32 = embedder.extract(str(photos), str(tmp / f"s-{model}.h5"), **common)
    s32 = ExtractionSettings.from_dict(fp32.settings)
    engines = {"fp32": OnnxEngine(store.find_model(onnx_name(s32))[0], s32)}
    for scheme in schemes:
        name, _, n = scheme.partition("+")
        s = embedder.extract(
            str(photos),
            str(tmp / f"s-{model}-{scheme}.h5"),
            precision="int8",
            int8=Int8(scheme=name, fp32_layers=int(n or 0)),
            **common,
        )
        settings = ExtractionSettings.from_dict(s.settings)
        engines[scheme] = OnnxEngine(store.find_model(onnx_name(settings))[0], settings)
    samples: dict = {k: [] for k in engines}
    for _ in range(3):
        for k, engine in engines.items():
            samples[k].append(model_only(engine))
    return {k: max(v) for k, v in samples.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,resnet50,mobilenet_v2")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--schemes", default="", help="int8 schemes to time against fp32 (comma-separated)")
    parser.add_argument("--skip-cv", action="store_true")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    opts = parser.parse_args()
    if not PHOTOS.is_dir():
        print(f"skipped: {PHOTOS} is absent (the shared photos live in ../shared/data)")
        return 0
    name, flags = cpu()
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip().split("load average:")[-1]
    lines = [
        f"Machine: {name}, {os.cpu_count()} cores; flags: {flags}. {time.strftime('%Y-%m-%d')}; load average at the "
        f"start{load} (ratios within one run).",
        "Photos: the 398 hymenoptera photos (train + val, 193x130 to 2592x1944 JPEG, one GIF placeholder the "
        "tutorial's ImageFolder ignores). Random weights, 224 px crops, batch 32. Whole processes for (d) and (e).",
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        photos = tmp / "photos"
        photo_farm(photos)
        env = {**os.environ, "FEATUREBANK_ENGINE_DIR": str(tmp / "engines"), "PYTHONPATH": str(ROOT)}
        decode = decode_only(photos)
        scheme_lines = []
        if opts.schemes:  # first: the rows the int8 guard is about
            schemes = opts.schemes.split(",")
            scheme_lines += [
                "ONNX Runtime alone, images/s (vs fp32), each int8 scheme calibrated on 256 of the photos (all of "
                "those embedded), random weights, batch 32, interleaved, best of 3:",
                "",
                "| model | fp32 | " + " | ".join(schemes) + " |",
                "|---|--:|" + "--:|" * len(schemes),
            ]
            few = tmp / "photos256"
            photo_farm(few, limit=256)
            for model in opts.models.split(","):
                r = scheme_speeds(model, few, tmp, schemes)
                cells = [f"{r[k]:.1f} ({r[k] / r['fp32']:.2f}x)" for k in schemes]
                scheme_lines.append(f"| {model} | {r['fp32']:.1f} | " + " | ".join(cells) + " |")
                print(scheme_lines[-1], flush=True)
            scheme_lines.append("")
        table = [
            "| model | (a) torch eager | (a) torch channels_last | (a) ORT fp32 | (a) ORT int8 | (b) decode | "
            "(c) limit fp32 / int8 | (d) tutorial | (e) extract fp32 | (e) extract int8 | e/d fp32 / int8 | "
            "e/c fp32 / int8 | one-time fp32 / int8 | int8 scheme chosen (cosine to fp32, calibration images) |",
            "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|---|",
        ]
        for model in opts.models.split(","):
            _, out = run(extract_cmd(photos, tmp / f"prep-{model}.h5", model), env)
            prep = json.loads(out)
            _, out = run(extract_cmd(photos, tmp / f"prep-{model}-int8.h5", model, "int8"), env)
            prep8 = json.loads(out)
            engines = engines_of(model, env["FEATUREBANK_ENGINE_DIR"], prep, prep8)
            samples = {k: [] for k in engines}
            for _ in range(3):  # interleaved, best of 3: a busy moment hurts no engine in particular
                for k, engine in engines.items():
                    samples[k].append(model_only(engine))
            rates = {k: max(v) for k, v in samples.items()}
            del engines
            fp32_best = max(rates[k] for k in ("torch eager", "torch channels_last", "onnxruntime fp32"))
            limit32 = 1 / (1 / fp32_best + 1 / decode)
            limit8 = 1 / (1 / rates["onnxruntime int8"] + 1 / decode)
            tut, e32, e8, loops = [], [], [], []
            for r in range(opts.rounds):
                seconds, out = run([sys.executable, "benchmarks/tutorial_loop.py", str(photos), model], env)
                tut.append(int(out.split()[0]) / seconds)
                seconds, out = run(extract_cmd(photos, tmp / f"{model}-{r}.h5", model), env)
                s = json.loads(out)
                e32.append(s["embedded"] / seconds)
                loops.append(s["images_per_second"])
                assert s["prepared"] == [], s["prepared"]  # timed runs find their engine ready
                seconds, out = run(extract_cmd(photos, tmp / f"{model}-{r}-int8.h5", model, "int8"), env)
                s8 = json.loads(out)
                e8.append(s8["embedded"] / seconds)
            d, f32, f8 = np.mean(tut), np.mean(e32), np.mean(e8)
            table.append(
                f"| {model} | {rates['torch eager']:.1f} | {rates['torch channels_last']:.1f} | "
                f"{rates['onnxruntime fp32']:.1f} | {rates['onnxruntime int8']:.1f} | {decode:.0f} | "
                f"{limit32:.1f} / {limit8:.1f} | {d:.1f} | {f32:.1f} (loop {np.mean(loops):.1f}) | {f8:.1f} | "
                f"{f32 / d:.2f} / {f8 / d:.2f} | {f32 / limit32:.2f} / {f8 / limit8:.2f} | "
                f"{prep['prepared_seconds']:.1f} s / {prep8['prepared_seconds']:.1f} s | {int8_choice(prep8)} |"
            )
            print(table[-1], flush=True)
        lines += [
            "Images/s; (e) is images over the whole process's wall time (start-up included; 'loop' is the "
            "embedding loop alone). The engine `auto` chose for fp32 on this CPU is recorded in each cache "
            "(`featurebank info`). One-time: export + measuring (fp32), calibration (int8) of the first run.",
            "",
            *table,
            "",
        ]
        lines += scheme_lines
        if not opts.skip_memory:
            lines += memory_and_rerun(tmp, env) + [""]
        if not opts.skip_cv:
            lines += cv_against_sklearn(tmp, env, opts.rounds)
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip().split("load average:")[-1]
    lines.append(f"Load average at the end{load}.")
    text = "\n".join(lines)
    print(text)
    from embedder.engines.cpu import current_cpu

    kind = current_cpu().int8_kind
    write_section(pathlib.Path(opts.results), text, f"cpu_engines.py {kind}", f"CPU engines, int8 kind {kind}")
    return 0


def memory_and_rerun(tmp: pathlib.Path, env: dict) -> list[str]:
    rows = [
        "| images | extract resnet18 fp32: seconds | peak memory (RSS) | unchanged re-run | re-run / first |",
        "|--:|--:|--:|--:|--:|",
    ]
    peaks = {}
    for n in (1000, 10000):
        folder = tmp / f"farm{n}"
        photo_farm(folder, copies=n // 398 + 1, limit=n)
        cache = tmp / f"farm{n}.h5"
        t = time.perf_counter()
        _, out = run([sys.executable, "-c", MAXRSS, *extract_cmd(folder, cache, "resnet18")], env)
        first = time.perf_counter() - t
        peak = int(out.split("maxrss")[1]) / 1024
        peaks[n] = peak
        again, _ = run(extract_cmd(folder, cache, "resnet18"), env)
        rows.append(f"| {n:,} | {first:.1f} | {peak:.0f} MB | {again:.2f} s | {100 * again / first:.1f} % |")
        print(rows[-1], flush=True)
    rows.append("")
    rows.append(f"Peak memory at 10,000 images is {peaks[10000] / peaks[1000]:.2f}x the peak at 1,000.")
    return rows


def cv_against_sklearn(tmp: pathlib.Path, env: dict, rounds: int) -> list[str]:
    """The same folds and pipeline: what featurebank's bookkeeping (reports, suspicious images) costs."""
    from sklearn.model_selection import cross_validate as sk_cross_validate

    import embedder
    from classifiers import cross_validate, make_classifier
    from classifiers.crossval import make_splits

    cache = tmp / "farm1000.h5"
    if not cache.exists():
        folder = tmp / "farm1000"
        photo_farm(folder, copies=3, limit=1000)
        run(extract_cmd(folder, cache, "resnet18"), env)
    ours, theirs = [], []
    for r in range(rounds + 1):  # round 0 warms both up (imports, first-call allocations) and is not counted
        t = time.perf_counter()
        report = cross_validate(str(cache), classifiers=["logreg"], layers=["flatten"], folds=5, n_jobs=1)
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        X, labels, _ = embedder.load(str(cache), "flatten")
        classes = sorted(set(labels))
        y = np.array([classes.index(v) for v in labels])
        splits = [(s.train, s.test) for s in make_splits(y, folds=5)]
        sk = sk_cross_validate(
            make_classifier("logreg"),
            X,
            y,
            cv=splits,
            scoring=["accuracy", "balanced_accuracy", "f1_macro", "neg_log_loss"],
        )
        theirs.append(time.perf_counter() - t)
        if r == 0:
            ours, theirs = [], []
    same = abs(report.best.metric("accuracy")["mean"] - float(np.mean(sk["test_accuracy"]))) < 1e-12
    return [
        "| 5-fold logreg on 1,000 x 512 (resnet18 cache) | seconds |",
        "|---|--:|",
        f"| `featurebank cv` (cross_validate: scores, per-class, confusion, out-of-fold, suspicious, outliers, "
        f"duplicates) | {np.mean(ours):.2f} |",
        f"| scikit-learn `cross_validate`, same folds and pipeline (4 scores) | {np.mean(theirs):.2f} |",
        f"| ratio | {np.mean(ours) / np.mean(theirs):.2f} |",
        "",
        f"Same mean accuracy from both: {'yes' if same else 'NO'}.",
    ]


def write_section(path: pathlib.Path, text: str, script: str = "cpu_engines.py", title: str = "CPU engines") -> None:
    """Replace (or append) this script's section of RESULTS.md; other scripts' sections are kept."""
    begin, end = f"<!-- {script}: begin -->", f"<!-- {script}: end -->"
    section = f"{begin}\n## {title} (`python benchmarks/{script.split()[0]}`)\n\n{text}\n{end}"
    old = path.read_text() if path.exists() else "# Benchmark results\n\nWritten by the scripts of this folder.\n"
    if begin in old:
        new = old[: old.index(begin)] + section + old[old.index(end) + len(end) :]
    else:
        new = old.rstrip() + "\n\n" + section + "\n"
    path.write_text(new)


if __name__ == "__main__":
    sys.exit(main())
