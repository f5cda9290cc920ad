"""Ridge classifiers whose strength is chosen by exact leave-one-out over a log grid, computed in row blocks: the
``ridge`` entry, and ``rbf-svm~nystroem``, the same on a Nystroem map of an RBF kernel (the RBF SVM's stand-in on
data too large for an exact kernel).

Leave-one-out of a ridge regression needs no refits: with the centred rows' Gram matrix ``G = Xc'Xc = V diag(s) V'``
and ``Q = Xc V``, the hat matrix's diagonal is ``1/n + sum_j Q_ij^2 / (s_j + alpha)`` and the prediction
``ybar + sum_j Q_ij c_j / (s_j + alpha)`` (``c = V'Xc'Y``), for every alpha at once. That is scikit-learn's
``RidgeClassifierCV`` (same targets, same intercept, same score, same choice: tested) without its ``n x d`` float64
SVD: two passes over the rows in blocks, so the memory beyond the rows themselves is a few ``d x d`` matrices. It sits
inside each outer fold and sees only that fold's training rows, so the outer score stays honest.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.kernel_approximation import Nystroem
from sklearn.utils.validation import check_is_fitted

from embedder.kernel.errors import InvalidValue

from .validation import checked_fit, checked_rows, real, whole

ALPHAS = tuple(float(a) for a in np.logspace(-1, 6, 15))  # 0.1 … 1e6, half a decade apart
BLOCK = 2048  # rows per block: BLOCK x d float64 is the only per-row memory (a few of them: 60 MB at 1,280 dims)


def _targets(y: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """±1 one-hot targets, one column for two classes (scikit-learn's ``LabelBinarizer(neg_label=-1)``)."""
    index = np.searchsorted(classes, y)
    if len(classes) == 2:
        return (2.0 * index - 1.0)[:, None]
    Y = -np.ones((len(y), len(classes)))
    Y[np.arange(len(y)), index] = 1.0
    return Y


def _blocks(n: int):
    return (slice(start, min(start + BLOCK, n)) for start in range(0, n, BLOCK))


def loo_ridge(X, Y, alphas, transform=None) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """The alpha of ``alphas`` with the least mean squared leave-one-out error, and the errors of all; with it the
    weights ``(d, targets)`` and intercept of the ridge fit on every row. ``transform``: applied to each block of
    rows first (a feature map), so that its output is never held whole."""
    n = len(X)
    rows = (
        (lambda b: np.asarray(transform(X[b]), dtype=np.float64)) if transform else (lambda b: X[b].astype(np.float64))
    )
    d = rows(slice(0, 1)).shape[1]  # the mapped width (a feature map may change it)
    total, G, XtY = np.zeros(d), np.zeros((d, d)), np.zeros((d, Y.shape[1]))
    for b in _blocks(n):
        Z = rows(b)
        total += Z.sum(axis=0)
        G += Z.T @ Z
        XtY += Z.T @ Y[b]
    mean, ybar = total / n, Y.mean(axis=0)
    G -= n * np.outer(mean, mean)
    XtY -= n * np.outer(mean, ybar)
    s, V = np.linalg.eigh(G)
    s = np.clip(s, 0.0, None)
    c = V.T @ XtY  # (d, targets)
    inverse = 1.0 / (s[:, None] + np.asarray(alphas, dtype=np.float64)[None, :])  # (d, alphas)
    errors = np.zeros(len(alphas))
    for b in _blocks(n):
        Q = (rows(b) - mean) @ V
        h = 1.0 / n + (Q * Q) @ inverse  # (rows, alphas)
        for a in range(len(alphas)):
            residual = (Y[b] - ybar - Q @ (c * inverse[:, a : a + 1])) / (1.0 - h[:, a : a + 1])
            errors[a] += float((residual * residual).sum())
    errors /= n * Y.shape[1]
    best = int(np.argmin(errors))
    W = V @ (c * inverse[:, best : best + 1])
    return float(alphas[best]), errors, W, ybar - mean @ W


class _RidgeBase(ClassifierMixin, BaseEstimator):
    """The fitted part both share: ``coef_``, ``intercept_``, ``classes_`` as ``RidgeClassifier``'s."""

    def _features(self, X):
        return X

    def _fit_ridge(self, X, y, transform=None):
        X, y = checked_fit(X, y, self._entry, self)
        self.classes_ = np.unique(y)
        alphas = (self.alpha,) if self.alpha is not None else tuple(sorted(self.alphas))
        self.alpha_, self.cv_errors_, W, b = loo_ridge(X, _targets(y, self.classes_), alphas, transform)
        self.coef_, self.intercept_ = W.T, b
        self.n_features_in_ = X.shape[1]
        return self

    def check_params(self) -> None:
        for name, value in (("alpha", self.alpha), *(("alphas", a) for a in self.alphas)):
            if value is not None and (not real(value) or not value > 0):
                raise InvalidValue(f"classifier {self._entry}: {name}={value!r}: give a positive number")

    def decision_function(self, X):
        check_is_fitted(self, "coef_")
        X = checked_rows(X, self._entry, self, reset=False)  # a NaN or a row of other length: one line, as fit
        out = np.empty((len(X), len(self.intercept_)))
        for b in _blocks(len(X)):
            out[b] = np.asarray(self._features(X[b]), dtype=np.float64) @ self.coef_.T + self.intercept_
        return out[:, 0] if out.shape[1] == 1 else out

    def predict(self, X):
        scores = self.decision_function(X)
        return self.classes_[(scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(axis=1)]


class TunedRidge(_RidgeBase):
    """Ridge regression on ±1 one-hot targets with ``alpha`` chosen by exact leave-one-out over ``alphas``
    (``RidgeClassifierCV``'s efficient LOO, in blocks); ``alpha`` given: a plain ridge fit with it.
    Fitted: ``alpha_``, ``cv_errors_`` (mean squared LOO error per alpha), ``coef_``, ``intercept_``."""

    _entry = "ridge"

    def __init__(self, alpha=None, alphas=ALPHAS):
        self.alpha = alpha
        self.alphas = alphas

    def fit(self, X, y):
        self.check_params()
        return self._fit_ridge(X, y)


class NystroemRidge(_RidgeBase):
    """An RBF kernel approximated by a Nystroem map on ``n_components`` rows, then ``TunedRidge`` on the mapped rows
    (never held whole: mapped a block at a time). ``gamma="scale"`` is ``SVC``'s: ``1 / (d * X.var())``.
    Fitted: ``gamma_``, ``map_`` (the Nystroem), ``alpha_`` and the ridge's ``coef_`` on the mapped features."""

    _entry = "rbf-svm~nystroem"

    def __init__(self, n_components=1000, gamma="scale", alpha=None, alphas=ALPHAS, random_state=0):
        self.n_components = n_components
        self.gamma = gamma
        self.alpha = alpha
        self.alphas = alphas
        self.random_state = random_state

    def check_params(self) -> None:
        super().check_params()
        if not whole(self.n_components) or self.n_components < 1:
            raise InvalidValue(f"classifier {self._entry}: n_components={self.n_components!r}: give 1 or more")
        if not (isinstance(self.gamma, str) and self.gamma == "scale") and not real(self.gamma):
            raise InvalidValue(f"classifier {self._entry}: gamma={self.gamma!r}: give scale or a number")

    def _features(self, X):
        return self.map_.transform(X)

    def fit(self, X, y):
        self.check_params()
        X, y = checked_fit(X, y, self._entry, self)
        self.gamma_ = float(1.0 / (X.shape[1] * X.var()) if self.gamma == "scale" else self.gamma)
        m = min(self.n_components, len(X))
        self.map_ = Nystroem(gamma=self.gamma_, n_components=m, random_state=self.random_state).fit(X)
        return self._fit_ridge(X, y, self._features)


__all__ = ["ALPHAS", "NystroemRidge", "TunedRidge", "loo_ridge"]
