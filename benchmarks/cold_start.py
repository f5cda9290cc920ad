"""Why the cold-start default misses at 2 labels per class on hymenoptera, and what other rules do: a diagnosis.

    python benchmarks/cold_start.py diagnose [--tasks hymenoptera] [--shots 1,2,5]
    python benchmarks/cold_start.py cold [--tasks flowers,pairs] [--shots 1,2,5,10]
    python benchmarks/cold_start.py warm [--tasks flowers,pairs] [--shots 1,2,5,10]
        [--caches cache/fewlabels] [--draws 10] [--random-draws 20] [--save F.json] [--render F.json ...]

The caches, tasks (``pairs``: the 10 class pairs of flowers), probe and scoring are those of few_labels.py: picks
from train/ (labels hidden), the fixed probe (the zoo's logreg, C=select_rules.FIXED_C, standardized features)
trained on the picks with their true labels and scored once on val/.

``diagnose``: for each rule's picks (10 seeds) and for random draws (all, and those holding every class): how many
classes the picks miss, the alignment of the picks' class-mean difference with the whole train/ set's (2 classes:
the cosine of the two differences), the picks' typicality (the rank of their 20-nearest-neighbour density among the
pool's rows, 1 = the densest), and the test accuracy of the fixed probe beside that of the same logreg without its
per-feature standardization, on the centred unit vectors the rules see (the scaler is fit on the picks alone).

``cold``: cold-start candidates: the default ``kmeans`` (64 principal directions) and the former one (all 1,280
dimensions), ``typiclust`` (the most typical row of each of budget k-means clusters), ``probcover`` (balls of the
radius whose neighbourhoods stay inside one k-means cluster), and farthest-first from typical rows (the top half by
typicality; first the densest, then the one farthest from every pick), each in both spaces; ``kmeans`` (64) as the
best of 4 or 16 k-means restarts (the default runs one), lowest inertia kept.

``warm``: round 2 after the default cold pick of the same budget (seed s, round 2 seed 1000 + s): the default
``coverage-margin``, ``kmeans again`` (a second cold-start pick), ``typiclust again``, random, and two class-balanced
coverage rules: the budget split equally over the labelled classes and, in each, the ``kmeans`` rule over the pool
rows that label spreading (``spread-balanced``; the kNN graph of classifiers/semi.py) or the fixed probe
(``probe-balanced``) gives that class.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import numpy as np  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from few_labels import CACHES, load, pairs, probe_accuracy  # noqa: E402

from classifiers import select_rules as rules  # noqa: E402


def unscaled_accuracy(S, y, Sval, yval, rows) -> float:
    """The same logreg without its per-feature standardization, on the centred unit vectors."""
    from classifiers.registry import make_classifier

    if len(set(y[rows].tolist())) < 2:
        return float((yval == y[rows][0]).mean())
    model = make_classifier(f"logreg:C={rules.FIXED_C}", 0, scale=False).fit(S[rows], y[rows])
    return float((model.predict(Sval) == yval).mean())


def farthest_typical(space, budget, seed) -> list[int]:
    """Farthest-first from typical rows: of the top half by typicality, the densest first, then each time the one
    farthest (cosine) from every pick."""
    typical = rules._typicality(space, np.arange(len(space)), np.random.default_rng(seed))
    cand = np.flatnonzero(typical >= np.median(typical))
    picks = [int(cand[np.argmax(typical[cand])])]
    far = 1 - space[cand] @ space[picks[0]]
    while len(picks) < budget:
        j = int(np.argmax(far))
        picks.append(int(cand[j]))
        far = np.minimum(far, 1 - space[cand] @ space[cand[j]])
    return picks


def balanced(S, P, known, pool, budget, seed, pseudo) -> list[int]:
    """The budget split equally over the labelled classes (the rest to the largest pseudo-classes); in each, the
    ``kmeans`` rule over the pool rows of that pseudo-class and that class's labelled rows."""
    classes = sorted(set(known[known != ""].tolist()))
    rng, rows, labelled = np.random.default_rng(seed), np.flatnonzero(pool), np.flatnonzero(known != "")
    sizes = np.array([(pseudo[rows] == c).sum() for c in range(len(classes))])
    share = np.full(len(classes), budget // len(classes))
    share[np.argsort(-sizes, kind="stable")[: budget - share.sum()]] += 1
    picked = rules.Picked()
    batch = rules.Batch(S, budget, None, rules.DUPLICATE_COSINE, labelled, picked)
    for c, name in enumerate(classes):
        mine = rows[pseudo[rows] == c]
        n = min(int(share[c]), len(mine))
        if n:
            batch.budget = len(picked.rows) + n
            rules._clusters(P, mine, labelled[known[labelled] == name], n, "kmeans", rng, batch)
    batch.budget = budget
    rules._fill(rows, rng, batch)
    return picked.rows


def tasks_of(text: str, caches) -> list[str]:
    return [t for part in text.split(",") if part for t in (pairs(caches, "flowers") if part == "pairs" else [part])]


def stats(values) -> dict:
    v = np.asarray(values, dtype=float) * 100
    return {"mean": float(v.mean()), "std": float(v.std()), "p90": float(np.percentile(v, 90)), "n": len(v)}


def task_data(caches, name):
    S, X, y, Xval, yval = load(caches, name)
    Sval = rules.normalized(Xval - X.mean(axis=0))  # the val rows as the rules see train/'s
    return S, rules.coverage_space(S), X, y, Xval, yval, Sval


def diagnose(name, caches, shots, draws, random_draws, say) -> list[dict]:
    S, P, X, y, Xval, yval, Sval = task_data(caches, name)
    classes = sorted(set(y.tolist()))
    hidden, everything = np.full(len(y), "", dtype=object), np.ones(len(y), dtype=bool)
    typical = rules._typicality(S, np.arange(len(y)), np.random.default_rng(0))
    rank = 1 - typical.argsort().argsort() / (len(y) - 1)  # 0 = the densest row
    truth = S[y == classes[0]].mean(axis=0) - S[y == classes[-1]].mean(axis=0)

    def measure(rows) -> dict:
        rows = np.asarray(rows)
        counts = np.array([(y[rows] == c).sum() for c in classes])
        d = S[rows][y[rows] == classes[0]].mean(axis=0) - S[rows][y[rows] == classes[-1]].mean(axis=0)
        both = counts[0] > 0 and counts[-1] > 0
        return {
            "missing": int((counts == 0).sum()),
            "align": float(d @ truth / np.linalg.norm(d) / np.linalg.norm(truth)) if both else np.nan,
            "rank": float(rank[rows].mean()),
            "acc": probe_accuracy(X[rows], y[rows], Xval, yval),
            "unscaled": unscaled_accuracy(S, y, Sval, yval, rows),
        }

    out = []
    for k in shots:
        budget = k * len(classes)
        sets = {
            "kmeans (64 directions)": [
                rules.choose(S, hidden, everything, budget, "kmeans", s, space=P).rows for s in range(draws)
            ],
            "kmeans (1,280 dimensions)": [
                rules.choose(S, hidden, everything, budget, "kmeans", s, space=S).rows for s in range(draws)
            ],
            "typiclust (64 directions)": [
                rules.choose(S, hidden, everything, budget, "typiclust", s, space=P).rows for s in range(draws)
            ],
        }
        rng = np.random.default_rng(0)
        draws_all = [rng.choice(len(y), budget, replace=False) for _ in range(random_draws * 10)]
        sets["random"] = draws_all[:random_draws]
        sets["random, every class drawn"] = [r for r in draws_all if set(y[r].tolist()) == set(classes)][:random_draws]
        for rule, row_sets in sets.items():
            m = [measure(r) for r in row_sets]
            row = {"data": name, "shots": k, "rule": rule, "n": len(m)}
            for key in ("missing", "align", "rank"):
                row[key] = float(np.nanmean([x[key] for x in m])) if any(np.isfinite(x[key]) for x in m) else np.nan
            row["acc"], row["unscaled"] = stats([x["acc"] for x in m]), stats([x["unscaled"] for x in m])
            row["distinct"] = len({tuple(sorted(map(int, r))) for r in row_sets})
            out.append(row)
        say(f"{name} {k}/class diagnosed")
    return out


def cold(name, caches, shots, draws, random_draws, say) -> list[dict]:
    S, P, X, y, Xval, yval, _ = task_data(caches, name)
    hidden, everything = np.full(len(y), "", dtype=object), np.ones(len(y), dtype=bool)

    def rule(r, space, restarts=None):
        def pick(b, s):
            former = rules.KMEANS_INIT
            rules.KMEANS_INIT = restarts or former
            try:
                return rules.choose(S, hidden, everything, b, r, s, space=space).rows
            finally:
                rules.KMEANS_INIT = former

        return pick

    candidates = {
        "kmeans (64, default)": rule("kmeans", P),
        "kmeans (1,280)": rule("kmeans", S),
        "kmeans (64, best of 4 restarts)": rule("kmeans", P, 4),
        "kmeans (64, best of 16 restarts)": rule("kmeans", P, 16),
        "typiclust (64)": rule("typiclust", P),
        "typiclust (1,280)": rule("typiclust", S),
        "probcover (64)": rule("probcover", P),
        "farthest-typical (64)": lambda b, s: farthest_typical(P, b, s),
        "farthest-typical (1,280)": lambda b, s: farthest_typical(S, b, s),
        "random": rule("random", P),
    }
    out = []
    for k in shots:
        budget = k * len(set(y.tolist()))
        for label, pick in candidates.items():
            if ONLY and label != "random" and not any(label.startswith(o) for o in ONLY):
                continue
            n = random_draws if label == "random" else draws
            accs = [probe_accuracy(X[r], y[r], Xval, yval) for r in (np.asarray(pick(budget, s)) for s in range(n))]
            out.append({"data": name, "shots": k, "rule": label, **stats(accs)})
        say(f"{name} {k}/class cold")
    return out


ONLY: list[str] = []  # --rules: the candidates run (by the start of their label; random always)


WARM_RULES = ("coverage-margin (default)", "kmeans again", "typiclust again", "spread-balanced", "probe-balanced")


def round_two(label, S, P, y, first, budget, seed, graph) -> list[int]:
    """Round 2's picks by ``label`` (one of ``WARM_RULES`` or random) after the labelled rows ``first``."""
    from classifiers import semi

    known = np.full(len(y), "", dtype=object)
    known[first] = y[first]
    pool = known == ""
    classes = sorted(set(y[first].tolist()))
    rule = {"random": "random", "kmeans again": "kmeans", "typiclust again": "typiclust"}.get(label)
    if rule is None and len(classes) < 2:  # one class labelled: what `select` does then (no probe can be fit)
        rule = rules.DEFAULT_COLD
    if label == "coverage-margin (default)":
        rule = rules.DEFAULT_WARM
    if rule is not None:
        return rules.choose(S, known, pool, budget, rule, seed, space=P).rows
    labelled = np.asarray(first)
    if label == "spread-balanced":
        index = np.array([classes.index(c) for c in y[labelled]])
        pseudo = semi.spread(graph, labelled, index, len(classes)).argmax(axis=1)
    else:
        proba, _ = rules.probe_proba(S, known, labelled, np.arange(len(y)), classes, 0)
        pseudo = proba.argmax(axis=1)
    return balanced(S, P, known, pool, budget, seed, pseudo)


def warm(name, caches, shots, draws, random_draws, say) -> list[dict]:
    from classifiers import semi

    S, P, X, y, Xval, yval, _ = task_data(caches, name)
    hidden, everything = np.full(len(y), "", dtype=object), np.ones(len(y), dtype=bool)
    graph = semi.knn_graph(S)
    out = []
    for k in shots:
        budget = k * len(set(y.tolist()))
        results: dict[str, list] = {}
        for s in range(max(draws, random_draws)):
            first = rules.choose(S, hidden, everything, budget, rules.DEFAULT_COLD, s, space=P).rows
            labels = (["random"] if s < random_draws else []) + (list(WARM_RULES) if s < draws else [])
            for label in labels:
                rows = np.asarray([*first, *round_two(label, S, P, y, first, budget, 1000 + s, graph)])
                results.setdefault(label, []).append(probe_accuracy(X[rows], y[rows], Xval, yval))
        out += [{"data": name, "shots": k, "rule": label, **stats(v)} for label, v in results.items()]
        say(f"{name} {k}/class warm")
    return out


def summary(rows: list[dict], part: str) -> list[str]:
    """Per rule and budget: the mean over the tasks of (rule − random) and the tasks where the rule is 8 points
    or more above random's mean and above its p90 (cold) or above random and the default (warm)."""
    tasks = list(dict.fromkeys(r["data"] for r in rows))
    shots = list(dict.fromkeys(r["shots"] for r in rows))
    labels = [r for r in dict.fromkeys(r["rule"] for r in rows) if r != "random"]

    def get(t, k, rule):
        return next(r for r in rows if r["data"] == t and r["shots"] == k and r["rule"] == rule)

    lines = [
        "| rule | " + " | ".join(f"{k}/class" for k in shots) + " |",
        "|---|" + "--:|" * len(shots),
        "| random: mean (p90) | "
        + " | ".join(
            f"{np.mean([get(t, k, 'random')['mean'] for t in tasks]):.1f} "
            f"({np.mean([get(t, k, 'random')['p90'] for t in tasks]):.1f})"
            for k in shots
        )
        + " |",
    ]
    default = next(x for x in labels if "default" in x)
    for label in labels:
        cells = []
        for k in shots:
            gain = np.mean([get(t, k, label)["mean"] - get(t, k, "random")["mean"] for t in tasks])
            if part == "cold":
                met = sum(
                    get(t, k, label)["mean"] - get(t, k, "random")["mean"] >= 8
                    and get(t, k, label)["mean"] > get(t, k, "random")["p90"]
                    for t in tasks
                )
                cells.append(f"{gain:+.1f} ({met})")
            else:
                vs = np.mean([get(t, k, label)["mean"] - get(t, k, default)["mean"] for t in tasks])
                cells.append(f"{gain:+.1f} ({vs:+.1f})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def diagnosis_table(rows: list[dict]) -> list[str]:
    lines = [
        "| data | per class | picks | distinct sets | classes missing | alignment | typicality rank | "
        "fixed probe: mean (p90) | without its scaler: mean (p90) |",
        "|---|--:|---|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        a, u = r["acc"], r["unscaled"]
        lines.append(
            f"| {r['data']} | {r['shots']} | {r['rule']} ({r['n']}) | {r['distinct']} | {r['missing']:.2f} | "
            f"{r['align']:.2f} | {r['rank']:.2f} | {a['mean']:.1f} ({a['p90']:.1f}) | "
            f"{u['mean']:.1f} ({u['p90']:.1f}) |"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("diagnose", "cold", "warm"))
    parser.add_argument("--tasks", default=None, help="data sets and/or 'pairs' (the 10 class pairs of flowers)")
    parser.add_argument("--shots", default=None)
    parser.add_argument("--draws", type=int, default=10)
    parser.add_argument("--random-draws", type=int, default=20)
    parser.add_argument("--caches", type=pathlib.Path, default=CACHES)
    parser.add_argument("--save", type=pathlib.Path)
    parser.add_argument("--rules", default="", help="cold: only the candidates whose label starts with one of these")
    parser.add_argument("--render", type=pathlib.Path, nargs="*")
    opts = parser.parse_args()
    ONLY[:] = [r for r in opts.rules.split(",") if r]
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    rows: list[dict] = []
    if opts.render:
        for saved in opts.render:
            rows += json.loads(saved.read_text())
    else:
        tasks = opts.tasks or ("hymenoptera" if opts.part == "diagnose" else "flowers,pairs")
        shots = [int(s) for s in (opts.shots or ("1,2,5" if opts.part == "diagnose" else "1,2,5,10")).split(",")]
        run = {"diagnose": diagnose, "cold": cold, "warm": warm}[opts.part]
        started = time.perf_counter()
        for name in tasks_of(tasks, opts.caches):
            rows += run(name, opts.caches, shots, opts.draws, opts.random_draws, say)
            if opts.save:
                opts.save.write_text(json.dumps(rows, default=float))
        say(f"{time.perf_counter() - started:.0f} s, load average {os.getloadavg()[0]:.1f}")
    if opts.part == "diagnose":
        print("\n".join(diagnosis_table(rows)))
    else:
        tasks = list(dict.fromkeys(r["data"] for r in rows))
        what = (
            "gain over random's mean (tasks 8 points or more above random's mean and above its p90)"
            if opts.part == "cold"
            else "gain over random's mean (against the default)"
        )
        print(f"{len(tasks)} task(s) ({', '.join(tasks)}): mean over the tasks; {what}\n")
        print("\n".join(summary(rows, opts.part)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
