"""`featurebank cv` at 20,000 to a million rows: seconds per fold and peak memory of each zoo entry, the default
`cv --out`, and the plain scikit-learn script a user would write instead, each as a whole process.

    python benchmarks/cv_scale.py [--rows 20000 200000] [--million] [--entries logreg,ridge] [--no-default]
                                  [--folds 5] [--plan] [--write]

Synthetic caches (class means plus noise, 1,280-d float32, 10 classes), written with the project's cache writer
(``CacheWriter``: parts, then the merge) so that `featurebank cv` reads them as it reads any cache, under
``cache/scale/`` (git-ignored; made once, kept: 100 MB at 20k, 1 GB at 200k, 5 GB at 1M with ``--million``).

Every measurement is a subprocess (imports included, as a user runs it), timed, with its peak resident memory
(``ru_maxrss`` of the child). The machine may be shared: the load average is printed beside the table, and the
ratios that matter (featurebank against the plain script) are measured in the same run, one after the other.
``--folds`` sets the folds of the ``-c`` runs (3 by default; the default run always has cv's own 5). ``--plan``
prints, without fitting, the plan the default run would make on each cache (what it includes, what it leaves out
and why), at this machine's measured speed and at the calibration machine's. ``--write`` replaces this script's
section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import million_rows  # noqa: E402
from cpu_engines import cpu, write_section  # noqa: E402

DIM = 1280
CLASSES = 10
PART_ROWS = 50_000
SEPARATION = 0.06  # class means' scale per dimension against unit noise: accuracy well below 100% at 1,280-d
FOLDS = 3
LAYER = "classifier.0"
# million_rows.py's synthetic settings (the cache writer needs some), as MobileNetV2's 1,280-d layer
SETTINGS = {**million_rows.SETTINGS, "backbone": "mobilenet_v2", "layers": [LAYER]}

MAXRSS = """
import resource, subprocess, sys
try:
    r = subprocess.run(sys.argv[2:], capture_output=True, text=True, timeout=float(sys.argv[1]))
    sys.stderr.write(r.stderr[-4000:]); print(r.stdout.strip()); code = r.returncode
except subprocess.TimeoutExpired:
    print("timed out"); code = 124
print("maxrss", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)
"""

# The script a user would write instead of `featurebank cv -c logreg --folds 3`: the same file, the same folds'
# kind and the same model as the former fixed default (C=0.1).
PLAIN = """
import sys, h5py, numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
with h5py.File(sys.argv[1]) as f:
    X = f["features/" + sys.argv[2]][()]
    y = f["rows/label"].asstr()[()]
scores = []
for train, test in StratifiedKFold(3, shuffle=True, random_state=0).split(X, y):
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=1000)).fit(X[train], y[train])
    scores.append(np.mean(model.predict(X[test]) == y[test]))
print("accuracy", round(float(np.mean(scores)), 4))
"""


# The same work as the tuned probe, written the scikit-learn way: C chosen over the same grid by 3-fold
# LogisticRegressionCV (log-loss) inside each outer fold, then refit.
PLAIN_TUNED = PLAIN.replace(
    "from sklearn.linear_model import LogisticRegression", "from sklearn.linear_model import LogisticRegressionCV"
).replace(
    "LogisticRegression(C=0.1, max_iter=1000)",
    "LogisticRegressionCV(Cs=np.logspace(-4, 1, 11), cv=3, scoring='neg_log_loss', max_iter=2000)",
)


def cache_path(rows: int) -> pathlib.Path:
    return ROOT / "cache" / "scale" / f"synthetic-{rows}.h5"


def build(cache: str, rows: int, dim: int = DIM, seed: int = 0) -> None:
    """Class means plus unit Gaussian noise, parts of PART_ROWS rows through ``CacheWriter.write_batch``, then the
    merge: the file `extract` would leave, with synthetic paths (no images behind them)."""
    import numpy as np

    from embedder.cache.hdf5 import CacheWriter

    rng = np.random.default_rng(seed)
    means = (SEPARATION * rng.standard_normal((CLASSES, dim))).astype(np.float32)
    labels = rng.integers(0, CLASSES, rows)
    order = [(f"class{c}/img{i:07d}.jpg", f"class{c}", "") for i, c in enumerate(labels)]
    with CacheWriter(cache, SETTINGS, "csv:/synthetic/manifest.csv", "/synthetic") as writer:
        for start in range(0, rows, PART_ROWS):
            chunk = order[start : start + PART_ROWS]
            n = len(chunk)
            X = rng.standard_normal((n, dim), dtype=np.float32)
            X += means[labels[start : start + n]]
            writer.write_batch(
                {
                    "path": [p for p, _, _ in chunk],
                    "label": [c for _, c, _ in chunk],
                    "group": [""] * n,
                    "size": [1000] * n,
                    "mtime_ns": [1] * n,
                    "digest": [f"{start + i:032x}" for i in range(n)],
                },
                {LAYER: X},
                {k: [] for k in ("path", "reason", "digest", "size", "mtime_ns")},
            )
        writer.commit(order, {})


def ensure(rows: int) -> str:
    path = cache_path(rows)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        seconds, peak, _ = measured([sys.executable, __file__, "--step", "build", str(path), str(rows)], 7200)
        print(f"built {path} in {seconds:.0f} s (peak {peak:.1f} GB)", flush=True)
    return str(path)


def measured(cmd: list[str], timeout: float) -> tuple[float | None, float, str]:
    """Seconds (None past ``timeout``) and peak RSS (GB) of ``cmd`` as a whole process, and its output."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", MAXRSS, str(timeout), *cmd], capture_output=True, text=True, env=env, cwd=ROOT
    )
    seconds = time.perf_counter() - t
    text, peak = out.stdout.rsplit("maxrss", 1)
    if out.returncode == 124:
        return None, int(peak) / 1024 / 1024, "timed out"
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return seconds, int(peak) / 1024 / 1024, text.strip()


def cv(cache: str, *args: str, folds: int | None = FOLDS) -> list[str]:
    """The command line; ``folds=None``: cv's own default (5), as a user runs it."""
    return [sys.executable, "-m", "cli", "cv", cache, *(["--folds", str(folds)] if folds else []), *args]


def knn_fold(cache: str) -> None:
    """One fold of kNN (10 neighbours, cosine, distance weights) in this process: scikit-learn's brute-force
    KNeighborsClassifier, the zoo's former entry, against the blocked exact search (the zoo's now)."""
    import numpy as np
    from sklearn.model_selection import StratifiedKFold
    from sklearn.neighbors import KNeighborsClassifier

    from classifiers.neighbours import CosineKNeighbors
    from embedder.cache.hdf5 import CacheReader

    reader = CacheReader(cache)
    X, y = reader.features(LAYER), reader.labels
    train, test = next(StratifiedKFold(FOLDS, shuffle=True, random_state=0).split(X, y))
    out = {}
    for name, model in (
        ("scikit-learn", KNeighborsClassifier(10, weights="distance", metric="cosine", algorithm="brute")),
        ("blocked", CosineKNeighbors(10, weights="distance")),
    ):
        t = time.perf_counter()
        out[name] = model.fit(X[train], y[train]).predict_proba(X[test])
        print(name, round(time.perf_counter() - t, 2))
    print("same predictions", bool((out["scikit-learn"].argmax(1) == out["blocked"].argmax(1)).all()))
    print("largest probability difference", float(np.abs(out["scikit-learn"] - out["blocked"]).max()))


def probe_fold(cache: str, how: str, out: str) -> None:
    """One fold of the default `cv` (5 folds, the first) of the tuned probe in this process, as `cv` runs it:
    ``indexed`` from the layer's rows by index, ``copy`` on a copy of the fold's rows (the former path). Prints its
    wall and CPU seconds and the chosen C; saves its coefficients and test probabilities to ``out``."""
    import numpy as np

    from classifiers import crossval
    from classifiers import rows as rows_module
    from classifiers.zoo import make_classifier

    data = crossval.load_sources(cache)[0].data
    X, y = data.features(LAYER), data.y
    split = crossval.make_splits(y, None, 5, 1, 0, data.classes)[0]
    if how == "copy":
        rows_module.BY_INDEX_FROM = 10**12
    else:  # by index whatever its size
        rows_module.BY_INDEX_BYTES = 0
    wall, cpu_s = time.perf_counter(), time.process_time()
    result = crossval._run_fold(make_classifier("logreg"), X, y, None, split, len(data.classes))
    wall, cpu_s = time.perf_counter() - wall, time.process_time() - cpu_s
    print(f"wall {wall:.1f} cpu {cpu_s:.1f} fit {result[2]:.1f} predict {result[3]:.1f}")
    np.savez(out, pred=result[0], proba=result[1])


def planned(budget: dict, board: list[dict], rows: int, folds: int = 5) -> list[str]:
    """The default run's plan against what its folds took: the cost model's check at this size."""
    lines = [
        f"The default run's plan ({budget['message']}): estimated against measured seconds per fold (fit + predict)",
        "",
        "| entry | estimated s / fold | measured s / fold | measured / estimated |",
        "|---|--:|--:|--:|",
    ]
    measured_by = {r["classifier"]: r["fit_seconds"] + r["predict_seconds"] for r in board}
    at_once = budget.get("folds_at_once", {})
    for entry, total in budget["estimated_seconds"].items():
        # the plan's total is a fold's estimate times the rounds of folds side by side: ceil(folds / at once)
        guess = None if total is None else total / math.ceil(folds / at_once.get(entry, 1))
        took = measured_by.get(entry)
        ratio = f"{took / guess:.2f}" if guess and took is not None else ""
        took_text = f"{took:.1f}" if took is not None else ""
        lines.append(f"| {entry} | {'' if guess is None else f'{guess:.1f}'} | {took_text} | {ratio} |")
    left = ", ".join(f"{k} (about {v / 60:.0f} min)" for k, v in budget["left_out"].items()) or "none"
    lines += [
        "",
        f"Left out at {rows:,} rows: {left}; the report's extras estimated at "
        f"{budget.get('extras_estimated_seconds', 0):.0f} s.",
    ]
    print("\n".join(lines), flush=True)
    return lines


def default_plan(cache: str) -> None:
    """The plan of the default run (`cv` without -c, 5 folds, the report's extras as they are beside the cache), as
    ``cross_validate`` makes it, at this machine's speed now and at the calibration machine's (1.0)."""
    from classifiers import crossval
    from classifiers.budget import plan
    from classifiers.cost import Shape, machine_speed, parse_budget
    from classifiers.options import CVOptions
    from classifiers.parallel import fold_jobs

    data = crossval.load_sources(cache)[0].data
    d, k = data.dims(LAYER), len(data.classes)
    splits = crossval.make_splits(data.y, None, 5, 1, 0, data.classes)
    shapes = [Shape(len(s.train), len(s.test), d, k) for s in splits]
    jobs = fold_jobs(None, len(splits))
    for speed in (machine_speed, 1.0):
        the_plan = plan(
            None,
            shapes,
            parse_budget(CVOptions.budget),
            speed,
            extras=crossval._extras_seconds(data, d, "report"),
            layer_bytes=4.0 * len(data.y) * d,
            jobs=jobs,
            folds=len(splits),
        )
        print(f"speed {the_plan.speed:.2f}: {the_plan.message}")


def fold_table(sizes: list[int], timeout: float) -> None:
    """One fold of the tuned probe on each cache, by index and on a copy of the fold's rows, each a process (its
    peak RSS against the layer's bytes), one after the other; the same predictions?"""
    import numpy as np

    print(f"load average {os.getloadavg()[0]:.1f}")
    print("| rows | path | wall s | CPU s | fit s | predict s | peak RSS GiB | peak / layer |")
    print("|--:|---|--:|--:|--:|--:|--:|--:|")
    for rows in sizes:
        cache, layer = ensure(rows), rows * DIM * 4 / 2**30
        got = {}
        with tempfile.TemporaryDirectory(prefix="cv-fold-") as tmp:
            for how in ("indexed", "copy"):
                out = f"{tmp}/{how}.npz"
                seconds, peak, text = measured([sys.executable, __file__, "--step", "fold", cache, how, out], timeout)
                words = dict(zip(text.split()[::2], text.split()[1::2]))
                print(
                    f"| {rows:,} | {how} | {words.get('wall', '')} | {words.get('cpu', '')} | {words.get('fit', '')} "
                    f"| {words.get('predict', '')} | {peak:.2f} | {peak / layer:.2f} |",
                    flush=True,
                )
                got[how] = np.load(out) if seconds is not None else None
            if got["indexed"] is not None and got["copy"] is not None:
                a, b = got["indexed"], got["copy"]
                print(
                    f"{rows:,} rows: the same predictions on {np.mean(a['pred'] == b['pred']):.4%} of the test rows, "
                    f"largest probability difference {np.abs(a['proba'] - b['proba']).max():.2e}",
                    flush=True,
                )
    print(f"load average {os.getloadavg()[0]:.1f}")


def fmt(seconds: float | None, timeout: float) -> str:
    return f"> {timeout:.0f} (stopped)" if seconds is None else f"{seconds:.1f}"


def scale(
    rows: int,
    entries: list[str],
    default: bool,
    timeout: float,
    probe: str = "logreg",
    with_plain: bool = True,
    plain_tuned: bool = False,
    folds: int = FOLDS,
    default_jobs: tuple[str, ...] = ("auto",),
) -> list[str]:
    """The table of one cache size; the default run once for each of ``default_jobs`` (``auto``: cv's own choice of
    folds side by side, or a ``-j`` value)."""
    import json
    import shutil

    cache = ensure(rows)
    load = os.getloadavg()
    lines = [
        f"### {rows:,} rows x {DIM} float32, {CLASSES} classes, {folds} folds (the default run: 5)",
        "",
        f"Load average before: {load[0]:.1f} (1 min), {load[1]:.1f} (5 min) on {os.cpu_count()} cores.",
        "",
        "| command (whole process) | seconds | x plain script | s per fold (fit + predict) | peak RSS GiB "
        "| balanced accuracy |",
        "|---|--:|--:|--:|--:|--:|",
    ]

    def row(name, seconds, peak, per_fold="", score=""):
        ratio = f"{seconds / plain:.2f}" if seconds is not None and plain else ""
        lines.append(f"| {name} | {fmt(seconds, timeout)} | {ratio} | {per_fold} | {peak:.2f} | {score} |")
        print(lines[-1], flush=True)

    plain = None
    scripts = [
        ("plain scikit-learn script: h5py read, 3-fold StandardScaler + LogisticRegression(C=0.1)", PLAIN, with_plain),
        (
            "plain scikit-learn, tuned: the same with LogisticRegressionCV (C over 1e-4 … 10, 3 inner folds, log-loss)",
            PLAIN_TUNED,
            plain_tuned,
        ),
    ]
    for name, script, wanted in scripts:
        if not wanted:
            continue
        seconds, peak, text = measured([sys.executable, "-c", script, cache, LAYER], timeout)
        plain = seconds if script is PLAIN else plain  # the ratios' reference
        row(name, seconds, peak, score=text.split()[-1] + " (accuracy)" if seconds else "")
    shutil.rmtree(cache + ".extras", ignore_errors=True)  # the first run makes the report's extras, the next reuse
    with tempfile.TemporaryDirectory(prefix="cv-scale-") as tmp:
        probes = (
            (f"`cv -c {probe}` (first on this cache: the neighbour search made and kept)", ["-c", probe, "--json"]),
            (
                f"`cv -c {probe} --out` (neighbours reused; the map made and kept, figures, thumbnails)",
                ["-c", probe, "--out", f"{tmp}/a", "--json"],
            ),
            (
                f"`cv -c {probe} --out` again (every extra reused)",
                ["-c", probe, "--out", f"{tmp}/b", "--json"],
            ),
        )
        for name, args in probes if probe != "none" else ():
            seconds, peak, text = measured(cv(cache, *args), timeout)
            board = json.loads(text)["leaderboard"][0] if seconds else None
            row(
                name,
                seconds,
                peak,
                f"{board['fit_seconds'] + board['predict_seconds']:.1f}" if board else "",
                f"{board['balanced_accuracy']['mean']:.4f}" if board else "",
            )
        for entry in entries:
            seconds, peak, text = measured(cv(cache, "-c", entry, "--json", folds=folds), timeout)
            board = json.loads(text)["leaderboard"][0] if seconds else None
            row(
                f"`cv -c {entry}`",
                seconds,
                peak,
                f"{board['fit_seconds'] + board['predict_seconds']:.1f}" if board else "",
                f"{board['balanced_accuracy']['mean']:.4f}" if board else "",
            )
        for jobs in default_jobs if default else ():
            shutil.rmtree(cache + ".extras", ignore_errors=True)  # the default run pays for its extras too
            j = [] if jobs == "auto" else ["-j", jobs]
            seconds, peak, text = measured(cv(cache, "--out", f"{tmp}/default", "--json", *j, folds=None), timeout)
            report = json.loads(text) if seconds else {}
            best = report.get("leaderboard", [])
            at_once = report.get("cv", {}).get("budget", {}).get("folds_at_once", {})
            side = "/".join(sorted({str(v) for v in at_once.values()})) or "1"
            row(
                f"default `cv --out`{' -j ' + jobs if j else ''}, 5 folds, {side} at a time "
                f"(entries: {', '.join(r['classifier'] for r in best) or 'none finished'})",
                seconds,
                peak,
                "",
                f"{best[0]['balanced_accuracy']['mean']:.4f} ({best[0]['classifier']})" if best else "",
            )
            if report:
                lines.extend(["", *planned(report["cv"]["budget"], best, rows)])
    load = os.getloadavg()
    lines += ["", f"Load average after: {load[0]:.1f} (1 min), {load[1]:.1f} (5 min)."]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[20_000, 200_000])
    parser.add_argument("--million", action="store_true", help="also 1,000,000 rows (a 5 GB cache)")
    parser.add_argument("--entries", default=None, help="zoo entries, comma-separated (default: all of them)")
    parser.add_argument("--no-default", action="store_true", help="skip the default `cv --out` (every entry)")
    parser.add_argument(
        "--probe",
        default="logreg",
        help="the entry run with and without --out against the script (none: skip those runs)",
    )
    parser.add_argument(
        "--default-jobs", default="auto", help="the default run once per value, comma-separated: auto or a -j value"
    )
    parser.add_argument("--no-plain", action="store_true", help="skip the plain scikit-learn script")
    parser.add_argument("--plain-tuned", action="store_true", help="also the plain script with LogisticRegressionCV")
    parser.add_argument("--knn", action="store_true", help="one kNN fold: scikit-learn's search against ours")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds before a command is stopped")
    parser.add_argument("--folds", type=int, default=FOLDS, help="folds of the -c runs (the default run: 5)")
    parser.add_argument("--plan", action="store_true", help="only print the default run's plan on each cache")
    parser.add_argument(
        "--fold", action="store_true", help="only one fold of the tuned probe: by index against a copy of its rows"
    )
    parser.add_argument("--write", action="store_true", help="replace this script's section of RESULTS.md")
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.step == "build":
        build(opts.args[0], int(opts.args[1]))
        return 0
    if opts.step == "knn":
        knn_fold(opts.args[0])
        return 0
    if opts.step == "fold":
        probe_fold(*opts.args)
        return 0
    if opts.fold:
        fold_table(opts.rows + ([1_000_000] if opts.million else []), opts.timeout)
        return 0
    if opts.plan:
        for rows in opts.rows + ([1_000_000] if opts.million else []):
            print(f"{rows:,} rows:", flush=True)
            default_plan(ensure(rows))
        return 0
    if opts.entries is None:
        from classifiers.zoo import list_classifiers

        entries = list_classifiers()
    else:
        entries = [e for e in opts.entries.split(",") if e]
    name, _ = cpu()
    lines = [
        f"Machine: {name}, {os.cpu_count()} cores, {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} "
        f"GiB; {time.strftime('%Y-%m-%d %H:%M')}. Synthetic caches (class means plus unit noise, written by "
        f"`CacheWriter`); every number is one whole process (imports included), one run; peak RSS is the "
        f"process's ru_maxrss. The x plain column divides by the plain script's time measured in the same run.",
        "",
    ]
    for rows in opts.rows + ([1_000_000] if opts.million else []):
        lines += scale(
            rows,
            entries,
            not opts.no_default,
            opts.timeout,
            opts.probe,
            not opts.no_plain,
            opts.plain_tuned,
            opts.folds,
            tuple(opts.default_jobs.split(",")),
        ) + [""]
        if opts.knn:
            seconds, peak, text = measured([sys.executable, __file__, "--step", "knn", ensure(rows)], opts.timeout)
            lines += [f"One kNN fold at {rows:,} rows, in one process (seconds): " + "; ".join(text.splitlines()), ""]
            print(lines[-2], flush=True)
    text = "\n".join(lines).rstrip()
    print(text)
    if opts.write:
        write_section(ROOT / "benchmarks" / "RESULTS.md", text, "cv_scale.py", "cv from 20,000 to a million rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
