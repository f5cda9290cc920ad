"""How long a zoo entry takes on one fold, from the rows, dimensions and classes: the cost model ``cv --budget``
plans with.

Each family grows its own way with the training rows ``n`` (and the ``t`` test rows it predicts): linear models
like ``n·d·k``, ridge and LDA like ``n·d²`` plus ``d³``, the exact RBF SVM and brute-force kNN like ``n²``, a forest
like ``trees·n·log n·√d``. Each formula's constant is seconds on the machine the constants were measured on
(``benchmarks/cost_model.py``: small fits timed and fitted, numbers in docs/cross-validation.md). At the start of
a run, ``machine_speed`` times a small matrix product (about 50 ms) against the same product's time then, and the
estimates scale by that ratio: a loaded or faster machine gets estimates of its own.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass

import numpy as np

from embedder.kernel.errors import InvalidValue

# The default budget is cv's option (classifiers.options.CVOptions.budget), read by parse_budget.
PROBE_SECONDS = 0.03316  # the probe below on the calibration machine (2 idle cores: see benchmarks/cost_model.py)

# Seconds per unit of each formula, measured by benchmarks/cost_model.py (2-core AMD EPYC, idle; one run,
# 2026-11-30; at 1,280 dims and 8,000 to 16,000 training rows, the kernel families at 256 dims).
LOGREG = 1.96e-08  # the tuned probe (inner sweep + refit), per n·d·k
LINEAR_SVM = 1.4e-07  # per n·d·k
RBF_SVM = 5.47e-10  # per n·(n + t)·p (p: the PCA's dimensions)
PCA = 3.52e-10  # per n·d·p
NYSTROEM = 2.12e-10  # per n·m·(p + m), m components
CUBIC = 1.73e-10  # per d³ (an eigendecomposition, a solve)
GRAM = 4.68e-11  # per n·d² (ridge's two passes, LDA's covariance)
NEIGHBOURS = 2.21e-11  # per n·t·d (brute force)
FOREST = 7.37e-08  # per tree·n·log2(n)·√d
MAP = 6.72  # the report's t-SNE map of at most 2,000 rows (with its PCA), seconds
# The approximate neighbour index beyond the exact range (projection, graph, exact rescoring), per n·d: one thread's
# CPU seconds at 200,000 x 1,280 rows over 1.5 (two cores), benchmarks/neighbour_index.py (2026-12-06)
INDEX = 2.0e-07


@dataclass(frozen=True)
class Shape:
    """One fold's work: ``n`` training rows, ``t`` test rows, ``d`` dimensions, ``k`` classes."""

    n: float
    t: float
    d: float
    k: float


def logreg(s: Shape, params: dict) -> float:
    return LOGREG * s.n * s.d * s.k * (0.45 if params.get("C") is not None else 1.0)  # a fixed C: no sweep


def linear_svm(s: Shape, params: dict) -> float:
    return LINEAR_SVM * s.n * s.d * s.k


def _pca(s: Shape, params: dict, default: int | None) -> tuple[float, float]:
    """The PCA step's seconds and the dimensions after it."""
    p = params.get("pca", default)
    p = 256 if p is True else p
    return (PCA * s.n * s.d * min(p, s.d), min(p, s.d)) if p else (0.0, s.d)


def rbf_svm(s: Shape, params: dict) -> float:
    seconds, p = _pca(s, params, 256)
    return seconds + RBF_SVM * s.n * (s.n + s.t) * p


def nystroem(s: Shape, params: dict) -> float:
    seconds, p = _pca(s, params, 256)
    m = min(params.get("n_components", 1000), s.n)
    return seconds + NYSTROEM * (s.n + s.t) * m * (p + m) + 2 * CUBIC * m**3


def ridge(s: Shape, params: dict) -> float:
    return 2 * GRAM * s.n * s.d**2 + CUBIC * s.d**3


def lda(s: Shape, params: dict) -> float:
    return GRAM * s.n * s.d**2 + 2 * CUBIC * s.d**3


def brute_neighbours(s: Shape, params: dict) -> float:
    return NEIGHBOURS * s.n * s.t * s.d


def forest(s: Shape, params: dict) -> float:
    trees = params.get("n_estimators", 300)
    return FOREST * trees * s.n * math.log2(max(s.n, 2)) * math.sqrt(s.d)


# Memory: the bytes an entry's fold needs beyond the layer and the fold's own float32 training rows (cv holds both).
# Measured with tracemalloc at 40,000 training rows x 1,280 dims (benchmarks/fold_memory.py: logreg 0.21 fold rows
# beyond them, lda 1.06, ridge its blocks); the others from what their code copies (liblinear: a float64 copy; kNN:
# the test rows normalized and its tiles; the RBF entries: PCA's centred copy of the rows and its output, and SVC's
# kernel cache, 3.35 GB at 200,000 rows with the Nystroem stand-in; a forest: about the rows again).
MEMORY_FLOOR = 4 * 2**30  # the bound is twice the layer, or this much if that is more: small layers are never cut
TILES = 128 * 2**20  # the neighbour search's tile and its pass over it


def fold_bytes(s: Shape) -> float:
    return 4.0 * s.n * s.d


def logreg_memory(s: Shape, params: dict) -> float:
    return 0.25 * fold_bytes(s)  # the solver's n x k arrays and the held-out probabilities (the rows: in place)


ROWS_BLOCK = 32_768  # rows.PREDICT_BLOCK and solver.ROW_BLOCK: the rows a fold fitted by index copies at a time


def logreg_by_index_memory(s: Shape, params: dict) -> float:
    """The tuned probe's fold fitted by index (``rows.fit_by_index``): never the fold's rows, only blocks of them
    (a held-out block gathered, a test block and its standardized copy), the span's labels, weights and indices
    (24 bytes a row), the solver's per-block scores and the scaler's float64 blocks."""
    return 3 * 4.0 * ROWS_BLOCK * s.d + 24.0 * (s.n + s.t) + 64 * 2**20


def linear_svm_memory(s: Shape, params: dict) -> float:
    return 2.0 * fold_bytes(s)  # liblinear works on a float64 copy of the rows


def ridge_memory(s: Shape, params: dict) -> float:
    return 3 * 2048 * s.d * 8 + 4 * 8 * s.d**2  # float64 blocks of rows, the Gram matrix and its eigenvectors


def lda_memory(s: Shape, params: dict) -> float:
    return 1.1 * fold_bytes(s)  # scikit-learn's class-wise copies for the shrunk covariance


def neighbours_memory(s: Shape, params: dict) -> float:
    return 4.0 * s.t * s.d + TILES  # the test rows normalized, the tiles (the training rows are kept, not copied)


def rbf_svm_memory(s: Shape, params: dict) -> float:
    return fold_bytes(s) + 8.0 * (s.n + s.t) * 256 + 200 * 2**20  # PCA's centred copy, its output, the kernel cache


def nystroem_memory(s: Shape, params: dict) -> float:
    m = min(params.get("n_components", 1000), s.n)
    return fold_bytes(s) + 8.0 * (s.n + s.t) * 256 + 8.0 * m * (m + 2 * 8192)  # PCA's centred copy, its output, map


def forest_memory(s: Shape, params: dict) -> float:
    return 1.0 * fold_bytes(s)  # the trees' own sorted copy of the rows and the trees, about as much again


PROCESS = 512 * 2**20  # the interpreter, its libraries, and the rows' paths and labels at a million rows


def peak_bytes(layer: float, s: Shape, extra: float, rows: bool = True) -> float:
    """One fold's peak: the process itself, the layer, the fold's training rows (``rows``: False when the fold is
    fitted by index, ``rows.by_index``) and the entry's own memory."""
    return PROCESS + layer + (fold_bytes(s) if rows else 0.0) + extra


def memory_bound(layer: float) -> float:
    """What a run without ``-c`` may hold: twice the layer, and never less than ``MEMORY_FLOOR``."""
    return max(2.0 * layer, MEMORY_FLOOR)


_MEASURED: dict[str, float] = {}  # the last probe in this process: when, and what it said
REPROBE = 300.0  # seconds before a run probes again (one process running many cvs probes once in a while)


def machine_speed(repeats: int = 3) -> float:
    """How much slower (> 1) or faster this machine is now than the calibration machine: the best of ``repeats``
    timings of a 1024 x 512 by 512 x 1024 float32 product (plus a 512 x 512 solve), over that one's. Kept for
    ``REPROBE`` seconds in the process."""
    if time.monotonic() - _MEASURED.get("at", -math.inf) < REPROBE:
        return _MEASURED["speed"]
    rng = np.random.default_rng(0)
    A = rng.standard_normal((1024, 512), dtype=np.float32)
    B = A[:512].T @ A[:512] + 512 * np.eye(512, dtype=np.float32)
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        A @ A.T
        np.linalg.solve(B, A[:512].T)
        best = min(best, time.perf_counter() - started)
    _MEASURED.update(at=time.monotonic(), speed=best / PROBE_SECONDS)
    return _MEASURED["speed"]


MAX_BUDGET = 10_000 * 86400.0  # seconds: any budget beyond this means none (which says so)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([hms])")


def parse_budget(text) -> float | None:
    """``"15m"``, ``"2h"``, ``"1h30m"``, ``"90s"`` (a bare number is minutes) → seconds; ``"none"`` → None (no limit).
    Anything else is one line that says how to write it."""
    if text is None or isinstance(text, (int, float)):
        return None if text is None else float(text)
    value = str(text).strip().lower()
    if value in ("none", "off", "inf", "unlimited"):
        return None
    if re.fullmatch(r"\d+(\.\d+)?", value):
        seconds = float(value) * 60
    elif value and re.fullmatch(rf"(?:{_DURATION.pattern}\s*)+", value):
        seconds = sum(float(v) * {"h": 3600, "m": 60, "s": 1}[u] for v, u in _DURATION.findall(value))
    else:
        raise InvalidValue(f"--budget {text!r}: write a duration like 90s, 15m, 2h or 1h30m, or none")
    if seconds <= 0:
        raise InvalidValue(f"--budget {text!r}: give a duration above zero (90s, 15m, 2h), or none")
    if not seconds <= MAX_BUDGET:  # a 400-digit number is infinity as a float: an OverflowError later
        raise InvalidValue(f"--budget {str(text)[:40]!r}: give at most {MAX_BUDGET // 86400:.0f} days, or none")
    return seconds


def check_budget(text) -> str:
    """``text`` when ``parse_budget`` reads it (the command line's check), else its one-line error."""
    parse_budget(text)
    return text


def duration(seconds: float | None) -> str:
    """``45s``, ``12m``, ``3h10m``, ``2d4h``: an estimate, to the unit that matters."""
    if seconds is None:
        return "none"
    if seconds < 90:
        return f"{max(seconds, 0):.0f}s"
    minutes = seconds / 60
    if minutes < 90:
        return f"{minutes:.0f}m"
    hours, rest = divmod(round(minutes), 60)
    if hours < 48:
        return f"{hours}h{rest:02d}m" if rest else f"{hours}h"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours}h" if hours else f"{days}d"


__all__ = [
    "Shape",
    "check_budget",
    "duration",
    "machine_speed",
    "parse_budget",
]
