"""The ``ensemble`` zoo entry: several zoo classifiers on the same vectors, each with its own preprocessing steps,
combined by soft voting (the mean of their probabilities) or by stacking (a logistic regression on their
out-of-fold probabilities, from an inner cross-validation of the training rows only).

The members are fixed by the spec (``ensemble:members=logreg+rbf-svm``), never picked by looking at the scores
of the folds being reported: a score of a selection made on the same folds would be an optimistic number. The
default is a linear, a kernel and a local model, ``logreg+rbf-svm+knn``. A member without probabilities
(``rbf-svm``, ``linear-svm``, ``ridge``) gets them by Platt scaling: scikit-learn's ``CalibratedClassifierCV(
method="sigmoid", ensemble=False)`` around its whole pipeline, fit on its decision values out of
``inner_folds`` (3) folds of the training rows (``inner_folds`` fits on that share of the rows, then one on all of them).

The members see the whole vector they are given: on a composite layer ``a+b`` each member sees every block.
With ``fit(X, y, groups)`` (cv and train pass the cache's groups), every inner fold keeps a group on one side.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.utils.validation import check_is_fitted

from embedder.kernel.errors import InvalidValue

from .folds import fit_grouped, inner_fold_count, inner_splits, inner_splitter, too_few_for_inner_folds
from .metrics import full_proba
from .registry import describe, get_spec, make_classifier
from .validation import checked_fit, checked_rows, whole

DEFAULT_MEMBERS = "logreg+rbf-svm+knn"
# 3 folds, not scikit-learn's 5: the sigmoid's two parameters need no more, and an RBF member's calibration then
# costs 3 fits on 2/3 of the rows (about 1.3 of its full fits) instead of 5 on 4/5 (3.2); on train/ of flowers and
# hymenoptera the ensemble's out-of-fold accuracy and log-loss stayed within their noise (benchmarks/trees.py)
INNER_FOLDS = 3
METHODS = ("vote", "stack")


def member_names(members) -> list[str]:
    """``"logreg+rbf-svm"`` (or a list) → the zoo names, checked: known, each once, at least two, no ensemble
    inside an ensemble."""
    names = [m.strip() for m in (members.split("+") if isinstance(members, str) else members) if m and m.strip()]
    if len(names) < 2 or len(set(names)) != len(names):
        raise InvalidValue(f"an ensemble needs two or more different members, written a+b: not {members!r}")
    for name in names:
        spec = get_spec(name)
        if spec.name == "ensemble":
            raise InvalidValue("an ensemble cannot be a member of an ensemble")
    return names


class ZooEnsemble(ClassifierMixin, BaseEstimator):
    """Soft voting (``method="vote"``) or stacking (``"stack"``) of zoo classifiers named by ``members``
    (``"logreg+rbf-svm+knn"``), each a full zoo Pipeline. Stacking fits its logistic regression on the members'
    probabilities out of ``inner_folds`` folds of the training rows, then refits the members on all of them.
    ``fit(X, y, groups)``: with groups, every inner fold (calibration, stacking) keeps a group on one side."""

    def __init__(self, members=DEFAULT_MEMBERS, method="vote", inner_folds=INNER_FOLDS, random_state=0):
        self.members = members
        self.method = method
        self.inner_folds = inner_folds
        self.random_state = random_state

    def check_params(self) -> None:
        """A FeaturebankError for a bad method, member list or fold count (a spec is checked before any fit)."""
        if self.method not in METHODS:
            raise InvalidValue(f"unknown ensemble method {self.method!r}: choose one of {', '.join(METHODS)}")
        member_names(self.members)
        if not whole(self.inner_folds) or self.inner_folds < 2:
            raise InvalidValue(f"ensemble inner_folds={self.inner_folds!r}: give a whole number of 2 or more")

    def member_pipelines(self, cv=None) -> list[tuple[str, object]]:
        """The members, unfitted: zoo Pipelines, those without probabilities inside a sigmoid calibration on the
        inner folds ``cv`` (default: ``inner_folds`` stratified folds)."""
        cv = cv if cv is not None else inner_splitter(self.inner_folds, self.random_state, grouped=False)
        out = []
        for name in member_names(self.members):
            pipe = make_classifier(name, seed=self.random_state)
            if not get_spec(name).probabilities:
                pipe = CalibratedClassifierCV(pipe, method="sigmoid", cv=cv, ensemble=False)
            out.append((name, pipe))
        return out

    def _fit_members(self, X, y, groups) -> list:
        """Every member fit on these rows; calibrations on inner folds of these rows (by group when given). When
        those folds cannot be made (one labelled image in a class), the members that need a calibration are left
        out (``fallback_`` says which); with none left, a one-line error."""
        why = too_few_for_inner_folds(y, groups)
        if why is None:
            cv = inner_splits(X, y, groups, inner_fold_count(y, self.inner_folds, groups), self.random_state)
            return [fit_grouped(pipe, X, y, groups) for _, pipe in self.member_pipelines(cv)]
        names = member_names(self.members)
        kept = [n for n in names if get_spec(n).probabilities]
        if not kept:
            raise InvalidValue(
                f"ensemble of {'+'.join(names)}: every member needs a calibration on inner folds ({why})"
            )
        left = [n for n in names if n not in kept]
        if left:
            self.fallback_ = (
                f"ensemble: {'+'.join(left)} left out, its calibration needs inner folds ({why}); {'+'.join(kept)} kept"
            )
        return [fit_grouped(make_classifier(n, seed=self.random_state), X, y, groups) for n in kept]

    def _probabilities(self, members, X) -> list[np.ndarray]:
        """Each member's probabilities over all of the ensemble's classes (a member may have missed one)."""
        index = {c: i for i, c in enumerate(self.classes_.tolist())}
        return [
            full_proba(
                np.asarray(m.predict_proba(X), dtype=np.float64),
                [index[c] for c in m.classes_.tolist()],
                len(self.classes_),
            )
            for m in members
        ]

    def fit(self, X, y, groups=None):
        self.check_params()
        X, y = checked_fit(X, y, "ensemble", self)  # records n_features_in_ and a DataFrame's names
        groups = None if groups is None else np.asarray(groups)
        self.classes_ = np.unique(y)
        self.fallback_, self.method_ = None, self.method
        self.__dict__.pop("final_", None)  # a former fit's stacking
        why = too_few_for_inner_folds(y, groups)
        if self.method == "stack" and why:
            self.method_ = "vote"
        if self.method_ == "stack":
            # the final regression learns from probabilities of rows the members did not see (nor their groups)
            outer = inner_splits(X, y, groups, inner_fold_count(y, self.inner_folds, groups), self.random_state)
            oof = np.zeros((len(y), len(member_names(self.members)) * len(self.classes_)))
            for train, test in outer:
                members = self._fit_members(X[train], y[train], None if groups is None else groups[train])
                oof[test] = np.hstack(self._probabilities(members, X[test]))
            self.final_ = LogisticRegression(max_iter=2000).fit(oof, y)
        self.members_ = self._fit_members(X, y, groups)
        if self.method_ != self.method:
            said = f"ensemble: a soft vote, not stacking, which needs inner folds ({why})"
            self.fallback_ = said + ("; " + self.fallback_.removeprefix("ensemble: ") if self.fallback_ else "")
        return self

    def predict_proba(self, X) -> np.ndarray:
        check_is_fitted(self, "members_")
        probabilities = self._probabilities(self.members_, checked_rows(X, "ensemble", self, reset=False))
        if getattr(self, "method_", self.method) == "stack":  # a model file written before method_: the method
            return self.final_.predict_proba(np.hstack(probabilities))
        proba = np.mean(probabilities, axis=0)
        return proba / proba.sum(axis=1, keepdims=True)  # float32 members' mean can miss 1 by 1e-7

    def predict(self, X) -> np.ndarray:
        proba = self.predict_proba(X)  # first: unfitted, scikit-learn's NotFittedError
        return self.classes_[np.argmax(proba, axis=1)]

    def describe(self) -> str:
        """``soft vote of [logreg: scale → LogisticRegression(C=0.1) | …]``: for reports and ``classifiers``."""
        how = "soft vote" if self.method == "vote" else "stacking (logistic regression on out-of-fold probabilities)"
        inner = " | ".join(
            f"{name}: {describe(getattr(pipe, 'estimator', pipe))}"
            + (" + sigmoid calibration" if hasattr(pipe, "estimator") else "")
            for name, pipe in self.member_pipelines()
        )
        return f"{how} of [{inner}]"
