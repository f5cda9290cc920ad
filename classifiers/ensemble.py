"""The ``ensemble`` zoo entry: several zoo classifiers on the same vectors, each with its own preprocessing steps,
combined by soft voting (the mean of their probabilities) or by stacking (a logistic regression on their
out-of-fold probabilities, from an inner cross-validation of the training rows only).

The members are fixed by the spec (``ensemble:members=logreg+rbf-svm``), never picked by looking at the scores
of the folds being reported: a score of a selection made on the same folds would be an optimistic number. The
default is a linear, a kernel and a local model, ``logreg+rbf-svm+knn``. A member without probabilities
(``rbf-svm``, ``linear-svm``, ``ridge``) gets them by Platt scaling: scikit-learn's ``CalibratedClassifierCV(
method="sigmoid", ensemble=False)`` around its whole pipeline, fit on its decision values out of
``inner_folds`` folds of the training rows (about ``inner_folds + 1`` times its fitting time).

The members see the whole vector they are given: on a composite layer ``a+b`` each member sees every block.
"""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import StackingClassifier, VotingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.utils.validation import check_is_fitted

from embedder.errors import FeaturebankError

DEFAULT_MEMBERS = "logreg+rbf-svm+knn"
METHODS = ("vote", "stack")


def member_names(members) -> list[str]:
    """``"logreg+rbf-svm"`` (or a list) → the zoo names, checked: known, each once, at least two, no ensemble
    inside an ensemble."""
    from .zoo import get_spec

    names = [m.strip() for m in (members.split("+") if isinstance(members, str) else members) if m and m.strip()]
    if len(names) < 2 or len(set(names)) != len(names):
        raise FeaturebankError(f"an ensemble needs two or more different members, written a+b: not {members!r}")
    for name in names:
        spec = get_spec(name)
        if spec.name == "ensemble":
            raise FeaturebankError("an ensemble cannot be a member of an ensemble")
    return names


class ZooEnsemble(ClassifierMixin, BaseEstimator):
    """Soft voting (``method="vote"``) or stacking (``"stack"``) of zoo classifiers named by ``members``
    (``"logreg+rbf-svm+knn"``), each a full zoo Pipeline. Stacking fits its logistic regression on the members'
    probabilities out of ``inner_folds`` folds of the training rows, then refits the members on all of them."""

    def __init__(self, members=DEFAULT_MEMBERS, method="vote", inner_folds=5, random_state=0):
        self.members = members
        self.method = method
        self.inner_folds = inner_folds
        self.random_state = random_state

    def member_pipelines(self, folds: int | None = None) -> list[tuple[str, object]]:
        """The members, unfitted: zoo Pipelines, those without probabilities inside a sigmoid calibration."""
        from .zoo import get_spec, make_classifier

        inner = StratifiedKFold(folds or self.inner_folds, shuffle=True, random_state=self.random_state)
        out = []
        for name in member_names(self.members):
            pipe = make_classifier(name, seed=self.random_state)
            if not get_spec(name).probabilities:
                pipe = CalibratedClassifierCV(pipe, method="sigmoid", cv=inner, ensemble=False)
            out.append((name, pipe))
        return out

    def _combined(self, y):
        if self.method not in METHODS:
            raise FeaturebankError(f"unknown ensemble method {self.method!r}: choose one of {', '.join(METHODS)}")
        smallest = int(np.bincount(np.unique(y, return_inverse=True)[1]).min())
        folds = max(2, min(int(self.inner_folds), smallest))  # as cv --search does for its inner folds
        if self.method == "vote":
            return VotingClassifier(self.member_pipelines(folds), voting="soft")
        # a member's calibration runs on the stacking's inner training rows: fewer of each class
        members = self.member_pipelines(max(2, min(folds, smallest * (folds - 1) // folds)))
        return StackingClassifier(members, final_estimator=LogisticRegression(max_iter=2000),
                                  cv=StratifiedKFold(folds, shuffle=True, random_state=self.random_state),
                                  stack_method="predict_proba")

    def fit(self, X, y):
        self.ensemble_ = self._combined(y).fit(X, y)
        self.classes_ = self.ensemble_.classes_
        self.n_features_in_ = np.shape(X)[1]
        return self

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self, "ensemble_")
        proba = np.asarray(self.ensemble_.predict_proba(X), dtype=np.float64)
        # members fit on float32 rows answer in float32: their mean can miss 1 by 1e-7, which log-loss rejects
        return proba / proba.sum(axis=1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def describe(self) -> str:
        """``soft vote of [logreg: scale → LogisticRegression(C=0.1) | …]``: for reports and ``classifiers``."""
        from .zoo import describe

        how = "soft vote" if self.method == "vote" else "stacking (logistic regression on out-of-fold probabilities)"
        inner = " | ".join(f"{name}: {describe(getattr(pipe, 'estimator', pipe))}"
                           + (" + sigmoid calibration" if hasattr(pipe, "estimator") else "")
                           for name, pipe in self.member_pipelines())
        return f"{how} of [{inner}]"
