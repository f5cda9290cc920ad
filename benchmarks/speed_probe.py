"""The plan's speed probe for folds side by side: how much slower a product runs while two run at once, as
``cost.machine_speed(jobs=2)`` measures it now, against the order it had until 2026-12-07.

Until then ``machine_speed(jobs=2)`` ran ``speed_check``'s timing on every core and, at once after it,
``together_check`` (two threads, one BLAS thread each). A BLAS worker left spinning by the first (for about 0.1 s)
was a third busy thread on two cores during the second. Now the side-by-side probe skips the timing on every core,
pauses (``cost.SETTLE``) and gives each thread its own rows. Each measurement runs in a fresh process, as ``cv``
does once at its start; the former order is rebuilt from the same functions (the check on every core, then
``together_check`` with no pause). The plan's side-by-side estimates scale with the square root of the contention.

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
import json, sys
from classifiers import cost
if sys.argv[1] == "former":
    cost.SETTLE = 0.0
    one, _ = cost.speed_check()  # the one-thread timing, then the timing on every core, as before
    together = cost.together_check(2)
else:
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
