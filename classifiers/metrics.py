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


def per_class(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict[str, dict[str, float]]:
    p, r, f, support = precision_recall_fscore_support(y_true, y_pred, labels=np.arange(len(classes)), zero_division=0)
    return {
        c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(support[i])}
        for i, c in enumerate(classes)
    }


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    return confusion_matrix(y_true, y_pred, labels=np.arange(n_classes))


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
