"""A fold fitted from the layer's rows by index: cross-validation without a copy of each fold's training rows.

``cv`` holds the layer; the usual fold takes ``X[train]``, a copy of 80 % of it at 5 folds, and a standardizing
step then works on that copy. An entry whose Pipeline can read the rows where they are (``fits_by_index``: no
``l2`` or ``pca`` step, a ``scale`` step and a classifier that both have ``fit_rows``, the tuned probe's) is instead
handed the layer and the fold's row indices (``LayerRows``) once those rows would take 1 GiB (``by_index``): the scaler's mean and variance are summed over those
rows a block at a time, and the classifier folds the standardization into its own products. The fitted Pipeline is
the one ``fit`` would have made (the same steps, the same attributes), so it predicts, exports and is saved as any
other. (``cv`` predicts every entry's test rows a block of ``PREDICT_BLOCK`` indices at a time.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PREDICT_BLOCK = 32_768  # test rows gathered and predicted at a time
BY_INDEX_FROM = 6_000  # training rows from which a fold that can be fitted by index is (the probe's held-out split)
# and the bytes of its float32 training rows from which it is: below, the copy is cheaper than its saving (the fold by
# index reads the layer's whole span in every product: 1.6 times the CPU of the copying fold at 200,000 rows, where
# the copy is 0.8 GB; benchmarks/cv_scale.py --fold)
BY_INDEX_BYTES = 2**30
# a fold by index over the copying fold's CPU seconds, for the cost model (1,000,000 x 1,280 rows, 5 folds: 139.8 s
# against 101.1 s, benchmarks/cv_scale.py --fold, 2026-12-06)
BY_INDEX_COST = 1.4


@dataclass(frozen=True)
class LayerRows:
    """Rows ``index`` (sorted, unique) of ``layer``, read where they are. ``mean`` and ``scale`` (per column, or
    None): what a fit on them standardizes by. ``shape`` and ``dtype`` are those of the rows it stands for."""

    layer: np.ndarray
    index: np.ndarray
    mean: np.ndarray | None = None
    scale: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.index), self.layer.shape[1])

    @property
    def dtype(self):
        return self.layer.dtype

    def __len__(self) -> int:
        return len(self.index)

    def span(self) -> tuple[int, int]:
        """The layer's rows from the first to past the last of these (a contiguous view serves them all)."""
        return (int(self.index[0]), int(self.index[-1]) + 1) if len(self.index) else (0, 0)

    def gather(self, positions) -> np.ndarray:
        """A copy of the rows at ``positions`` (of these rows, not of the layer), raw: a block at a time only."""
        return self.layer[self.index[positions]]


def fits_by_index(model) -> bool:
    """Whether ``model`` (a zoo Pipeline, unfitted) can be fitted from ``LayerRows``: its ``l2`` and ``pca`` steps
    off, its ``scale`` step off or able to fit on rows by index, its classifier able to (``fit_rows``)."""
    steps = dict(getattr(model, "steps", None) or [])
    if set(steps) != {"l2", "scale", "pca", "clf"} or steps["l2"] != "passthrough" or steps["pca"] != "passthrough":
        return False
    scaler = steps["scale"]
    if scaler != "passthrough" and not (
        hasattr(scaler, "fit_rows") and scaler.with_mean and scaler.with_std
    ):  # a scaler without its mean or scale would need the identity of another standardization
        return False
    return hasattr(steps["clf"], "fit_rows")


def by_index(model, n_train: int, width: int) -> bool:
    """Whether ``cv`` fits this fold (``n_train`` rows of ``width`` float32 columns) by index: ``fits_by_index``, at
    least ``BY_INDEX_FROM`` rows and ``BY_INDEX_BYTES`` of them. Below, the copy costs less than it saves: every
    product of the fold by index reads the layer's whole span, the rows of other folds included."""
    return n_train >= BY_INDEX_FROM and 4.0 * n_train * width >= BY_INDEX_BYTES and fits_by_index(model)


def fit_by_index(model, layer: np.ndarray, y: np.ndarray, index: np.ndarray, groups: np.ndarray | None = None):
    """Fit ``model`` (``fits_by_index``) on ``layer[index]`` with labels ``y[index]`` (and groups) without taking
    those rows: the scaler on the rows by index (``fit_rows``), then the classifier on ``LayerRows`` standardized
    by it. Returns the fitted model, as ``model.fit(layer[index], y[index])`` would."""
    index = np.asarray(index)
    steps = dict(model.steps)
    mean = scale = None
    if steps["scale"] != "passthrough":
        steps["scale"].fit_rows(layer, index)
        mean, scale = steps["scale"].mean_, steps["scale"].scale_
    rows = LayerRows(layer, index, mean, scale)
    steps["clf"].fit_rows(rows, y[index], None if groups is None else groups[index])
    return model


__all__ = ["BY_INDEX_BYTES", "BY_INDEX_FROM", "PREDICT_BLOCK", "LayerRows", "by_index", "fit_by_index", "fits_by_index"]
