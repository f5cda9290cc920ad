"""What the zoo's own estimators check before a fit, as scikit-learn's do: rows that are a 2-D array of finite
floats (integers become float64, float32 stays float32, a float array is never copied) and labels, one per row,
of at least two classes. One ``InvalidValue`` line (a ``ValueError``) before any work, where a NaN had given a NaN
mean and one class for every row, integer rows a wrong C, and one class an ``IndexError`` or rows of [0.5, 0.5]."""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_consistent_length, column_or_1d, validate_data

from embedder.kernel.errors import InvalidValue, first_line


def checked_rows(X, who: str, estimator=None, reset: bool = True) -> np.ndarray:
    """``X`` as a 2-D float array with every value finite. With ``estimator``, scikit-learn's ``validate_data`` on
    it: ``reset`` (a fit) records ``n_features_in_`` and a DataFrame's column names; otherwise (a predict) the
    rows must have as many features, and a DataFrame the same names, else scikit-learn's warning."""
    try:
        if estimator is None:
            return check_array(X, dtype=(np.float64, np.float32), ensure_all_finite=True, copy=False)
        return validate_data(
            estimator, X, reset=reset, dtype=(np.float64, np.float32), ensure_all_finite=True, copy=False
        )
    except ValueError as error:
        raise InvalidValue(f"{who}: {first_line(error)}") from None


def checked_labels(X, y, who: str, least: int = 2) -> np.ndarray:
    """``y`` as a 1-D array (a column is flattened), one label per row of ``X``, of ``least`` classes or more (0:
    not counted; the unlabeled mark, -1, is the caller's: it would count here as a class). Continuous values
    (0.5, 1.7, …) are refused, as scikit-learn's classifiers refuse them, not made a class each (with ``least`` 0,
    by the caller, on the labels other than the mark: ``classes``)."""
    try:
        y = column_or_1d(y)
        check_consistent_length(X, y)
        if least >= 1:  # with the unlabeled mark among text labels, the caller checks the others
            check_classification_targets(y)
    except ValueError as error:
        raise InvalidValue(f"{who}: {first_line(error)}") from None
    if least < 1:
        return y
    classes = np.unique(y)
    if len(classes) < least:
        found = "no class" if not len(classes) else f"one class, '{classes[0]}'"
        raise InvalidValue(f"{who} needs labels of at least {least} classes; the rows have {found}")
    return y


def classes(y, who: str) -> None:
    """Labels that are classes, not continuous values (the check ``checked_labels`` makes)."""
    try:
        check_classification_targets(y)
    except ValueError as error:
        raise InvalidValue(f"{who}: {first_line(error)}") from None


def checked_fit(X, y, who: str, estimator=None) -> tuple[np.ndarray, np.ndarray]:
    """Both checks: the rows (recorded on ``estimator`` when given) and their labels."""
    X = checked_rows(X, who, estimator)
    return X, checked_labels(X, y, who)


def whole(value) -> bool:
    """A whole number as scikit-learn's parameters take it: Python's or numpy's (``np.arange`` in a grid), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def real(value) -> bool:
    """A real number, Python's or numpy's, not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def seed_of(random_state) -> int:
    """An int seed from any ``random_state`` scikit-learn takes (an int as it is; None or a ``RandomState`` draws
    one), for code that derives seeds from it (``seed + repeat``)."""
    if whole(random_state):
        return int(random_state)
    return int(check_random_state(random_state).randint(2**31 - 2**16))


__all__ = ["checked_fit", "checked_labels", "classes", "checked_rows", "real", "seed_of", "whole"]
