"""The numbers a reviewer asks for, computed one way for cross-validation folds, evaluation and fine-tuning."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    precision_recall_fscore_support,
)

METRICS = ("accuracy", "balanced_accuracy", "f1_macro", "log_loss")
ECE_BINS = 15  # equal-width bins of the top-label confidence (Guo et al., 2017)


def scores(y_true: np.ndarray, y_pred: np.ndarray, proba: np.ndarray | None, n_classes: int) -> dict[str, float | None]:
    """Accuracy, balanced accuracy, macro-F1 (as scikit-learn's scorers of those names compute them) and
    log-loss over all ``n_classes`` when there are probabilities (else None)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true": a fact of small folds
        out: dict[str, float | None] = {
            "accuracy": float(accuracy_score(y_true, y_pred)),
            "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
            "f1_macro": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        }
    out["log_loss"] = float(log_loss(y_true, proba, labels=np.arange(n_classes))) if proba is not None else None
    return out


def reliability(y_true: np.ndarray, proba: np.ndarray, bins: int = ECE_BINS) -> list[dict]:
    """The top-label reliability diagram: per equal-width bin of the predicted class's probability (``bins`` bins
    over [0, 1], the last one closed), how many rows fall in it, their mean confidence and their accuracy."""
    proba = np.asarray(proba, dtype=np.float64)
    y_true = np.asarray(y_true)
    confidence = proba.max(axis=1)
    right = (proba.argmax(axis=1) == y_true).astype(np.float64)
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    out = []
    for b in range(bins):
        rows = which == b
        n = int(rows.sum())
        out.append(
            {
                "low": b / bins,
                "high": (b + 1) / bins,
                "count": n,
                "confidence": float(confidence[rows].mean()) if n else None,
                "accuracy": float(right[rows].mean()) if n else None,
            }
        )
    return out


def ece(y_true: np.ndarray, proba: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label expected calibration error: over ``bins`` equal-width bins of the predicted class's probability,
    the row-weighted mean of |accuracy - mean confidence| (0: a "0.9" is right 90 % of the time)."""
    cells = reliability(y_true, proba, bins)
    n = sum(c["count"] for c in cells)
    if not n:
        return 0.0
    return float(sum(c["count"] * abs(c["accuracy"] - c["confidence"]) for c in cells if c["count"]) / n)


def chance_ece(proba: np.ndarray, draws: int = 200, seed: int = 0, bins: int = ECE_BINS) -> dict[str, float]:
    """How large the ECE of a perfectly calibrated model with these confidences is on this many rows, by chance
    alone: each row right with the probability of its top class, ``draws`` seeded draws; their mean and 95th
    percentile. On a few hundred rows it is 0.01 to 0.04: an ECE within it says nothing against the model."""
    confidence = np.asarray(proba, dtype=np.float64).max(axis=1)
    if not len(confidence):
        return {"mean": 0.0, "p95": 0.0}
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    said = np.bincount(which, weights=confidence, minlength=bins)
    rng = np.random.default_rng(seed)
    values = np.empty(draws)
    for i in range(draws):
        right = np.bincount(which, weights=(rng.random(len(confidence)) < confidence), minlength=bins)
        values[i] = np.abs(right - said).sum() / len(confidence)
    return {"mean": float(values.mean()), "p95": float(np.percentile(values, 95))}


def wilson(right: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The 95 % Wilson score interval of a proportion (``right`` of ``n``): where the accuracy on these images
    leaves the accuracy on images like them; unlike the normal one it stays within 0 and 1 and holds at 100 %."""
    if n == 0:
        return 0.0, 1.0
    p = right / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    lo, hi = (0.0 if right == 0 else centre - half), (1.0 if right == n else centre + half)  # exact at the ends
    return float(max(0.0, lo)), float(min(1.0, hi))


def per_class(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict[str, dict[str, float]]:
    p, r, f, support = precision_recall_fscore_support(y_true, y_pred, labels=np.arange(len(classes)), zero_division=0)
    return {
        c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(support[i])}
        for i, c in enumerate(classes)
    }


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    return confusion_matrix(y_true, y_pred, labels=np.arange(n_classes))


def answers(model, X: np.ndarray) -> np.ndarray:
    """The class a fitted model answers for each row: its most probable or, without probabilities, the one of its
    highest decision score, as ``evaluate``, ``predict`` and an exported file answer. (The RBF SVM's own
    ``predict`` counts libsvm's one-vs-one votes, which differ where votes tie.)"""
    if hasattr(model, "predict_proba") or not hasattr(model, "decision_function"):
        return np.asarray(model.predict(X))
    s = np.asarray(model.decision_function(X))
    return np.asarray(model.classes_)[(s > 0).astype(int) if s.ndim == 1 else s.argmax(axis=1)]


def full_proba(proba: np.ndarray, model_classes, n_classes: int) -> np.ndarray:
    """Probabilities over all classes when a model saw only some of them (a class missing from a fold)."""
    model_classes = np.asarray(model_classes)
    if len(model_classes) == n_classes and (model_classes == np.arange(n_classes)).all():
        return proba
    out = np.zeros((proba.shape[0], n_classes), dtype=proba.dtype)
    out[:, model_classes] = proba
    return out


def mean_std(values) -> dict[str, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None}
    return {"mean": float(np.mean(values)), "std": float(np.std(values))}
