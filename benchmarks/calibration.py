"""Calibrated probabilities, measured: held-out ECE and log-loss before and after ``train``'s calibration.

For each ``--data NAME TRAIN_CACHE VAL_CACHE`` and each ``--classifier`` (default: the tuned probe ``logreg``, the
default ``ensemble`` and ``rbf-svm``), exactly what ``featurebank train`` does: the zoo pipeline fit on every row of
train/, its out-of-fold scores on 5 stratified inner folds of train/ (``calibration.out_of_fold``: 5 more fits),
the margin temperature fit on them by log-loss (``calibration.fit_calibration``), and beside it the former default,
one temperature (``calibration.fit_temperature``). Nothing is fit or chosen on val/; val/ is scored once:

- **val/ ECE** (top label, 15 equal-width bins) and **log-loss**, uncalibrated (the entry's own probabilities; for an
  entry with decision scores only, a softmax of them, what ``--no-calibrate`` gives), with one temperature, and with
  the margin temperature, with a 95 % bootstrap interval of the last (1,000 resamples of the val/ rows);
- **chance ECE**: the ECE a perfectly calibrated model with these very confidences would show on this many rows
  (labels drawn from the calibrated probabilities themselves, 1,000 draws: mean and 95th percentile). An ECE
  inside that range is as good as this many rows can tell;
- **confidence - accuracy** on val/ (margin temperature): above 0 over-confident, below under-confident;
- **margin temperature fit to the labels** (``smooth=False``: ``train`` before Platt's targets): val/ ECE, log-loss;
- **accuracy** on val/ before and after (the same: one positive factor per row never changes the arg-max);
- **out of fold on train/**: the ECE of the out-of-fold scores, uncalibrated and cross-fitted (each inner fold's
  rows calibrated by the fit on the other folds': no row's label chooses its own calibration);
- **cost**: the seconds of the fit on every row and of the 5 calibration fits, measured here.

    python benchmarks/calibration.py \\
        --data flowers cache/fewlabels/flowers-train.h5 cache/fewlabels/flowers-val.h5 \\
        --data hymenoptera cache/fewlabels/hymenoptera-train.h5 cache/fewlabels/hymenoptera-val.h5

(the caches ``benchmarks/few_labels.py`` makes: MobileNetV2, ImageNet checkpoint, default layer, of train/ and val/).

``--few 2,5,10`` (with ``--draws N``, 10 by default): few labels, as ``select``'s users start. For each k, N seeded
random draws of k labelled images per class of train/, what ``train`` does on them (the pipeline fit on the draw, 5
inner folds' out-of-fold scores, or fewer) and the margin temperature fit to the labels themselves (before Platt's
targets) and to Platt's targets with the scale check (``train`` now: no calibration where the inner models' scores
are on another scale than the model's on the rest of train/, its unlabeled rows; ``calibration.scale_mismatch``),
against the uncalibrated scores; and two checks tried and not adopted (``no_gain``): no calibration where the inner
folds' out-of-fold rows, each calibrated by a fit on the others, score no better than uncalibrated, by the labels'
log-loss or by the cross-entropy to Platt's targets. Each scored on the rest of train/ (the rows not drawn, whose
labels the draw never saw: what a choice between them may read) and on val/, once per draw: log-loss (mean and worst
draw) and ECE.

``--nested REPEATS`` chooses the method, on train/ alone (val/ is not read, only its row count for the chance
line): REPEATS seeded repeats of a 5-fold outer split of train/; on each outer fold's training part, what ``train``
does (the pipeline fit on every row of it, 5 inner folds' out-of-fold scores), and from those same fits each
candidate way to calibrate, scored on the outer fold's rows, which nothing saw:

- **margin temperature** (``train``'s default): ``calibration.fit_calibration`` on the out-of-fold scores, applied
  to the model fit on every row;
- **temperature** (the former default): one temperature of the out-of-fold scores, on the model fit on every row;
- **none**: the model's own probabilities (a softmax of its decision scores);
- **inner models, a temperature each** (``CalibratedClassifierCV(method="temperature", ensemble=True)``): the mean
  of the 5 inner models' probabilities, each with the temperature of its own held-out inner fold;
- **inner models, one temperature**: the same mean, with the one temperature of all the out-of-fold scores;
- **refit at C x (k-1)/k** (the tuned probe only): the probe refit with its chosen C scaled to the inner folds' row
  count, so its regularization matches the models the temperature was fit on;
- **vector scaling**: a scale and a shift per class on the logits (the scales' spread and the shifts penalized by
  0.01), fit by log-loss on the out-of-fold scores; unlike a temperature it can change the predicted class.

Per candidate: the ECE of the outer folds' rows pooled (as many as train/ has), mean and spread over repeats, and
its paired difference to one temperature; the mean ECE of one outer fold's rows; log-loss; mean confidence minus
accuracy (above 0: over-confident); accuracy. Then the chance ECE of a perfectly calibrated model with one
temperature's confidences at those row counts and at val/'s.

    python benchmarks/calibration.py --nested 4 -c logreg -c ensemble \
        --data flowers cache/fewlabels/flowers-train.h5 cache/fewlabels/flowers-val.h5 \
        --data hymenoptera cache/fewlabels/hymenoptera-train.h5 cache/fewlabels/hymenoptera-val.h5
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from scipy.optimize import minimize
from sklearn.base import clone
from sklearn.model_selection import StratifiedKFold

import embedder
from classifiers.bundle import UNSEEN
from classifiers.calibration import (
    FOLDS,
    apply_calibration,
    apply_temperature,
    cross_fitted,
    fit_calibration,
    fit_temperature,
    logits,
    out_of_fold,
    placed,
    platt_targets,
    raw_scores,
    scale_mismatch,
    softmax,
)
from classifiers.folds import fit_grouped, inner_fold_count, inner_splits
from classifiers.metrics import ece
from classifiers.zoo import make_classifier

SPECS = ("logreg", "ensemble", "rbf-svm")
FEW_METHODS = ("none", "labels", "platt", "check-labels", "check-platt")
FEW_SPECS = ("logreg", "linear-svm", "rbf-svm", "ridge", "lda")  # --few: quick entries, probabilities and decisions
DRAWS = 1000


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], 1e-15, None))))


def bootstrap(y: np.ndarray, p: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95 % interval of the ECE over resamples of the rows."""
    rng = np.random.default_rng(seed)
    values = [ece(y[i], p[i]) for i in (rng.integers(0, len(y), len(y)) for _ in range(DRAWS))]
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def chance(p: np.ndarray, seed: int = 0, rows: int | None = None) -> tuple[float, float]:
    """The ECE of a perfectly calibrated model with these confidences on this many rows (``rows``: that many drawn
    from ``p`` with replacement each time): labels drawn from ``p``. Mean and 95th percentile."""
    return chance_values(p, seed, rows)[:2]


def chance_values(p: np.ndarray, seed: int = 0, rows: int | None = None, draws: int = DRAWS):
    """Mean, 95th percentile and the share above 0.03 of ``chance``'s ECEs."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(draws):
        q = p if rows is None else p[rng.integers(0, len(p), rows)]
        u = rng.random((len(q), 1))
        y = np.minimum((u > np.cumsum(q, axis=1)).sum(axis=1), q.shape[1] - 1)
        values.append(ece(y, q))
    return float(np.mean(values)), float(np.percentile(values, 95)), float(np.mean(np.asarray(values) > 0.03))


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
    found = fit_calibration(oof, kind, y)
    calibration_s = time.perf_counter() - started
    T = fit_temperature(oof, kind, y)
    raw, _ = raw_scores(model, Xv)
    before, former = apply_temperature(raw, kind, 1.0), apply_temperature(raw, kind, T)
    after = apply_calibration(raw, kind, found)
    plain = apply_calibration(raw, kind, fit_calibration(oof, kind, y, smooth=False))  # before Platt's targets
    lo, hi = bootstrap(yv, after)
    mean_chance, p95_chance = chance(after)
    crossed, _ = cross_fitted(oof, kind, y, fold_of)
    before_oof = apply_calibration(oof, kind, None)
    left_out = no_gain(y, before_oof, crossed)  # the check by Platt's targets, tried and not adopted
    checked = before if left_out else after
    ce_before, ce_crossed = (platt_cross_entropy(y, p) for p in (before_oof, crossed))
    choice = f"{'left out' if left_out else 'calibrated'} ({ce_before:.4f} uncal. / {ce_crossed:.4f})"
    acc_before, acc_after = (before.argmax(1) == yv).mean(), (after.argmax(1) == yv).mean()
    over = after.max(axis=1).mean() - acc_after
    return (
        f"| {name} | {spec} | {len(y)} / {len(yv)} | {kind} | {T:.3f} | {found['temperature']:.3f}, "
        f"{found['margin_power']:+.2f} | {ece(yv, before):.4f} | {ece(yv, former):.4f} "
        f"| **{ece(yv, after):.4f}** [{lo:.4f}, {hi:.4f}] | {mean_chance:.4f} / {p95_chance:.4f} | {over:+.4f} "
        f"| {log_loss(yv, before):.4f} / {log_loss(yv, former):.4f} / {log_loss(yv, after):.4f} "
        f"| {ece(yv, plain):.4f}, {log_loss(yv, plain):.4f} "
        f"| {100 * acc_before:.2f} / {100 * acc_after:.2f} "
        f"| {ece(y, apply_temperature(oof, kind, 1.0)):.4f} / {ece(y, crossed):.4f} "
        f"| {fit_s:.1f} / {calibration_s:.1f} ({calibration_s / max(fit_s, 1e-9):.1f}×) "
        f"| {choice}: {ece(yv, checked):.4f}, {log_loss(yv, checked):.4f} |"
    )


def fit_vector(z: np.ndarray, y: np.ndarray, penalty: float = 0.01):
    """Vector scaling: ``softmax(z * a + b)`` with ``a``, ``b`` per class, by log-loss plus ``penalty`` times the
    scales' spread and the shifts' squares; the function it fits."""
    k, rows = z.shape[1], np.arange(len(y))

    def loss(theta):
        a, b = theta[:k], theta[k:]
        s = z * a + b
        s = s - s.max(axis=1, keepdims=True)
        lse = np.log(np.exp(s).sum(axis=1))
        g = np.exp(s - lse[:, None])
        g[rows, y] -= 1
        g /= len(y)
        value = np.mean(lse - s[rows, y]) + penalty * (np.sum((a - a.mean()) ** 2) + np.sum(b**2))
        return value, np.concatenate([(g * z).sum(0) + 2 * penalty * (a - a.mean()), g.sum(0) + 2 * penalty * b])

    found = minimize(loss, np.concatenate([np.ones(k), np.zeros(k)]), jac=True, method="L-BFGS-B").x
    return lambda zz: softmax(zz * found[:k] + found[k:])


CANDIDATES = (
    "temperature (former default)",
    "none",
    "inner models, a temperature each",
    "inner models, one temperature",
    "refit at C x (k-1)/k",
    "vector scaling",
    "margin temperature (default)",
)


def candidates(pipeline, XA, yA, XB, seed: int) -> dict[str, np.ndarray]:
    """Every candidate's probabilities on ``XB`` from what ``train`` fits on ``XA, yA`` (inner folds seeded)."""
    n_classes = int(yA.max()) + 1
    full = clone(pipeline).fit(XA, yA)
    raw, kind = raw_scores(full, XB)
    k = inner_fold_count(yA, FOLDS)
    oof, fold_of, inner = np.zeros((len(yA), n_classes)), np.zeros(len(yA), dtype=np.int64), []
    for i, (train, test) in enumerate(inner_splits(XA, yA, None, k, seed)):
        model = fit_grouped(clone(pipeline), XA[train], yA[train], None)
        values, kind = raw_scores(model, XA[test])
        oof[test], fold_of[test] = placed(values, kind, model.classes_, n_classes), i
        inner.append(placed(raw_scores(model, XB)[0], kind, model.classes_, n_classes))
    T = fit_temperature(oof, kind, yA)
    each = [fit_temperature(oof[fold_of == i], kind, yA[fold_of == i]) for i in range(k)]
    out = {
        CANDIDATES[0]: apply_temperature(raw, kind, T),
        CANDIDATES[1]: apply_temperature(raw, kind, 1.0),
        CANDIDATES[2]: np.mean([apply_temperature(v, kind, t) for v, t in zip(inner, each)], axis=0),
        CANDIDATES[3]: np.mean([apply_temperature(v, kind, T) for v in inner], axis=0),
        CANDIDATES[5]: fit_vector(logits(oof, kind), yA)(logits(raw, kind)),
        CANDIDATES[6]: apply_calibration(raw, kind, fit_calibration(oof, kind, yA)),
    }
    clf = full.named_steps["clf"]
    if getattr(clf, "C_", None) is not None:
        scaled = clone(pipeline).set_params(clf__C=float(clf.C_) * (k - 1) / k).fit(XA, yA)
        out[CANDIDATES[4]] = apply_temperature(raw_scores(scaled, XB)[0], kind, T)
    return out


def nested(name: str, train: str, val: str, spec: str, layer: str | None, repeats: int) -> list[str]:
    """The candidates on train/ alone: ``repeats`` seeded 5-fold outer splits (see the module's docstring)."""
    X, y, _ = embedder.load(train, layer=layer)
    y = np.searchsorted(np.unique(y), np.asarray(y))
    pipeline = make_classifier(spec, seed=0)
    found: dict[str, list] = {}
    pooled_temperature = []
    for r in range(repeats):
        pooled, per_fold = {}, {}
        for A, B in StratifiedKFold(FOLDS, shuffle=True, random_state=r).split(X, y):
            for method, p in candidates(pipeline, X[A], y[A], X[B], seed=r).items():
                pooled.setdefault(method, np.zeros((len(y), p.shape[1])))[B] = p
                per_fold.setdefault(method, []).append(ece(y[B], p))
        for method, p in pooled.items():
            right = (p.argmax(axis=1) == y).mean()
            found.setdefault(method, []).append(
                (ece(y, p), log_loss(y, p), p.max(axis=1).mean() - right, np.mean(per_fold[method]), right)
            )
        pooled_temperature.append(pooled[CANDIDATES[0]])
        print(f"  {name} {spec} repeat {r + 1}/{repeats} done", flush=True)
    base = np.array(found[CANDIDATES[0]])
    lines = []
    for method in (m for m in CANDIDATES[-1:] + CANDIDATES[:-1] if m in found):
        v = np.array(found[method])
        d = v[:, 0] - base[:, 0]
        lines.append(
            f"| {name} | {spec} | {method} | {v[:, 0].mean():.4f} ({v[:, 0].std():.4f}) "
            f"| {d.mean():+.4f} ({d.std():.4f}) | {v[:, 3].mean():.4f} | {v[:, 1].mean():.4f} "
            f"| {v[:, 2].mean():+.4f} | {100 * v[:, 4].mean():.2f} |"
        )
    p = np.vstack(pooled_temperature)
    val_rows = len(embedder.load(val, layer=layer)[1])  # its row count only
    said = []
    for rows in (len(y), len(y) // FOLDS, val_rows):
        mean, p95, above = chance_values(p, rows=rows)
        said.append(f"{rows} rows {mean:.4f} / {p95:.4f} (above 0.03: {100 * above:.0f} %)")
    lines.append(f"| {name} | {spec} | *chance* (mean / 95th pct) | {'; '.join(said)} | | | | | |")
    return lines


def no_gain(y: np.ndarray, before: np.ndarray, crossed: np.ndarray, smooth: bool = True) -> bool:
    """A check tried on 2026-12-07 (not adopted; RESULTS.md): leave the calibration out where the out-of-fold rows,
    each inner fold calibrated by a fit on the others (``crossed``), score no better than uncalibrated
    (``before``): by the labels' log-loss (``smooth=False``) or the cross-entropy to Platt's targets."""
    return platt_cross_entropy(y, crossed, smooth) >= platt_cross_entropy(y, before, smooth)


def platt_cross_entropy(y: np.ndarray, p: np.ndarray, smooth: bool = True) -> float:
    """The mean cross-entropy of ``p`` to Platt's targets (``smooth=False``: the labels' log-loss)."""
    targets = platt_targets(y, p.shape[1], smooth)
    return float(-(targets * np.log(np.clip(p, 1e-15, None))).sum(axis=1).mean())


def few(name: str, train: str, val: str, specs, layer: str | None, shots: list[int], draws: int) -> list[str]:
    """``--few``: what ``train`` does on k random labelled images per class of train/ (seeded draws), its
    calibration fit to Platt's targets and to the labels themselves (before), and the check that leaves it out
    (by the labels' log-loss, or by the cross-entropy to Platt's targets), each scored on the rest of train/ (the
    rows not drawn: to choose on) and on val/ (once per draw)."""
    X, y, _ = embedder.load(train, layer=layer)
    Xv, yv, _ = embedder.load(val, layer=layer)
    classes = np.unique(y)
    y, yv = np.searchsorted(classes, np.asarray(y)), np.searchsorted(classes, np.asarray(yv))
    lines = []
    for k in shots:
        for spec in specs:
            cells: dict[str, dict[str, list[tuple[float, float]]]] = {m: {"rest": [], "val": []} for m in FEW_METHODS}
            for draw in range(draws):
                rng = np.random.default_rng(1000 * k + draw)
                rows = np.concatenate(
                    [rng.choice(np.flatnonzero(y == c), k, replace=False) for c in range(len(classes))]
                )
                model = make_classifier(spec, seed=0).fit(X[rows], y[rows])
                oof, kind, fold_of = out_of_fold(model, X[rows], y[rows], seed=0, folds=FOLDS)
                # the rest of train/ is the unlabeled pool train would check the scale on (at most 2,000 rows)
                rest = np.setdiff1d(np.arange(len(y)), rows)
                unseen = X[rest[np.linspace(0, len(rest) - 1, min(UNSEEN, len(rest))).astype(np.int64)]]
                platt = None if scale_mismatch(model, unseen, oof, kind) else fit_calibration(oof, kind, y[rows])
                crossed, _ = cross_fitted(oof, kind, y[rows], fold_of)
                before = apply_calibration(oof, kind, None)
                found = {
                    "none": None,
                    "labels": fit_calibration(oof, kind, y[rows], smooth=False),
                    "platt": platt,
                    "check-labels": None if no_gain(y[rows], before, crossed, smooth=False) else platt,
                    "check-platt": None if no_gain(y[rows], before, crossed) else platt,
                }
                for where, (Xs, ys) in (("rest", (X[rest], y[rest])), ("val", (Xv, yv))):
                    raw, _ = raw_scores(model, Xs)
                    for method in FEW_METHODS:
                        p = apply_calibration(raw, kind, found[method])
                        cells[method][where].append((log_loss(ys, p), ece(ys, p)))
            for where in ("rest", "val"):
                said = []
                for method in FEW_METHODS:
                    values = np.asarray(cells[method][where])
                    said.append(
                        f"{values[:, 0].mean():.3f} (worst {values[:, 0].max():.2f}) | {values[:, 1].mean():.3f}"
                    )
                lines.append(f"| {name} | {where} | {k} | {spec} | " + " | ".join(said) + " |")
                print(lines[-1], flush=True)
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs=3, action="append", metavar=("NAME", "TRAIN_CACHE", "VAL_CACHE"), required=True)
    parser.add_argument("--classifier", "-c", action="append", default=None, help=f"zoo specs (default: {SPECS})")
    parser.add_argument("--layer", default=None)
    parser.add_argument("--nested", type=int, default=0, metavar="REPEATS", help="choose on train/ alone (above)")
    parser.add_argument("--few", default=None, metavar="K,K", help="labelled images per class: random draws (above)")
    parser.add_argument("--draws", type=int, default=10, help="--few: seeded draws per k")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; {FOLDS} calibration folds\n")
    if args.few:
        shots = [int(k) for k in args.few.split(",")]
        print(
            f"| data | scored on | per class | classifier | log-loss: uncalibrated (worst of {args.draws}) | ECE "
            "| fit to the labels (before) | ECE | Platt's targets and the scale check | ECE "
            "| and the check by the labels' log-loss | ECE | and the check by Platt's targets | ECE |"
        )
        print("|---|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
        for name, train, val in args.data:
            few(name, train, val, args.classifier or FEW_SPECS, args.layer, shots, args.draws)
        print(f"load average {os.getloadavg()[0]:.1f} after")
        return
    if args.nested:
        rows = []
        for name, train, val in args.data:
            for spec in args.classifier or SPECS[:2]:
                rows += nested(name, train, val, spec, args.layer, args.nested)
        print(
            f"\n| data | classifier | method | ECE, outer folds pooled: mean (sd) over {args.nested} repeats "
            "| vs temperature, paired: mean (sd) | ECE of one outer fold | log-loss | confidence - accuracy "
            "| accuracy % |"
        )
        print("|---|---|---|--:|--:|--:|--:|--:|--:|")
        print("\n".join(rows))
        print(f"load average {os.getloadavg()[0]:.1f} after")
        return
    print(
        "| data | classifier | train / val rows | calibrated from | one temperature (former) "
        "| margin temperature: T, q (default) | val/ ECE uncalibrated | val/ ECE, one temperature "
        "| val/ ECE, margin temperature [95 % bootstrap] | chance ECE at these confidences (mean / 95th pct) "
        "| val/ confidence - accuracy | val/ log-loss uncal. / one T / margin T "
        "| margin T fit to the labels (before Platt's targets): val/ ECE, log-loss | val/ accuracy % uncal. / cal. "
        "| train/ out-of-fold ECE uncal. / cross-fitted | seconds: fit / 5 calibration fits "
        "| the check by Platt's targets, not adopted: its choice (out-of-fold cross-entropy to Platt's targets, "
        "uncal. / cross-fitted): val/ ECE, log-loss |"
    )
    print("|---|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for name, train, val in args.data:
        for spec in args.classifier or SPECS:
            print(measure(name, train, val, spec, args.layer), flush=True)


if __name__ == "__main__":
    main()
