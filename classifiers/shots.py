"""How many labels are enough: a learning curve over labelled images per class, on cross-validation's own folds.

For each number of shots k and each of ``draws`` seeded draws, k labelled images of each class are drawn from each
fold's training rows (all of a class where it has fewer), the classifier is fit on them alone (with unlabeled rows:
the fold's other training rows, their labels hidden, and the cache's unlabeled rows join as unlabeled), and it is
scored on that fold's held-out rows, the same rows plain ``cv`` scores on. A draw's score is the mean over the
folds; a point is the mean and spread (population std) over the draws. ``all`` is the run itself: every labelled
training row, the leaderboard's numbers (the std there is over folds).

The draws depend on the seed, k, the draw and the fold only: every classifier is scored on the same draws, so
their curves are paired. Where the curve still rises at its largest k, a power law of the error,
``error(k) = b k^-c``, fitted through its points in log-log space, gives what 2k labels per class would reach:
a projection, marked as one, never a measurement.
"""

from __future__ import annotations

import numpy as np
from joblib import delayed
from sklearn.base import clone

from embedder.kernel.errors import InvalidValue

from .folds import fallbacks, fit_grouped
from .metrics import answers, scores
from .parallel import side_by_side
from .semi import UNLABELED

ALL = "all"
RISING = 0.005  # the last step of the curve must gain more than half a point for a projection


def parse_shots(value) -> list:
    """``"1,2,5,all"`` (or a list) → ``[1, 2, 5, "all"]``: whole numbers of 1 or more, each once, ascending, and
    ``all`` last when given."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list = []
    for item in (str(i).strip().lower() for i in items):
        if not item:
            continue
        if item == ALL:
            out.append(ALL)
            continue
        try:
            k = int(item)
        except ValueError:
            k = 0
        if k < 1:
            raise InvalidValue(f"--shots {value!r}: give whole numbers of labelled images per class (1 or more) or all")
        out.append(k)
    numbers = sorted({k for k in out if k != ALL})
    if not out:
        raise InvalidValue("--shots: give at least one number of labelled images per class, e.g. 1,2,5,all")
    return numbers + ([ALL] if ALL in out else [])


def usable_shots(shots: list, y: np.ndarray, splits, n_classes: int) -> tuple[list, dict, float]:
    """The ``shots`` worth drawing on these folds, what to say of the others, and the fewest labelled images a class
    has in a training fold (no projection reaches that many: some class could not be drawn at it). A k at or above the most labelled images any class has in any
    training fold draws every labelled row of every fold: the full run (``all``) again, each draw the same;
    left out, said once. A k above what some class has in some fold takes all of that class there: kept, said.
    Returns (shots, {k: note, None: a note of the whole curve}, fewest per class); every k left out is one line
    when nothing is left."""
    counts = np.array([np.bincount(y[s.train], minlength=n_classes) for s in splits])
    most, least = int(counts.max()), int(counts.min())
    kept = [k for k in shots if k == ALL or k < most]
    beyond = [k for k in shots if k != ALL and k >= most]
    notes: dict = {}
    if beyond and not [k for k in kept if k != ALL] and ALL not in kept:
        raise InvalidValue(
            f"--shots {','.join(map(str, beyond))}: a class has at most {most} labelled image(s) in a training fold, "
            f"so every draw would be the whole fold: give fewer per class, or all"
        )
    for k in kept:
        if k != ALL and k > least:
            notes[k] = f"k={k}: a class has {least} labelled image(s) in some training fold; there it is drawn whole"
    if beyond:  # a note of the whole curve: on its last row
        notes[None] = (
            f"k={', '.join(map(str, beyond))} left out: no class has more than {most} labelled image(s) in a training "
            f"fold, so every draw would be the full run" + (" (the all column)" if ALL in shots else "")
        )
    return kept, notes, float(least)


def draw_rows(train: np.ndarray, y: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k of the rows ``train`` of each class (all of a class with fewer), drawn without replacement, sorted."""
    picked = []
    for c in np.unique(y[train]):
        rows = train[y[train] == c]
        picked.append(rng.choice(rows, min(k, len(rows)), replace=False))
    return np.sort(np.concatenate(picked))


def learning_curve(
    estimator,
    X,
    y,
    groups,
    splits,
    n_classes: int,
    shots: list,
    draws: int,
    seed: int,
    free=None,
    metric=None,
    jobs: int = 1,
) -> list[dict]:
    """Per number of shots (``all`` left to the caller): ``{shots, draws, scores, notes}``, ``scores`` being each
    draw's mean over the folds of ``metric`` (default: balanced accuracy), ``notes`` the fits' fallbacks. ``free``:
    unlabeled rows, for an estimator that takes them (``semi.SemiSupervised``, label -1); the fold's training rows
    not drawn join them. ``jobs``: fits side by side (``parallel.side_by_side``); each draw is seeded by its place,
    so the curve is the same whatever it is."""
    metric = metric or "balanced_accuracy"
    if draws < 1:
        raise InvalidValue("--draws must be at least 1")
    ks = [k for k in shots if k != ALL]
    places = [(k, d, i) for k in ks for d in range(draws) for i in range(len(splits))]
    tasks = (
        delayed(_draw_fit)(estimator, X, y, groups, splits[i], n_classes, k, [seed, k, d, i], free, metric)
        for k, d, i in places
    )
    fitted = dict(zip(places, side_by_side(tasks, jobs)))
    out = []
    for k in ks:
        per_draw, notes = [], []
        for d in range(draws):
            fold_scores = []
            for i in range(len(splits)):
                score, said = fitted[(k, d, i)]
                notes += [n for n in said if n not in notes]
                fold_scores.append(score)
            per_draw.append(float(np.mean(fold_scores)))
        out.append({"shots": k, "draws": draws, "scores": per_draw, "notes": notes})
    return out


def _draw_fit(estimator, X, y, groups, split, n_classes: int, k: int, seed: list, free, metric: str):
    """One draw of ``k`` labelled rows per class from a fold's training rows, fitted and scored on its test rows:
    the score (nan where the metric is undefined) and the fit's fallbacks."""
    rows = draw_rows(split.train, y, k, np.random.default_rng(seed))
    X_fit, y_fit = X[rows], y[rows]
    g_fit = None if groups is None else groups[rows]
    if free is not None:
        rest = np.setdiff1d(split.train, rows)
        X_fit = np.vstack([X_fit, X[rest], free])
        y_fit = np.concatenate([y_fit, np.full(len(rest) + len(free), UNLABELED, dtype=y.dtype)])
        g_fit = None if g_fit is None else np.concatenate([g_fit, np.full(len(rest) + len(free), "")])
    model = fit_grouped(clone(estimator), X_fit, y_fit, g_fit)
    pred = answers(model, X[split.test])
    score = scores(y[split.test], pred, None, n_classes)[metric]
    return float("nan") if score is None else float(score), fallbacks(model)


def projection(points: list[tuple[int, float]]) -> tuple[int, float] | None:
    """(2k, projected score) from the curve's (k, mean score) points, where it still rises at its largest k: the
    power law ``1 - score = b k^-c`` fitted by least squares in log-log space; None where it does not rise, where
    fewer than 2 points, or where the fit does not decrease."""
    points = sorted((k, s) for k, s in points if s is not None)
    if len(points) < 2 or points[-1][1] - points[-2][1] <= RISING:
        return None
    k = np.log([p[0] for p in points])
    err = np.log(np.clip([1.0 - p[1] for p in points], 1e-6, None))
    slope, intercept = np.polyfit(k, err, 1)
    if slope >= 0:
        return None
    top = 2 * points[-1][0]
    return top, float(1.0 - np.exp(intercept + slope * np.log(top)))


def curve_rows(
    points: list[dict], result, shots: list, metric: str, notes: dict | None = None, full: float | None = None
) -> list[dict]:
    """``report.json``'s ``learning_curve`` rows of one result: ``{shots, classifier, layer, backbone, metric, mean,
    std, draws}`` per k (with ``usable_shots``' ``notes`` of that k), ``all`` from the result itself, and the
    projection (``"projection": true``) where the curve still rises, unless 2k is as many as some class has in a
    training fold (``full``, ``usable_shots``' fewest) or more: then a note instead (no projection beyond the labels there are; ``all``
    measures them)."""
    notes = notes or {}
    who = {"classifier": result.classifier, "layer": result.layer, "backbone": result.backbone, "metric": metric}
    rows = [
        {
            "shots": p["shots"],
            **who,
            "mean": round(float(np.mean(p["scores"])), 4),
            "std": round(float(np.std(p["scores"])), 4),
            "draws": p["draws"],
            **(
                {"notes": [*([notes[p["shots"]]] if p["shots"] in notes else []), *p.get("notes", [])]}
                if p.get("notes") or p["shots"] in notes
                else {}
            ),
        }
        for p in points
    ]
    if ALL in shots:
        m = result.metric(metric)
        rows.append({"shots": ALL, **who, "mean": m["mean"], "std": m["std"], "draws": 1})
    if None in notes and rows:
        rows[-1].setdefault("notes", []).append(notes[None])
    projected = projection([(r["shots"], r["mean"]) for r in rows if r["shots"] != ALL])
    if projected is not None and full is not None and projected[0] >= full:  # beyond the labels there are
        rows[-1].setdefault("notes", []).append(
            f"no projection to k={projected[0]}: a class has {full:.0f} labelled image(s) in some training fold"
            + (", and the full run (all) measures them" if ALL in shots else " (--shots ...,all measures them)")
        )
        projected = None
    if projected is not None:
        rows.append(
            {"shots": projected[0], **who, "mean": round(projected[1], 4), "std": None, "draws": 0, "projection": True}
        )
    return rows


__all__ = ["ALL", "curve_rows", "draw_rows", "learning_curve", "parse_shots", "projection", "usable_shots"]
