"""The classifier zoo: names → scikit-learn Pipelines whose preprocessing is part of the model.

Every pipeline has the same four steps, ``l2`` (row L2-normalization), ``scale`` (standardization), ``pca``
(reduction to k dimensions) and ``clf``; a step that is off is ``"passthrough"``. Because scaling and PCA are
steps, they are fit inside each cross-validation fold on that fold's training rows only, never on the rows
they are scored on.

A classifier is named by a spec string, ``name[:key=value,...]``: ``logreg``, ``logreg:C=0.1``,
``rbf-svm:pca=128,C=10``, ``knn:n_neighbors=5,l2=on``. ``l2``, ``scale`` and ``pca`` switch the steps; any other
key is a parameter of the classifier itself. ``ensemble`` (``classifiers.ensemble``) combines other
entries: ``ensemble:members=logreg+rbf-svm,method=stack``. The registry and the other entries are in
``classifiers.registry``, which the ensemble builds on; this module adds the ensemble to them.
"""

from __future__ import annotations

from .budget import blas_share, estimate
from .cost import Shape
from .ensemble import DEFAULT_MEMBERS, INNER_FOLDS, ZooEnsemble, member_names
from .registry import (
    STEPS,
    ClassifierSpec,
    ReducedPCA,
    check_spec,
    default_classifiers,
    describe,
    get_spec,
    list_classifiers,
    make_classifier,
    parse_spec,
    register_classifier,
    search_grid,
    split_specs,
    unregister_classifier,
)


def _member_seconds(shape: Shape, params: dict) -> dict[str, float]:
    """Each member's seconds in one fold of the ensemble: its fit, and those without probabilities once more per
    calibration fold (stacking's refits on its inner folds multiply them all alike)."""
    folds = params.get("inner_folds", INNER_FOLDS)
    inner = Shape(shape.n * (folds - 1) / folds, shape.n / folds, shape.d, shape.k)  # a calibration fold's fit
    seconds = {}
    for name in member_names(params.get("members", DEFAULT_MEMBERS)):
        member = estimate(name, shape) or 0.0
        seconds[name] = member + (0.0 if get_spec(name).probabilities else folds * (estimate(name, inner) or 0.0))
    return seconds


def ensemble_cost(shape: Shape, params: dict) -> float:
    """The members' costs; stacking refits every member on each of its inner folds too."""
    folds = params.get("inner_folds", INNER_FOLDS)
    return sum(_member_seconds(shape, params).values()) * (folds + 1 if params.get("method") == "stack" else 1)


def ensemble_threads(shape: Shape, params: dict) -> float:
    """The share of the ensemble's time in BLAS: its members' own shares, weighed by their seconds (the default
    members at 1,000 rows: the RBF SVM, on one thread, is most of it)."""
    seconds = _member_seconds(shape, params)
    total = sum(seconds.values())
    return sum(t * blas_share(name, shape) for name, t in seconds.items()) / total if total > 0 else 1.0


def ensemble_memory(shape: Shape, params: dict) -> float:
    """The members', fitted one after the other and kept: each holds what its own fit holds."""
    total = 0.0
    for name in member_names(params.get("members", DEFAULT_MEMBERS)):
        model = get_spec(name).memory
        total += model(shape, {}) if model is not None else 0.0
    return total + 4.0 * shape.n * shape.d  # and kNN's copy of the rows (members share them: not in place)


register_classifier(
    ClassifierSpec(
        "ensemble",
        "soft vote of logreg, rbf-svm (sigmoid-calibrated) and knn, each with its own steps; "
        "method=stack: a logistic regression on their out-of-fold probabilities; members=a+b+... chooses them",
        lambda seed: ZooEnsemble(random_state=seed),
        grid={},
        probabilities=True,
        cost=ensemble_cost,
        memory=ensemble_memory,
        threads=ensemble_threads,
    )
)

__all__ = [
    "STEPS",
    "ClassifierSpec",
    "ReducedPCA",
    "check_spec",
    "default_classifiers",
    "describe",
    "get_spec",
    "list_classifiers",
    "make_classifier",
    "parse_spec",
    "register_classifier",
    "search_grid",
    "split_specs",
    "unregister_classifier",
]
