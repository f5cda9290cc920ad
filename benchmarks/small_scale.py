"""The zoo's scale step from 2 to 100 labelled rows: per-feature standardization on the few rows against shrunk,
common and pool-estimated scales, on the picks of few_labels.py (the fixed probe, scored on val/).

    python benchmarks/small_scale.py picks [--tasks flowers,pairs] [--caches cache/fewlabels] --save PICKS.json
    python benchmarks/small_scale.py score PICKS.json [--scalers std,shrunk,...] --save SCORES.json
    python benchmarks/small_scale.py render SCORES.json ... [--base std]
    python benchmarks/small_scale.py deviation [--task flowers]
    python benchmarks/small_scale.py normal [--task flowers] [--classifiers logreg,ensemble]

``picks``: for each task (``flowers``, ``hymenoptera``, ``pairs``: the 10 class pairs of flowers) and 1, 2, 5, 10
labels per class, the row sets few_labels.py scores: the default cold-start pick (10 seeds), random draws (20), the
default round-2 pick after that cold pick (10), and a random second batch after it (20). The round-2 default reads
the probe's margins from 5 labels per class: those picks are the ones the probe of this tree gives.

``score``: the fixed probe of few_labels.py (the zoo's logreg, C=select_rules.FIXED_C) trained on each row set with
its true labels and scored once on val/, with its scale step replaced by:

- ``std``: StandardScaler on the labelled rows (the zoo's step until this benchmark; ``BlockedScaler``);
- ``shrunk``: ``classifiers.scaling.ShrunkScaler`` (the zoo's step since): each feature's log-variance pulled toward
  their mean by the James-Stein weight the rows estimate, the mean variance kept;
- ``global``: one scale for every feature (the square root of their mean variance), centred as StandardScaler;
- ``add4``: each variance mixed with their mean as if 4 more rows had it: (n var + 4 mean) / (n + 4);
- ``limma``: the empirical-Bayes variances of limma (Smyth 2004): (d0 s0² + d var) / (d0 + d), d = n - 1, with d0
  and s0² estimated from the spread of the log-variances;
- ``pool``: StandardScaler on every train/ row (labels unused; what a scaler fit on the unlabeled rows gives).

``render``: per task group (flowers; the mean of the 10 pairs; hymenoptera) and pick set, the mean accuracy of each
scaler and its gain over ``--base``. ``deviation``: the largest relative difference between a scaler's scale and
StandardScaler's over the features, on random subsets of n rows of train/ (5 a size). ``normal``: the zoo's
classifiers as `train` builds them (the tuned logreg, the ensemble) fit on every train/ row with the former scale
step (``BlockedScaler``) and with ``ShrunkScaler``, scored once on val/, and how many val/ predictions differ.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import numpy as np  # noqa: E402
from scipy.special import digamma, polygamma  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from few_labels import CACHES, load, pairs  # noqa: E402

from classifiers import select_rules as rules  # noqa: E402
from classifiers.scaling import ShrunkScaler, blocked_moments  # noqa: E402

SHOTS = (1, 2, 5, 10)
SETS = ("cold", "random", "round 2", "round 2 random")


def tasks_of(text: str, caches) -> list[str]:
    names = []
    for t in filter(None, text.split(",")):
        names += pairs(caches, "flowers") if t == "pairs" else [t]
    return names


def picks(names, caches, draws=10, random_draws=20, say=print) -> dict:
    out = {}
    for name in names:
        S, X, y, _, _ = load(caches, name)
        space = rules.coverage_space(S)
        classes = sorted(set(y.tolist()))
        hidden, everything = np.full(len(y), "", dtype=object), np.ones(len(y), dtype=bool)
        for k in SHOTS:
            budget = k * len(classes)

            def pick(known, pool, rule, seed, S=S, budget=budget, space=space):
                return [int(i) for i in rules.choose(S, known, pool, budget, rule, seed, space=space).rows]

            sets = {s: [] for s in SETS}
            for seed in range(max(draws, random_draws)):
                first = pick(hidden, everything, rules.DEFAULT_COLD, seed)
                known = hidden.copy()
                known[first] = y[first]
                pool = known == ""
                if seed < draws:
                    sets["cold"].append(first)
                    warm = rules.DEFAULT_WARM if len(set(y[first].tolist())) > 1 else rules.DEFAULT_COLD
                    sets["round 2"].append(first + pick(known, pool, warm, 1000 + seed))
                if seed < random_draws:
                    sets["random"].append(pick(hidden, everything, "random", seed))
                    sets["round 2 random"].append(first + pick(known, pool, "random", 1000 + seed))
            out[f"{name}|{k}"] = sets
            say(f"{name} {k}/class: picked")
    return out


def trigamma(x):
    return float(polygamma(1, x))


def limma_variances(var: np.ndarray, n: int) -> np.ndarray:
    """Smyth's (2004) moderated variances: the prior degrees of freedom d0 from the spread of the log-variances
    beyond their sampling variance, the prior variance s0² from their mean; one common variance when no spread."""
    d, live = n - 1, var > 0
    log_var = np.log(var[live])
    excess = np.var(log_var) - trigamma(d / 2)
    out = var.copy()
    if excess <= 0 or d < 1:
        out[live] = var[live].mean()
        return out
    lo, hi = 1e-3, 1e6
    for _ in range(80):  # trigamma(d0 / 2) = excess, trigamma decreasing
        mid = np.sqrt(lo * hi)
        lo, hi = (mid, hi) if trigamma(mid / 2) > excess else (lo, mid)
    d0 = mid
    s0 = np.exp(log_var.mean() - digamma(d / 2) + np.log(d / 2) + digamma(d0 / 2) - np.log(d0 / 2))
    out[live] = (d0 * s0 + d * var[live] * n / d) / (d0 + d)
    return out


def scaled(name: str, rows: np.ndarray, X: np.ndarray):
    """(mean, scale) of scaler ``name`` fit on ``rows`` (``X``: every train/ row, for ``pool``)."""
    n = len(rows)
    mean, var = blocked_moments(rows)
    if name == "std":
        scale = np.sqrt(var)
    elif name == "shrunk":
        s = ShrunkScaler().fit(rows)
        return s.mean_, s.scale_
    elif name == "global":
        scale = np.full_like(var, np.sqrt(var.mean()))
    elif name == "add4":
        scale = np.sqrt((n * var + 4 * var.mean()) / (n + 4))
    elif name == "limma":
        scale = np.sqrt(limma_variances(var, n))
    elif name == "pool":
        mean, var = blocked_moments(X)
        scale = np.sqrt(var)
    else:
        raise SystemExit(f"Error: no scaler {name!r}")
    return mean, np.where(scale > 1e-12, scale, 1.0)


def accuracy(name, X, y, rows, Xval, yval) -> float:
    from classifiers.registry import make_classifier

    rows = np.asarray(rows)
    if len(set(y[rows].tolist())) < 2:
        return float((yval == y[rows][0]).mean())
    mean, scale = scaled(name, X[rows], X)
    model = make_classifier(f"logreg:C={rules.FIXED_C}", 0, scale=False).fit((X[rows] - mean) / scale, y[rows])
    return float((model.predict((Xval - mean) / scale) == yval).mean())


def score(all_picks: dict, scalers, caches, save: pathlib.Path, say=print) -> dict:
    out = json.loads(save.read_text()) if save.exists() else {}
    loaded = {}
    for key, sets in all_picks.items():
        name = key.split("|")[0]
        if name not in loaded:
            _, X, y, Xval, yval = load(caches, name)
            loaded = {name: (X.astype(np.float64), y, Xval.astype(np.float64), yval)}
        X, y, Xval, yval = loaded[name]
        for scaler in scalers:
            for which, row_sets in sets.items():
                accs = [accuracy(scaler, X, y, r, Xval, yval) for r in row_sets]
                out[f"{key}|{scaler}|{which}"] = {"mean": 100 * float(np.mean(accs)), "n": len(accs)}
        save.write_text(json.dumps(out))
        say(f"{key}: " + ", ".join(f"{s} {out[f'{key}|{s}|cold']['mean']:.1f}" for s in scalers))
    return out


def render(scores: dict, base: str) -> list[str]:
    keys = [k.split("|") for k in scores]
    scalers = list(dict.fromkeys(k[2] for k in keys))
    groups = {}
    for task in dict.fromkeys(k[0] for k in keys):
        groups.setdefault("10 pairs of flowers (mean)" if ":" in task else task, []).append(task)
    flowers = [t for t in dict.fromkeys(k[0] for k in keys) if t.split(":")[0] == "flowers"]
    if len(flowers) > 1:
        groups[f"flowers and its pairs ({len(flowers)} tasks, mean)"] = flowers
    lines = [
        "| data | pick set | per class | " + " | ".join(scalers) + " |",
        "|---|---|--:|" + "--:|" * len(scalers),
    ]
    for group, tasks in groups.items():
        gains = {s: [] for s in scalers}
        for which in SETS:
            for k in SHOTS:
                cells = []
                for s in scalers:
                    got = [scores.get(f"{t}|{k}|{s}|{which}") for t in tasks]
                    if any(g is None for g in got):
                        cells.append("")
                        continue
                    m = np.mean([g["mean"] for g in got])
                    b = np.mean([scores[f"{t}|{k}|{base}|{which}"]["mean"] for t in tasks])
                    gains[s].append(m - b)
                    cells.append(f"{m:.1f}" if s == base else f"{m:.1f} ({m - b:+.1f})")
                lines.append(f"| {group} | {which} | {k} | " + " | ".join(cells) + " |")
        if all(len(g) == len(SETS) * len(SHOTS) for g in gains.values()):
            for what, f in (("mean gain of the 16 cells", np.mean), ("worst cell", np.min)):
                cells = [f"{f(gains[s]):+.2f}" for s in scalers]
                lines.append(f"| {group} | {what} | | " + " | ".join(cells) + " |")
    return lines


def deviation(task: str, caches, scalers, sizes=(4, 10, 50, 100, 300, 500, 1000)) -> list[str]:
    _, X, _, _, _ = load(caches, task)
    X = X.astype(np.float64)
    rng = np.random.default_rng(0)
    lines = [
        f"| rows of {task} train/ | " + " | ".join(scalers) + " |",
        "|--:|" + "--:|" * len(scalers),
    ]
    for n in [*sizes, len(X)]:
        cells = []
        for s in scalers:
            worst = []
            for _ in range(5 if n < len(X) else 1):
                rows = X[rng.choice(len(X), n, replace=False)] if n < len(X) else X
                _, ref = scaled("std", rows, X)
                _, got = scaled(s, rows, X)
                worst.append(np.max(np.abs(got / ref - 1)))
            cells.append(f"{100 * np.mean(worst):.2f} %")
        lines.append(f"| {n:,} | " + " | ".join(cells) + " |")
    return lines


def normal(task: str, caches, specs) -> list[str]:
    import time

    from classifiers import registry
    from classifiers.zoo import make_classifier

    _, X, y, Xval, yval = load(caches, task)
    lines = [
        f"| {task}: train/ -> val/ | former scale (BlockedScaler) | ShrunkScaler | predictions that differ |",
        "|---|--:|--:|--:|",
    ]
    for spec in specs:
        got, seconds = [], []
        for step in (registry.BlockedScaler, ShrunkScaler):
            registry.ShrunkScaler = step  # what registry._build puts in the scale step
            try:
                t = time.perf_counter()
                got.append(make_classifier(spec, 0).fit(X, y).predict(Xval))
                seconds.append(time.perf_counter() - t)
            finally:
                registry.ShrunkScaler = ShrunkScaler
        a, b = ((g == yval).mean() * 100 for g in got)
        lines.append(f"| {spec} | {a:.2f} % | {b:.2f} % | {(got[0] != got[1]).sum()} of {len(yval)} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("picks", "score", "render", "deviation", "normal"))
    parser.add_argument("files", nargs="*", type=pathlib.Path)
    parser.add_argument("--tasks", default="flowers,pairs")
    parser.add_argument("--task", default="flowers")
    parser.add_argument("--caches", type=pathlib.Path, default=CACHES)
    parser.add_argument("--scalers", default="std,shrunk,global,add4,limma,pool")
    parser.add_argument("--base", default="std")
    parser.add_argument("--classifiers", default="logreg,ensemble")
    parser.add_argument("--save", type=pathlib.Path)
    opts = parser.parse_args()
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    scalers = opts.scalers.split(",")
    if opts.what == "picks":
        opts.save.write_text(json.dumps(picks(tasks_of(opts.tasks, opts.caches), opts.caches, say=say)))
    elif opts.what == "score":
        score(json.loads(opts.files[0].read_text()), scalers, opts.caches, opts.save, say)
    elif opts.what == "render":
        scores = {}
        for f in opts.files:
            scores.update(json.loads(f.read_text()))
        print("\n".join(render(scores, opts.base)))
    elif opts.what == "normal":
        print("\n".join(normal(opts.task, opts.caches, opts.classifiers.split(","))))
    else:
        print("\n".join(deviation(opts.task, opts.caches, [s for s in scalers if s != "pool"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
