"""`featurebank select` on a large cache: wall time and peak memory of the command, cold start and with labels.

    python benchmarks/select_speed.py [--rows 100000] [--dim 1280] [--budget 100] [--labelled 1000] [--tmp DIR]
                                      [--write]

Builds a synthetic cache of ROWS x DIM float32 features the way `extract` writes one (through ``CacheWriter``,
as benchmarks/million_rows.py does), unlabeled: 200 Gaussian clusters of random centres (so that k-means has
structure to find), paths in a flat folder that does not exist (the contact sheet says so instead of making
thumbnails). Then runs the command as a user would, each in its own process, timed with its peak resident memory:
cold start (`--budget B`, the default rule), and a second round with a `--labels` CSV of LABELLED rows (10
classes, by cluster: the default labelled-stage rule). The cache is deleted at the end.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from cpu_engines import write_section  # noqa: E402
from million_rows import MAXRSS, SETTINGS  # noqa: E402

PART_ROWS = 25_000
CLUSTERS = 200


def build(cache: str, rows: int, dim: int) -> list[int]:
    """The cache, unlabeled; returns the cluster of each row (for the labels CSV of the second round)."""
    import numpy as np

    from embedder.cache.hdf5 import CacheWriter

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (CLUSTERS, dim)).astype(np.float32)
    cluster = rng.integers(0, CLUSTERS, rows)
    order = [(f"img{i:07d}.jpg", "", "") for i in range(rows)]
    settings = {**SETTINGS, "backbone": "mobilenet_v2", "layers": ["classifier.0"]}
    with CacheWriter(cache, settings, "flat:/synthetic/photos", "/synthetic/photos") as writer:
        for start in range(0, rows, PART_ROWS):
            n = min(PART_ROWS, rows - start)
            X = centres[cluster[start : start + n]] + rng.normal(0, 1.5, (n, dim)).astype(np.float32)
            writer.write_batch(
                {
                    "path": [p for p, _, _ in order[start : start + n]],
                    "label": [""] * n,
                    "group": [""] * n,
                    "size": [1000] * n,
                    "mtime_ns": [1] * n,
                    "digest": [f"{start + i:032x}" for i in range(n)],
                },
                {"classifier.0": np.maximum(X, 0)},  # after a ReLU, as a CNN's pooled features are
                {k: [] for k in ("path", "reason", "digest", "size", "mtime_ns")},
            )
        writer.commit(order, {})
    return cluster.tolist()


def measured(*args: str) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds and peak memory (GB) of ``featurebank ARGS`` in its own process, one thread
    (OpenMP and BLAS): its CPU time is its wall time on one idle core, whatever else the machine is doing."""
    import resource

    one = dict.fromkeys(("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"), "1")
    env = {**os.environ, "PYTHONPATH": str(ROOT), **one}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-c", MAXRSS, sys.executable, "-m", "cli", *args], capture_output=True, text=True, env=env
    )
    seconds = time.perf_counter() - t
    if run.returncode:
        raise SystemExit(f"featurebank {' '.join(args)} failed: {run.stdout}{run.stderr}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    kb = int(run.stdout.strip().splitlines()[-1].split()[-1])
    return seconds, cpu, kb / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--budget", type=int, default=100)
    parser.add_argument("--labelled", type=int, default=1000)
    parser.add_argument("--tmp", default=None)
    parser.add_argument("--write", action="store_true", help="replace this script's section of RESULTS.md")
    opts = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="select-speed-", dir=opts.tmp)
    try:
        cache = os.path.join(folder, "photos.h5")
        t = time.perf_counter()
        cluster = build(cache, opts.rows, opts.dim)
        built = time.perf_counter() - t
        labels = os.path.join(folder, "labelled.csv")
        with open(labels, "w") as fh:
            fh.write("path,label\n")
            for i in range(0, opts.rows, max(1, opts.rows // opts.labelled)):
                fh.write(f"img{i:07d}.jpg,class{cluster[i] % 10}\n")
        rows = []
        for what, extra in (
            ("cold start (default rule: kmeans)", []),
            (f"with {opts.labelled:,} labelled (default rule: coverage-margin)", ["--labels", labels]),
        ):
            out = os.path.join(folder, "pick.csv")
            seconds, cpu, gb = measured("select", cache, "--budget", str(opts.budget), "-o", out, "--json", *extra)
            rows.append((what, seconds, cpu, gb))
        load = os.getloadavg()[0]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    lines = [
        f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, load average {load:.1f} during the runs. A synthetic "
        f"cache of {opts.rows:,} x {opts.dim} float32 rows (200 Gaussian clusters after a ReLU; built in "
        f"{built:.0f} s, not counted). `featurebank select CACHE --budget {opts.budget} -o pick.csv`, each run a "
        f"whole process (start-up, reading the cache, the rule, the manifest and its sheet) on ONE thread (OpenMP "
        f"and BLAS): its CPU time is its time on one idle core; the wall time is what it took beside the load.",
        "",
        "| run | CPU seconds (one thread) | wall seconds (beside the load) | peak memory (RSS) |",
        "|---|--:|--:|--:|",
        *[f"| {what} | {cpu:.1f} | {seconds:.1f} | {gb:.2f} GB |" for what, seconds, cpu, gb in rows],
    ]
    text = "\n".join(lines)
    print(text)
    if opts.write:
        write_section(ROOT / "benchmarks" / "RESULTS.md", text + "\n", "select_speed.py", "`select` on 100,000 rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
