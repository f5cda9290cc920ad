"""Inner folds, group-aware wherever rows have groups: nested search, an ensemble's calibration and stacking.

One place decides how the training rows of a fold are split again, so that near-copies of one animal, patient or
camera (one group; a row without a group is its own) never sit on both sides of an inner fold either, and so that
every fit that takes those groups gets them (``fit_grouped``).
"""

from __future__ import annotations

import inspect

import numpy as np
from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold, StratifiedKFold

from embedder.kernel.errors import InvalidValue


def inner_splitter(folds: int, seed: int, grouped: bool):
    """``StratifiedGroupKFold`` when the rows have groups, else ``StratifiedKFold``; both shuffled with ``seed``."""
    cls = StratifiedGroupKFold if grouped else StratifiedKFold
    return cls(folds, shuffle=True, random_state=seed)


def inner_fold_count(y: np.ndarray, wanted: int, groups: np.ndarray | None = None) -> int:
    """``wanted`` folds, fewer when the smallest class (or the number of groups) is smaller, at least 2."""
    folds = max(2, min(int(wanted), int(np.bincount(np.unique(y, return_inverse=True)[1]).min())))
    if groups is not None:
        n_groups = len(set(np.asarray(groups).tolist()))
        if n_groups < 2:
            raise InvalidValue(f"{n_groups} group: inner cross-validation needs at least 2 groups (or --no-groups)")
        folds = min(folds, n_groups)
    return folds


def too_few_for_inner_folds(y, groups=None) -> str | None:
    """Why these rows cannot be split into 2 stratified inner folds (a class with one row, or a single group), in
    words for a report, or None when they can."""
    counts = np.unique(np.asarray(y), return_counts=True)[1]
    if len(counts) and counts.min() < 2:
        return f"a class has {int(counts.min())} labelled image, inner folds need 2"
    if groups is not None and len(set(np.asarray(groups).tolist())) < 2:
        return "the rows are one group, inner folds need 2"
    return None


def fallbacks(model) -> list[str]:
    """What a fitted model did instead of what it was asked because its rows were too few (a tuned entry's fixed
    choice, kNN's k lowered, an ensemble member left out): the ``fallback_`` lines of every estimator in it (a
    Pipeline's steps, a search's refit model, an ensemble's members), each once, in order."""
    found: list[str] = []
    seen: set[int] = set()

    def walk(obj):
        if obj is None or id(obj) in seen or isinstance(obj, (str, int, float, bool)):
            return
        seen.add(id(obj))
        note = getattr(obj, "fallback_", None)
        if isinstance(note, str) and note not in found:
            found.append(note)
        for _, step in getattr(obj, "steps", []) or []:
            walk(step)
        for name in ("best_estimator_", "model_", "estimator"):
            walk(getattr(obj, name, None))
        for member in getattr(obj, "members_", []) or []:
            walk(member)
        for calibrated in getattr(obj, "calibrated_classifiers_", []) or []:
            walk(getattr(calibrated, "estimator", None))

    walk(model)
    return found


def inner_splits(X, y, groups, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The inner folds of these rows, as index pairs (usable as any scikit-learn ``cv``)."""
    return list(inner_splitter(folds, seed, groups is not None).split(X, y, groups))


def takes_groups(estimator) -> bool:
    """Whether a zoo Pipeline's classifier fits with ``groups`` (the ``ensemble`` entry does)."""
    step = estimator.named_steps["clf"] if hasattr(estimator, "named_steps") else estimator
    return "groups" in inspect.signature(step.fit).parameters


def fit_grouped(model, X, y, groups):
    """``model.fit`` with the rows' groups given to whatever splits them again: a ``GridSearchCV``'s folds and
    a classifier that has inner folds of its own (passed as ``clf__groups``, subset by the search per fold)."""
    if groups is None:
        return model.fit(X, y)
    kwargs = {}
    inner = model.estimator if isinstance(model, GridSearchCV) else model
    if takes_groups(inner):
        kwargs["clf__groups" if hasattr(inner, "named_steps") else "groups"] = groups
    if isinstance(model, GridSearchCV):
        kwargs["groups"] = groups
    return model.fit(X, y, **kwargs)


__all__ = [
    "fallbacks",
    "too_few_for_inner_folds",
    "fit_grouped",
    "inner_fold_count",
    "inner_splits",
    "inner_splitter",
    "takes_groups",
]
