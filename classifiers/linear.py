"""The linear probe as the papers run it: logistic regression whose regularization is chosen on inner folds.

A fixed ``C`` leaves accuracy on the table: the best strength depends on the backbone, the layer and the number of
images. CLIP sweeps ``C`` over a log grid on a validation split and refits; this does the same on inner folds of the
rows it is given (group-aware through ``folds``), so that when it sits inside a cross-validation fold the outer score
stays honest. The sweep runs along the path from strong to weak regularization, each fit warm-started from the last
(a value costs about a quarter of a cold fit), and stops two values past the best. From ``holdout_from`` rows on
(6,000: 2,000 held out) one inner split chooses ``C`` instead of three, the rows partitioned in place rather than
copied, and the refit starts from the chosen value's solution: at 13,333 rows the whole sweep and refit cost about
2 cold fits (it was 5 with three inner folds and a cold refit).
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.utils.validation import check_is_fitted

from embedder.errors import FeaturebankError

from .folds import inner_fold_count, inner_splits, too_few_for_inner_folds
from .metrics import full_proba

DEFAULT_CS = tuple(float(c) for c in np.logspace(-4, 1, 11))  # 1e-4 … 10, half a decade apart
SCORINGS = ("log_loss", "accuracy")
PATIENCE = 2  # values of C past the best before the sweep stops
FALLBACK_C = 0.1  # the probe's former fixed C: used when inner folds cannot be made (one labelled image in a class)
HOLDOUT_FROM = 6000  # rows from which one inner split (a third held out: 2,000 rows or more) chooses C
PARTITION_BLOCK = 4096  # rows swapped at a time when the held-out rows are moved to the end in place


class TunedLogisticRegression(ClassifierMixin, BaseEstimator):
    """Multinomial logistic regression with ``C`` chosen on ``inner_folds`` inner folds over ``Cs`` (by mean
    log-loss, or accuracy), then refit on every row. ``C`` given: no sweep, a plain fit with that ``C``.
    ``fit(X, y, groups)``: with groups, no group sits on both sides of an inner fold.

    From ``holdout_from`` rows on (None: never), the first inner fold alone chooses ``C``: its held-out third is
    2,000 rows or more, enough to place the minimum of a smooth loss on a half-decade grid, at a third of the cost.
    Its rows are then moved to the end of ``X`` so that both sides are slices, not copies; ``copy=False`` lets that
    happen in the caller's array (cross-validation's fold rows, read by nothing after the fit), else on a copy.

    The inner fits stop at ``inner_tol``, scikit-learn's default, like the refit: a looser 1e-3 halved the sweep
    on flowers with the same choice, but on hymenoptera it ended weakly regularized fits early, which then looked
    better than they are (C=3.16 chosen, 2 test images lost). The refit starts from the chosen value's inner
    solution (the mean over the inner folds): the same optimum, reached in fewer steps.

    With one labelled row in a class (or one group), no inner fold can be made: ``C`` is then ``FALLBACK_C`` and
    ``fallback_`` says so (None when ``C`` was chosen or given).

    Fitted: ``C_`` (the strength used), ``cv_scores_`` (inner folds × ``Cs``, lower is better for log-loss),
    ``coef_``, ``intercept_``, ``classes_`` as ``LogisticRegression``'s, so it folds into a linear layer."""

    def __init__(
        self,
        C=None,
        Cs=DEFAULT_CS,
        inner_folds=3,
        scoring="log_loss",
        inner_tol=1e-4,
        max_iter=2000,
        random_state=0,
        holdout_from=HOLDOUT_FROM,
        copy=True,
    ):
        self.C = C
        self.Cs = Cs
        self.inner_folds = inner_folds
        self.scoring = scoring
        self.inner_tol = inner_tol
        self.max_iter = max_iter
        self.random_state = random_state
        self.holdout_from = holdout_from
        self.copy = copy

    def check_params(self) -> None:
        """A bad value is one line when the spec is read, before any fit."""
        if self.scoring not in SCORINGS:
            raise FeaturebankError(
                f"classifier logreg: scoring must be one of {', '.join(SCORINGS)}, not {self.scoring!r}"
            )
        for name, value in (("C", self.C), *(("Cs", c) for c in self.Cs)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
                raise FeaturebankError(f"classifier logreg: {name}={value!r}: give a positive number")
        for name, value, least in (("inner_folds", self.inner_folds, 2), ("holdout_from", self.holdout_from, 0)):
            if value is None and name == "holdout_from":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise FeaturebankError(
                    f"classifier logreg: {name}={value!r}: give a whole number of {least} or more"
                    + (", or None" if name == "holdout_from" else "")
                )

    def fit(self, X, y, groups=None):
        self.check_params()
        X, y = np.asarray(X), np.asarray(y)
        self.classes_ = np.unique(y)
        start = None
        self.fallback_ = None
        why = None if self.C is not None else too_few_for_inner_folds(y, groups)
        if self.C is not None:
            self.C_, self.cv_scores_ = float(self.C), None
        elif why:
            self.C_, self.cv_scores_ = FALLBACK_C, None
            self.fallback_ = f"logreg: C={FALLBACK_C} fixed, not chosen on inner folds ({why})"
        else:
            X, y, self.C_, self.cv_scores_, start = self._sweep(X, y, None if groups is None else np.asarray(groups))
        model = LogisticRegression(C=self.C_, max_iter=self.max_iter, warm_start=start is not None)
        if start is not None:
            model.coef_, model.intercept_ = start
        self.model_ = model.fit(X, y)
        self.model_.warm_start = False
        self.n_features_in_ = X.shape[1]
        return self

    def _sweep(self, X, y, groups):
        """``C`` from strong to weak regularization on every inner fold, each fold's fit warm-started from its last;
        the best mean wins (the stronger regularization on a tie). The inner loss is close to unimodal along the
        path, so the sweep stops once the mean has been worse than the best for ``PATIENCE`` values in a row: the
        weakest regularizations, the slowest fits, are then never run (their scores stay NaN). Returns the rows
        (reordered when one held-out split was used), ``C``, the scores and the refit's starting solution."""
        Cs = sorted(float(c) for c in self.Cs)
        if len(Cs) == 1:
            return X, y, Cs[0], None, None
        index = np.searchsorted(self.classes_, y)
        splits = inner_splits(X, index, groups, inner_fold_count(index, self.inner_folds, groups), self.random_state)
        if self.holdout_from is not None and len(y) >= self.holdout_from:
            X, y, index, m = self._held_out_last(X, y, index, splits[0])
            parts = [(X[:m], index[:m], X[m:], index[m:])]
        else:
            parts = [(X[train], index[train], X[test], index[test]) for train, test in splits]
        models = [LogisticRegression(max_iter=self.max_iter, tol=self.inner_tol, warm_start=True) for _ in parts]
        scores = np.full((len(parts), len(Cs)), np.nan)
        solutions = []
        best, worse = 0, 0
        for j, C in enumerate(Cs):
            for f, (X_in, y_in, X_out, y_out) in enumerate(parts):
                models[f].set_params(C=C).fit(X_in, y_in)
                scores[f, j] = _score(models[f], X_out, y_out, len(self.classes_), self.scoring)
            solutions.append(self._mean_solution(models))
            mean = scores[:, : j + 1].mean(axis=0)
            if j == 0 or mean[j] < mean[best] - 1e-12:
                best, worse = j, 0
            else:
                worse += 1
                if worse >= PATIENCE:
                    break
        return X, y, Cs[best], scores, solutions[best]

    def _mean_solution(self, models) -> tuple[np.ndarray, np.ndarray] | None:
        """The inner models' mean coefficients and intercepts, when every one saw every class (else None: the
        refit starts from zero)."""
        if any(len(m.classes_) != len(self.classes_) for m in models):
            return None
        return (
            np.mean([m.coef_ for m in models], axis=0),
            np.mean([m.intercept_ for m in models], axis=0),
        )

    def _held_out_last(self, X, y, index, split):
        """The rows reordered so that the split's training rows come first and its held-out rows last (``X``, ``y``
        and the class indices together): pairs of misplaced rows are swapped, ``PARTITION_BLOCK`` at a time. In
        ``X`` itself when ``copy`` is False and it is a writeable C-ordered array, else in a copy."""
        train, test = split
        m = len(train)
        held = np.zeros(len(y), dtype=bool)
        held[test] = True
        front = np.flatnonzero(held[:m])  # held-out rows in the training part
        back = m + np.flatnonzero(~held[m:])  # training rows in the held-out part (as many)
        if self.copy or not (X.flags.writeable and X.flags.c_contiguous):
            X = np.array(X, order="C")
        y, index = y.copy(), index.copy()
        for s in range(0, len(front), PARTITION_BLOCK):
            a, b = front[s : s + PARTITION_BLOCK], back[s : s + PARTITION_BLOCK]
            rows = X[a]
            X[a] = X[b]
            X[b] = rows
            y[a], y[b] = y[b], y[a]
            index[a], index[b] = index[b], index[a]
        return X, y, index, m

    # The refit model's coefficients, read and written through: what folds into a linear layer (or is changed) is
    # what predicts.
    @property
    def coef_(self):
        return self.model_.coef_

    @coef_.setter
    def coef_(self, value):
        self.model_.coef_ = value

    @property
    def intercept_(self):
        return self.model_.intercept_

    @intercept_.setter
    def intercept_(self, value):
        self.model_.intercept_ = value

    @property
    def n_iter_(self):
        return self.model_.n_iter_

    def decision_function(self, X):
        check_is_fitted(self, "model_")
        return self.model_.decision_function(X)

    def predict_proba(self, X):
        check_is_fitted(self, "model_")
        return self.model_.predict_proba(X)

    def predict(self, X):
        check_is_fitted(self, "model_")
        return self.model_.predict(X)


def _score(model, X, y, n_classes: int, scoring: str) -> float:
    """Lower is better: the mean log-loss (probabilities clipped at 1e-15), or the error rate."""
    proba = full_proba(model.predict_proba(X), model.classes_, n_classes)
    if scoring == "accuracy":
        return float(np.mean(np.argmax(proba, axis=1) != y))
    return float(-np.mean(np.log(np.clip(proba[np.arange(len(y)), y], 1e-15, None))))


__all__ = ["DEFAULT_CS", "TunedLogisticRegression"]
