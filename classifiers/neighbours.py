"""Nearest neighbours by cosine similarity, in blocks: the one neighbour search of a ``cv`` run.

The outlier list (each image's most similar other image) and the label-issue neighbour signal (the labels of
each image's k most similar images) read the same search, made once per run (``CVReport.neighbours``).
"""

from __future__ import annotations

import numpy as np

BLOCK = 1024  # query rows per matrix product: BLOCK x references similarities is the only other memory
NEIGHBOURS = 10  # per image: the outliers read the first, the label issues' neighbour vote all of them
REFERENCE = 20_000  # beyond this many rows, neighbours are sought among a fixed random sample of them


def nearest_neighbours(
    X: np.ndarray, k: int = 10, reference: int = REFERENCE, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` most cosine-similar other rows (an image is not its own neighbour), most similar first:
    (indices, similarities), both ``(rows, k)``. Ties go to the earlier row.
    Beyond ``reference`` rows the neighbours come from a fixed random sample of that many rows (seeded). ``X`` is
    normalized in place (the caller's copy of the layer: no second one)."""
    X /= np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    n = len(X)
    if n <= reference:
        ref, R = np.arange(n), X  # every row is a reference: no copy
    else:
        ref = np.sort(np.random.default_rng(seed).choice(n, reference, replace=False))
        R = X[ref]  # once: at most `reference` rows (164 MB of 2048-d float32)
    k = max(1, min(k, len(ref) - 1)) if len(ref) > 1 else 1
    column = np.full(n, -1, dtype=np.int64)
    column[ref] = np.arange(len(ref))  # where each row sits among the references (-1: not one)
    index = np.empty((n, k), dtype=np.int64)
    similarity = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, BLOCK):
        block = X[start : start + BLOCK] @ R.T
        own = column[start : start + len(block)]
        mine = np.flatnonzero(own >= 0)
        block[mine, own[mine]] = -np.inf  # an image is not its own neighbour
        rows = np.arange(len(block))[:, None]
        if k < block.shape[1]:
            top = np.argpartition(-block, k - 1, axis=1)[:, :k]
        else:
            top = np.broadcast_to(np.arange(block.shape[1]), (len(block), block.shape[1])).copy()
        top.sort(axis=1)  # then a stable sort by similarity: ties go to the first row, as argmax's do
        top = np.take_along_axis(top, np.argsort(-block[rows, top], axis=1, kind="stable"), axis=1)
        index[start : start + len(block)] = ref[top]
        similarity[start : start + len(block)] = block[rows, top]
    return index, similarity


__all__ = ["nearest_neighbours"]
