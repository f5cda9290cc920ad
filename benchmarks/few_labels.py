"""Which images to label first: the selection rules of `featurebank select` against random picks, on real photos.

    python benchmarks/few_labels.py [--datasets flowers,hymenoptera] [--draws 10] [--random-draws 20]
                                    [--shots 1,2,5,10] [--caches cache/fewlabels] [--write]

The caches are MobileNetV2 (the real ImageNet checkpoint of ../shared/weights, layer classifier.0, 224 px) of
train/ and val/ (made with `featurebank extract DATA/train -b mobilenet_v2 -w WEIGHTS --cache DIR/NAME-train.h5`,
the same for val/); missing ones are made from ../shared/data on the first run. train/ is the pool, its labels hidden from the rules; val/ is the test set, scored once per
pick set. The probe scored is FIXED (the zoo's logreg with C fixed at select_rules.FIXED_C, standardized
features), trained on the picked images with their true labels: nothing about it is tuned on val/.

Budget = k x classes, for k in --shots. Cold start: each rule picks the budget from nothing (--draws seeds: the
seed moves k-means and the samplers); random: --random-draws seeded draws (mean, std, 10th and 90th
percentile). Round 2: round 1 is the default cold-start pick of the budget (same seed), its labels revealed;
then each rule picks the budget again (the warm rules, random, and a second cold-start pick that counts the
labelled images as covered); scored on round 1 + round 2. The defaults (select_rules.DEFAULT_COLD and
DEFAULT_WARM, and their settings COMPONENTS and MARGIN_FROM; DEFAULT_WARM's class-by-class coverage under
MARGIN_FROM: benchmarks/cold_start.py) were chosen on flowers and on its 10 class pairs
(`--pairs flowers`: each 2-class subset of train/ as the pool, the same classes of val/ as the test set; the
defaults, random and 'kmeans again' only, unless `--rules` names more), since hymenoptera has 2 classes;
hymenoptera was the held-out check (its figures have been seen since: no longer a clean one).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # before numpy: one thread each;
    os.environ.setdefault(_name, "1")  # k-means' OpenMP threads spin for minutes on a busy machine

import numpy as np  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from classifiers import select_rules as rules  # noqa: E402

CACHES = ROOT / "cache" / "fewlabels"  # /cache/* is git-ignored
SHARED = ROOT.parent / "shared"
WEIGHTS = SHARED / "weights" / "mobilenet_v2-imagenet.pth"


def made(caches: pathlib.Path, name: str, part: str) -> str:
    """The cache of ../shared/data/NAME/PART, embedded once (a later call finds every image there)."""
    cache = caches / f"{name}-{part}.h5"
    if not cache.exists():
        import embedder

        embedder.extract(
            str(SHARED / "data" / name / part), cache=str(cache), backbone="mobilenet_v2", weights=str(WEIGHTS)
        )
    return str(cache)


def load(caches: pathlib.Path, name: str):
    """A task: ``NAME`` (a data set of ../shared/data) or ``NAME:A+B`` (only its classes A and B, train/ and val/
    alike)."""
    from embedder.cache.hdf5 import CacheReader

    data, _, only = name.partition(":")
    train, val = (CacheReader(made(caches, data, part)) for part in ("train", "val"))
    X, y, Xval, yval = train.features(), np.asarray(train.labels), val.features(), np.asarray(val.labels)
    if only:
        keep, keep_val = np.isin(y, only.split("+")), np.isin(yval, only.split("+"))
        X, y, Xval, yval = X[keep], y[keep], Xval[keep_val], yval[keep_val]
    return rules.prepared(X.copy()), X, y, Xval, yval


def pairs(caches: pathlib.Path, name: str) -> list[str]:
    """Every 2-class task of a data set: ``NAME:A+B``."""
    from itertools import combinations

    from embedder.cache.hdf5 import CacheReader

    classes = sorted(set(CacheReader(made(caches, name, "train")).labels))
    return [f"{name}:{a}+{b}" for a, b in combinations(classes, 2)]


def probe_accuracy(X, y, Xval, yval) -> float:
    """The fixed probe trained on the picks, scored on val/ (one class among the picks: it predicts that class)."""
    from classifiers.registry import make_classifier

    if len(set(y.tolist())) < 2:
        return float((yval == y[0]).mean())
    model = make_classifier(f"logreg:C={rules.FIXED_C}", 0).fit(X, y)
    return float((model.predict(Xval) == yval).mean())


def stats(values) -> dict:
    v = np.asarray(values) * 100
    return {"mean": v.mean(), "std": v.std(), "p10": np.percentile(v, 10), "p90": np.percentile(v, 90), "n": len(v)}


def run(name: str, caches, shots, draws: int, random_draws: int, say, only=None) -> list[dict]:
    """``only``: the rules measured (the defaults, random and 'kmeans again' always)."""
    S, X, y, Xval, yval = load(caches, name)  # S: the rules' space; X: the cache's rows
    space = rules.coverage_space(S)
    classes = sorted(set(y.tolist()))
    hidden = np.full(len(y), "", dtype=object)
    everything = np.ones(len(y), dtype=bool)
    out = []
    for k in shots:
        budget = k * len(classes)

        def score(rows):
            rows = np.asarray(rows)
            return probe_accuracy(X[rows], y[rows], Xval, yval)

        t = time.perf_counter()
        for rule in (*[c for c in rules.COLD if only is None or c in only or c == rules.DEFAULT_COLD], "random"):
            n = random_draws if rule == "random" else draws
            accs = [
                score(rules.choose(S, hidden, everything, budget, rule, seed, space=space).rows) for seed in range(n)
            ]
            out.append({"data": name, "shots": k, "budget": budget, "round": 1, "rule": rule, **stats(accs)})
        for rule in (*rules.WARM, "random", "cold again", *[c for c in rules.COLD if c != rules.DEFAULT_COLD]):
            if only is not None and rule not in (*only, rules.DEFAULT_WARM, "random", "cold again"):
                continue
            n = random_draws if rule == "random" else draws
            accs = []
            for seed in range(n):
                first = rules.choose(S, hidden, everything, budget, rules.DEFAULT_COLD, seed, space=space).rows
                known = hidden.copy()
                known[first] = y[first]
                pool = known == ""
                use = rules.DEFAULT_COLD if rule == "cold again" else rule
                if rule in rules.WARM and len(set(y[first].tolist())) < 2:
                    use = rules.DEFAULT_COLD  # one class in round 1: what `select` does then (no probe can be fit)
                second = rules.choose(S, known, pool, budget, use, 1000 + seed, space=space).rows
                accs.append(score([*first, *second]))
            label = f"{rules.DEFAULT_COLD} again" if rule == "cold again" else rule
            out.append({"data": name, "shots": k, "budget": budget, "round": 2, "rule": label, **stats(accs)})
        say(f"{name} {k}/class ({budget} images): {time.perf_counter() - t:.0f} s")
    return out


def table(rows: list[dict]) -> list[str]:
    lines = []
    for data in dict.fromkeys(r["data"] for r in rows):
        for rnd in (1, 2):
            part = [r for r in rows if r["data"] == data and r["round"] == rnd]
            shots = list(dict.fromkeys(r["shots"] for r in part))
            head = "cold start: b picks" if rnd == 1 else "round 2: b more after the default cold pick of b"
            lines += [
                "",
                f"**{data}**, {head}: test accuracy % on val/ (mean ± std over draws)",
                "",
                "| rule | "
                + " | ".join(f"{k}/class (b={part[[r['shots'] for r in part].index(k)]['budget']})" for k in shots)
                + " |",
                "|---|" + "--:|" * len(shots),
            ]
            for rule in dict.fromkeys(r["rule"] for r in part):
                cells = []
                for k in shots:
                    r = next(x for x in part if x["rule"] == rule and x["shots"] == k)
                    cell = f"{r['mean']:.1f} ± {r['std']:.1f}"
                    if rule in ("random", rules.DEFAULT_COLD if rnd == 1 else rules.DEFAULT_WARM):
                        cell += f" (p10 {r['p10']:.1f}, p90 {r['p90']:.1f})"
                    cells.append(cell)
                default = rules.DEFAULT_COLD if rnd == 1 else rules.DEFAULT_WARM
                lines.append(f"| {rule}{' (default)' if rule == default else ''} | " + " | ".join(cells) + " |")
    return lines


def summary(rows: list[dict]) -> list[str]:
    """The class-pair tasks in one table a stage: per task and budget, the default against random (its mean and
    p90) and, in round 2, against 'kmeans again'; the last line per budget is the mean over the tasks."""
    again = f"{rules.DEFAULT_COLD} again"
    tasks = list(dict.fromkeys(r["data"] for r in rows))
    shots = list(dict.fromkeys(r["shots"] for r in rows))

    def get(data, k, rnd, rule):
        return next(
            r for r in rows if r["data"] == data and r["shots"] == k and r["round"] == rnd and r["rule"] == rule
        )

    lines = [
        "",
        f"**{len(tasks)} class pairs** ({', '.join(t.split(':')[1] for t in tasks)}): the default against random "
        f"(mean over the pairs of each pair's figures; 'met': pairs where the cold-start default is 8 points or more "
        f"above random's mean and above its p90; round 2 'beats': pairs where the default is above both random and "
        f"'{again}')",
        "",
        f"| per class | cold: random (p90) | cold: **{rules.DEFAULT_COLD}** | vs random | vs p90 | met | "
        f"round 2: random | {again} | **{rules.DEFAULT_WARM}** | beats |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for k in shots:
        c = [(get(t, k, 1, "random"), get(t, k, 1, rules.DEFAULT_COLD)) for t in tasks]
        w = [(get(t, k, 2, "random"), get(t, k, 2, again), get(t, k, 2, rules.DEFAULT_WARM)) for t in tasks]
        met = sum(d["mean"] - r["mean"] >= 8 and d["mean"] > r["p90"] for r, d in c)
        beats = sum(d["mean"] > max(r["mean"], a["mean"]) for r, a, d in w)
        ties = sum(d["mean"] == a["mean"] for _, a, d in w)
        lines.append(
            f"| {k} | {np.mean([r['mean'] for r, _ in c]):.1f} ({np.mean([r['p90'] for r, _ in c]):.1f}) | "
            f"{np.mean([d['mean'] for _, d in c]):.1f} | {np.mean([d['mean'] - r['mean'] for r, d in c]):+.1f} | "
            f"{np.mean([d['mean'] - r['p90'] for r, d in c]):+.1f} | {met} of {len(c)} | "
            f"{np.mean([r['mean'] for r, _, _ in w]):.1f} | {np.mean([a['mean'] for _, a, _ in w]):.1f} | "
            f"{np.mean([d['mean'] for _, _, d in w]):.1f} | {beats} of {len(w)}"
            + (f" ({ties} the same picks)" if ties else "")
            + " |"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="flowers,hymenoptera")
    parser.add_argument("--shots", default="1,2,5,10")
    parser.add_argument("--draws", type=int, default=10, help="seeds per selection rule")
    parser.add_argument("--random-draws", type=int, default=20)
    parser.add_argument("--caches", type=pathlib.Path, default=CACHES)
    parser.add_argument(
        "--pairs", default="", help="also every 2-class task of this data set (the defaults' choosing tasks)"
    )
    parser.add_argument("--rules", default="", help="only these rules besides the defaults (comma-separated)")
    parser.add_argument("--write", action="store_true", help="replace this script's section of RESULTS.md")
    parser.add_argument("--save", type=pathlib.Path, help="also write the rows measured as JSON here")
    parser.add_argument(
        "--render", type=pathlib.Path, nargs="*", help="measure nothing: the rows of these --save files"
    )
    opts = parser.parse_args()
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    shots = [int(s) for s in opts.shots.split(",")]
    rows = []
    if opts.render:
        for saved in opts.render:
            rows += json.loads(saved.read_text())
    else:
        only = opts.rules.split(",") if opts.rules else None
        for name in [*filter(None, opts.datasets.split(",")), *(pairs(opts.caches, opts.pairs) if opts.pairs else [])]:
            rows += run(name, opts.caches, shots, opts.draws, opts.random_draws, say, only if ":" in name else None)
    if opts.save:
        opts.save.write_text(json.dumps(rows, default=float))
    load_avg = os.getloadavg()[0]
    whole = [r for r in rows if ":" not in r["data"]]
    parts = [r for r in rows if ":" in r["data"]]
    text = "\n".join((table(whole) if whole else []) + (summary(parts) if parts else []))
    print(text)
    if opts.write:
        from cpu_engines import write_section

        intro = (
            f"{time.strftime('%Y-%m-%d')}, 2 cores, load average {load_avg:.1f}. MobileNetV2 ImageNet features "
            f"(classifier.0) of train/ (the pool, labels hidden) and val/ (the test set). The probe: the zoo's "
            f"logreg with C={rules.FIXED_C} fixed, trained on the picks. {opts.draws} seeds per rule, "
            f"{opts.random_draws} random draws. The defaults (cold start `{rules.DEFAULT_COLD}` in "
            f"{rules.COMPONENTS} principal directions, round 2 `{rules.DEFAULT_WARM}` with coverage class by class (the classes from label "
            f"spreading) under {rules.MARGIN_FROM} labels per class) were chosen on flowers and its 10 class pairs "
            f"(the last table); hymenoptera was the held-out check (seen since: no longer a clean one)."
        )
        write_section(
            ROOT / "benchmarks" / "RESULTS.md",
            intro + "\n" + text + "\n",
            "few_labels.py",
            "Which images to label first",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
