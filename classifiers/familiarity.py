"""How far an image lies from the images a model was trained on: a p-value to read its prediction with.

A classifier's probabilities answer "which of these classes?", never "is it one of them at all?": the placeholder
GIF among hymenoptera's photos gets "ants 0.99". The score here is Sun et al.'s (ICML 2022, "Out-of-distribution
detection with deep nearest neighbors"): the cosine distance from the image's vector to its ``K``-th nearest
training image. A model file keeps up to ``REFERENCE`` of its training rows (unit vectors in float16); each of them,
scored against the others (leave one out), places a new image: its familiarity is the share of them at least as
far from their own neighbours, ``(1 + count) / (n + 1)``, a conformal p-value. Over images like the training
images it is spread evenly on (0, 1], so ``UNFAMILIAR`` (0.01) flags about one in a hundred of them, and more of
anything else; how many more was measured (``benchmarks/familiarity.py``), not assumed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

K = 5  # the neighbour whose distance is the score (Sun et al.'s k for a few thousand training images)
REFERENCE = 1000  # training rows a model file keeps: 2.5 MB at 1,280 dimensions in float16
UNFAMILIAR = 0.01  # below this familiarity an image is said to be unlike the training images
BLOCK = 4096  # rows scored at a time: a block's similarities hold BLOCK x REFERENCE floats


def unit_rows(X: np.ndarray) -> np.ndarray:
    """``X``'s rows scaled to length 1, in float32 (a row of zeros stays zeros: far from every unit row)."""
    X = np.asarray(X, dtype=np.float32)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.maximum(norms, np.finfo(np.float32).tiny)


def reference_rows(X: np.ndarray, seed: int = 0, size: int = REFERENCE) -> np.ndarray:
    """The rows a model file keeps: all of ``X``'s up to ``size``, else ``size`` of them drawn with ``seed``, in
    their order; unit vectors in float16."""
    rows = np.arange(len(X))
    if len(X) > size:
        rows = np.sort(np.random.default_rng(seed).choice(len(X), size, replace=False))
    return unit_rows(np.asarray(X)[rows]).astype(np.float16)


@dataclass(frozen=True, eq=False)
class Familiarity:
    """The familiarity of new rows against a model's ``reference`` rows (``reference_rows``)."""

    reference: np.ndarray

    @property
    def k(self) -> int:
        """``K``, or fewer when the model kept fewer rows than ``K + 1`` (each is scored against the others)."""
        return max(1, min(K, len(self.reference) - 1))

    @property
    def floor(self) -> float:
        """The least familiarity there can be: ``1 / (n + 1)`` for ``n`` reference rows."""
        return 1.0 / (len(self.reference) + 1)

    @cached_property
    def unit_reference(self) -> np.ndarray:
        """The reference rows in float32, of length 1 again (float16 leaves them a thousandth off)."""
        return unit_rows(self.reference)

    def distances(self, X: np.ndarray, leave_out_self: bool = False) -> np.ndarray:
        """Each row's cosine distance to its ``k``-th nearest reference row; ``leave_out_self``: ``X`` is the
        reference itself, each row scored against the others."""
        R = self.unit_reference
        out = np.empty(len(X), dtype=np.float64)
        for start in range(0, len(X), BLOCK):
            S = unit_rows(X[start : start + BLOCK]) @ R.T
            if leave_out_self:
                S[np.arange(len(S)), np.arange(start, start + len(S))] = -np.inf
            kth = -np.partition(-S, self.k - 1, axis=1)[:, self.k - 1]
            out[start : start + len(S)] = 1.0 - kth
        return out

    @cached_property
    def calibration(self) -> np.ndarray:
        """The reference rows' own distances, each against the others, sorted."""
        return np.sort(self.distances(self.reference, leave_out_self=True))

    def p_values(self, X: np.ndarray) -> np.ndarray:
        """Each row's familiarity: ``(1 + the reference rows at least as far from their neighbours) / (n + 1)``."""
        ref = self.calibration
        at_least = len(ref) - np.searchsorted(ref, self.distances(X), side="left")
        return (1.0 + at_least) / (len(ref) + 1.0)


def summary(p: np.ndarray, familiarity: Familiarity, paths=(), below: float = UNFAMILIAR) -> dict:
    """What a prediction says of its rows' familiarity ``p``: how many are under ``below``, the first of their
    ``paths``, and the note a user reads."""
    low = np.flatnonzero(np.asarray(p) < below)
    n = len(familiarity.reference)
    out = {
        "below": below,
        "unfamiliar": int(len(low)),
        "rows": int(len(p)),
        "reference_rows": n,
        "k": familiarity.k,
        "measured_on": f"{n} of the model's training images (each against the others)",
    }
    if familiarity.floor >= below:
        out["note"] = (
            f"the model keeps {n} training images: no familiarity can fall under {below:g} (the least is 1/{n + 1}), "
            f"so no image is flagged; read the familiarity column as it is"
        )
    elif len(low):
        shown = [str(paths[i]) for i in low[:5]] if len(paths) else []
        out["note"] = (
            f"{len(low)} of {len(p)} images are unlike the images the model was trained on (familiarity under "
            f"{below:g}: fewer than {below:.0%} of its {n} training images kept are as far from their {familiarity.k} "
            f"nearest): their predicted class is a guess whatever its probability"
            + (f" ({', '.join(shown)}{', …' if len(low) > len(shown) else ''})" if shown else "")
        )
    return out
