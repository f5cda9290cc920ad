"""Calibrated probabilities, measured: held-out ECE and log-loss before and after ``train``'s temperature.

For each ``--data NAME TRAIN_CACHE VAL_CACHE`` and each ``--classifier`` (default: the tuned probe ``logreg``, the
default ``ensemble`` and ``rbf-svm``), exactly what ``featurebank train`` does: the zoo pipeline fit on every row of
train/, its out-of-fold scores on 5 stratified inner folds of train/ (``calibration.out_of_fold``: 5 more fits),
one temperature fit on them by log-loss (``calibration.fit_temperature``). Nothing is fit or chosen on val/; val/ is
scored once:

- **val/ ECE** (top label, 15 equal-width bins) and **log-loss**, uncalibrated (the entry's own probabilities; for an
  entry with decision scores only, a softmax of them, what ``--no-calibrate`` gives) and calibrated, with a 95 %
  bootstrap interval of the calibrated ECE (1,000 resamples of the val/ rows);
- **chance ECE**: the ECE a perfectly calibrated model with these very confidences would show on this many rows
  (labels drawn from the calibrated probabilities themselves, 1,000 draws: mean and 95th percentile). An ECE
  inside that range is as good as this many rows can tell;
- **accuracy** on val/ before and after (the same: a temperature never changes the arg-max);
- **out of fold on train/**: the ECE of the out-of-fold scores, uncalibrated and cross-fitted (each inner fold's
  rows scaled by the temperature fit on the other folds': no row's label chooses its own temperature);
- **cost**: the seconds of the fit on every row and of the 5 calibration fits, measured here.

    python benchmarks/calibration.py \\
        --data flowers cache/fewlabels/flowers-train.h5 cache/fewlabels/flowers-val.h5 \\
        --data hymenoptera cache/fewlabels/hymenoptera-train.h5 cache/fewlabels/hymenoptera-val.h5

(the caches ``benchmarks/few_labels.py`` makes: MobileNetV2, ImageNet checkpoint, default layer, of train/ and val/).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import embedder
from classifiers.calibration import FOLDS, apply_temperature, cross_fitted, fit_temperature, out_of_fold, raw_scores
from classifiers.metrics import ece
from classifiers.zoo import make_classifier

SPECS = ("logreg", "ensemble", "rbf-svm")
DRAWS = 1000


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-15, None))))


def bootstrap(y: np.ndarray, p: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95 % interval of the ECE over resamples of the rows."""
    rng = np.random.default_rng(seed)
    values = [ece(y[i], p[i]) for i in (rng.integers(0, len(y), len(y)) for _ in range(DRAWS))]
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def chance(p: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """The ECE of a perfectly calibrated model with these confidences on this many rows: labels drawn from ``p``."""
    rng = np.random.default_rng(seed)
    cumulative = np.cumsum(p, axis=1)
    values = []
    for _ in range(DRAWS):
        u = rng.random((len(p), 1))
        y = np.minimum((u > cumulative).sum(axis=1), p.shape[1] - 1)
        values.append(ece(y, p))
    return float(np.mean(values)), float(np.percentile(values, 95))


def measure(name: str, train: str, val: str, spec: str, layer: str | None) -> str:
    X, y, _ = embedder.load(train, layer=layer)
    Xv, yv, _ = embedder.load(val, layer=layer)
    classes = np.unique(y)
    y, yv = np.searchsorted(classes, np.asarray(y)), np.searchsorted(classes, np.asarray(yv))
    started = time.perf_counter()
    model = make_classifier(spec, seed=0).fit(X, y)
    fit_s = time.perf_counter() - started
    started = time.perf_counter()
    oof, kind, fold_of = out_of_fold(model, X, y, seed=0, folds=FOLDS)
    T = fit_temperature(oof, kind, y)
    calibration_s = time.perf_counter() - started
    raw, _ = raw_scores(model, Xv)
    before, after = apply_temperature(raw, kind, 1.0), apply_temperature(raw, kind, T)
    lo, hi = bootstrap(yv, after)
    mean_chance, p95_chance = chance(after)
    crossed, _ = cross_fitted(oof, kind, y, fold_of)
    acc_before, acc_after = (before.argmax(1) == yv).mean(), (after.argmax(1) == yv).mean()
    return (
        f"| {name} | {spec} | {len(y)} / {len(yv)} | {kind} | {T:.3f} "
        f"| {ece(yv, before):.4f} | **{ece(yv, after):.4f}** [{lo:.4f}, {hi:.4f}] | {mean_chance:.4f} / {p95_chance:.4f} "
        f"| {log_loss(yv, before):.4f} / {log_loss(yv, after):.4f} "
        f"| {100 * acc_before:.2f} / {100 * acc_after:.2f} "
        f"| {ece(y, apply_temperature(oof, kind, 1.0)):.4f} / {ece(y, crossed):.4f} "
        f"| {fit_s:.1f} / {calibration_s:.1f} ({calibration_s / max(fit_s, 1e-9):.1f}×) |"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs=3, action="append", metavar=("NAME", "TRAIN_CACHE", "VAL_CACHE"), required=True)
    parser.add_argument("--classifier", "-c", action="append", default=None, help=f"zoo specs (default: {SPECS})")
    parser.add_argument("--layer", default=None)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; {FOLDS} calibration folds\n")
    print(
        "| data | classifier | train / val rows | calibrated from | temperature | val/ ECE uncalibrated "
        "| val/ ECE calibrated [95 % bootstrap] | chance ECE at these confidences (mean / 95th pct) "
        "| val/ log-loss uncal. / cal. | val/ accuracy % uncal. / cal. "
        "| train/ out-of-fold ECE uncal. / cross-fitted | seconds: fit / 5 calibration fits |"
    )
    print("|---|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for name, train, val in args.data:
        for spec in args.classifier or SPECS:
            print(measure(name, train, val, spec, args.layer), flush=True)


if __name__ == "__main__":
    main()
