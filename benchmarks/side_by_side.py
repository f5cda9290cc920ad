"""Folds side by side (cv's default) against one at a time (`-j 1`): whole `featurebank cv` processes on a quiet
machine and beside busy processes, `train`'s calibration fits, and how long Ctrl-C takes to be heard.

    python benchmarks/side_by_side.py CACHE [--entries logreg,ridge,lda,rbf-svm,knn] [--runs 2] [--busy 2]
                                      [--calibration CACHE ...] [--interrupt CACHE] [--write]

``CACHE``: an extracted cache (the figures in RESULTS.md: MobileNetV2's ``classifier.0`` layer of flowers'
``train/``). Each `cv` is a subprocess, timed whole, the default and ``-j 1`` alternating ``--runs`` times; then the
same beside ``--busy`` processes, each a Python loop on one core (0: skip). Beside each time, the plan's estimate
of the fits (``cv.budget.estimated_seconds`` summed), so that how well the estimate holds shows too.
``--calibration``: caches whose ``calibration.out_of_fold`` (the 5 fits ``train`` adds) is timed one at a time and
side by side, for the probe, the RBF SVM and extra trees. ``--interrupt``: a cache large enough that an RBF SVM's
fold takes a minute (the synthetic 20,000-row cache of ``cv_scale.py``); SIGINT is sent 12 s into `cv -c rbf-svm`,
and the seconds until the process ends are printed with its exit code. ``--write`` replaces this script's section of
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from cpu_engines import cpu, write_section  # noqa: E402

BUSY = "while True: pass"


def load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def cv_run(cache: str, entries: str, jobs: list[str]) -> tuple[float, float, str]:
    """One `featurebank cv` process: its wall seconds, the plan's estimate of the fits, and the best row."""
    with tempfile.TemporaryDirectory() as tmp:
        out = pathlib.Path(tmp) / "report.json"
        started = time.perf_counter()
        with open(out, "w") as f:
            subprocess.run(
                [sys.executable, "-m", "cli", "cv", cache, "-c", entries, "--json", *jobs],
                stdout=f,
                stderr=subprocess.DEVNULL,
                check=True,
                cwd=ROOT,
            )
        seconds = time.perf_counter() - started
        report = json.loads(out.read_text())
    estimate = sum(v or 0.0 for v in report["cv"]["budget"]["estimated_seconds"].values())
    best = report["leaderboard"][0]
    return seconds, estimate, f"{best['classifier']} {best['balanced_accuracy']['mean']:.4f}"


def cv_table(cache: str, entries: str, runs: int, busy: int) -> list[str]:
    lines = [
        f"`featurebank cv {pathlib.Path(cache).name} -c {entries} --json`, whole processes, alternating: seconds "
        "(the plan's estimate of the fits)",
        "",
        "| machine | side by side (default) | `-j 1` | best row (both) |",
        "|---|--:|--:|---|",
    ]
    for others in sorted({0, busy}):
        spinners = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(others)]
        try:
            time.sleep(3 if others else 0)
            times: dict[str, list[str]] = {"side": [], "one": []}
            best = set()
            loads = [load()]
            for _ in range(runs):
                for key, jobs in (("side", []), ("one", ["-j", "1"])):
                    seconds, estimate, row = cv_run(cache, entries, jobs)
                    times[key].append(f"{seconds:.1f} ({estimate:.1f})")
                    best.add(row)
            loads.append(load())
        finally:
            for p in spinners:
                p.kill()
        what = f"{others} busy processes" if others else "quiet"
        lines.append(
            f"| {what} (load {' to '.join(loads)}) | {', '.join(times['side'])} | {', '.join(times['one'])} | "
            f"{'; '.join(sorted(best))} |"
        )
        print(lines[-1], flush=True)
    return lines


def calibration_table(caches: list[str], runs: int) -> list[str]:
    from classifiers.calibration import out_of_fold
    from classifiers.crossval import load_sources, source_layers
    from classifiers.zoo import make_classifier

    lines = [
        "`train`'s calibration fits (`calibration.out_of_fold`, 5 inner folds), seconds of each run",
        "",
        "| cache | rows | entry | one at a time | side by side |",
        "|---|--:|---|--:|--:|",
    ]
    for cache in caches:
        sources = load_sources(cache)
        data = sources[0].data
        X, y = data.features(source_layers(sources, None)[0][0]), data.y
        for spec in ("logreg", "rbf-svm", "extra-trees"):
            took: dict[int | None, list[float]] = {1: [], None: []}
            for _ in range(runs):
                for jobs in (1, None):
                    started = time.perf_counter()
                    out_of_fold(make_classifier(spec), X, y, seed=0, jobs=jobs)
                    took[jobs].append(time.perf_counter() - started)
            lines.append(
                f"| {pathlib.Path(cache).name} | {len(y):,} | {spec} | {', '.join(f'{t:.2f}' for t in took[1])} | "
                f"{', '.join(f'{t:.2f}' for t in took[None])} |"
            )
            print(lines[-1], flush=True)
    return lines


def interrupt_table(cache: str, delay: float = 12.0) -> list[str]:
    lines = [
        f"Ctrl-C (SIGINT) {delay:.0f} s into `featurebank cv {pathlib.Path(cache).name} -c rbf-svm --json`: seconds "
        "until the process ended, and its exit code",
        "",
        "| folds | seconds to end | exit code |",
        "|---|--:|--:|",
    ]
    for label, jobs in (("side by side (default)", []), ("`-j 1`", ["-j", "1"])):
        p = subprocess.Popen(
            [sys.executable, "-m", "cli", "cv", cache, "-c", "rbf-svm", "--json", *jobs],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=ROOT,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a background shell ignores it
        )
        time.sleep(delay)
        sent = time.perf_counter()
        p.send_signal(signal.SIGINT)
        code = p.wait()
        lines.append(f"| {label} | {time.perf_counter() - sent:.1f} | {code} |")
        print(lines[-1], flush=True)
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cache", nargs="?", help="the cache of the cv runs (none: skip them)")
    parser.add_argument("--entries", default="logreg,ridge,lda,rbf-svm,knn")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--busy", type=int, default=2, help="busy processes beside the second set of runs (0: none)")
    parser.add_argument("--calibration", nargs="*", default=[], help="caches of the calibration fits' timing")
    parser.add_argument("--interrupt", help="a cache whose RBF SVM fold takes about a minute")
    parser.add_argument("--write", action="store_true", help="replace this script's section of RESULTS.md")
    opts = parser.parse_args()
    name, _ = cpu()
    lines = [f"Machine: {name}, {os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M')}.", ""]
    if opts.cache:
        lines += cv_table(opts.cache, opts.entries, opts.runs, opts.busy) + [""]
    if opts.calibration:
        lines += calibration_table(opts.calibration, opts.runs) + [""]
    if opts.interrupt:
        lines += interrupt_table(opts.interrupt) + [""]
    text = "\n".join(lines).rstrip()
    print(text)
    if opts.write:
        write_section(
            ROOT / "benchmarks" / "RESULTS.md", text, "side_by_side.py", "Folds side by side against one at a time"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
