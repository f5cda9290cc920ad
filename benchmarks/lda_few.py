"""LDA against the nearest class mean at a few labelled images per class: where ``registry.LDA_FROM`` comes from.

The zoo's ``lda`` is scikit-learn's LDA with Ledoit-Wolf shrinkage after the scale step; under ``LDA_FROM`` rows per
class on average it answers by the nearest class mean instead. For each ``--data NAME TRAIN_CACHE`` and each k of
``--per-class``: ``--draws`` seeded draws of k images per class of the cache, both models fit on them (the zoo's
scale step first, fit on the draw), and scored on the cache's rows no draw took (never a test set: this chooses).

    PYTHONPATH=$PWD python benchmarks/lda_few.py --data flowers cache/fewlabels/flowers-train.h5 \\
        --data hymenoptera cache/fewlabels/hymenoptera-train.h5 --write

(the caches ``benchmarks/few_labels.py`` makes: MobileNetV2, ImageNet checkpoint, default layer, of train/).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time
import warnings

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from cpu_engines import write_section  # noqa: E402


def accuracies(X, y, k: int, draws: int) -> tuple[list[float], list[float]]:
    """Per draw: the accuracy of LDA (shrunk covariance) and of the nearest class mean on the rows not drawn."""
    import numpy as np
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    from classifiers.registry import FewShotLDA
    from classifiers.scaling import ShrunkScaler

    classes = np.unique(y)
    lda, mean = [], []
    for seed in range(draws):
        rng = np.random.default_rng(seed)
        pick = np.concatenate([rng.choice(np.flatnonzero(y == c), k, replace=False) for c in classes])
        rest = np.setdiff1d(np.arange(len(y)), pick)
        scale = ShrunkScaler().fit(X[pick])  # the zoo's lda pipeline: the scale step, then the classifier
        Z, R = (scale.transform(rows).astype(np.float64) for rows in (X[pick], X[rest]))  # as FewShotLDA.fit
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            shrunk = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(Z, y[pick])
        means = np.stack([Z[y[pick] == c].mean(axis=0) for c in classes])
        nearest = FewShotLDA().fit(means, classes)  # one row per class: its nearest-mean answer
        lda.append(float((shrunk.predict(R) == y[rest]).mean()))
        mean.append(float((nearest.predict(R) == y[rest]).mean()))
    return lda, mean


def main() -> int:
    import numpy as np

    from classifiers.registry import LDA_FROM
    from embedder import load

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs=2, action="append", metavar=("NAME", "TRAIN_CACHE"), required=True)
    parser.add_argument("--per-class", default="2,3,4,5,8")
    parser.add_argument("--draws", type=int, default=8)
    parser.add_argument("--layer", default="classifier.0")
    parser.add_argument("--write", action="store_true", help="replace this script's section of RESULTS.md")
    opts = parser.parse_args()
    ks = [int(k) for k in opts.per_class.split(",")]
    rows = []
    for name, cache in opts.data:
        X, y, *_ = load(cache, opts.layer)
        y = np.asarray(y)
        for k in ks:
            if min(np.bincount(np.unique(y, return_inverse=True)[1])) <= k:
                continue
            lda, mean = accuracies(X, y, k, opts.draws)
            rows.append((name, k, lda, mean))
    lines = [
        f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores. `python benchmarks/lda_few.py` on the `{opts.layer}` "
        f"rows of each cache; {opts.draws} seeded draws of k images per class, scored on the cache's rows no draw "
        f"took (accuracy %, mean ± std over draws). The zoo's `lda` answers by the nearest class mean under "
        f"{LDA_FROM} images per class on average (`registry.LDA_FROM`), by LDA from there.",
        "",
        "| data | per class | LDA, shrunk covariance | nearest class mean | the zoo's `lda` uses |",
        "|---|--:|--:|--:|---|",
        *[
            f"| {name} | {k} | {100 * np.mean(a):.1f} ± {100 * np.std(a):.1f} | {100 * np.mean(b):.1f} ± "
            f"{100 * np.std(b):.1f} | {'the nearest mean' if k < LDA_FROM else 'LDA'} |"
            for name, k, a, b in rows
        ],
    ]
    text = "\n".join(lines)
    print(text)
    if opts.write:
        write_section(
            ROOT / "benchmarks" / "RESULTS.md", text + "\n", "lda_few.py", "LDA at a few labelled images per class"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
