"""What the unlabeled rows add at 1, 2, 5 and 10 labels per class, scored once on held-out images.

For each dataset, a cache of its train/ and one of its val/ (same backbone, layer and settings). For each budget k and
each seeded draw, k images per class of train/ keep their labels; every other train/ image is an unlabeled row (its
label hidden). The same probe is fit
- on the k labels per class alone;
- with the unlabeled rows, always, by label spreading on the kNN graph (``spread``) and by self-training
  (``self-train``), ``classifiers.semi.SemiSupervised(switch=False)``;
- by the default (``--unlabeled``: the default mode with its switch-off rule, decided on inner folds of the k
  labels per class alone);
and each is scored once on val/, which nothing was fit or decided on. ``default, a tie left out`` is the rule as it
was until 2026-12-07: the unlabeled rows left out where the inner folds tie (the default uses them); the last
column lists, per tied draw, what the unlabeled rows gained on val/ over the labels alone. The table gives the mean and spread (std, and
the worst draw) of test accuracy over the draws, and each row's mean difference from the labels alone on the same
draws. Self-training, the slowest (two fits on every row), runs on the first ``--self-train-draws`` draws only.

The probe is the zoo's ``logreg`` at a fixed C (``--probe``, default ``logreg:C=0.1``, the tuned probe's own fallback
at one label per class): the tuned one sweeps C on inner folds of every fit, which on 2,500 pseudo-labelled rows
is too slow for 40 draws on a shared 2-core machine.

    python benchmarks/semi_supervised.py --data flowers cache/fewlabels/flowers-train.h5 cache/fewlabels/flowers-val.h5

The caches: MobileNetV2 with the real checkpoint of ../shared/weights, default layer, e.g.
``featurebank extract ../shared/data/flowers/train -b mobilenet_v2 -w ../shared/weights/mobilenet_v2-imagenet.pth
--cache cache/fewlabels/flowers-train.h5`` (and val/); ``benchmarks/few_labels.py`` makes the same ones.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

import embedder
from classifiers.semi import DEFAULT_MODE, UNLABELED, SemiSupervised
from classifiers.zoo import make_classifier

TIE_LEFT_OUT = "default, a tie left out"  # the switch-off rule as it was: the unlabeled rows left out on a tie


def draw(y: np.ndarray, k: int, seed: int, dataset: str, rep: int) -> np.ndarray:
    """k rows of each class, seeded by (seed, dataset, k, rep): the same draws in every run."""
    rng = np.random.default_rng([seed, sum(map(ord, dataset)), k, rep])
    return np.concatenate([rng.choice(np.flatnonzero(y == c), k, replace=False) for c in np.unique(y)])


def run(name, train, val, shots, draws, self_train_draws, probe, seed, layer, out):
    X, labels, _ = embedder.load(train, layer=layer)
    Xv, labels_v, _ = embedder.load(val, layer=layer)
    classes = sorted(set(labels.tolist()))
    y, yv = np.searchsorted(classes, labels), np.searchsorted(classes, labels_v)
    modes = ["alone", "spread", "self-train", "default", TIE_LEFT_OUT]
    for k in shots:
        acc: dict[str, list[float]] = {m: [] for m in modes}
        used, seconds = [], dict.fromkeys(modes, 0.0)
        tie_gains: list[float] = []  # the tied draws': the unlabeled rows' gain on val/ over the labels alone
        for rep in range(draws):
            seeds = draw(y, k, seed, name, rep)
            partial = np.full(len(y), UNLABELED)
            partial[seeds] = y[seeds]
            pred = {}
            start = time.perf_counter()
            pred["alone"] = make_classifier(probe, seed=seed).fit(X[seeds], y[seeds]).predict(Xv)
            seconds["alone"] += time.perf_counter() - start
            for mode in ("spread", "self-train"):
                if mode != DEFAULT_MODE and rep >= self_train_draws:
                    continue
                start = time.perf_counter()
                semi = SemiSupervised(make_classifier(probe, seed=seed), mode=mode, switch=False)
                pred[mode] = semi.fit(X, partial).predict(Xv)
                seconds[mode] += time.perf_counter() - start
            # the default: fit() is decide() and then the fit it names, which is one of the two above (same rows,
            # same seed): decided here, the predictions taken from that fit
            start = time.perf_counter()
            on, decision, inner = SemiSupervised(make_classifier(probe, seed=seed), mode=DEFAULT_MODE).decide(
                X, partial
            )
            seconds["default"] += time.perf_counter() - start
            pred["default"] = pred[DEFAULT_MODE] if on else pred["alone"]
            used.append(on)
            # the rule before 2026-12-07 (late night): a tie on the inner folds left the unlabeled rows out
            tie = inner is not None and inner["right_with"] == inner["right_without"]
            pred[TIE_LEFT_OUT] = pred["alone"] if tie else pred["default"]
            if tie:
                tie_gains.append(100 * float(np.mean(pred[DEFAULT_MODE] == yv) - np.mean(pred["alone"] == yv)))
            for m in pred:
                acc[m].append(float(np.mean(pred[m] == yv)))
            print(
                f"  {name} k={k} draw {rep}: "
                + ", ".join(f"{m} {100 * acc[m][-1]:.1f}" for m in pred)
                + f" (default: {decision})",
                flush=True,
            )
        for m in modes:
            a = np.array(acc[m])
            if not len(a):  # a mode run on no draw (--self-train-draws 0): no row, rather than a mean of nothing
                continue
            alone = np.array(acc["alone"][: len(a)])  # the same draws
            row = {
                "data": name,
                "shots": k,
                "mode": m,
                "mean": round(100 * a.mean(), 2),
                "std": round(100 * a.std(), 2),
                "worst": round(100 * a.min(), 2),
                "vs_alone": round(100 * (a.mean() - alone.mean()), 2),
                "worst_vs_alone": round(100 * (a - alone).min(), 2),
                "draws": len(a),
                "used": sum(used) if m == "default" else None,
                **({"tie_gains": [round(g, 2) for g in tie_gains]} if m == "default" else {}),
                "seconds_per_draw": round(seconds[m] / len(a), 2),
            }
            out.append(row)
            print(
                f"| {name} | {k} | {m} | {row['mean']:.2f} ± {row['std']:.2f} | {row['worst']:.2f} | "
                f"{row['vs_alone']:+.2f} | {row['worst_vs_alone']:+.2f} | "
                f"{'' if row['used'] is None else str(row['used']) + ' of ' + str(draws)} | {len(a)} "
                f"| {row['seconds_per_draw']:.1f} | "
                + (f"{len(tie_gains)}: " + ", ".join(f"{g:+.1f}" for g in tie_gains) if m == "default" else "")
                + " |",
                flush=True,
            )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs=3, action="append", metavar=("NAME", "TRAIN_CACHE", "VAL_CACHE"), required=True)
    parser.add_argument("--shots", default="1,2,5,10")
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument(
        "--self-train-draws", type=int, default=3, help="Draws that also run self-training (slow; 0: none)."
    )
    parser.add_argument("--probe", default="logreg:C=0.1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layer", default=None)
    parser.add_argument("--json", help="Also write the rows here.")
    args = parser.parse_args()
    rows: list[dict] = []
    print(
        "| data | labels per class | mode | test accuracy, mean ± std (%) | worst draw | mean vs labels alone "
        "| worst draw vs alone | default used | draws | s per draw | tied draws: the unlabeled rows' gain |"
    )
    print("|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for name, train, val in args.data:
        run(
            name,
            train,
            val,
            [int(s) for s in args.shots.split(",")],
            args.draws,
            args.self_train_draws,
            args.probe,
            args.seed,
            args.layer,
            rows,
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
