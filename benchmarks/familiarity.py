"""How well a model's familiarity column tells images unlike its training images, on real photos.

    python benchmarks/familiarity.py [--caches cache/fewlabels] [--seed 0]

The caches are those of benchmarks/few_labels.py (MobileNetV2, the ImageNet checkpoint of ../shared/weights, layer
classifier.0, 224 px, train/ and val/ of flowers and hymenoptera; made on the first run when missing). Each task
fits the zoo's default classifier (the tuned logreg, its own probabilities: `train` calibrates them too) and the
familiarity reference (`familiarity.reference_rows`, as `train` keeps it) on train/ rows, then scores val/ rows of
the same classes (like the training images: their flag rate should be near the threshold, by construction) and
val/ rows of something else (unlike them):

- hymenoptera -> flowers, flowers -> hymenoptera: another data set;
- flowers without C -> C, for each of the 5 classes: a new kind of flower (the hard case), the mean of the 5;
- the placeholder GIF of hymenoptera's train/ (ants/imageNotFound.gif), left out of the hymenoptera model's
  training rows: its familiarity and the probe's top probability.

AUROC: how well a score ranks the unlike rows before the like ones (1 = every one, 0.5 = chance): the familiarity
(low = unlike) against the probe's top probability (low = unlike: Hendrycks & Gimpel's baseline). The threshold,
K and the reference's size are fixed in classifiers/familiarity.py; nothing here is chosen on val/. CPU seconds:
scoring per 1,000 rows, and (once) the kept rows' own distances, computed on a model's first use.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from few_labels import CACHES, made  # noqa: E402

from classifiers.familiarity import UNFAMILIAR, Familiarity, reference_rows  # noqa: E402
from classifiers.zoo import make_classifier  # noqa: E402

GIF = "ants/imageNotFound.gif"


def rows(caches: pathlib.Path, name: str, part: str):
    from embedder.cache.hdf5 import CacheReader

    r = CacheReader(made(caches, name, part))
    return r.features().astype(np.float32), np.asarray(r.labels, dtype=object), np.asarray(r.paths, dtype=object)


def auroc(like: np.ndarray, unlike: np.ndarray) -> float:
    """P(an unlike row scores below a like one), ties counted half: the Mann-Whitney form of the AUROC."""
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([unlike, like]))
    u = ranks[: len(unlike)].sum() - len(unlike) * (len(unlike) + 1) / 2
    return float(1 - u / (len(unlike) * len(like)))


def task(X, y, X_in, X_out, seed: int) -> dict:
    classes = sorted(set(y))
    index = {c: i for i, c in enumerate(classes)}
    clf = make_classifier("logreg", seed=seed).fit(X, np.array([index[c] for c in y]))
    fam = Familiarity(reference_rows(X, seed))
    started = time.process_time()
    _ = fam.calibration  # the kept rows' own distances: once a model, on its first use
    once = time.process_time() - started
    started = time.process_time()
    p_in, p_out = fam.p_values(X_in), fam.p_values(X_out)
    seconds = time.process_time() - started
    top_in, top_out = clf.predict_proba(X_in).max(axis=1), clf.predict_proba(X_out).max(axis=1)
    return {
        "train": len(y),
        "reference": len(fam.reference),
        "in": len(X_in),
        "out": len(X_out),
        "in_flag": [float((p_in < a).mean()) for a in (UNFAMILIAR, 0.05)],
        "out_flag": [float((p_out < a).mean()) for a in (UNFAMILIAR, 0.05)],
        "auroc_familiarity": auroc(p_in, p_out),
        "auroc_top": auroc(top_in, top_out),
        "top_out": float(top_out.mean()),
        "cpu_s_per_1000": 1000 * seconds / (len(X_in) + len(X_out)),
        "cpu_s_once": once,
    }


def averaged(rows: list[dict]) -> dict:
    return {
        k: (
            np.mean([h[k] for h in rows], axis=0).tolist()
            if isinstance(rows[0][k], list)
            else float(np.mean([h[k] for h in rows]))
        )
        for k in rows[0]
    }


def tasks(data: dict, seed: int) -> list[tuple[str, dict]]:
    results = []
    for model, other in (("hymenoptera", "flowers"), ("flowers", "hymenoptera")):
        X, y, _ = data[model]["train"]
        results.append((f"{model} -> {other} val/", task(X, y, data[model]["val"][0], data[other]["val"][0], seed)))
    X, y, _ = data["flowers"]["train"]
    Xv, yv, _ = data["flowers"]["val"]
    held = [task(X[y != c], y[y != c], Xv[yv != c], Xv[yv == c], seed) for c in sorted(set(y))]
    results.append(("flowers without one class -> that class (mean of 5)", averaged(held)))
    for c, h in zip(sorted(set(y)), held):
        results.append((f"  flowers without {c} -> {c}", h))
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--caches", type=pathlib.Path, default=CACHES)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", type=int, default=5, help="seeds --seed.. of the kept rows' draw, for the spread table")
    a = ap.parse_args()
    data = {n: {p: rows(a.caches, n, p) for p in ("train", "val")} for n in ("hymenoptera", "flowers")}
    runs = [tasks(data, a.seed + i) for i in range(a.seeds)]
    results = runs[0]

    print(
        f"\n{os.cpu_count()} CPUs; seed {a.seed}; familiarity under {UNFAMILIAR:g} = flagged; K and the reference "
        f"size as classifiers/familiarity.py fixes them.\n"
    )
    print(
        "| task | train rows (kept) | like rows: flagged at 0.01 / 0.05 | unlike rows: flagged at 0.01 / 0.05 | "
        "AUROC: familiarity | AUROC: top probability | unlike rows' mean top probability | CPU s / 1,000 rows (once) |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|--:|")
    for name, r in results:
        print(
            f"| {name} | {r['train']:.0f} ({r['reference']:.0f}) | {r['in']:.0f}: {100 * r['in_flag'][0]:.1f} % / "
            f"{100 * r['in_flag'][1]:.1f} % | {r['out']:.0f}: {100 * r['out_flag'][0]:.1f} % / "
            f"{100 * r['out_flag'][1]:.1f} % | {r['auroc_familiarity']:.3f} | {r['auroc_top']:.3f} | "
            f"{r['top_out']:.3f} | {r['cpu_s_per_1000']:.3f} ({r['cpu_s_once']:.3f}) |"
        )
    if a.seeds > 1:
        print(
            f"\nOver seeds {a.seed} to {a.seed + a.seeds - 1} (the draw of the kept rows and the probe's inner folds): "
            "mean (min to max)\n"
        )
        print(
            "| task | like rows flagged at 0.01 | unlike rows flagged at 0.01 | unlike rows flagged at 0.05 | AUROC: familiarity |"
        )
        print("|---|--:|--:|--:|--:|")
        for j, (name, _) in enumerate(results[:3]):
            of = [run[j][1] for run in runs]

            def spread(values, scale=100.0, digits=1):
                v = np.asarray(values) * scale
                return f"{v.mean():.{digits}f} ({v.min():.{digits}f} to {v.max():.{digits}f})"

            print(
                f"| {name} | {spread([r['in_flag'][0] for r in of])} % | {spread([r['out_flag'][0] for r in of])} % | "
                f"{spread([r['out_flag'][1] for r in of])} % | {spread([r['auroc_familiarity'] for r in of], 1, 3)} |"
            )
    X, y, paths = data["hymenoptera"]["train"]
    gif = np.array([str(p).endswith(GIF) for p in paths])
    if gif.any():
        classes = sorted(set(y[~gif]))
        clf = make_classifier("logreg", seed=a.seed).fit(X[~gif], np.array([classes.index(c) for c in y[~gif]]))
        fam = Familiarity(reference_rows(X[~gif], a.seed))
        proba = clf.predict_proba(X[gif])[0]
        print(
            f"\nThe placeholder GIF ({GIF}), the hymenoptera model fit on the other {int((~gif).sum())} train/ images: "
            f"familiarity {fam.p_values(X[gif])[0]:.4f} (the least there can be: {fam.floor:.4f}); the probe: "
            f"{classes[int(proba.argmax())]} {proba.max():.3f}"
        )


if __name__ == "__main__":
    main()
