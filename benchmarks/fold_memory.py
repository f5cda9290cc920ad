"""Memory of one cross-validation fold per zoo entry, beyond the layer: what ``classifiers/cost.py``'s memory models
(``*_memory``) rest on. tracemalloc counts numpy's allocations; the layer itself is made before it starts.

    PYTHONPATH=$PWD python benchmarks/fold_memory.py [ROWS] [ENTRY ...]   # default: 60000 rows, logreg ridge lda knn

Synthetic rows (class means plus noise, 1,280 dims, 10 classes, float32), one fold of 3 (two thirds train). Prints
each entry's peak in layers, and in units of the fold's training rows beyond those rows (the memory model's factor).
"""

from __future__ import annotations

import sys
import time
import tracemalloc

import numpy as np

from classifiers.crossval import Split, _estimator, _run_fold


def main(rows: int = 60_000, entries=("logreg", "ridge", "lda", "knn")) -> None:
    d, k = 1280, 10
    rng = np.random.default_rng(0)
    y = np.arange(rows) % k
    X = (rng.standard_normal((k, d))[y] + 3 * rng.standard_normal((rows, d))).astype(np.float32)
    order = rng.permutation(rows)
    split = Split(0, 0, np.sort(order[: 2 * rows // 3]), np.sort(order[2 * rows // 3 :]))
    fold = X[split.train].nbytes
    print(f"{rows:,} rows x {d} float32 (layer {X.nbytes / 1e9:.2f} GB), one fold of 3\n")
    print("| entry | peak beyond the layer, in layers | beyond the fold's rows, in fold rows | seconds |")
    print("|---|--:|--:|--:|")
    for spec in entries:
        estimator = _estimator(spec, 0, False, 3, False, len(split.train))
        tracemalloc.start()
        started = time.perf_counter()
        _run_fold(estimator, X, y, None, split, k)
        seconds = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(f"| {spec} | {peak / X.nbytes:.2f} | {(peak - fold) / fold:.2f} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    main(int(args[0]), args[1:] or ("logreg", "ridge", "lda", "knn")) if args else main()
