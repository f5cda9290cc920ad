"""Calibrated probabilities for every zoo entry: one temperature, fit by log-loss on out-of-fold scores.

``train`` (unless ``calibrate=False``) fits the chosen pipeline on ``FOLDS`` inner folds of its training rows
(stratified, group-aware when the cache has groups; fewer folds when a class has fewer rows), collects each row's
out-of-fold scores, and finds the one temperature ``T`` that minimizes their log-loss; the model itself is then the
pipeline fit on every row, as without calibration (``CalibratedClassifierCV(method="temperature",
ensemble=False)``'s scheme; its ``beta`` is our ``1 / T``, fit the same way). The calibrated probabilities are
``softmax(z / T)`` with ``z`` the logits of the pipeline's own output:

- entries with probabilities (logreg, lda, knn, random-forest, ensemble): ``z = log(p + 1e-12)``, so that
  ``softmax(z / T)`` is ``p ** (1/T)`` renormalized (for a logistic regression, its logits divided by ``T``);
- entries with decision scores only (rbf-svm, linear-svm, ridge): ``z`` the decision scores, ``[-d, d]`` for two
  classes (a sigmoid of ``2d / T`` without intercept).

One positive factor on the logits never changes which class is largest: calibration changes no prediction, only
how sure each is said to be. It costs ``folds`` more fits of the pipeline. Where inner folds cannot be made (one
labelled image in a class), ``T = 1``: the entry's own probabilities, or a softmax of its decision scores, said to
be uncalibrated.
"""

from __future__ import annotations

import time

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.base import clone

from .folds import fit_grouped, inner_fold_count, inner_splits, too_few_for_inner_folds
from .metrics import ece, full_proba

FOLDS = 5  # inner folds of the training rows, as CalibratedClassifierCV's default
EPS = 1e-12  # log(p + EPS): scikit-learn's temperature scaling's
PROBABILITY, DECISION = "probability", "decision"


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


def fit_temperature(values: np.ndarray, kind: str, y: np.ndarray) -> float:
    """The temperature whose probabilities have the lowest log-loss on these rows (``y``: column indices): a bounded
    search over ``log(1/T)`` in [-10, 10], as scikit-learn's ``_TemperatureScaling`` does."""
    z = logits(values, kind)
    rows = np.arange(len(y))
    y = np.asarray(y, dtype=np.int64)

    def loss(log_beta: float) -> float:
        s = np.exp(log_beta) * z
        s = s - s.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(s).sum(axis=1)) - s[rows, y]))

    found = minimize_scalar(loss, bounds=(-10.0, 10.0), method="bounded", options={"xatol": 64 * np.finfo(float).eps})
    return float(1.0 / np.exp(found.x))


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


def calibrate(pipeline, X, y, groups=None, *, seed: int = 0, folds: int = FOLDS) -> dict:
    """The temperature of ``pipeline`` (a fitted or unfitted zoo pipeline: clones of it are fit) on ``folds`` inner
    folds of ``X, y`` (class indices; ``groups``: a group stays on one side), as the model file records it:
    ``method`` (``temperature``, or ``none`` where inner folds cannot be made), ``input`` (``probability`` or
    ``decision``), ``temperature``, ``folds`` and ``fits`` (extra fits), ``seconds``, and the out-of-fold
    log-loss and ECE before and after (measured on the rows the temperature was fit on: not a held-out figure)."""
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
    temperature = fit_temperature(oof, kind, y)
    before, after = apply_temperature(oof, kind, 1.0), apply_temperature(oof, kind, temperature)
    rows = np.arange(len(y))
    return {
        "method": "temperature",
        "input": kind,
        "temperature": round(temperature, 6),
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
        },
        **({"note": f"{k} inner folds, not {folds}: {_fewer_folds(y, groups)}"} if k < folds else {}),
    }


def _fewer_folds(y: np.ndarray, groups) -> str:
    """Why fewer inner folds than asked: the smallest class's rows, or the groups' count."""
    smallest = int(np.bincount(np.asarray(y)).min())
    if groups is not None and len(set(np.asarray(groups).tolist())) <= smallest:
        return f"the rows come in {len(set(np.asarray(groups).tolist()))} groups"
    return f"the smallest class has {smallest} rows"


def out_of_fold(pipeline, X, y, groups=None, *, seed: int = 0, folds: int = FOLDS):
    """Every row's scores from a clone of ``pipeline`` fit on the other inner folds (``folds``, fewer when a class
    has fewer rows; group-aware with ``groups``): the scores over every class, their kind, and each row's fold."""
    y = np.asarray(y)
    n_classes = int(y.max()) + 1
    k = inner_fold_count(y, folds, groups)
    oof = np.zeros((len(y), n_classes))
    fold_of = np.zeros(len(y), dtype=np.int64)
    kind = PROBABILITY
    present = np.unique(y)
    for i, (train, test) in enumerate(inner_splits(X, y, groups, k, seed)):
        if len(np.unique(y[train])) < len(present):
            raise MissingClass("an inner fold's training rows lack a class (a class held by one group)")
        model = fit_grouped(clone(pipeline), X[train], y[train], None if groups is None else groups[train])
        values, kind = raw_scores(model, X[test])
        oof[test] = placed(values, kind, model.classes_, n_classes)
        fold_of[test] = i
    return oof, kind, fold_of


def cross_fitted(raw: np.ndarray, kind: str, y: np.ndarray, fold_of: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """Calibrated out-of-fold probabilities without a fit more: each outer fold's rows get the temperature fit on
    the out-of-fold scores of the other folds' rows (their labels only), so that no row's label chooses its own
    temperature. ``fold_of``: each row's fold. The probabilities and each fold's temperature."""
    out = np.zeros_like(raw, dtype=np.float64)
    temperatures = []
    for f in np.unique(fold_of):
        held = fold_of == f
        t = fit_temperature(raw[~held], kind, y[~held]) if (~held).any() else 1.0
        out[held] = apply_temperature(raw[held], kind, t)
        temperatures.append(round(t, 4))
    return out, temperatures
