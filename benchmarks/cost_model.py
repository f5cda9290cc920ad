"""Measure the constants of the cost model (classifiers/cost.py) on this machine, and check it.

Times small fits (and predictions) of each family on synthetic data (class means plus noise, 10 classes), divides
by the formula's units, and prints each constant (the median over the sizes) with the probe time of
``cost.machine_speed``, measured in the same run: paste both into cost.py. Then compares, entry by entry, the
estimate (at the measured speed) with a timed fold at a larger size than the calibration ones.

    PYTHONPATH=$PWD python benchmarks/cost_model.py [--quick]   # the constants\n    PYTHONPATH=$PWD python benchmarks/cost_model.py --check     # estimates against timed folds
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np

from classifiers import cost
from classifiers.budget import estimate
from classifiers.cost import Shape, duration, machine_speed
from classifiers.registry import ReducedPCA
from classifiers.zoo import make_classifier


def data(n: int, d: int, k: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    means = rng.standard_normal((k, d)).astype(np.float32)
    return (means[y] + 3 * rng.standard_normal((n, d), dtype=np.float32)), y


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def fold(estimator, X, y, t: int) -> float:
    """Fit on the first rows, predict the last ``t``: one fold's seconds."""
    return timed(lambda: estimator.fit(X[:-t], y[:-t]).predict(X[-t:]))


def main(quick: bool = False) -> None:
    """The constants at the sizes a budget decides on: 1,280 dimensions (the widest common layer) for the linear,
    Gram and neighbour families, from 6,000 training rows (where the tuned probe chooses C on one inner split),
    so that the matrix products run as efficiently as they do at 200,000 rows; the kernel families on the PCA's
    256 dimensions."""
    from classifiers.report.embedmap import embedding_map

    probe = machine_speed() * cost.PROBE_SECONDS
    k, m = 10, 300
    G = np.cov(data(2048, 1280)[0].T)
    cubic = statistics.median(timed(lambda: np.linalg.eigh(G)) for _ in range(3)) / 1280**3
    found: dict[str, list[float]] = {"CUBIC": [cubic]}

    def add(name: str, seconds: float, units: float) -> None:
        found.setdefault(name, []).append(max(seconds, 1e-6) / units)

    for n in (6000, 9000) if quick else (8000, 16000):
        t, d = n // 2, 1280  # 3 folds: a fold predicts half as many rows as it trains on
        X, y = data(n + t, d)
        add("LOGREG", fold(make_classifier("logreg"), X, y, t), n * d * k)
        add("LINEAR_SVM", fold(make_classifier("linear-svm"), X, y, t), n * d * k)
        add("GRAM", fold(make_classifier("ridge:scale=off"), X, y, t) - cubic * d**3, 2 * n * d**2)
        add("NEIGHBOURS", fold(make_classifier("knn"), X, y, t), n * t * d)
        add("PCA", timed(lambda X=X, n=n: ReducedPCA(256).fit(X[:n]).transform(X)), (n + t) * d * 256)
        add("FOREST", fold(make_classifier("random-forest:n_estimators=20"), X, y, t), 20 * n * np.log2(n) * d**0.5)
    for n in (2000, 4000) if quick else (4000, 8000):
        t, d = n // 2, 256
        X, y = data(n + t, d)
        add("RBF_SVM", fold(make_classifier("rbf-svm:l2=off,pca=off"), X, y, t), n * (n + t) * d)
        nys = make_classifier(f"rbf-svm~nystroem:l2=off,pca=off,n_components={m}")
        add("NYSTROEM", fold(nys, X, y, t) - 2 * cubic * m**3, (n + t) * m * (d + m))
    add("MAP", timed(lambda: embedding_map(data(2000, 1280)[0])), 1.0)
    print(f"PROBE_SECONDS = {probe:.4g}  # machine_speed's product on this machine now")
    for name, values in found.items():
        print(f"{name} = {statistics.median(values):.3g}  # per size: {', '.join(f'{v:.3g}' for v in values)}")


def check(quick: bool) -> None:
    """Estimate against measurement for every entry, one fold at a size above the calibration ones."""
    speed = machine_speed()
    n = 3000 if quick else 6000
    t, d, k = n // 4, 512, 10
    X, y = data(n + t, d, k, seed=1)
    print(f"\none fold, {n} training rows, {t} test rows, {d} dims, {k} classes; machine speed {speed:.2f}")
    print(f"{'entry':18} {'estimated':>10} {'measured':>10} {'ratio':>6}")
    for spec in ("logreg", "linear-svm", "ridge", "lda", "rbf-svm", "rbf-svm~nystroem", "knn", "random-forest"):
        guess = speed * (estimate(spec, Shape(n, t, d, k)) or 0.0)
        took = fold(make_classifier(spec), X, y, t)
        print(f"{spec:18} {duration(guess):>10} {took:9.1f}s {took / guess:6.2f}")


if __name__ == "__main__":
    if "--check" in sys.argv:
        check("--quick" in sys.argv)
    else:
        main("--quick" in sys.argv)
