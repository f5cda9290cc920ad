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
    """``X``'s rows scaled to length 1, in float32; the norms in float64, so that neither 1e20 nor 1e-24 is lost (a
    row of zeros stays zeros: far from every unit row)."""
    X = np.asarray(X, dtype=np.float64)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return (X / np.maximum(norms, np.finfo(np.float64).tiny)).astype(np.float32)


def reference_rows(X: np.ndarray, seed: int = 0, size: int = REFERENCE) -> np.ndarray | None:
    """The rows a model file keeps, unit vectors in float16, in their order: all of ``X``'s up to ``size``, else
    ``size`` of them drawn with ``seed``; each distinct vector once (six copies of one image would be each other's
    nearest neighbours at distance 0, and every new image would look unlike the training images), and none that is
    NaN or zero (no direction to compare). None when fewer than two such rows are left: there is nothing to place a
    new row among."""
    X = np.asarray(X)
    order = np.arange(len(X)) if len(X) <= size else np.random.default_rng(seed).permutation(len(X))
    kept: list[int] = []
    seen: set[bytes] = set()
    for start in range(0, len(order), BLOCK):  # drawn in order until ``size`` distinct rows: a block or two
        block = order[start : start + BLOCK]
        rows = unit_rows(X[block])
        usable = np.isfinite(rows).all(axis=1) & (np.abs(np.linalg.norm(rows, axis=1) - 1) < 1e-3)  # no NaN, no zeros
        for i, row in zip(block[usable], rows[usable].astype(np.float16)):
            key = row.tobytes()
            if key not in seen:
                seen.add(key)
                kept.append(int(i))
                if len(kept) == size:
                    break
        if len(kept) == size:
            break
    if len(kept) < 2:
        return None
    return unit_rows(X[np.sort(kept)]).astype(np.float16)


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
            at = S.shape[1] - self.k  # the k-th largest similarity, in place of a sort
            out[start : start + len(S)] = 1.0 - np.partition(S, at, axis=1)[:, at]
        return out

    @cached_property
    def calibration(self) -> np.ndarray:
        """The reference rows' own distances, each against the others, sorted."""
        return np.sort(self.distances(self.reference, leave_out_self=True))

    def p_values(self, X: np.ndarray) -> np.ndarray:
        """Each row's familiarity: ``(1 + the reference rows at least as far from their neighbours) / (n + 1)``."""
        return self.scored(X)[0]

    def scored(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each row's familiarity (``p_values``) and distance (``distances``: the order among equal familiarities)."""
        d = self.distances(X)
        return self.placed(d), d

    def placed(self, distances: np.ndarray) -> np.ndarray:
        """``p_values`` of rows whose ``distances`` are known."""
        ref = self.calibration
        at_least = len(ref) - np.searchsorted(ref, distances, side="left")
        return (1.0 + at_least) / (len(ref) + 1.0)


def summary(
    p: np.ndarray, familiarity: Familiarity, paths=(), below: float = UNFAMILIAR, distances: np.ndarray | None = None
) -> dict:
    """What a prediction says of its rows' familiarity ``p``: how many are under ``below`` (``can_flag``: whether
    any could be, given the rows the model keeps: ``train`` says so once), the least familiar of their ``paths``
    first (among equal familiarities, the farthest by ``distances``: past every kept row, many share the least
    familiarity there is), and the note a user reads."""
    p = np.asarray(p)
    low = np.flatnonzero(p < below)
    far = np.zeros(len(p)) if distances is None else -np.asarray(distances, dtype=np.float64)
    low = low[np.lexsort((far[low], p[low]))]
    n = len(familiarity.reference)
    named = [str(paths[i]) for i in low[:20]] if len(paths) else []
    out: dict = {
        "below": below,
        "unfamiliar": int(len(low)),
        "rows": int(len(p)),
        "reference_rows": n,
        "k": familiarity.k,
        "can_flag": familiarity.floor < below,
        "measured_on": f"{n} of the model's training images (each against the others)",
        "paths": named,
    }
    if len(low):
        shown = named[:5]
        out["note"] = (
            f"{len(low)} of {len(p)} images are unlike the images the model was trained on (familiarity under "
            f"{below:g}: fewer than {below:.0%} of its {n} training images kept are as far from their "
            f"{ordinal(familiarity.k)} nearest): their predicted class is a guess whatever its probability"
            + (f" ({', '.join(shown)}{', …' if len(low) > len(shown) else ''})" if shown else "")
        )
    return out


def floor_note(reference: np.ndarray | None, below: float = UNFAMILIAR) -> str | None:
    """What ``train`` says of a model that keeps too few rows to flag any image, once (else None)."""
    if reference is None:
        return "fewer than two distinct training images: no image's familiarity can be measured"
    n = len(reference)
    if 1.0 / (n + 1) < below:
        return None
    return (
        f"the model keeps {n} training images: no image can be shown unlike them (familiarity under {below:g} needs "
        f"{int(np.floor(1 / below - 1)) + 1} or more), so predict flags none; its familiarity column still ranks them"
    )


def ordinal(k: int) -> str:
    """1st, 2nd, 3rd, 4th…: the neighbour a familiarity is measured to, in a sentence."""
    return {1: "1st", 2: "2nd", 3: "3rd"}.get(k, f"{k}th")
