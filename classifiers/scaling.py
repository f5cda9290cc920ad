"""The zoo's scale step: per-feature standardization whose variances, when they come from few rows, are shrunk
toward their common level (an empirical-Bayes estimate of the log-variances); from about 1,000 rows on,
scikit-learn's ``StandardScaler`` within 1 %.

A variance estimated from n rows is noisy: with 4 rows its log has a sampling variance of about 0.9 (trigamma of
(n - 1) / 2, for normal rows), larger than the spread of the true log-variances across a CNN layer's features (about
0.6 on MobileNetV2's 1,280). Dividing each feature by such an estimate blows up the features in which the few rows
happen to lie close together, whatever they carry, and an image that differs there then gets huge values. ``ShrunkScaler`` estimates that spread from the rows themselves
(the spread of the log-variances across features less their sampling variance) and pulls each log-variance toward
the mean of them by the usual James-Stein weight ``spread / (spread + sampling variance)``; the variances are then
rescaled to keep their mean (the total variance the classifier's regularization sees). The weight goes to 1 as the
rows grow: the scale is within 1 % of ``StandardScaler``'s for every feature from about 1,000 rows of a 1,280-d layer
(0.2 % at 2,569), within 2 % at 300. Measured: ``benchmarks/small_scale.py``."""

from __future__ import annotations

import numpy as np
from scipy.special import polygamma
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import _num_samples

from embedder.kernel.errors import InvalidValue

from .validation import checked_rows


def blocked_moments(X, block_bytes: int = 1 << 24, index=None) -> tuple[np.ndarray, np.ndarray]:
    """The mean and (biased) variance of each column of ``X`` (or of its rows ``index``, sorted), ``block_bytes`` of
    float64 rows at a time with float64 sums: never a float64 copy of all the rows (10 GB for a million float32
    rows of 1,280), nor a copy of the rows ``index`` names. The same sums in the same order either way: the rows
    taken and the rows named give the same moments, bit for bit."""
    n, d = (len(index), X.shape[1]) if index is not None else X.shape
    block = max(1, block_bytes // (8 * max(d, 1)))

    def rows(start: int):
        return X[start : start + block] if index is None else X[index[start : start + block]]

    total, squares = np.zeros(d), np.zeros(d)
    for start in range(0, n, block):
        total += rows(start).sum(axis=0, dtype=np.float64)
    mean = total / max(n, 1)
    for start in range(0, n, block):
        diff = rows(start).astype(np.float64)
        diff -= mean
        squares += np.einsum("ij,ij->j", diff, diff)
    return mean, squares / max(n, 1)


def shrink_weight(log_var: np.ndarray, n: int) -> float:
    """The James-Stein weight of each feature's own log-variance: the spread of the true log-variances (their
    observed variance across features less the sampling variance of one, trigamma((n - 1) / 2)) over the observed
    variance; 0 (one common scale) when the rows say nothing beyond their sampling noise, toward 1 as they grow."""
    if n < 2 or len(log_var) < 2:
        return 0.0
    noise = float(polygamma(1, (n - 1) / 2))
    spread = max(float(np.var(log_var)) - noise, 0.0)
    return spread / (spread + noise) if spread > 0 else 0.0


def shrunk_variances(var: np.ndarray, n: int) -> tuple[np.ndarray, float]:
    """Each feature's variance shrunk in log space toward the mean log-variance by ``shrink_weight``, the result
    rescaled to the same mean variance; features with no variance are left at 0 (they scale by 1). Also the weight."""
    var = np.asarray(var, dtype=np.float64)
    live = var > 0
    if live.sum() < 2:
        return var.copy(), 1.0
    log_var = np.log(var[live])
    weight = shrink_weight(log_var, n)
    out = var.copy()
    out[live] = np.exp(weight * log_var + (1 - weight) * log_var.mean())
    out[live] *= var[live].mean() / out[live].mean()
    return out, weight


class ShrunkScaler(StandardScaler):
    """``StandardScaler`` for any number of rows: ``mean_`` as its own, ``var_`` each feature's variance shrunk
    toward their common level by an amount the rows estimate (``shrunk_variances``; ``weight_`` is the weight of a
    feature's own variance: on MobileNetV2 features about 0.5 from 2 rows, 0.8 from 4 or 5, 0.9 from 10 to 25, 0.99
    from 300), ``scale_`` its square root (a constant
    column scales by 1), the same transform. Reads the rows a block at a time with float64 sums (a million
    float32 rows of 1,280 need no float64 copy). ``shrink=False``: the plain per-feature variances."""

    BLOCK_BYTES = 1 << 24  # 16 MB of float64 rows at a time

    def __init__(self, *, copy=True, with_mean=True, with_std=True, shrink=True):
        super().__init__(copy=copy, with_mean=with_mean, with_std=with_std)
        self.shrink = shrink

    def fit(self, X, y=None, sample_weight=None):
        if hasattr(X, "tocsr") or sample_weight is not None or not (self.with_mean and self.with_std):
            return self._fit_plain(X, y, sample_weight)
        X = checked_rows(X, "scale", self)  # records n_features_in_ and a DataFrame's names
        return self._set(*blocked_moments(X, self.BLOCK_BYTES), *X.shape)

    def _fit_plain(self, X, y, sample_weight):
        """Sparse rows, weights, or no centring: ``StandardScaler``'s own fit, its variances then shrunk the same
        way (by the number of rows) unless ``shrink=False``."""
        if not hasattr(X, "tocsr"):
            checked_rows(X, "scale")  # a NaN refused, as fit refuses it (the names are read by the fit below)
        plain = StandardScaler(copy=self.copy, with_mean=self.with_mean, with_std=self.with_std)
        plain.fit(X, y, sample_weight)
        for name in ("mean_", "var_", "scale_", "n_samples_seen_", "n_features_in_", "feature_names_in_"):
            self.__dict__.pop(name, None)
            if hasattr(plain, name):
                setattr(self, name, getattr(plain, name))
        self.weight_ = 1.0
        if self.shrink and self.var_ is not None:
            self.var_, self.weight_ = shrunk_variances(self.var_, _num_samples(X))
            self.scale_ = _scale(self.var_, self.mean_)
        return self

    def partial_fit(self, X, y=None, sample_weight=None):
        """Refused while shrinking: the shrinkage weighs the variances of all the rows at once; ``shrink=False``
        updates as ``StandardScaler`` does."""
        if self.shrink:
            raise InvalidValue("scale: partial_fit cannot shrink variances a batch at a time: use fit, or shrink=False")
        if isinstance(getattr(self, "n_samples_seen_", None), (int, np.integer)):
            self.n_samples_seen_ = np.int64(self.n_samples_seen_)  # StandardScaler's own type for it
        return super().partial_fit(X, y, sample_weight)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False  # a NaN is refused at fit (StandardScaler ignores them)
        return tags

    def fit_rows(self, layer, index):
        """The same fit on ``layer[index]`` (sorted row indices), read a block at a time: what
        ``rows.fit_by_index`` calls, never a copy of them all; the same ``mean_``, ``var_`` and ``scale_`` as
        ``fit`` on the rows taken, bit for bit."""
        index = np.asarray(index)
        self.__dict__.pop("feature_names_in_", None)  # a former fit's DataFrame columns
        return self._set(*blocked_moments(layer, self.BLOCK_BYTES, index), len(index), layer.shape[1])

    def _set(self, mean: np.ndarray, var: np.ndarray, n: int, d: int):
        self.mean_, self.n_samples_seen_, self.n_features_in_ = mean, n, d
        self.var_, self.weight_ = shrunk_variances(var, n) if self.shrink else (var, 1.0)
        self.scale_ = _scale(self.var_, mean)
        return self


def _scale(var: np.ndarray, mean: np.ndarray | None) -> np.ndarray:
    """The square roots of ``var``; a column constant to rounding (relative to its mean) scales by 1."""
    scale = np.sqrt(var)
    level = 1.0 if mean is None else np.maximum(np.abs(mean), 1.0)
    scale[scale < 10 * np.finfo(np.float64).eps * level] = 1.0
    return scale
