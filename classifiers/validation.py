"""What the zoo's own estimators check before a fit, as scikit-learn's do: rows that are a 2-D array of finite
floats (integers become float64, float32 stays float32, a float array is never copied) and labels, one per row,
of at least two classes. One ``InvalidValue`` line (a ``ValueError``) before any work, where a NaN had given a NaN
mean and one class for every row, integer rows a wrong C, and one class an ``IndexError`` or rows of [0.5, 0.5]."""

from __future__ import annotations

import numpy as np
from sklearn.utils.validation import check_array, check_consistent_length, column_or_1d

from embedder.kernel.errors import InvalidValue, first_line


def checked_rows(X, who: str) -> np.ndarray:
    """``X`` as a 2-D float array with every value finite."""
    try:
        return check_array(X, dtype=(np.float64, np.float32), ensure_all_finite=True, copy=False)
    except ValueError as error:
        raise InvalidValue(f"{who}: {first_line(error)}") from None


def checked_labels(X, y, who: str, least: int = 2) -> np.ndarray:
    """``y`` as a 1-D array, one label per row of ``X``, of ``least`` classes or more (0: not counted; the
    unlabeled mark, -1, is the caller's: it would count here as a class)."""
    try:
        y = column_or_1d(y)
        check_consistent_length(X, y)
    except ValueError as error:
        raise InvalidValue(f"{who}: {first_line(error)}") from None
    if least < 1:
        return y
    classes = np.unique(y)
    if len(classes) < least:
        found = "no class" if not len(classes) else f"one class, '{classes[0]}'"
        raise InvalidValue(f"{who} needs labels of at least {least} classes; the rows have {found}")
    return y


def checked_fit(X, y, who: str) -> tuple[np.ndarray, np.ndarray]:
    """Both checks: the rows and their labels."""
    X = checked_rows(X, who)
    return X, checked_labels(X, y, who)


__all__ = ["checked_fit", "checked_labels", "checked_rows"]
