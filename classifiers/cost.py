"""How long a zoo entry takes on one fold, from the rows, dimensions and classes: the cost model ``cv --budget``
plans with.

Each family grows its own way with the training rows ``n`` (and the ``t`` test rows it predicts), on top of a part
that does not grow with them (a few hundred rows cost that part mostly): linear models like ``n·d·k``, ridge and LDA
like ``n·d²`` plus ``d³``, the exact RBF SVM and brute-force kNN like ``n²``, a forest like ``trees·n·log n·√d``.
Each formula's constants are one core's seconds on the calibration machine (``benchmarks/cost_model.py``: folds
from 250 to 80,000 rows timed and fitted, checked at 200,000 rows and at other dimensions; numbers in
docs/cross-validation.md). At the start of a run, ``machine_speed`` times a small matrix product on one thread
and on the folds' threads (the median of 7 each, about 0.1 s) against the one-thread time there, and the estimates
scale by that ratio (and, for the entries whose work is in BLAS, by what the threads gain): a loaded or faster
machine gets estimates of its own.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass

import numpy as np

from embedder.kernel.errors import InvalidValue

# The default budget is cv's option (classifiers.options.CVOptions.budget), read by parse_budget.
# The model's seconds are one core's of the calibration machine (a 2-core AMD EPYC VM), measured by
# benchmarks/cost_model.py on 2026-12-06 as CPU seconds with BLAS held at one thread: the machine was shared (load
# average 5 to 13), and CPU time is what a fold costs whatever else runs (its wall time was 1.5 to 12 times it).
# Each entry's constants are fitted together (non-negative least squares on relative error) to folds of 250, 1,000,
# 4,000, 20,000 and 80,000 training rows at 1,280 dims and 500 and 2,000 at 512 (which tell a fixed part from a d³
# one); the folds at 200,000 rows, at 8,000 and 40,000 x 512 and at 2,048 dims were kept out of the fit to check it
# (docs/cross-validation.md, benchmarks/RESULTS.md). ``python benchmarks/cost_model.py fit`` prints them again.
PROBE_SECONDS = 0.00785  # speed_check's one-thread time on an idle core there (the best of the grid's checks)
# the earlier model (2026-11-30, idle, 8,000 to 16,000 rows): LOGREG 1.96e-8, LINEAR_SVM 1.4e-7, RBF_SVM 5.47e-10,
# PCA 3.52e-10, NYSTROEM 2.12e-10, CUBIC 1.73e-10, GRAM 4.68e-11, NEIGHBOURS 2.21e-11, FOREST 7.37e-8, no fixed parts
# The probe's three, fitted again on 2026-12-07 after its refit and sweep changed (benchmarks/cost_model.py grid
# --threads 1 --entries logreg, 250 to 80,000 x 1,280 and 500, 2,000 x 512, on another 2-core VM whose check took
# 0.00682 s: its constants times 0.00785 / 0.00682). The sweep's and the refit's terms both grow as n·d·k but for
# the step at HOLDOUT_FROM, which the grid's few sizes cannot place: their ratio is kept from the former fit and
# the scale fitted (a free fit put the sweep at 0). 0.81 to 1.00 of the folds' CPU seconds at 1,280 dims from 250
# to 200,000 rows, 0.99 to 1.72 at 512 (were 2.52e-05, 1.94e-09, 6.5e-09: 1.15 to 2.53 there)
LOGREG_FIXED = 1.79e-05  # per d·k: the tuned probe's set-up and the many steps of its path on few rows
LOGREG_SWEEP = 1.5e-09  # per inner row·d·k of the sweep (3 inner folds of 2n/3 below 6,000 rows; one of 2n/3 above)
LOGREG = 5.03e-09  # per n·d·k: the refit on every row
SWEEP_FITS = 2.5  # the tuned probe in single fits of scikit-learn's at its C (benchmarks/linear_probe.py, 2026-12-07:
# 2.4 from 6,000 rows, 2.7 to 3.7 on flowers' 2,569, more on fewer rows, where the seconds are small)
# liblinear: per n·d·k·min(1, √(n/3d)) (its passes are fewer while the rows are few for the dims) and per n·d·k;
# refitted 2026-12-06, late (250 to 80,000 x 1,280 and 500, 2,000 x 512; 0.67 to 1.37 of CPU seconds from 250 to
# 80,000 rows and 512 to 2,048 dims, where the former single term, 6.51e-08, gave 0.44 to 1.37)
LINEAR_SVM = 4.15e-08
LINEAR_SVM_PLAIN = 1.67e-08
RBF_FIXED = 0.0421  # seconds: the pipeline's steps and libsvm's set-up
RBF_SVM = 8.59e-10  # per n·(n + t)·p (p: the PCA's dimensions): libsvm's kernel rows
PCA = 1.46e-10  # per (n + t)·d·p: the PCA step (p = 256, or fewer rows or dims), fitted with the Nystroem entry
NYSTROEM_FIXED = 0.0614  # seconds
NYSTROEM = 2.06e-10  # per (n + t)·m·(p + m), m components
NYSTROEM_CUBIC = 7.33e-10  # per m³: the map's eigendecomposition and the ridge's solve
RIDGE_FIXED = 0.0417  # seconds: the scaling step, the leave-one-out over the alphas
GRAM = 1.13e-10  # per n·d² (ridge's two passes)
CUBIC = 1.76e-10  # per d³ (ridge's eigendecomposition)
LDA_FIXED = 0.0695  # seconds
LDA_GRAM = 2.14e-10  # per n·d² (LDA's class-wise covariance and shrinkage, in float64)
LDA_CUBIC = 2.95e-10  # per d³ (LDA's solve)
KNN_FIXED = 0.0133  # seconds
NEIGHBOURS = 2.72e-11  # per n·t·d (brute force; refitted with KNN_FIXED 2026-12-06, late: benchmarks/RESULTS.md)
FOREST = 8.51e-08  # per tree·n·log2(n)·√d
# extra trees refitted 2026-12-07 (10:40) on a quiet VM's CPU seconds (cost_model.py grid, 250 to 20,000 x 1,280,
# one BLAS thread and two: the trees run on one thread either way), times 0.00785 / each row's check: 0.90 to 1.08
# of them, where the former constants (0.002, 2.45e-08, fitted under a load average of 5 to 13) gave 1.34 to 1.95
EXTRA_TREES_FIXED = 7.9e-04  # seconds per tree: building and predicting a tree's nodes, whatever the rows
EXTRA_TREES = 1.81e-08  # per tree·n·log2(n)·√d: random thresholds, no sorting
# The report's extras keep their own units (two idle cores' wall seconds), not measured again here:
MAP = 6.72  # the report's t-SNE map of at most 2,000 rows (with its PCA), seconds (2026-11-30, idle)
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
    from .linear import HOLDOUT_FROM

    inner = 2 * s.n if s.n < HOLDOUT_FROM else 2 * s.n / 3  # 3 inner folds of 2n/3 rows, or one split
    tuned = (LOGREG_FIXED + LOGREG_SWEEP * inner + LOGREG * s.n) * s.d * s.k
    return tuned / SWEEP_FITS if params.get("C") is not None else tuned  # a fixed C: one fit, no sweep


def linear_svm(s: Shape, params: dict) -> float:
    return s.n * s.d * s.k * (LINEAR_SVM * min(1.0, math.sqrt(s.n / (3 * s.d))) + LINEAR_SVM_PLAIN)


def _pca(s: Shape, params: dict, default: int | None) -> tuple[float, float]:
    """The PCA step's seconds and the dimensions after it."""
    p = params.get("pca", default)
    p = 256 if p is True else p
    return (PCA * (s.n + s.t) * s.d * min(p, s.n, s.d), min(p, s.d)) if p else (0.0, s.d)


def rbf_svm(s: Shape, params: dict) -> float:
    seconds, p = _pca(s, params, 256)
    return RBF_FIXED + seconds + RBF_SVM * s.n * (s.n + s.t) * p


def nystroem(s: Shape, params: dict) -> float:
    seconds, p = _pca(s, params, 256)
    m = min(params.get("n_components", 1000), s.n)
    return NYSTROEM_FIXED + seconds + NYSTROEM * (s.n + s.t) * m * (p + m) + NYSTROEM_CUBIC * m**3


def ridge(s: Shape, params: dict) -> float:
    return RIDGE_FIXED + GRAM * s.n * s.d**2 + CUBIC * s.d**3


def lda(s: Shape, params: dict) -> float:
    return LDA_FIXED + LDA_GRAM * s.n * s.d**2 + LDA_CUBIC * s.d**3


def brute_neighbours(s: Shape, params: dict) -> float:
    return KNN_FIXED + NEIGHBOURS * s.n * s.t * s.d


def _trees(s: Shape, params: dict) -> float:
    return params.get("n_estimators", 300) * s.n * math.log2(max(s.n, 2)) * math.sqrt(s.d)


def forest(s: Shape, params: dict) -> float:
    return FOREST * _trees(s, params)


def extra_trees(s: Shape, params: dict) -> float:
    return EXTRA_TREES_FIXED * params.get("n_estimators", 300) + EXTRA_TREES * _trees(s, params)


# Memory: the bytes an entry's fold needs beyond the layer and the fold's own float32 training rows (cv holds both).
# Measured with tracemalloc at 40,000 training rows x 1,280 dims (benchmarks/fold_memory.py: logreg 0.21 fold rows
# beyond them, lda 1.06, ridge its blocks); the others from what their code copies (liblinear: a float64 copy; kNN:
# the test rows normalized and its tiles; the RBF entries: PCA's centred copy of the rows and its output, and SVC's
# kernel cache, 3.35 GB at 200,000 rows with the Nystroem stand-in; the trees: their nodes, below).
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


# The trees: 64 bytes a node and 8 a class (its value), and nodes per tree and training row as measured on noisy rows
# (cost_model.py's synthetic data, 10 classes, 1,000 and 4,000 rows, 2026-12-06): a bootstrap sample (the random
# forest) 0.58, every row (extra trees) 1.11; easier data grow fewer (2 classes: 0.20 and 0.50)
NODE_BYTES = 64
FOREST_NODES = 0.6
EXTRA_TREES_NODES = 1.1


def _tree_bytes(s: Shape, params: dict, nodes: float) -> float:
    return params.get("n_estimators", 300) * s.n * nodes * (NODE_BYTES + 8 * s.k)


def forest_memory(s: Shape, params: dict) -> float:
    return fold_bytes(s) + _tree_bytes(s, params, FOREST_NODES)  # a float32 copy of the rows, and the trees


def extra_trees_memory(s: Shape, params: dict) -> float:
    return fold_bytes(s) + _tree_bytes(s, params, EXTRA_TREES_NODES)


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


PROBE_SHAPE = (2048, 1280, 128)  # rows x dims by dims x width, float32: the shape of a linear fit's products
PROBE_REPEATS = 7
GAIN_BOUNDS = (0.5, 2.0)  # what the second timing may say about the threads: from twice slower to twice faster
CONTENTION_BOUNDS = (1.0, 4.0)  # how much slower a product may count while other folds run beside it
SETTLE = 0.3  # seconds of pause before the side-by-side check: BLAS workers that spin after a product go idle


def speed_check(repeats: int = PROBE_REPEATS, threads: bool = True) -> tuple[float, float]:
    """Seconds of a ``PROBE_SHAPE`` float32 product, on one thread and (``threads``; else NaN) on the threads the
    folds' BLAS uses: the median of ``repeats`` wall timings each, a few ms apart (about 0.1 s in all). Wall time,
    so that cores shared with other processes show as the folds will feel them; the median, so that neither one
    moment of another process's work nor one lucky moment decides the plan."""
    from threadpoolctl import threadpool_limits

    rows, dims, width = PROBE_SHAPE
    A = np.full((rows, dims), 0.5, dtype=np.float32)
    B = np.full((dims, width), 0.25, dtype=np.float32)

    def median() -> float:
        A @ B  # the threads started and the pages touched before the timings
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            A @ B
            times.append(time.perf_counter() - started)
            time.sleep(0.002)
        return float(np.median(times))

    with threadpool_limits(1):
        one = median()
    return one, median() if threads else math.nan


def together_check(workers: int, repeats: int = PROBE_REPEATS) -> float:
    """Seconds of a ``PROBE_SHAPE`` product on one thread while ``workers`` threads run it at once, each on one BLAS
    thread and its own rows, as folds have (the median over every worker's ``repeats`` timings): what each of
    ``workers`` folds fitted side by side gets of the machine now, other processes' work included. Run it after a
    pause (``machine_speed`` makes one): a BLAS worker left spinning by a product on every core (for about 0.1 s)
    is a third thread on two cores, and made two products at once about 1.5 times slower than one (0.95 to
    1.77 on an idle 2-core machine, benchmarks/speed_probe.py) where they are 1.0 after a pause."""
    import threading

    from threadpoolctl import threadpool_limits

    rows, dims, width = PROBE_SHAPE
    As = [np.full((rows, dims), 0.5, dtype=np.float32) for _ in range(workers)]
    B = np.full((dims, width), 0.25, dtype=np.float32)
    start = threading.Barrier(workers)
    times: list[float] = []

    def work(A: np.ndarray) -> None:
        A @ B
        try:
            start.wait(timeout=30)
        except threading.BrokenBarrierError:  # another thread failed before it: time this one alone
            pass
        for _ in range(repeats):
            began = time.perf_counter()
            A @ B
            times.append(time.perf_counter() - began)
            time.sleep(0.002)

    with threadpool_limits(1):
        threads = [threading.Thread(target=work, args=(A,)) for A in As]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return float(np.median(times))


def machine_speed(repeats: int = PROBE_REPEATS, jobs: int = 1, threads: bool = True) -> float:
    """How much slower (> 1) or faster this machine is now than the calibration machine's one core, whose seconds
    the model gives: ``speed_check``'s one-thread time over its time there (``PROBE_SECONDS``), then the square root
    of what the folds' way of running does to a product now (about half of a BLAS entry's fold is in its products).
    Folds one at a time (``jobs`` 1): divided by the square root of what their BLAS threads gain (within
    ``GAIN_BOUNDS``), so that an idle second core brings an estimate down by up to 1.4, and threads that wait on each
    other on a busy machine (slower than one) bring it up; not for an entry whose fit runs on one thread whatever BLAS
    has (``threads`` False: liblinear, libsvm, the trees, ``ClassifierSpec.threads``; the linear SVM's estimate was
    half its wall time with the gain). ``jobs`` folds side by side (``parallel.fold_jobs``), every entry: times the
    square root of how much slower a product is while ``jobs`` run at once (``together_check``, within
    ``CONTENTION_BOUNDS``): cores that are hyperthreads of one, or shared with other work, show (the BLAS threads a
    fold may have beyond one are not counted: an estimate on the safe side where cores outnumber the folds). One
    probe gives both; kept for ``REPROBE`` seconds in the process."""
    key = f"speed{jobs}" if threads or jobs > 1 else "serial1"
    if time.monotonic() - _MEASURED.get(f"at{jobs}", -math.inf) < REPROBE:
        return _MEASURED[key]
    if jobs > 1:  # side by side: no timing on every core (not used), and a pause for workers left spinning
        time.sleep(SETTLE)  # by one made before (another probe, the caller's own work)
    one, every_core = speed_check(repeats, threads=jobs == 1)
    if jobs > 1:
        slower = min(max(together_check(jobs, repeats) / one, CONTENTION_BOUNDS[0]), CONTENTION_BOUNDS[1])
        _MEASURED[f"speed{jobs}"] = one / PROBE_SECONDS * math.sqrt(slower)
    else:
        _MEASURED.update(speed1=speed_from(one, every_core), serial1=speed_from(one, every_core, threads=False))
    _MEASURED[f"at{jobs}"] = time.monotonic()
    return _MEASURED[key]


def speed_from(one: float, every_core: float, threads: bool = True) -> float:
    """``machine_speed`` for folds one at a time, from a ``speed_check``'s two timings."""
    gain = min(max(one / every_core, GAIN_BOUNDS[0]), GAIN_BOUNDS[1])
    return one / PROBE_SECONDS / (math.sqrt(gain) if threads else 1.0)


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
    "together_check",
    "parse_budget",
]
