"""The frozen baseline: the zoo's ``logreg`` on the cached features, and the same decision function as one
Linear layer on raw features (``W x + b``), which is where the fine-tuned head starts."""

from __future__ import annotations

import numpy as np

from classifiers.zoo import make_classifier
from embedder.kernel.errors import InvalidValue

PROBE = "logreg"  # the zoo's linear probe (classifiers/zoo.py)


def linear_probe(X: np.ndarray, y: np.ndarray, n_classes: int, seed: int = 0):
    """Fit the zoo's ``logreg`` Pipeline on ``X``; return it and its decision function folded into ``(W, b)`` over
    all ``n_classes`` (a class the probe never saw gets a logit of -1e4)."""
    pipe = make_classifier(PROBE, seed).fit(X, y)
    W, b = fold_linear(pipe)
    clf = pipe.named_steps["clf"]
    full_W, full_b = np.zeros((n_classes, X.shape[1])), np.full(n_classes, -1e4)
    full_W[clf.classes_], full_b[clf.classes_] = W, b
    return pipe, (full_W, full_b)


def fold_linear(pipe) -> tuple[np.ndarray, np.ndarray]:
    """``(W, b)`` such that ``X @ W.T + b`` is the pipeline's decision function (two logits for a binary
    problem, whose softmax is its probability). Only standardization may precede the linear model: an L2
    normalization or a PCA step would not fold into one Linear layer."""
    steps = pipe.named_steps
    if any(steps.get(name, "passthrough") != "passthrough" for name in ("l2", "pca")):
        raise InvalidValue(f"the {PROBE} probe has an l2 or pca step: it cannot start a Linear head")
    clf, scale = steps["clf"], steps.get("scale", "passthrough")
    W, b = clf.coef_, clf.intercept_
    if scale != "passthrough":
        W = W / scale.scale_
        b = b - W @ scale.mean_
    if W.shape[0] == 1:  # binary: logit of class 1 against class 0, split in two symmetric logits
        W, b = np.vstack([-W / 2, W / 2]), np.array([-b[0] / 2, b[0] / 2])
    return W, b
