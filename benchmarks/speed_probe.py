"""The plan's speed probe for folds side by side: how much slower a product runs while two run at once, as
``cost.machine_speed(jobs=2)`` measures it now, against the order it had until 2026-12-07.

Until then ``machine_speed(jobs=2)`` ran ``speed_check``'s timing on every core and, at once after it,
``together_check`` (two threads, one BLAS thread each, on the same rows). A BLAS worker left spinning by the first
(for about 0.1 s) was a third busy thread on two cores during the second. Now the side-by-side probe pauses
(``cost.SETTLE``), skips the timing on every core and gives each thread its own rows. Each measurement runs in a
fresh process, as ``cv`` does once at its start; the former ``together_check`` is copied here as it was. The
plan's side-by-side estimates scale with the square root of the contention.

    python benchmarks/speed_probe.py --runs 8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

CHILD = r"""
import json, sys, threading, time
import numpy as np
from threadpoolctl import threadpool_limits
from classifiers import cost


def former_together(workers, repeats=cost.PROBE_REPEATS):
    # together_check as it was: no pause, every thread on the same rows
    rows, dims, width = cost.PROBE_SHAPE
    A = np.full((rows, dims), 0.5, dtype=np.float32)
    B = np.full((dims, width), 0.25, dtype=np.float32)
    start, times = threading.Barrier(workers), []

    def work():
        A @ B
        start.wait(timeout=30)
        for _ in range(repeats):
            began = time.perf_counter()
            A @ B
            times.append(time.perf_counter() - began)
            time.sleep(0.002)

    with threadpool_limits(1):
        threads = [threading.Thread(target=work) for _ in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return float(np.median(times))


if sys.argv[1] == "former":
    one, _ = cost.speed_check()  # the one-thread timing, then the one on every core, as machine_speed made them
    together = former_together(2)
else:  # machine_speed(jobs=2)'s order now
    time.sleep(cost.SETTLE)
    one, _ = cost.speed_check(threads=False)
    together = cost.together_check(2)
print(json.dumps({"one": one, "together": together}))
"""


def measure(order: str) -> dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "-c", CHILD, order], cwd=root, capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=8, help="fresh processes per order (alternating)")
    args = parser.parse_args()
    load = [os.getloadavg()[0]]
    runs: dict[str, list[float]] = {"former": [], "now": []}
    for _ in range(args.runs):
        for order in runs:
            m = measure(order)
            runs[order].append(m["together"] / m["one"])
    load.append(os.getloadavg()[0])
    print(
        f"load average {min(load):.1f} to {max(load):.1f} on {os.cpu_count()} cores; {args.runs} fresh processes each\n"
    )
    print("| order | contention: median | min to max | side-by-side estimates, relative to now |")
    print("|---|--:|--:|--:|")
    now = float(np.median(runs["now"]))
    for order, label in (("former", "former (every core, then two at once)"), ("now", "now (a pause, own rows)")):
        c = np.array(runs[order])
        factor = np.sqrt(max(float(np.median(c)), 1.0)) / np.sqrt(max(now, 1.0))
        print(f"| {label} | {np.median(c):.2f} | {c.min():.2f} to {c.max():.2f} | {factor:.2f} |")


if __name__ == "__main__":
    main()
