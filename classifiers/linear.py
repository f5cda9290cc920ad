"""The linear probe as the papers run it: logistic regression whose regularization is chosen on inner folds.

A fixed ``C`` leaves accuracy on the table: the best strength depends on the backbone, the layer and the number of
images. CLIP sweeps ``C`` over a log grid on a validation split and refits; this does the same on inner folds of the
rows it is given (group-aware through ``folds``), so that when it sits inside a cross-validation fold the outer score
stays honest. The sweep (``solver.fit_path``) runs every inner fold along the path from strong to weak
regularization at once: one float32 product per block of rows and iteration for all the folds that fit it, each
fold going on from one value to the next from its last solution with its L-BFGS curvature pairs, and all of them
stopping two values past the best. From ``holdout_from`` rows on (6,000: 2,000 held out) one inner split chooses
``C`` instead of three, the rows partitioned in place rather than copied. The refit on every row starts from the
chosen value's mean inner solution (not from an inner fold's curvature pairs: on every row they cost it iterations,
42 against 32 on flowers, 23 against 7 on hymenoptera, for no nearer an optimum), and its result is a scikit-learn
``LogisticRegression``.

``fit_rows`` fits the same model on rows of a layer by index (``rows.LayerRows``, what ``cv`` hands it): every
product reads a contiguous span of the layer, each inner fold and the refit weighing only their own rows, and the
standardization is folded into the solver; no row is copied but a block of held-out rows at a time.

On a machine with a CUDA device (torch sees one), a sweep or refit of 20 million row x dimension entries or more
(``solver.DEVICE_FROM``, an estimate not yet measured on a GPU) multiplies its rows there: the same code and
float32 arithmetic, the rows copied there for each fit (``FEATUREBANK_SOLVER_DEVICE=numpy`` keeps it in numpy).
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.utils.validation import check_is_fitted

from embedder.kernel.errors import InvalidValue

from . import solver
from .folds import inner_fold_count, inner_splits, too_few_for_inner_folds
from .rows import LayerRows
from .solver import fit_path
from .validation import checked_labels, checked_rows, real, whole

DEFAULT_CS = tuple(float(c) for c in np.logspace(-4, 1, 11))  # 1e-4 … 10, half a decade apart
SCORINGS = ("log_loss", "accuracy")
PATIENCE = 2  # values of C past the best before the sweep stops
HELD_OUT_PATIENCE = 1  # the same with one held-out split of 2,000 rows or more, whose loss along the path is smooth
REFIT_RELATIVE = 0.01  # the refit stops at 1e-4 and at this share of its starting gradient if less
RELATIVE = 0.1  # an inner fit stops at inner_tol, or at this share of its gradient where it began the value if less
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

    The inner fits stop when the largest entry of the gradient is at most ``inner_tol`` (1e-3) and at most a tenth
    (``RELATIVE``) of what it was when the fit began that value: a weakly regularized value begins within any
    absolute tolerance (its penalty barely changes the gradient), and a plain 1e-3 then ended those fits at once,
    which made them look better than they are (on hymenoptera, C=3.16 chosen and 2 test images lost before the
    relative test). The refit stops at scikit-learn's 1e-4 and at a hundredth (``REFIT_RELATIVE``) of its gradient
    where it began: started warm, 1e-4 alone left it further from the optimum than scikit-learn's cold fit gets
    (on hymenoptera's val/ images, probabilities up to 0.086 from a 1e-8 fit's, against 0.066; a hundredth: 0.012,
    and 0.015 since the refit starts without the inner pairs).

    With one labelled row in a class (or one group), no inner fold can be made: ``C`` is then ``FALLBACK_C`` and
    ``fallback_`` says so (None when ``C`` was chosen or given).

    Fitted: ``C_`` (the strength used), ``cv_scores_`` (inner folds × ``Cs``, lower is better for log-loss),
    ``n_inner_iter_`` (iterations per inner fold and value), ``model_`` (a fitted ``LogisticRegression``), and
    ``coef_``, ``intercept_``, ``classes_`` as ``LogisticRegression``'s, so it folds into a linear layer."""

    def __init__(
        self,
        C=None,
        Cs=DEFAULT_CS,
        inner_folds=3,
        scoring="log_loss",
        inner_tol=1e-3,
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
            raise InvalidValue(f"classifier logreg: scoring must be one of {', '.join(SCORINGS)}, not {self.scoring!r}")
        for name, value in (("C", self.C), *(("Cs", c) for c in self.Cs)):
            if value is not None and (not real(value) or not value > 0):
                raise InvalidValue(f"classifier logreg: {name}={value!r}: give a positive number")
        for name, value, least in (
            ("inner_folds", self.inner_folds, 2),
            ("holdout_from", self.holdout_from, 0),
            ("max_iter", self.max_iter, 1),
        ):
            if value is None and name == "holdout_from":
                continue
            if not whole(value) or value < least:
                raise InvalidValue(
                    f"classifier logreg: {name}={value!r}: give a whole number of {least} or more"
                    + (", or None" if name == "holdout_from" else "")
                )

    def fit(self, X, y, groups=None):
        self.check_params()
        X = X if isinstance(X, LayerRows) else checked_rows(X, "logreg", self)
        self.__dict__.pop("n_inner_iter_", None)  # a former fit's sweep: this fit may choose no C
        if isinstance(X, LayerRows):
            self.__dict__.pop("feature_names_in_", None)  # a former fit's DataFrame columns
        y = checked_labels(X, y, "logreg")
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
        if start is None and not isinstance(X, LayerRows):
            self.model_ = LogisticRegression(C=self.C_, max_iter=self.max_iter).fit(X, y)
        else:  # by index without a sweep: the solver's own cold fit, to scikit-learn's tolerance
            self.model_ = self._refit(X, y, start)
        self.n_features_in_ = X.shape[1]
        return self

    def fit_rows(self, rows: LayerRows, y, groups=None):
        """``fit`` on ``rows`` (a layer's rows by index, standardized by their ``mean`` and ``scale`` if given)
        without copying them: the model ``fit(standardized rows)`` makes, its coefficients those of the
        standardized rows, equal to the copying fit's within the solver's tolerance (float32 products over the
        same rows, summed in another order). ``y`` and ``groups``: the rows' own, in their order."""
        return self.fit(rows, y, groups)

    def _sweep(self, X, y, groups):
        """Every inner fold along ``Cs`` at once (``solver.fit_path``: one product of each block of rows with the
        coefficients of every fold that fits it, each fold continuing from one value of C to the next with its
        curvature pairs); the best mean wins (the stronger regularization on a tie). The inner loss is close to
        unimodal along the path, so once the mean has been worse than the best for ``PATIENCE`` values in a row
        (one, ``HELD_OUT_PATIENCE``, with one held-out split from ``holdout_from`` rows: on 7,000 to 60,000
        synthetic rows the same C as a full sweep, for 20 to 30 % fewer inner iterations) the folds stop: the
        weakest regularizations, the slowest fits, are never run (their scores stay NaN). Returns
        the rows (reordered when one held-out split was used), ``C``, the scores and the refit's start (the chosen
        value's mean inner solution)."""
        Cs = sorted(float(c) for c in self.Cs)
        if len(Cs) == 1:
            return X, y, Cs[0], None, None
        index = np.searchsorted(self.classes_, y)
        k = len(self.classes_)
        splits = inner_splits(
            index if isinstance(X, LayerRows) else X,  # only their number is read
            index,
            groups,
            inner_fold_count(index, self.inner_folds, groups),
            self.random_state,
        )
        held_out = self.holdout_from is not None and len(y) >= self.holdout_from
        patience = HELD_OUT_PATIENCE if held_out else PATIENCE
        weights = standardize = None
        if isinstance(X, LayerRows):  # one span of the layer; each problem weighs its own rows
            splits = splits[:1] if held_out else splits
            blocks, labels, weights, standardize = _span(X, index, [train for train, _ in splits])
            member = np.ones((1, len(splits)), dtype=bool)

            def score(p, coef, intercept):
                return _held_out_rows_score(X, splits[p][1], index, coef, intercept, k, self.scoring)

        elif held_out:
            X, y, index, m = self._held_out_last(X, y, index, splits[0])
            blocks, labels = [X[:m], X[m:]], [index[:m], index[m:]]
            member = np.array([[True], [False]])  # one problem: the first block, scored on the second
        else:  # block f: fold f's held-out rows (a copy of the rows in all, regrouped); problem f fits the others
            blocks, labels = [X[test] for _, test in splits], [index[test] for _, test in splits]
            member = ~np.eye(len(splits), dtype=bool)
        if not isinstance(X, LayerRows):
            held = [int(np.flatnonzero(~member[:, p])[0]) for p in range(member.shape[1])]  # the block scored on

            def score(p, coef, intercept):
                return _held_out_score(blocks[held[p]], labels[held[p]], coef, intercept, k, self.scoring)

        F = member.shape[1]
        scores = np.full((F, len(Cs)), np.nan)
        state = {"done": 0, "best": 0, "worse": 0, "stop": len(Cs) - 1}

        def arrived(p, j, coef, intercept):
            """Problem p's solution at Cs[j], scored on its held-out block; each value whose every fold is in, in
            order, then compared with the best so far."""
            scores[p, j] = score(p, coef, intercept)
            while state["done"] <= state["stop"] and not np.isnan(scores[:, state["done"]]).any():
                i = state["done"]
                if i == 0 or scores[:, i].mean() < scores[:, state["best"]].mean() - 1e-12:
                    state["best"], state["worse"] = i, 0
                else:
                    state["worse"] += 1
                    if state["worse"] >= patience:
                        state["stop"] = i
                state["done"] += 1

        path = fit_path(
            blocks,
            labels,
            k,
            Cs,
            member,
            tol=self.inner_tol,
            relative=RELATIVE,
            max_iter=self.max_iter,
            arrived=arrived,
            limit=lambda: state["stop"],
            weights=weights,
            standardize=standardize,
            device=_device([b for b, fitted in zip(blocks, member.any(axis=1)) if fitted]),
        )
        best = state["best"]
        scores[:, best + patience + 1 :] = np.nan  # a fold that ran ahead: past the stop, never compared
        self.n_inner_iter_ = path.n_iter
        coef, intercept = path.coef[:, best].mean(axis=0), path.intercept[:, best].mean(axis=0)
        return X, y, Cs[best], scores, (coef, intercept)

    def _refit(self, X, y, start):
        """The chosen ``C`` on every row, from the inner solution (``solver.fit_path``), as a fitted
        scikit-learn ``LogisticRegression``: its predictions, probabilities and export are that class's own.
        ``start`` None: a cold fit at scikit-learn's tolerance (rows by index with a fixed ``C``)."""
        index = np.searchsorted(self.classes_, y)
        blocks, labels, weights, standardize = [X], [index], None, None
        if isinstance(X, LayerRows):
            blocks, labels, weights, standardize = _span(X, index, [np.arange(len(index))])
        path = fit_path(
            blocks,
            labels,
            len(self.classes_),
            [self.C_],
            max_iter=self.max_iter,
            start=start,
            relative=None if start is None else REFIT_RELATIVE,
            weights=weights,
            standardize=standardize,
            device=_device(blocks),
        )
        model = LogisticRegression(C=self.C_, max_iter=self.max_iter)
        model.classes_ = self.classes_
        model.coef_ = path.coef[0, 0].astype(X.dtype)
        model.intercept_ = path.intercept[0, 0].astype(X.dtype)
        model.n_features_in_ = X.shape[1]
        model.n_iter_ = np.array([path.n_iter[0, 0]], dtype=np.int32)
        return model

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

    def _rows(self, X):
        """Rows to predict, checked against the fit's (their number of features, a DataFrame's names)."""
        check_is_fitted(self, "model_")
        return checked_rows(X, "logreg", self, reset=False)

    def decision_function(self, X):
        return self.model_.decision_function(self._rows(X))

    def predict_proba(self, X):
        return self.model_.predict_proba(self._rows(X))

    def predict_log_proba(self, X):
        return self.model_.predict_log_proba(self._rows(X))

    def predict(self, X):
        return self.model_.predict(self._rows(X))


def _device(blocks) -> str | None:
    """Where the solver multiplies these rows, the blocks some problem fits (``solver.device_for``: a CUDA device
    for large fits, when there is one)."""
    return solver.device_for(sum(len(b) for b in blocks), blocks[0].shape[1], sum(b.nbytes for b in blocks))


def _span(rows: LayerRows, index: np.ndarray, fits: list[np.ndarray]):
    """``fit_path``'s arguments for problems that fit the rows at positions ``fits[p]`` of ``rows``: one block, the
    layer's span of the rows (a view), their class indices in it (0 elsewhere), each problem's weights (1 on its
    rows) and the standardization."""
    lo, hi = rows.span()
    labels = np.zeros(hi - lo, dtype=np.intp)
    labels[rows.index - lo] = index
    weights = np.zeros((hi - lo, len(fits)), dtype=np.float32)
    for p, positions in enumerate(fits):
        weights[rows.index[positions] - lo, p] = 1.0
    standardize = None if rows.mean is None else (rows.mean, rows.scale)
    return [rows.layer[lo:hi]], [labels], [weights], standardize


def _held_out_rows_score(rows: LayerRows, positions, index, coef, intercept, n_classes: int, scoring: str) -> float:
    """``_held_out_score`` of the rows at ``positions`` of ``rows``, gathered a block at a time, the solution
    carried to the raw rows (``coef / scale``, ``intercept - coef · mean / scale``)."""
    coef, intercept = np.asarray(coef, dtype=np.float64), np.asarray(intercept, dtype=np.float64)
    if rows.mean is not None:
        inverse = 1.0 / np.asarray(rows.scale, dtype=np.float64)
        intercept = intercept - coef @ (np.asarray(rows.mean) * inverse)
        coef = coef * inverse
    total = 0.0
    for start in range(0, len(positions), solver.ROW_BLOCK):
        part = positions[start : start + solver.ROW_BLOCK]
        proba = solver.probabilities(rows.gather(part), coef, intercept, n_classes)
        if scoring == "accuracy":
            total += float(np.sum(np.argmax(proba, axis=1) != index[part]))
        else:
            total -= float(np.sum(np.log(np.clip(proba[np.arange(len(part)), index[part]], 1e-15, None))))
    return total / max(len(positions), 1)


def _held_out_score(X, index, coef, intercept, n_classes: int, scoring: str) -> float:
    """Lower is better: the mean log-loss (probabilities clipped at 1e-15), or the error rate, of one problem's
    solution on held-out rows (class indices)."""
    proba = solver.probabilities(X, coef, intercept, n_classes)
    if scoring == "accuracy":
        return float(np.mean(np.argmax(proba, axis=1) != index))
    return float(-np.mean(np.log(np.clip(proba[np.arange(len(index)), index], 1e-15, None))))


__all__ = ["DEFAULT_CS", "TunedLogisticRegression"]
