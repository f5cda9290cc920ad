"""The tuned linear probe: what its sweep of C costs, in single fits, and how well it chooses C on held-out images.

**Cost** (``--rows``, and every ``--data`` train cache): the zoo's ``TunedLogisticRegression`` (C over 1e-4 … 10 on
3 inner folds, one held-out third from 6,000 rows, then the refit) against one scikit-learn ``LogisticRegression``
at the C it chose (same rows, standardized as the zoo's pipeline does, same tolerance 1e-4, cold), both timed in
this process. The rows of ``--rows N`` are synthetic (class means plus unit noise, 1,280-d float32, 10 classes, the
settings of ``cv_scale.py``). The machine may be shared: each pair is timed as CPU seconds with BLAS on one thread
(what another job's load changes least; each the median of 5 runs below 100,000 rows, the former sweep's too, after
one untimed fit of each kind on a few rows and a pause of a second, before the size's runs on every core), then as
wall seconds with BLAS on every core.
``--compare`` times the sweep this one replaced (scikit-learn's ``LogisticRegression`` warm-started along the path
on each inner fold, the same choice rule) the same way, in CPU seconds.

**Choice** (``--data NAME TRAIN_CACHE VAL_CACHE``): the zoo's ``logreg`` pipeline fit on train/ and scored once on
val/, with C chosen on inner folds of train/ by
- the default: 3 inner folds, the lowest mean log-loss;
- 5 inner folds, the lowest mean log-loss;
- the one-standard-error rule on the default's folds: the strongest regularization whose mean is within one standard
  error (over the folds) of the lowest;
- the average of the best three: the geometric mean of the three values of C with the lowest mean log-loss;
against C = 0.1 (the former fixed default) and the best C in hindsight, each grid value scored on val/: a ceiling,
not a result, since it was chosen on the images it is scored on.

**Calibration** (with ``--data``): the default probe's expected calibration error (top label, 15 equal-width bins)
out of fold on train/ (5 folds, the probe tuned in each) and on val/, then with one temperature fitted on those
out-of-fold scores (log-loss) and applied to val/: what temperature scaling would give; the probe itself is unchanged.

    python benchmarks/linear_probe.py --rows 1000 20000 \\
        --data hymenoptera cache/probe/hymenoptera-train.h5 cache/probe/hymenoptera-val.h5 \\
        --data flowers cache/probe/flowers-train.h5 cache/probe/flowers-val.h5
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

import embedder
from classifiers.linear import DEFAULT_CS, HOLDOUT_FROM, TunedLogisticRegression
from classifiers.registry import BlockedScaler
from classifiers.zoo import make_classifier

DIM, CLASSES, SEPARATION = 1280, 10, 0.06  # cv_scale.py's synthetic rows
REPEATS = 5  # timed runs below 100,000 rows (the median is reported)
SETTLE = 1.0  # seconds of pause before CPU timings, for threads left by a run on every core to go idle


def synthetic(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    means = (SEPARATION * rng.standard_normal((CLASSES, DIM))).astype(np.float32)
    y = rng.integers(0, CLASSES, rows)
    X = rng.standard_normal((rows, DIM), dtype=np.float32)
    for start in range(0, rows, 50_000):  # without a second rows-sized array
        X[start : start + 50_000] += means[y[start : start + 50_000]]
    return X, y


def former(X: np.ndarray, y: np.ndarray) -> float:
    """The sweep this module replaced, for comparison: per inner fold (one held-out third from 6,000 rows), a
    scikit-learn ``LogisticRegression`` warm-started from one C to the next (tol 1e-4), stopped two values past the
    best mean log-loss, then the refit warm-started from the chosen value's mean solution. Returns the C."""
    from classifiers.folds import inner_splits

    Cs, classes = sorted(DEFAULT_CS), np.unique(y)
    index = np.searchsorted(classes, y)
    splits = inner_splits(X, index, None, 3, 0)
    parts = splits[:1] if len(y) >= 6000 else splits
    models = [LogisticRegression(max_iter=2000, warm_start=True) for _ in parts]
    means, solutions = [], []
    for C in Cs:
        losses = []
        for model, (train, test) in zip(models, parts):
            model.set_params(C=C).fit(X[train], index[train])
            proba = model.predict_proba(X[test])
            losses.append(-np.mean(np.log(np.clip(proba[np.arange(len(test)), index[test]], 1e-15, None))))
        means.append(np.mean(losses))
        solutions.append((np.mean([m.coef_ for m in models], axis=0), np.mean([m.intercept_ for m in models], axis=0)))
        best = int(np.argmin(means))
        if len(means) - 1 - best >= 2:
            break
    refit = LogisticRegression(C=Cs[best], max_iter=2000, warm_start=True)
    refit.coef_, refit.intercept_ = solutions[best]
    refit.fit(X, index)
    return Cs[best]


def cpu_seconds(fit, repeats: int = 1, reset=None) -> tuple[object, float]:
    """The fitted model and its CPU seconds on one BLAS thread: the median of ``repeats`` runs. Timed after a pause
    (``SETTLE``; each size's CPU timings come before its own runs on every core): process time counts the whole
    process, and BLAS threads left spinning by a multi-threaded run were counted as the next single-threaded fit's
    (at 1,000 rows they doubled scikit-learn's 0.03 s). ``main`` fits both kinds once on a few rows first, so that
    neither pays for first-call set-up. ``reset()``, untimed, before each run."""
    time.sleep(SETTLE)
    runs = []
    with threadpool_limits(1):
        for _ in range(repeats):
            if reset is not None:
                reset()
            start = time.process_time()
            model = fit()
            runs.append(time.process_time() - start)
    return model, float(np.median(runs))


def wall_seconds(fit, reset=None) -> float:
    if reset is not None:
        reset()
    start = time.perf_counter()
    fit()
    return time.perf_counter() - start


def warm_up() -> None:
    """One fit of each kind on 200 synthetic rows, untimed: what a process pays once, not per fit."""
    X, y = synthetic(200, seed=1)
    with threadpool_limits(1):
        TunedLogisticRegression().fit(X, y)
        LogisticRegression(C=0.1, max_iter=2000).fit(X, y)


def cost(name: str, X: np.ndarray, y: np.ndarray, compare: bool) -> str:
    X = BlockedScaler(copy=False).fit_transform(X)  # the zoo pipeline's scale step
    # copy=False as in cv: from HOLDOUT_FROM rows the held-out split is reordered in the rows themselves (not in y),
    # so each tuned run there is given its own copy of the rows, made untimed (below it nothing is reordered);
    # the copy lives until this function returns
    rows = np.empty_like(X) if len(y) >= HOLDOUT_FROM else X
    fresh = (lambda: np.copyto(rows, X)) if rows is not X else None
    tuned_fit = lambda: TunedLogisticRegression(copy=False).fit(rows, y)  # noqa: E731
    repeats = REPEATS if len(y) < 100_000 else 1  # fits of seconds: the median of a few
    tuned, tuned_cpu = cpu_seconds(tuned_fit, repeats, reset=fresh)
    C = tuned.C_
    single = lambda: LogisticRegression(C=C, max_iter=2000).fit(X, y)  # noqa: E731
    plain, plain_cpu = cpu_seconds(single, repeats)
    old = ""
    if compare:
        old_C, old_cpu = cpu_seconds(lambda: former(X, y), repeats)
        old = f" {old_cpu / plain_cpu:.2f} (C={old_C:.3g}) |"
    tuned_wall = wall_seconds(tuned_fit, reset=fresh)
    plain_wall = wall_seconds(single)
    iters = int(np.nansum(tuned.n_inner_iter_))
    return (
        f"| {name} | {len(y):,} | {C:.3g} | {plain.n_iter_[0]} | {iters} / {tuned.n_iter_[0]} "
        f"| {plain_cpu:.3f} / {tuned_cpu:.3f} | **{tuned_cpu / plain_cpu:.2f}** |{old} "
        f"{plain_wall:.3f} / {tuned_wall:.3f} | {tuned_wall / plain_wall:.2f} |"
    )


def choice(name: str, train: str, val: str, layer: str | None) -> str:
    X, y, _ = embedder.load(train, layer=layer)
    Xv, yv, _ = embedder.load(val, layer=layer)
    y, yv = np.asarray(y), np.asarray(yv)

    def score(spec: str) -> tuple[float, object]:
        pipe = make_classifier(spec).fit(X, y)
        return float(np.mean(pipe.predict(Xv) == yv)), pipe.named_steps["clf"]

    fixed, _ = score("logreg:C=0.1")
    default, clf = score("logreg")
    five, clf5 = score("logreg:inner_folds=5")
    Cs = np.array(sorted(DEFAULT_CS))
    scores = clf.cv_scores_
    ran = ~np.isnan(scores).any(axis=0)  # NaN where the sweep stopped before
    mean = np.where(ran, np.nan_to_num(scores).mean(axis=0), np.nan)
    best = int(np.nanargmin(mean))
    se = scores[:, best].std(ddof=1) / np.sqrt(scores.shape[0])
    one_se = float(Cs[int(np.flatnonzero(ran & (mean <= mean[best] + se))[0])])
    top3 = Cs[ran][np.argsort(mean[ran])[:3]]
    average = float(np.exp(np.mean(np.log(top3))))
    by_rule = {C: score(f"logreg:C={C!r}")[0] for C in (one_se, average)}
    hindsight = {C: score(f"logreg:C={float(C)!r}")[0] for C in Cs}
    best_C = max(hindsight, key=hindsight.get)
    return (
        f"| {name} | {len(y)} / {len(yv)} | {100 * fixed:.2f} | {100 * default:.2f} (C={clf.C_:.3g}) "
        f"| {100 * five:.2f} (C={clf5.C_:.3g}) | {100 * by_rule[one_se]:.2f} (C={one_se:.3g}) "
        f"| {100 * by_rule[average]:.2f} (C={average:.3g}) | {100 * hindsight[best_C]:.2f} (C={best_C:.3g}) "
        f"| {100 * (hindsight[best_C] - default):+.2f} |"
    )


def ece(proba: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error of the top label: equal-width confidence bins, |accuracy - confidence| weighted
    by the bin's share of the rows."""
    confidence, right = proba.max(axis=1), proba.argmax(axis=1) == y
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    return float(
        sum(abs(right[which == b].mean() - confidence[which == b].mean()) * np.mean(which == b) for b in set(which))
    )


def softmax_logits(pipe, X) -> np.ndarray:
    z = np.asarray(pipe.decision_function(X), dtype=np.float64)
    return np.stack([np.zeros_like(z), z], axis=1) if z.ndim == 1 else z  # binary: [0, s] gives its probabilities


def tempered(z: np.ndarray, T: float) -> np.ndarray:
    z = z / T - (z / T).max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def calibration(name: str, train: str, val: str, layer: str | None) -> str:
    """The default probe's held-out ECE as it is, and with one temperature fitted on 5-fold out-of-fold scores of
    train/ (the probe tuned again in each fold): what temperature scaling would give, measured, not a feature."""
    from scipy.optimize import minimize_scalar
    from sklearn.model_selection import StratifiedKFold

    X, y, _ = embedder.load(train, layer=layer)
    Xv, yv, _ = embedder.load(val, layer=layer)
    classes = np.unique(y)
    index, index_v = np.searchsorted(classes, np.asarray(y)), np.searchsorted(classes, np.asarray(yv))
    oof = np.zeros((len(index), len(classes)))
    for train_rows, test_rows in StratifiedKFold(5, shuffle=True, random_state=0).split(X, index):
        oof[test_rows] = softmax_logits(make_classifier("logreg").fit(X[train_rows], index[train_rows]), X[test_rows])

    def nll(T: float) -> float:
        return float(-np.mean(np.log(np.clip(tempered(oof, T)[np.arange(len(index)), index], 1e-15, None))))

    T = float(minimize_scalar(nll, bounds=(0.05, 20.0), method="bounded").x)
    z = softmax_logits(make_classifier("logreg").fit(X, index), Xv)
    before, after = tempered(z, 1.0), tempered(z, T)
    return (
        f"| {name} | {len(index)} / {len(index_v)} | {ece(tempered(oof, 1.0), index):.4f} | {ece(before, index_v):.4f} "
        f"| {T:.3f} | {ece(tempered(oof, T), index):.4f} | {ece(after, index_v):.4f} |"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="*", type=int, default=[1000, 20000], help="synthetic rows to time")
    parser.add_argument("--data", nargs=3, action="append", metavar=("NAME", "TRAIN_CACHE", "VAL_CACHE"), default=[])
    parser.add_argument("--layer", default=None)
    parser.add_argument("--no-choice", action="store_true", help="the cost table only")
    parser.add_argument("--compare", action="store_true", help="time the former sweep (scikit-learn's warm path) too")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n")
    warm_up()
    print(
        "| rows | n | chosen C | single fit: iterations | tuned: inner iterations (all folds) / refit "
        "| CPU s, 1 thread: single / tuned | tuned in single fits |"
        + (" former sweep in single fits |" if args.compare else "")
        + " wall s, all cores: single / tuned | ratio |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|" + ("--:|" if args.compare else "") + "--:|--:|")
    for rows in args.rows:
        print(cost("synthetic", *synthetic(rows), args.compare), flush=True)
    for name, train, _ in args.data:
        X, y, _ = embedder.load(train, layer=args.layer)
        print(cost(f"{name} train/", X, np.asarray(y), args.compare), flush=True)
    if args.no_choice or not args.data:
        return
    print(
        "\n| data | train / val rows | C = 0.1 (former default) | 3 inner folds (default) | 5 inner folds "
        "| one-standard-error rule | average of the best 3 | best C in hindsight (not a result) "
        "| default's gap to it (points) |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for name, train, val in args.data:
        print(choice(name, train, val, args.layer), flush=True)
    print(
        "\n| data | train / val rows | ECE out of fold (train/, 5 folds) | ECE on val/ | temperature (fit out of fold) "
        "| ECE out of fold, tempered (the rows it was fit on) | ECE on val/, tempered |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|")
    for name, train, val in args.data:
        print(calibration(name, train, val, args.layer), flush=True)


if __name__ == "__main__":
    main()
