"""The linear probe with a fixed C against C tuned on inner folds, scored once on held-out images.

For each dataset, a cache of its train/ and one of its val/ (same backbone, layer and settings): the zoo's ``logreg``
pipeline (standardization, then logistic regression) is fit on train/ with
- the former fixed default, C = 0.1;
- C tuned on 3 inner folds of train/ by log-loss (the zoo's default now) and by accuracy;
and scored once on val/. The best C *in hindsight* (each grid value scored on val/) is shown as the ceiling a
selection could reach; it is not a result, since it was chosen on the images it is scored on.

    python benchmarks/linear_probe.py --data hymenoptera cache/probe/hymenoptera-train.h5 cache/probe/hymenoptera-val.h5 \
        --data flowers cache/probe/flowers-train.h5 cache/probe/flowers-val.h5
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import embedder
from classifiers.linear import DEFAULT_CS
from classifiers.zoo import make_classifier


def held_out(train: str, val: str, layer: str | None):
    """Features and class names of both caches (the pipelines predict names, so no index mapping is needed)."""
    X, y, _ = embedder.load(train, layer=layer)
    Xv, yv, _ = embedder.load(val, layer=layer)
    return X, np.asarray(y), Xv, np.asarray(yv)


def accuracy(spec: str, X, y, Xv, yv) -> tuple[float, float, object]:
    start = time.perf_counter()
    pipe = make_classifier(spec).fit(X, y)
    seconds = time.perf_counter() - start
    return float(np.mean(pipe.predict(Xv) == yv)), seconds, pipe.named_steps["clf"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs=3, action="append", metavar=("NAME", "TRAIN_CACHE", "VAL_CACHE"), required=True)
    parser.add_argument("--layer", default=None)
    args = parser.parse_args()
    print(
        "| data | train / val rows | C = 0.1 (former default) | tuned by log-loss (default) | tuned by accuracy "
        "| best C in hindsight (not a result) | fit s: fixed / tuned |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|")
    for name, train, val in args.data:
        X, y, Xv, yv = held_out(train, val, args.layer)
        fixed, fixed_s, _ = accuracy("logreg:C=0.1", X, y, Xv, yv)
        tuned, tuned_s, clf = accuracy("logreg", X, y, Xv, yv)
        by_acc, _, clf_acc = accuracy("logreg:scoring='accuracy'", X, y, Xv, yv)
        hindsight = {C: accuracy(f"logreg:C={C}", X, y, Xv, yv)[0] for C in DEFAULT_CS}
        best_C = max(hindsight, key=hindsight.get)
        print(
            f"| {name} | {len(y)} / {len(yv)} | {100 * fixed:.2f} | {100 * tuned:.2f} (C={clf.C_:.3g}) "
            f"| {100 * by_acc:.2f} (C={clf_acc.C_:.3g}) | {100 * hindsight[best_C]:.2f} (C={best_C:.3g}) "
            f"| {fixed_s:.2f} / {tuned_s:.2f} ({tuned_s / fixed_s:.1f}x) |"
        )


if __name__ == "__main__":
    main()
