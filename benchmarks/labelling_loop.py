"""The labelling loop of docs/few-labels.md, run whole with the commands a user types, on photos that chose nothing.

    python benchmarks/labelling_loop.py [--data samples/hymenoptera] [--rounds 3] [--budget 10]
                                        [--random-draws 10] [--work cache/loop] [--write]

DATA has train/ and val/ of class folders. train/ is embedded as a flat folder (``extract --layout flat``: no
labels, as a user's unlabeled photos); the class folder in each path plays the person who labels, and is read
only for the images ``select`` picked. Each round: ``featurebank select`` (``--labels`` the labels so far, from
the second round), the picks labelled, ``featurebank cv`` on the labels so far (``-c logreg --folds 3``,
out-of-fold: the figure a user sees), then ``featurebank train -c logreg`` with and without ``--unlabeled`` and
``featurebank evaluate`` on val/ (embedded once, with its labels): the held-out figure nobody chose anything on.
Against it, at each round's number of labels: ``--random-draws`` seeded random picks of the same number from
train/, trained and scored by the same functions (``classifiers.train`` and ``evaluate``, in this process), without
the unlabeled rows and with them, and every train/ image labelled (the ceiling).

The selection rules and their defaults were chosen on flowers (benchmarks/few_labels.py); hymenoptera is the held-out
check. Each step is a whole process (start-up included): the seconds say what a user waits, on this machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))

CLASSIFIER = "logreg"  # the tuned probe, featurebank's default member


def featurebank(*args: str) -> tuple[str, float]:
    """Run one command as a user would (this checkout's code); its stdout and wall seconds. A failure stops here."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode:
        raise SystemExit(f"featurebank {' '.join(args)} failed: {done.stderr.strip().splitlines()[-1:]}")
    return done.stdout, time.perf_counter() - started


def oracle(path: str) -> str:
    """The label a person would write: the class folder the photo sits in."""
    return pathlib.PurePosixPath(path).parts[0]


def write_labels(path: pathlib.Path, labelled: dict[str, str]) -> None:
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["path", "label"])
        out.writerows(sorted(labelled.items()))


def held_out(pool: str, test: str, labels: pathlib.Path, model: pathlib.Path, unlabeled: bool) -> float:
    """Accuracy on val/ of ``train -c logreg`` on the labels (and with ``unlabeled``, the pool's other rows)."""
    args = ["train", pool, "-c", CLASSIFIER, "--labels", str(labels), "-o", str(model)]
    featurebank(*args, *(["--unlabeled"] if unlabeled else []))
    out, _ = featurebank("evaluate", str(model), test, "--json")
    return float(json.loads(out)["metrics"]["accuracy"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=pathlib.Path, default=None, help="a folder with train/ and val/")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budget", type=int, default=10, help="images picked each round")
    parser.add_argument("--random-draws", type=int, default=10)
    parser.add_argument("--work", type=pathlib.Path, default=ROOT / "cache" / "loop")
    parser.add_argument("--weights", type=pathlib.Path, default=None)
    parser.add_argument("--write", action="store_true", help="replace this script's section of RESULTS.md")
    opts = parser.parse_args()
    from helpers import HYMENOPTERA, MOBILENET_V2

    data = opts.data or HYMENOPTERA
    weights = opts.weights or MOBILENET_V2
    if not (pathlib.Path(data) / "train").is_dir() or not pathlib.Path(weights).exists():
        print("skipped: no photos (samples/hymenoptera) or no MobileNetV2 checkpoint: see docs/offline.md")
        return 0
    data, work = pathlib.Path(data), opts.work / pathlib.Path(data).name
    work.mkdir(parents=True, exist_ok=True)
    pool, test = str(work / "pool.h5"), str(work / "test.h5")
    embed = ["-b", "mobilenet_v2", "-w", str(weights)]
    reused = " (already in the cache: nothing embedded)" if os.path.exists(pool) and os.path.exists(test) else ""
    _, pool_s = featurebank("extract", str(data / "train"), "--layout", "flat", *embed, "--cache", pool)
    _, test_s = featurebank("extract", str(data / "val"), *embed, "--cache", test)

    from embedder.cache.hdf5 import CacheReader

    paths = [str(p) for p in CacheReader(pool).paths]
    truth = {p: oracle(p) for p in paths}  # read only where select picked, and for the baselines
    labelled: dict[str, str] = {}
    labels = work / "labelled.csv"
    rows, seconds = [], {f"extract train/ (flat){reused}": pool_s, f"extract val/{reused}": test_s}
    for r in range(1, opts.rounds + 1):
        picks = work / f"round{r}.csv"
        args = ["select", pool, "--budget", str(opts.budget), "-o", str(picks)]
        if labelled:  # as docs/few-labels.md says: every label in one CSV, its empty rows not picked again
            args += ["--labels", str(labels)]
        out, seconds[f"select, round {r}"] = featurebank(*args)
        with open(picks, newline="") as f:
            picked = [row["path"] for row in csv.DictReader(f)]
        labelled.update({p: truth[p] for p in picked})
        write_labels(labels, labelled)
        cv_out, seconds[f"cv, round {r}"] = featurebank(
            "cv", pool, "--labels", str(labels), "-c", CLASSIFIER, "--folds", "3", "--json"
        )
        cv = json.loads(cv_out)
        cv_accuracy = next(m for m in cv["leaderboard"] if m["classifier"] == CLASSIFIER)["accuracy"]["mean"]
        model = work / f"round{r}.fbmodel"
        started = time.perf_counter()
        alone = held_out(pool, test, labels, model, unlabeled=False)
        with_rows = held_out(pool, test, labels, model, unlabeled=True)
        seconds[f"train + evaluate (twice), round {r}"] = time.perf_counter() - started
        counts = {c: sum(1 for v in labelled.values() if v == c) for c in sorted(set(truth.values()))}
        rows.append(
            {
                "round": r,
                "labels": len(labelled),
                "per_class": counts,
                "cv": cv_accuracy,
                "alone": alone,
                "unlabeled": with_rows,
                "picked_by": out.splitlines()[0].split(" by ", 1)[-1],
            }
        )
        print(json.dumps(rows[-1]), flush=True)

    import classifiers

    random_rows = []
    for row in rows:
        got: dict[str, list[float]] = {"alone": [], "unlabeled": []}
        for draw in range(opts.random_draws):
            rng = np.random.default_rng(1000 * row["round"] + draw)
            chosen = rng.choice(len(paths), row["labels"], replace=False)
            while len({truth[paths[i]] for i in chosen}) < 2:  # a probe needs two classes: draw again
                chosen = rng.choice(len(paths), row["labels"], replace=False)
            draw_labels = work / "random.csv"
            write_labels(draw_labels, {paths[i]: truth[paths[i]] for i in chosen})
            for key, unlabeled in (("alone", False), ("unlabeled", True)):  # in-process: the same functions
                bundle = classifiers.train(pool, classifier=CLASSIFIER, labels=str(draw_labels), unlabeled=unlabeled)
                got[key].append(float(classifiers.evaluate(bundle, test)["metrics"]["accuracy"]))
        random_rows.append({k: 100 * np.asarray(v) for k, v in got.items()})
        print(f"random at {row['labels']} labels: {json.dumps({k: v.tolist() for k, v in random_rows[-1].items()})}")
    everything = work / "all.csv"
    write_labels(everything, truth)
    ceiling = held_out(pool, test, everything, work / "all.fbmodel", unlabeled=False)

    def spread(v: np.ndarray) -> str:
        return f"{v.mean():.1f} ({np.percentile(v, 10):.1f} to {np.percentile(v, 90):.1f})"

    lines = [
        f"**{data.name}**: {len(paths)} train/ photos embedded unlabeled, val/ scored once per model; "
        f"`select --budget {opts.budget}` a round, `{CLASSIFIER}` (tuned) trained by `featurebank train`; random: "
        f"{opts.random_draws} seeded draws of the same number of train/ photos, mean (10th to 90th percentile).",
        "",
        "| round | labels (per class) | rule | cv on the labels, out of fold % | val/ % | val/ % with `--unlabeled` "
        "| random picks: val/ % | random picks with `--unlabeled`: val/ % |",
        "|--:|---|---|--:|--:|--:|--:|--:|",
    ]
    for row, rand in zip(rows, random_rows):
        per = ", ".join(f"{c} {n}" for c, n in row["per_class"].items())
        lines.append(
            f"| {row['round']} | {row['labels']} ({per}) | {row['picked_by']} | {100 * row['cv']:.1f} | "
            f"{100 * row['alone']:.1f} | {100 * row['unlabeled']:.1f} | {spread(rand['alone'])} | "
            f"{spread(rand['unlabeled'])} |"
        )
    lines += [
        f"| all | {len(paths)} | – | – | {100 * ceiling:.1f} | – | – | – |",
        "",
        "| step (whole process) | seconds |",
        "|---|--:|",
        *(f"| {k} | {v:.1f} |" for k, v in seconds.items()),
    ]
    text = "\n".join(lines)
    print(text)
    if opts.write:
        from cpu_engines import write_section

        load = os.getloadavg()[0]
        intro = (
            f"{time.strftime('%Y-%m-%d')}, 2 cores, load average {load:.1f} at the end. The loop of "
            "docs/few-labels.md with the commands a user types; the class folders stand in for the person who "
            "labels. MobileNetV2 ImageNet checkpoint, default layer. The selection rules were chosen on flowers: "
            "these photos chose nothing."
        )
        write_section(
            ROOT / "benchmarks" / "RESULTS.md",
            intro + "\n\n" + text + "\n",
            "labelling_loop.py",
            "The labelling loop, run whole on held-out photos",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
