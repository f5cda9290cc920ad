"""Calibrated probabilities for every zoo entry: a temperature that follows each row's margin, fit by log-loss on
out-of-fold scores.

``train`` (unless ``calibrate=False``) fits the chosen pipeline on ``FOLDS`` inner folds of its training rows
(stratified, group-aware when the cache has groups; fewer folds when a class has fewer rows), collects each row's
out-of-fold scores, and fits the calibration on them by log-loss; the model itself is then the pipeline fit on every
row, as without calibration (``CalibratedClassifierCV(ensemble=False)``'s scheme). The calibrated probabilities are
``softmax(z * beta)`` with ``z`` the logits of the pipeline's own output and, per row,

    beta = (1 / T) * (clip(g, low, high) / g_median) ** q

``g`` the row's margin (its largest logit minus the second), ``low`` and ``high`` the smallest and largest margin of
the rows it was fit on, ``g_median`` their median: ``T`` is the temperature of a row with the median margin, and
``q`` (within ``[-MARGIN_POWER, MARGIN_POWER]``) lets rows of other margins get another one. ``q = 0`` is one
temperature (``method: temperature``, what version 3 model files hold); the search starts there, so the fit's log-loss
on those rows is never above one temperature's. Both are fit to Platt's targets (``platt_targets``: one row's doubt,
so that a few labelled images, all right out of fold, do not make it certain). Chosen over one temperature, over the mean of the inner folds'
models and over vector scaling by a nested check on train/ alone (``benchmarks/calibration.py --nested``).

- entries with probabilities (logreg, lda, knn, the trees, ensemble): ``z = log(p + 1e-12)``, so that with
  ``q = 0`` ``softmax(z / T)`` is ``p ** (1/T)`` renormalized (for a logistic regression, its logits divided by
  ``T``);
- entries with decision scores only (rbf-svm, linear-svm, ridge): ``z`` the decision scores, ``[-d, d]`` for two
  classes.

Each row's logits are multiplied by one positive factor, which never changes which class is largest: calibration
changes no prediction, only how sure each is said to be. It costs ``folds`` more fits of the pipeline. Where inner
folds cannot be made (one labelled image in a class), ``T = 1``: the entry's own probabilities, or a softmax of its
decision scores, said to be uncalibrated.
"""

from __future__ import annotations

import time

import numpy as np
from joblib import delayed
from scipy.optimize import minimize, minimize_scalar
from sklearn.base import clone
from sklearn.pipeline import Pipeline

from . import solver
from .cost import PROCESS, memory_bound
from .folds import fit_grouped, inner_fold_count, inner_splits, too_few_for_inner_folds
from .linear import TunedLogisticRegression
from .metrics import ece, full_proba
from .parallel import fold_jobs, side_by_side, within_memory

FOLDS = 5  # inner folds of the training rows, as CalibratedClassifierCV's default
EPS = 1e-12  # log(p + EPS): scikit-learn's temperature scaling's
PROBABILITY, DECISION = "probability", "decision"
TEMPERATURE, MARGIN = "temperature", "margin-temperature"  # the calibration's ``method`` in a model file
MARGIN_POWER = 0.5  # the largest |q|: a row's temperature goes at most with the square root of its margin
SMALLEST_MARGIN = 1e-6  # margins below this (ties) count as this
SCALE_GAP = 100.0  # inner folds' and the model's median margins this far apart: no calibration (scale_mismatch)


def raw_scores(model, X) -> tuple[np.ndarray, str]:
    """A fitted model's own output per row and class: probabilities when it has them, else decision scores (two
    classes as ``[-d, d]``), and which."""
    if hasattr(model, "predict_proba"):
        return np.asarray(model.predict_proba(X), dtype=np.float64), PROBABILITY
    s = np.asarray(model.decision_function(X), dtype=np.float64)
    return (np.column_stack([-s, s]) if s.ndim == 1 else s), DECISION


def logits(values: np.ndarray, kind: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    return np.log(values + EPS) if kind == PROBABILITY else values


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def apply_temperature(values: np.ndarray, kind: str, temperature: float) -> np.ndarray:
    """Probabilities from a model's own output (``raw_scores``) and a temperature: ``softmax(logits / T)``."""
    return softmax(logits(values, kind) / float(temperature))


def margins(z: np.ndarray) -> np.ndarray:
    """Each row's largest logit minus its second largest (0 for a single class), at least ``SMALLEST_MARGIN``."""
    z = np.asarray(z, dtype=np.float64)
    if z.shape[1] < 2:
        return np.full(len(z), SMALLEST_MARGIN)
    top = np.partition(z, z.shape[1] - 2, axis=1)[:, -2:]
    return np.maximum(top[:, 1] - top[:, 0], SMALLEST_MARGIN)


def row_scale(z: np.ndarray, calibration: dict) -> np.ndarray:
    """Each row's ``beta`` (the factor on its logits) under ``calibration`` (a model file's: ``temperature`` and,
    for ``margin-temperature``, ``margin_power``, ``margin_median`` and ``margin_range``)."""
    beta = np.full(len(z), 1.0 / float(calibration["temperature"]))
    q = float(calibration.get("margin_power") or 0.0)
    if q:
        low, high = calibration["margin_range"]
        beta = beta * (np.clip(margins(z), low, high) / float(calibration["margin_median"])) ** q
    return beta


def apply_calibration(values: np.ndarray, kind: str, calibration: dict | None) -> np.ndarray:
    """Probabilities from a model's own output (``raw_scores``) and its calibration (None: ``T = 1``)."""
    z = logits(values, kind)
    if calibration is None:
        return softmax(z)
    return softmax(z * row_scale(z, calibration)[:, None])


def fit_calibration(
    values: np.ndarray, kind: str, y: np.ndarray, power: float = MARGIN_POWER, smooth: bool = True
) -> dict:
    """The margin temperature of these rows (``y``: column indices) by log-loss: ``temperature`` and
    ``margin_power`` (``q`` within ``[-power, power]``; ``power = 0``: one temperature, ``method: temperature``),
    with the ``margin_median`` and ``margin_range`` of these rows. Fit to Platt's targets (``platt_targets``;
    ``smooth=False``: to the labels). Starts from one temperature (``fit_temperature``), so its loss here is never
    above that one's."""
    temperature = fit_temperature(values, kind, y, smooth)
    if power <= 0:
        return {"method": TEMPERATURE, "temperature": temperature}
    z = logits(values, kind)
    g = margins(z)
    median = float(np.median(g))
    log_g = np.log(g / median)
    targets = platt_targets(y, z.shape[1], smooth)
    target_z = (targets * z).sum(axis=1)

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        beta = np.exp(theta[0] + theta[1] * log_g)
        s = z * beta[:, None]
        s = s - s.max(axis=1, keepdims=True)
        e = np.exp(s)
        total = e.sum(axis=1)
        value = np.mean(np.log(total) - (targets * s).sum(axis=1))
        # d loss / d beta per row: E_p[z] - E_targets[z]; d beta / d theta = beta * (1, log g)
        slope = ((e * z).sum(axis=1) / total - target_z) * beta / len(y)
        return float(value), np.array([slope.sum(), (slope * log_g).sum()])

    start = np.array([-np.log(temperature), 0.0])
    found = minimize(loss, start, jac=True, method="L-BFGS-B", bounds=[(-10.0, 10.0), (-power, power)])
    theta = found.x if found.fun <= loss(start)[0] else start
    return {
        "method": MARGIN,
        "temperature": float(np.exp(-theta[0])),
        "margin_power": float(theta[1]),
        "margin_median": median,
        "margin_range": [float(g.min()), float(g.max())],
    }


def fit_temperature(values: np.ndarray, kind: str, y: np.ndarray, smooth: bool = True) -> float:
    """The temperature whose probabilities have the lowest log-loss on these rows (``y``: column indices), against
    Platt's targets (``platt_targets``; ``smooth=False``: the labels themselves, as scikit-learn's
    ``_TemperatureScaling``): a bounded search over ``log(1/T)`` in [-10, 10]."""
    z = logits(values, kind)
    targets = platt_targets(y, z.shape[1], smooth)

    def loss(log_beta: float) -> float:
        s = np.exp(log_beta) * z
        s = s - s.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(s).sum(axis=1)) - (targets * s).sum(axis=1)))

    found = minimize_scalar(loss, bounds=(-10.0, 10.0), method="bounded", options={"xatol": 64 * np.finfo(float).eps})
    return float(1.0 / np.exp(found.x))


def platt_targets(y: np.ndarray, n_classes: int, smooth: bool = True) -> np.ndarray:
    """What each row's probabilities are fit to (rows x classes): ``(n + 1) / (n + 2)`` on the row's class (``n``:
    the rows fit on) and the rest shared by the other classes, as Platt (1999) fits his sigmoid (scikit-learn's
    ``sigmoid`` calibration too, per class there). Laplace's rule of succession: after ``n`` rows all right, the
    next is right with probability ``(n + 1) / (n + 2)``, not 1. Without it, scores that put every row on the right
    side (a few labelled images, each right out of fold) drive the temperature to 0: certainty, and a log-loss
    without bound on the next image it gets wrong. One row's doubt in all: nothing at a few hundred rows.
    ``smooth=False``: the labels themselves (one-hot)."""
    y = np.asarray(y, dtype=np.int64)
    targets = np.zeros((len(y), n_classes))
    if not smooth or n_classes < 2:
        targets[np.arange(len(y)), y] = 1.0
        return targets
    own = (len(y) + 1.0) / (len(y) + 2.0)
    targets += (1.0 - own) / (n_classes - 1)
    targets[np.arange(len(y)), y] = own
    return targets


def placed(values: np.ndarray, kind: str, model_classes, n_classes: int) -> np.ndarray:
    """Scores over every class when an inner fold's model missed one: probability 0, or a decision score below
    every other."""
    if kind == PROBABILITY:
        return full_proba(values, model_classes, n_classes)
    model_classes = np.asarray(model_classes)
    if len(model_classes) == n_classes:
        return values
    out = np.full((len(values), n_classes), values.min() - 10.0)
    out[:, model_classes] = values
    return out


class MissingClass(ValueError):
    """An inner fold whose training rows lack a class: no temperature can be fit from those folds."""


def uncalibrated(kind: str, why: str) -> dict:
    """What a model file says when no temperature was fit: ``T = 1`` and why."""
    said = "its own probabilities" if kind == PROBABILITY else "a softmax of its decision scores"
    return {"method": "none", "input": kind, "temperature": 1.0, "fits": 0, "note": f"not calibrated ({why}): {said}"}


def calibrate(
    pipeline, X, y, groups=None, *, seed: int = 0, folds: int = FOLDS, power: float = MARGIN_POWER, unseen=None
) -> dict:
    """The calibration of ``pipeline`` (a fitted or unfitted zoo pipeline: clones of it are fit) on ``folds`` inner
    folds of ``X, y`` (class indices; ``groups``: a group stays on one side), as the model file records it:
    ``method`` (``margin-temperature``; ``temperature`` with ``power=0``; ``none`` where inner folds cannot be
    made), ``input`` (``probability`` or ``decision``), ``temperature`` and the margin's terms
    (``fit_calibration``), ``folds`` and ``fits`` (extra fits), ``seconds``, and the out-of-fold log-loss and ECE
    before and after (measured on the rows the calibration was fit on: not a held-out figure) and cross-fitted
    (``cross_fitted``: each fold's rows calibrated by a fit on the others, a figure no row's own label chose).
    ``unseen``: rows none of them is fit on (the cache's unlabeled rows), with ``pipeline`` fitted: where the model's
    scores on them are on another scale than the inner folds' (``scale_mismatch``), no calibration, and why."""
    kind = PROBABILITY if hasattr(pipeline, "predict_proba") else DECISION
    if kind == DECISION and not hasattr(pipeline, "decision_function"):  # a plug-in classifier with labels only
        return {
            "method": "none",
            "input": None,
            "temperature": 1.0,
            "fits": 0,
            "note": "not calibrated: the classifier gives neither probabilities nor decision scores",
        }
    why = too_few_for_inner_folds(y, groups)
    if why:
        return uncalibrated(kind, f"inner folds cannot be made: {why}")
    started = time.perf_counter()
    y = np.asarray(y)
    try:
        oof, kind, fold_of = out_of_fold(pipeline, X, y, groups, seed=seed, folds=folds)
    except MissingClass as exc:  # groups that hold a whole class: an inner fold has nothing of it to fit on
        return uncalibrated(kind, str(exc))
    k = int(fold_of.max()) + 1
    mismatch = scale_mismatch(pipeline, unseen, oof, kind)
    if mismatch:
        return uncalibrated(kind, mismatch)
    found = fit_calibration(oof, kind, y, power=power)
    before, after = apply_calibration(oof, kind, None), apply_calibration(oof, kind, found)
    crossed, _ = cross_fitted(oof, kind, y, fold_of, power)
    rows = np.arange(len(y))
    return {
        **found,
        "input": kind,
        "folds": k,
        "fits": k,
        "seconds": round(time.perf_counter() - started, 3),
        "out_of_fold": {
            "rows": int(len(y)),
            "log_loss_before": round(float(-np.log(np.clip(before[rows, y], 1e-15, None)).mean()), 4),
            "log_loss_after": round(float(-np.log(np.clip(after[rows, y], 1e-15, None)).mean()), 4),
            "ece_before": round(ece(y, before), 4),
            "ece_after": round(ece(y, after), 4),
            "measured_on": "the inner folds' out-of-fold rows the temperature was fit on (not held out)",
            "log_loss_cross_fitted": round(float(-np.log(np.clip(crossed[rows, y], 1e-15, None)).mean()), 4),
            "ece_cross_fitted": round(ece(y, crossed), 4),
            "cross_fitted": "each inner fold's rows calibrated by a fit on the other folds' (held out from it)",
        },
        **({"note": f"{k} inner folds, not {folds}: {_fewer_folds(y, groups)}"} if k < folds else {}),
    }


def scale_mismatch(pipeline, unseen, oof: np.ndarray, kind: str) -> str | None:
    """Why a calibration fit on the inner folds' out-of-fold scores would not carry over to ``pipeline`` (the model
    fit on every row), or None: its typical margin (median) on ``unseen`` rows (none of them fit on: the cache's
    unlabeled ones) and the inner models' on their held-out rows are ``SCALE_GAP`` times apart or more. On a few
    labelled images an entry can fit inner models of another regime than the model on every row (ridge's
    leave-one-out choosing its strongest penalty on one image per class: scores that barely vary, where the model
    on two per class spreads them 500 to 1,300 times wider; every other entry within 0.03 to 8 times on flowers and
    hymenoptera, 2 to 20 images per class); a temperature fit to blow up the first would make the second certain
    of everything. Margins on rows fit on are no guide (a kNN's own row is its nearest neighbour)."""
    if unseen is None or not len(unseen):
        return None
    own = margins(logits(placed(*raw_scores(pipeline, unseen), pipeline.classes_, oof.shape[1]), kind))
    inner = margins(logits(oof, kind))
    ratio = float(np.median(own) / np.median(inner))
    if 1.0 / SCALE_GAP < ratio < SCALE_GAP:
        return None
    return (
        f"the inner folds' models score on another scale than the model on every row (median margin "
        f"{float(np.median(inner)):.3g} out of fold, {float(np.median(own)):.3g} on unlabeled rows): a calibration "
        f"of the first would not carry over"
    )


def _fewer_folds(y: np.ndarray, groups) -> str:
    """Why fewer inner folds than asked: the smallest class's rows, or the groups' count."""
    smallest = int(np.bincount(np.asarray(y)).min())
    if groups is not None and len(set(np.asarray(groups).tolist())) <= smallest:
        return f"the rows come in {len(set(np.asarray(groups).tolist()))} groups"
    return f"the smallest class has {smallest} rows"


def out_of_fold(pipeline, X, y, groups=None, *, seed: int = 0, folds: int = FOLDS, jobs: int | None = None):
    """Every row's scores from a clone of ``pipeline`` fit on the other inner folds (``folds``, fewer when a class
    has fewer rows; group-aware with ``groups``): the scores over every class, their kind, and each row's fold.
    ``jobs``: inner folds fitted side by side (``parallel.side_by_side``); None: as many as the cores, fewer where
    their copies of the rows would take the process past ``cost.memory_bound`` of the rows."""
    y = np.asarray(y)
    n_classes = int(y.max()) + 1
    k = inner_fold_count(y, folds, groups)
    oof = np.zeros((len(y), n_classes))
    fold_of = np.zeros(len(y), dtype=np.int64)
    kind = PROBABILITY
    present = np.unique(y)
    splits = list(inner_splits(X, y, groups, k, seed))
    for train, _ in splits:
        if len(np.unique(y[train])) < len(present):
            raise MissingClass("an inner fold's training rows lack a class (a class held by one group)")
    if jobs is None:
        rows = float(np.asarray(X).nbytes)  # each fold copies (k - 1)/k of them; the pipeline's scaling about as much
        jobs = within_memory(fold_jobs(None, k), PROCESS + rows, 2 * rows * (k - 1) / k, memory_bound(rows))
        if _on_device(pipeline, X):  # the probe's solver on a CUDA device: one fit there at a time, as in cv
            jobs = 1
    tasks = (delayed(_inner_fit)(pipeline, X, y, groups, train, test, n_classes) for train, test in splits)
    for i, ((_, test), (scores_, kind_)) in enumerate(zip(splits, side_by_side(tasks, jobs))):
        oof[test], kind = scores_, kind_
        fold_of[test] = i
    return oof, kind, fold_of


def _on_device(pipeline, X) -> bool:
    """The pipeline ends in the tuned probe and its fits would run on a CUDA device (``solver.device_for``)."""
    final = pipeline.steps[-1][1] if isinstance(pipeline, Pipeline) else pipeline
    if not isinstance(final, TunedLogisticRegression):
        return False
    n, d = np.shape(X)
    return solver.device_for(int(n), int(d), float(np.asarray(X).nbytes)) is not None


def _inner_fit(pipeline, X, y, groups, train, test, n_classes: int):
    """A clone of ``pipeline`` fit on the ``train`` rows: the ``test`` rows' scores over every class, and their kind."""
    model = fit_grouped(clone(pipeline), X[train], y[train], None if groups is None else groups[train])
    values, kind = raw_scores(model, X[test])
    return placed(values, kind, model.classes_, n_classes), kind


def cross_fitted(
    raw: np.ndarray, kind: str, y: np.ndarray, fold_of: np.ndarray, power: float = MARGIN_POWER
) -> tuple[np.ndarray, list[dict]]:
    """Calibrated out-of-fold probabilities without a fit more: each outer fold's rows get the calibration
    (``fit_calibration``) fit on the out-of-fold scores of the other folds' rows (their labels only), so that no
    row's label chooses its own. ``fold_of``: each row's fold. The probabilities and each fold's ``temperature``
    and ``margin_power`` (1 and 0 where no other fold had rows)."""
    out = np.zeros_like(raw, dtype=np.float64)
    fits = []
    for f in np.unique(fold_of):
        held = fold_of == f
        found = fit_calibration(raw[~held], kind, y[~held], power) if (~held).any() else None
        out[held] = apply_calibration(raw[held], kind, found)
        fits.append(
            {
                "temperature": round(found["temperature"], 4) if found else 1.0,
                "margin_power": round(float(found.get("margin_power") or 0.0), 4) if found else 0.0,
            }
        )
    return out, fits
