"""Measure the cost model of ``cv --budget`` (classifiers/cost.py) from a few hundred rows to 200,000, entry by entry.

One fold as ``cv`` runs it: fit the entry's pipeline on ``n`` rows, predict ``n/4``, on synthetic rows generated in
memory (class means plus unit noise at the scale of benchmarks/cv_scale.py's caches: 10 classes, accuracy well below
100 %). Each row of the table times the speed check (``cost.speed_check``) just before the fold, so that the
estimate (the model's seconds times that speed) and the fold are measured back to back under the same load; it also
gives the fold's CPU seconds (every thread of the process: BLAS held at ``THREADS`` threads) and the load average.

    PYTHONPATH=$PWD python benchmarks/cost_model.py grid --threads 1 --out cal.jsonl      # 1,280 dims, 250 ... 200k
    PYTHONPATH=$PWD python benchmarks/cost_model.py grid --threads 1 --dims 512 --sizes 500,2000,8000,40000 \
        --out check.jsonl                                                                   # and --dims 2048 ...
    PYTHONPATH=$PWD python benchmarks/cost_model.py fit cal.jsonl check.jsonl   # constants (``calibration`` rows)
    PYTHONPATH=$PWD python benchmarks/cost_model.py table --cpu cal.jsonl check.jsonl   # model / CPU seconds
    PYTHONPATH=$PWD python benchmarks/cost_model.py table cal.jsonl check.jsonl   # estimate at the check / wall
    PYTHONPATH=$PWD python benchmarks/cost_model.py load   # the speed check and folds with busy processes beside

The model's seconds are one core's: ``--threads 1`` holds BLAS at one thread and the CPU seconds are what ``fit``
reads; ``--threads 2`` times the folds as ``cv`` runs them (the wall column is then the one to read).

``grid`` runs each entry only up to the rows where its fold stays within a few minutes (``LARGEST``): the exact
kernel SVM, brute-force kNN, the forest and the ensemble (which holds the exact kernel) are quadratic or steep, and
a 12-minute default budget leaves them out long before 200,000 rows.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

from classifiers import cost
from classifiers.budget import blas_share, estimate, fold_speed
from classifiers.cost import Shape
from classifiers.zoo import list_classifiers, make_classifier

SEPARATION = 0.06  # benchmarks/cv_scale.py's: class means' scale per dimension against unit noise
CLASSES = 10
THREADS = 2  # BLAS threads of the folds (the machine's cores)
ENTRIES = tuple(list_classifiers())  # every zoo entry, in the zoo's order
# the most training rows each entry is timed at: beyond, a fold takes several minutes and the default budget has
# long left the entry out (the kernel entries work on 256 PCA dimensions whatever d is)
LARGEST = {
    "linear-svm": 80_000,
    "rbf-svm": 20_000,
    "knn": 80_000,
    "random-forest": 20_000,
    "extra-trees": 20_000,
    "ensemble": 8_000,
}
CALIBRATION = (250, 1_000, 4_000, 20_000, 80_000, 200_000)


def data(n: int, d: int, k: int = CLASSES, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    y[:k] = np.arange(k)  # every class present
    means = (SEPARATION * rng.standard_normal((k, d))).astype(np.float32)
    X = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 16_384):
        block = rng.standard_normal((min(16_384, n - start), d), dtype=np.float32)
        X[start : start + len(block)] = block + means[y[start : start + len(block)]]
    return X, y


def load() -> float:
    return os.getloadavg()[0]


def fold(spec: str, X, y, n: int) -> tuple[float, float]:
    """Fit on the first ``n`` rows, predict the rest: one fold's wall and CPU seconds."""
    model = make_classifier(spec)
    wall, cpu = time.perf_counter(), time.process_time()
    model.fit(X[:n], y[:n]).predict(X[n:])
    return time.perf_counter() - wall, time.process_time() - cpu


def grid(dims: list[int], sizes: list[int], entries: list[str], out: str) -> None:
    print(f"{'entry':18} {'n':>8} {'d':>5} {'estimate':>9} {'wall':>8} {'cpu':>8} {'est/wall':>8} {'load':>5}")
    for d in dims:
        for n in sizes:
            todo = [e for e in entries if n <= LARGEST.get(e, 10**9)]
            if not todo:
                continue
            t = n // 4
            X, y = data(n + t, d)
            for spec in todo:
                cost._MEASURED.clear()
                with threadpool_limits(THREADS):
                    probe, threaded = cost.speed_check()
                    cost._MEASURED.clear()
                    shape = Shape(n, t, d, CLASSES)
                    speed = fold_speed(cost.machine_speed, 1, blas_share(spec, shape))
                    guess = speed * (estimate(spec, shape) or 0.0)
                    wall, cpu = fold(spec, X, y, n)
                row = dict(
                    entry=spec,
                    n=n,
                    t=t,
                    d=d,
                    k=CLASSES,
                    wall=wall,
                    cpu=cpu,
                    threads=THREADS,
                    speed=speed,
                    estimate=guess,
                )
                row.update(probe=probe, threaded=threaded, load=load(), at=time.strftime("%Y-%m-%d %H:%M:%S"))
                with open(out, "a") as f:
                    f.write(json.dumps(row) + "\n")
                print(
                    f"{spec:18} {n:8d} {d:5d} {guess:8.2f}s {wall:7.2f}s {cpu:7.2f}s {guess / wall:8.2f} {row['load']:5.2f}",
                    flush=True,
                )
            del X, y


def rows(paths: list[str]) -> list[dict]:
    return [json.loads(line) for path in paths for line in open(path) if line.strip()]


def normalized(row: dict) -> float:
    """The fold's seconds on the calibration machine: wall over the speed the check measured just before it."""
    return row["wall"] / speed(row)


def speed(row: dict) -> float:
    """The row's speed against the calibration machine as ``cost.machine_speed`` now says it from the row's check,
    for the entry's share of BLAS (``budget.blas_share``)."""
    one, every_core = row["probe"], row.get("threaded", row["probe"])
    share = blas_share(row["entry"], Shape(row["n"], row["t"], row["d"], row["k"]))
    return fold_speed(lambda jobs, threads: cost.speed_from(one, every_core, threads), 1, share)


def calibration(row: dict) -> bool:
    """The rows the constants are fitted to: 1,280 dims up to 80,000 rows, and 512 dims up to 2,000 (so that a fixed
    part and a d³ part can be told apart); every other row checks the fit."""
    return (row["d"] == 1280 and row["n"] <= 80_000) or (row["d"] == 512 and row["n"] <= 2_000)


def units(spec: str, n: int, t: int, d: int, k: int) -> list[float] | None:
    """The terms of each entry's formula in cost.py, in the order of its constants (the fixed part first)."""
    p = 256
    pca = (n + t) * d * min(p, n, d)
    m = min(1000, n)
    inner = 2 * n if n < 6000 else 2 * n / 3
    return {
        "logreg": [d * k, inner * d * k, n * d * k],  # LOGREG_FIXED, LOGREG_SWEEP, LOGREG
        "linear-svm": [n * d * k * min(1.0, math.sqrt(n / (3 * d))), n * d * k],  # LINEAR_SVM, LINEAR_SVM_PLAIN
        "rbf-svm": [1.0, pca, n * (n + t) * p],  # RBF_FIXED, (PCA), RBF_SVM
        "rbf-svm~nystroem": [1.0, pca, (n + t) * m * (p + m), m**3],  # NYSTROEM_FIXED, PCA, NYSTROEM, NYSTROEM_CUBIC
        "knn": [1.0, n * t * d],  # KNN_FIXED, NEIGHBOURS
        "ridge": [1.0, n * d * d, d**3],  # RIDGE_FIXED, GRAM, CUBIC
        "lda": [1.0, n * d * d, d**3],  # LDA_FIXED, LDA_GRAM, LDA_CUBIC
        "random-forest": [300 * n * math.log2(n) * math.sqrt(d)],  # FOREST
        "extra-trees": [300.0, 300 * n * math.log2(n) * math.sqrt(d)],  # EXTRA_TREES_FIXED (a tree), EXTRA_TREES
    }.get(spec)


def fit(paths: list[str]) -> None:
    """Each entry's constants: non-negative least squares on the relative error of the model against the
    calibration rows' CPU seconds (one thread), and the model over the measurement on each of them."""
    from scipy.optimize import nnls

    found = [r for r in rows(paths) if calibration(r)]
    probes = [r["probe"] for r in found]
    print(
        f"PROBE_SECONDS = {min(probes):.3g}  # the best one-thread check of the grid (median {np.median(probes):.3g})"
    )
    for spec in ENTRIES:
        mine = [r for r in found if r["entry"] == spec]
        terms = [units(spec, r["n"], r["t"], r["d"], r["k"]) for r in mine]
        if not mine or terms[0] is None:
            continue
        U, y = np.array(terms), np.array([r["cpu"] for r in mine])
        scale = (U / y[:, None]).max(axis=0)
        scale[scale == 0] = 1.0
        constants = nnls(U / y[:, None] / scale, np.ones(len(y)))[0] / scale
        fitted = ", ".join(f"{r['n']:,}x{r['d']}: {m / c:.2f}" for r, m, c in zip(mine, U @ constants, y))
        print(f"{spec:18} {' '.join(f'{v:.3g}' for v in constants)}   model/measured {fitted}")


def table(paths: list[str], cpu: bool = False, markdown: bool = False) -> None:
    """Estimate over measured fold, per entry and size. Wall (the default): the current cost.py's seconds times the
    speed its check measured just before the fold, over the fold's wall seconds. ``cpu``: the model's seconds (one
    core's) over the fold's CPU seconds, which a shared machine's load moves far less."""
    found = rows(paths)
    shapes = sorted({(r["d"], r["n"]) for r in found})
    join = (lambda cells: "| " + " | ".join(c.strip() for c in cells) + " |") if markdown else " ".join
    print(join([f"{'entry':18}", *(f"{f'{n:,} x {d}':>11}" for d, n in shapes)]))
    if markdown:
        print("|---|" + "--:|" * len(shapes))
    within = total = 0
    for spec in ENTRIES:
        cells = []
        for d, n in shapes:
            mine = [r for r in found if r["entry"] == spec and r["n"] == n and r["d"] == d]
            if not mine:
                cells.append(f"{'-':>11}")
                continue
            r = mine[-1]
            model = estimate(spec, Shape(r["n"], r["t"], d, r["k"])) or 0.0
            ratio = model / r["cpu"] if cpu else speed(r) * model / r["wall"]
            within += 1 / 1.5 <= ratio <= 1.5
            total += 1
            cells.append(f"{ratio:11.2f}" if not markdown or 1 / 1.5 <= ratio <= 1.5 else f"**{ratio:.2f}**")
        print(join([f"{spec:18}", *cells]))
    loads = [r["load"] for r in found]
    what = "model / CPU seconds" if cpu else "estimate (at the check's speed) / wall seconds"
    print(f"{what}: {within} of {total} within a factor of 1.5; load average {min(loads):.1f} to {max(loads):.1f}")


SPIN = "import numpy as np, time\nA = np.ones((1500, 1500), np.float32)\nwhile True: A @ A"


def under_load() -> None:
    """The speed check and two real folds, idle and with 1 and 2 busy processes beside them (each a single-threaded
    matrix product in a loop): how far each moves. A plan should move as far as the folds do, no further."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # a stopped run ends its busy processes too (finally)
    n, d = 20_000, 1280
    X, y = data(n + n // 4, d)
    print(
        "how far each moves against the first idle row (BLAS at the folds' 2 threads; linear-svm at 2,500 rows, on one thread)"
    )
    print(
        f"{'busy':>4} {'old check':>10} {'new check':>10} {'speed':>6} {'logreg':>7} {'ridge':>7} {'lsvm':>7} {'load':>5}"
    )
    base = None
    for busy in (0, 2, 0, 2):
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        spinners = [subprocess.Popen([sys.executable, "-c", SPIN], env=env) for _ in range(busy)]
        try:
            time.sleep(2.0 if busy else 0.5)
            with threadpool_limits(THREADS):
                old = min(old_check() for _ in range(3))
                cost._MEASURED.clear()
                new = cost.speed_check()[0]
                speed = cost.machine_speed()
                folds = [fold(spec, X, y, n)[0] for spec in ("logreg", "ridge")]
                folds.append(fold("linear-svm", X[:3125], y[:3125], 2500)[0])
        finally:
            for p in spinners:
                p.kill()
                p.wait()
        now = [old, new, speed, *folds]
        base = base or now
        cells = " ".join(f"{v / b:>{w}.2f}" for v, b, w in zip(now, base, (10, 10, 6, 7, 7, 7)))
        print(f"{busy:4d} {cells} {load():5.2f}   ({', '.join(f'{v:.3f}' for v in now)} s)", flush=True)


def old_check() -> float:
    """The former check: a 1024 x 512 by 512 x 1024 product and a 512 x 512 solve, one timing."""
    rng = np.random.default_rng(0)
    A = rng.standard_normal((1024, 512), dtype=np.float32)
    B = A[:512].T @ A[:512] + 512 * np.eye(512, dtype=np.float32)
    started = time.perf_counter()
    A @ A.T
    np.linalg.solve(B, A[:512].T)
    return time.perf_counter() - started


def main() -> None:
    global THREADS
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("grid", "fit", "table", "load"))
    parser.add_argument("paths", nargs="*")
    parser.add_argument("--dims", default="1280")
    parser.add_argument("--sizes", default=",".join(map(str, CALIBRATION)))
    parser.add_argument("--entries", default=",".join(ENTRIES))
    parser.add_argument("--out", default="cost_model.jsonl")
    parser.add_argument("--threads", type=int, default=THREADS, help="grid: BLAS threads of the folds")
    parser.add_argument("--cpu", action="store_true", help="table: the model against CPU seconds")
    parser.add_argument("--markdown", action="store_true", help="table: as a Markdown table (misses in bold)")
    a = parser.parse_intermixed_args()
    if a.what == "grid":
        THREADS = a.threads
        print(f"{time.strftime('%Y-%m-%d %H:%M')}; {os.cpu_count()} cores; BLAS at {THREADS} threads; {os.uname()[1]}")
        grid([int(v) for v in a.dims.split(",")], [int(v) for v in a.sizes.split(",")], a.entries.split(","), a.out)
    elif a.what == "fit":
        fit(a.paths)
    elif a.what == "table":
        table(a.paths, a.cpu, a.markdown)
    else:
        under_load()


if __name__ == "__main__":
    main()
