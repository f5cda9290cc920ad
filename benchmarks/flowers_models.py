"""Which backbone, how much flip test-time augmentation and the `ensemble` zoo entry add on flowers, by stratified
cross-validation of train/ only (val/ is not touched: no number here is measured on data that chose anything).

    python benchmarks/flowers_models.py [--classifiers logreg,rbf-svm,ensemble] [--repeats 2]

`featurebank extract flowers/train` with the real ImageNet checkpoints of ../shared/weights: MobileNetV2 without and
with `--tta flip`, and SqueezeNet 1.1 (its penultimate layer, `classifier.0` in both). Then ONE `cv` over the three
caches (`cross_validate([a, b, c])`): every (backbone, classifier) on the same folds, so each row is paired with
the baseline (MobileNetV2, logreg, no tta) fold by fold, and each row gets cv's p-value against the best row
(corrected resampled t-test). The table adds the paired difference to the baseline and the same test against it.
Prints the table and writes it into benchmarks/RESULTS.md.
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
DATA = SHARED / "data" / "flowers" / "train"


CACHES = (  # name, backbone, weights file, tta
    ("mobilenet_v2", "mobilenet_v2", "mobilenet_v2-imagenet.pth", "none"),
    ("mobilenet_v2 + flip", "mobilenet_v2", "mobilenet_v2-imagenet.pth", "flip"),
    ("squeezenet1_1", "squeezenet1_1", "squeezenet1_1-imagenet.pth", "none"),
)
LAYER = "classifier.0"  # the penultimate layer of both backbones


def extract(cache: pathlib.Path, backbone: str, weights: pathlib.Path, tta: str, env: dict) -> tuple[dict, float]:
    from cpu_engines import run

    seconds, out = run(
        [
            sys.executable,
            "-m",
            "cli",
            "extract",
            str(DATA),
            "-b",
            backbone,
            "-w",
            str(weights),
            "-l",
            LAYER,
            "--cache",
            str(cache),
            "--tta",
            tta,
            "--json",
        ],
        env,
    )
    return json.loads(out), seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--classifiers",
        default="logreg,rbf-svm,ensemble",
        help="add ensemble:method=stack for stacking (about 5 times the ensemble's fitting time)",
    )
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-j", "--n-jobs", type=int, default=2)
    parser.add_argument("--cache-dir", help="keep the caches here (default: a temporary folder)")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    opts = parser.parse_args()
    missing = [p for p in [DATA] + [SHARED / "weights" / w for _, _, w, _ in CACHES] if not p.exists()]
    if missing:
        print(f"skipped: {', '.join(map(str, missing))} absent")
        return 0
    from cpu_engines import cpu, write_section

    from classifiers.crossval import cross_validate
    from classifiers.significance import corrected_t_test

    specs = opts.classifiers.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(opts.cache_dir or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "FEATUREBANK_ENGINE_DIR": str(folder / "engines"), "PYTHONPATH": str(ROOT)}
        paths, notes = [], []
        for name, backbone, weights, tta in CACHES:
            summary, seconds = extract(
                folder / f"flowers-train-{backbone}-{tta}.h5", backbone, SHARED / "weights" / weights, tta, env
            )
            paths.append(summary["cache"])
            notes.append(f"extract {name}: {summary['rows']} rows, {seconds:.0f} s")
        started = time.perf_counter()
        report = cross_validate(
            paths,
            classifiers=specs,
            layers=[LAYER],
            folds=opts.folds,
            repeats=opts.repeats,
            seed=opts.seed,
            n_jobs=opts.n_jobs,
        )
        notes.append(
            f"cv: {len(specs)} classifiers x {len(paths)} caches x {opts.folds} folds x {opts.repeats} "
            f"repeats, {time.perf_counter() - started:.0f} s"
        )
    label = {source.name: name for source, (name, *_rest) in zip(report.sources, CACHES)}
    base = report.result(specs[0], LAYER, report.sources[0].name)
    n_test = np.mean([len(s.test) for s in report.splits])
    n_train = np.mean([len(s.train) for s in report.splits])
    head = (
        "| # | backbone | classifier | balanced acc. % | accuracy % | p vs #1 | Δ vs baseline (points) | "
        "p vs baseline | folds better |"
    )
    rows = [head, "|--:|---|---|--:|--:|--:|--:|--:|--:|"]
    for i, (r, vs_best) in enumerate(report.compared()):  # cv's own leaderboard and p-values against #1
        acc, bal = r.metric("accuracy"), r.metric("balanced_accuracy")
        d = 100 * (r.fold_scores() - base.fold_scores())
        # the baseline was fixed before anything was measured, so a test against it is not one against a selection
        p_base = (
            "–" if r is base else f"{corrected_t_test(base.fold_scores(), r.fold_scores(), n_train, n_test)[1]:.3f}"
        )
        rows.append(
            f"| {i + 1} | {label[r.backbone]} | {r.classifier} | {100 * bal['mean']:.2f} ± {100 * bal['std']:.2f} | "
            f"{100 * acc['mean']:.2f} | "
            + ("–" if vs_best.p_value is None else f"{vs_best.p_value:.3f}")
            + " | "
            + ("baseline" if r is base else f"{d.mean():+.2f} ± {d.std():.2f}")
            + " | "
            + p_base
            + " | "
            + ("–" if r is base else f"{int((d > 0).sum())}/{len(d)} (ties {int((d == 0).sum())})")
            + " |"
        )
    machine, _ = cpu()
    text = (
        f"flowers train/ ({len(report.data.y)} images, 5 classes), layer `{LAYER}` (penultimate) of the ImageNet "
        f"checkpoints in ../shared/weights, {opts.folds}-fold stratified cross-validation x {opts.repeats} repeats "
        f"(seed {opts.seed}), the same folds for every row; val/ not used. p-values: two-sided corrected "
        f"resampled t-test (Nadeau & Bengio 2003) of balanced accuracy over the {len(base.folds)} paired folds; "
        f"baseline: MobileNetV2, {specs[0]}, no tta. {machine}.\n\n"
        + "\n".join(rows)
        + "\n\n"
        + "\n".join(f"- {n}" for n in notes)
    )
    print(text)
    write_section(pathlib.Path(opts.results), text, "flowers_models.py", "Backbones, flip TTA and ensembles on flowers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
