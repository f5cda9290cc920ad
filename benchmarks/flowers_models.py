"""How much flip test-time augmentation and the `ensemble` zoo entry add on flowers, by 5-fold cross-validation of
train/ only (val/ is not touched: no number here is measured on data that chose anything).

    python benchmarks/flowers_models.py [--layers classifier.0,features.17] [--classifiers logreg,rbf-svm,ensemble]

`featurebank extract flowers/train` with the real MobileNetV2 ImageNet weights (../shared/weights), once without
and once with `--tta flip`, into caches with the same rows in the same order; then `cv` of each classifier on each
layer of both caches on the same folds (the folds depend only on the labels and the seed), so every row of the
table is paired with the baseline (logreg, no tta) fold by fold. A composite layer `a+b` (concatenated features)
is accepted where `cv` takes one. Prints the table and writes it into benchmarks/RESULTS.md.

The differences are per-fold paired differences (mean ± std over folds, and on how many folds the row beat the
baseline); p-values of those paired differences come from `cv`'s statistics once they are merged.
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

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
SHARED = ROOT.parent / "shared"
WEIGHTS = SHARED / "weights" / "mobilenet_v2-imagenet.pth"
DATA = SHARED / "data" / "flowers" / "train"


def extract(cache: pathlib.Path, layers: list[str], tta: str, env: dict) -> tuple[dict, float]:
    from cpu_engines import run

    blocks = sorted({b for layer in layers for b in layer.split("+")})
    seconds, out = run([sys.executable, "-m", "cli", "extract", str(DATA), "-b", "mobilenet_v2", "-w", str(WEIGHTS),
                        "-l", ",".join(blocks), "--cache", str(cache), "--tta", tta, "--json"], env)
    return json.loads(out), seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="classifier.0,features.17")
    parser.add_argument("--classifiers", default="logreg,rbf-svm,ensemble",
                        help="add ensemble:method=stack for stacking (about 5 times the ensemble's fitting time)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-j", "--n-jobs", type=int, default=2)
    parser.add_argument("--cache-dir", help="keep the caches here (default: a temporary folder)")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    opts = parser.parse_args()
    if not WEIGHTS.exists() or not DATA.is_dir():
        print(f"skipped: {WEIGHTS} or {DATA} is absent")
        return 0
    from classifiers.crossval import cross_validate
    from cpu_engines import cpu, write_section

    layers, specs = opts.layers.split(","), opts.classifiers.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(opts.cache_dir or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "FEATUREBANK_ENGINE_DIR": str(folder / "engines"), "PYTHONPATH": str(ROOT)}
        results, notes = {}, []
        for tta in ("none", "flip"):
            summary, seconds = extract(folder / f"flowers-train-{tta}.h5", layers, tta, env)
            notes.append(f"extract --tta {tta}: {summary['rows']} rows, {seconds:.0f} s "
                         f"({summary['images_per_second']} images/s, {summary['engine'].get('name', 'cached')})")
            started = time.perf_counter()
            report = cross_validate(summary["cache"], specs, layers, folds=opts.folds, seed=opts.seed,
                                    n_jobs=opts.n_jobs)
            notes.append(f"cv --tta {tta}: {len(specs)} classifiers x {len(layers)} layers, "
                         f"{time.perf_counter() - started:.0f} s")
            for r in report.results:
                results[(tta, r.classifier, r.layer)] = r
    base_key = ("none", specs[0], layers[0])
    base = np.array([f.scores["balanced_accuracy"] for f in results[base_key].folds])
    head = ("| tta | classifier | layer | accuracy % | balanced acc. % | log-loss | Δ balanced acc. vs "
            f"{specs[0]} @ {layers[0]}, no tta (points, paired over folds) | folds better | fit s/fold |")
    rows = [head, "|---|---|---|--:|--:|--:|--:|--:|--:|"]
    for (tta, spec, layer), r in sorted(results.items(), key=lambda kv: -kv[1].metric("balanced_accuracy")["mean"]):
        acc, bal, loss = r.metric("accuracy"), r.metric("balanced_accuracy"), r.metric("log_loss")
        diff = 100 * (np.array([f.scores["balanced_accuracy"] for f in r.folds]) - base)
        fit = np.mean([f.fit_seconds for f in r.folds])
        rows.append(f"| {tta} | {spec} | {layer} | {100 * acc['mean']:.1f} ± {100 * acc['std']:.1f} | "
                    f"{100 * bal['mean']:.1f} ± {100 * bal['std']:.1f} | "
                    + (f"{loss['mean']:.3f}" if loss["mean"] is not None else "–") + " | "
                    + ("–" if (tta, spec, layer) == base_key else f"{diff.mean():+.2f} ± {diff.std():.2f}") + " | "
                    + ("–" if (tta, spec, layer) == base_key else f"{int((diff > 0).sum())}/{len(diff)}")
                    + f" | {fit:.2f} |")
    machine, _ = cpu()
    text = (f"flowers train/ ({results[base_key].predictions.shape[1]} images, 5 classes), MobileNetV2 ImageNet "
            f"checkpoint, {opts.folds}-fold stratified cross-validation (seed {opts.seed}), the same folds for every "
            f"row; {machine}.\n\n" + "\n".join(rows) + "\n\n" + "\n".join(f"- {n}" for n in notes))
    print(text)
    write_section(pathlib.Path(opts.results), text, "flowers_models.py", "Flip TTA and ensembles on flowers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
