"""The default run's tree ensemble and the ensemble's calibration folds, measured: accuracy and CPU seconds.

Two questions that decide what ``cv`` runs by default within its budget:

- **trees**: scikit-learn's ``RandomForestClassifier`` and ``ExtraTreesClassifier`` (extremely randomized trees:
  random thresholds, no sorting), 100, 150 and 300 trees;
- **ensemble**: the default ``ensemble`` with its members' sigmoid calibration on 5 inner folds (scikit-learn's
  default, the former setting) against 3 (``ensemble.INNER_FOLDS``).

For each ``--data NAME TRAIN_CACHE VAL_CACHE``: 5 stratified folds of train/ (seed 0) give the out-of-fold balanced
accuracy (mean ± std over folds), log-loss and ECE, and the CPU seconds of a fold (fit and predict, one thread:
run it with ``OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1``, the measure another job's load changes least). The choice
is made on those; then each variant is fit on every train/ row and val/ is scored once, for the record (val/ chose
nothing).

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 PYTHONPATH=$PWD python benchmarks/trees.py \\
        --data hymenoptera cache/fewlabels/hymenoptera-train.h5 cache/fewlabels/hymenoptera-val.h5 \\
        --data flowers cache/fewlabels/flowers-train.h5 cache/fewlabels/flowers-val.h5

(the caches ``benchmarks/few_labels.py`` makes: MobileNetV2, ImageNet checkpoint, default layer, of train/ and val/).
The cost per tree at other sizes is ``benchmarks/cost_model.py grid --entries extra-trees,random-forest``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
from sklearn.metrics import balanced_accuracy_score, log_loss
from sklearn.model_selection import StratifiedKFold

from classifiers.data import labeled
from classifiers.metrics import ece
from classifiers.zoo import make_classifier

TREES = {
    "random forest, 300 trees (former default)": lambda: RandomForestClassifier(n_estimators=300, random_state=0),
    "random forest, 150 trees": lambda: RandomForestClassifier(n_estimators=150, random_state=0),
    "random forest, 100 trees": lambda: RandomForestClassifier(n_estimators=100, random_state=0),
    "extra trees, 300 (default: `extra-trees`)": lambda: ExtraTreesClassifier(n_estimators=300, random_state=0),
    "extra trees, 100": lambda: ExtraTreesClassifier(n_estimators=100, random_state=0),
}
ENSEMBLES = {
    "ensemble, calibration on 5 inner folds (former)": lambda: make_classifier("ensemble:inner_folds=5", seed=0),
    "ensemble, calibration on 3 inner folds (default)": lambda: make_classifier("ensemble", seed=0),
}


def load(path: str):
    data = labeled(path)
    return np.asarray(data.reader.features()[data.rows], dtype=np.float32), data.y, len(data.classes)


def measure(make, Xtr, ytr, Xva, yva, k: int) -> dict:
    accs, losses, eces, cpu = [], [], [], []
    for train, test in StratifiedKFold(5, shuffle=True, random_state=0).split(Xtr, ytr):
        model = make()
        start = time.process_time()
        model.fit(Xtr[train], ytr[train])
        p = model.predict_proba(Xtr[test])
        cpu.append(time.process_time() - start)
        accs.append(balanced_accuracy_score(ytr[test], p.argmax(1)))
        losses.append(log_loss(ytr[test], p, labels=range(k)))
        eces.append(ece(ytr[test], p))
    model = make().fit(Xtr, ytr)
    pv = model.predict_proba(Xva)
    return {
        "acc": 100 * np.mean(accs),
        "acc_std": 100 * np.std(accs),
        "loss": np.mean(losses),
        "ece": np.mean(eces),
        "cpu": np.mean(cpu),
        "val_acc": 100 * balanced_accuracy_score(yva, pv.argmax(1)),
        "val_loss": log_loss(yva, pv, labels=range(k)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs=3, action="append", metavar=("NAME", "TRAIN", "VAL"), required=True)
    parser.add_argument("--only", choices=("trees", "ensemble"), help="one of the two questions")
    args = parser.parse_args()
    variants = {} if args.only == "ensemble" else dict(TREES)
    variants.update({} if args.only == "trees" else ENSEMBLES)
    print(
        "| data | variant | out of fold on train/: balanced accuracy % | log-loss | ECE | CPU s a fold "
        "| val/ once: balanced accuracy % | log-loss |"
    )
    print("|---|---|--:|--:|--:|--:|--:|--:|")
    for name, train, val in args.data:
        Xtr, ytr, k = load(train)
        Xva, yva, _ = load(val)
        for label, make in variants.items():
            r = measure(make, Xtr, ytr, Xva, yva, k)
            print(
                f"| {name} | {label} | {r['acc']:.2f} ± {r['acc_std']:.2f} | {r['loss']:.4f} | {r['ece']:.4f} "
                f"| {r['cpu']:.1f} | {r['val_acc']:.2f} | {r['val_loss']:.4f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
