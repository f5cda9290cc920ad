"""A million-row cache: time and peak memory of the merge after a reordered manifest, and of `featurebank info`.

    python benchmarks/million_rows.py [--rows 1000000] [--dim 2048] [--tmp DIR] [--no-results]

Builds a synthetic cache of ROWS x DIM float32 features (random numbers, synthetic paths in 10 classes, one
layer) the way a run writes one: parts of 50,000 rows through ``CacheWriter.write_batch``, then ``commit`` (a
merge in input order). Then commits the same rows in a shuffled order (what `extract` does when a manifest's
rows were reordered: the merge that used to read a whole layer per block), checks 1,000 rows against the
features they had, and runs `featurebank info` on the result. Each step is a subprocess, timed, with its peak
resident memory (ru_maxrss). About 3 x ROWS x DIM x 4 bytes of disk at the peak (the cache, the new file and the
spill file): 24 GB for the default; everything is deleted at the end. Writes its table into
benchmarks/RESULTS.md.
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

from cpu_engines import cpu, write_section  # noqa: E402

MAXRSS = (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
    "sys.stderr.write(r.stderr); print(r.stdout.strip()); "
    "print('maxrss', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)"
)

SETTINGS = {
    "backbone": "resnet50",
    "weights": "none:seed=0",
    "layers": ["flatten"],
    "pooling": "avg",
    "precision": "fp32",
    "preprocessing": {
        "resize": 256,
        "crop": 224,
        "interpolation": "bilinear",
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "draft": True,
    },
}
PART_ROWS = 50_000


def paths(rows: int) -> list[tuple[str, str, str]]:
    return [(f"class{i % 10}/img{i:07d}.jpg", f"class{i % 10}", "") for i in range(rows)]


def build(cache: str, rows: int, dim: int) -> None:
    """Parts of PART_ROWS random rows, then the merge in input order."""
    import numpy as np

    from embedder.cache.hdf5 import CacheWriter

    rng = np.random.default_rng(0)
    order = paths(rows)
    with CacheWriter(cache, SETTINGS, "csv:/synthetic/manifest.csv", "/synthetic") as writer:
        for start in range(0, rows, PART_ROWS):
            chunk = order[start : start + PART_ROWS]
            n = len(chunk)
            writer.write_batch(
                {
                    "path": [p for p, _, _ in chunk],
                    "label": [c for _, c, _ in chunk],
                    "group": [""] * n,
                    "size": [1000] * n,
                    "mtime_ns": [1] * n,
                    "digest": [f"{start + i:032x}" for i in range(n)],
                },
                {"flatten": rng.standard_normal((n, dim), dtype=np.float32)},
                {k: [] for k in ("path", "reason", "digest", "size", "mtime_ns")},
            )
        t = time.perf_counter()
        writer.commit(order, {})
        print(f"commit {time.perf_counter() - t:.1f}")


def reorder(cache: str, rows: int) -> None:
    """The same rows in a shuffled order: the merge after a reordered manifest."""
    import numpy as np

    from embedder.cache.hdf5 import CacheWriter

    order = paths(rows)
    shuffled = [order[i] for i in np.random.default_rng(1).permutation(rows)]
    with CacheWriter(cache, SETTINGS, "csv:/synthetic/manifest.csv", "/synthetic") as writer:
        t = time.perf_counter()
        writer.commit(shuffled, {})
        print(f"commit {time.perf_counter() - t:.1f}")


def sample(cache: str, out: str) -> None:
    """1,000 rows (path and features) to check the shuffled cache against."""
    import h5py
    import numpy as np

    with h5py.File(cache) as f:
        rows = np.sort(np.random.default_rng(2).choice(len(f["rows/path"]), 1000, replace=False))
        np.savez(out, rows=rows, paths=f["rows/path"].asstr()[rows].astype(str), X=f["features/flatten"][rows])


def check(cache: str, saved: str) -> None:
    import h5py
    import numpy as np

    s = np.load(saved)
    with h5py.File(cache) as f:
        where = {p: i for i, p in enumerate(f["rows/path"].asstr()[()])}
        rows = np.array([where[p] for p in s["paths"]])
        order = np.argsort(rows)
        X = f["features/flatten"][rows[order]]
    assert np.array_equal(X, s["X"][order]), "rows moved without their features"
    print("same features: yes")


def measured(step: str, *args: str) -> tuple[float, float, str]:
    """Seconds and peak RSS (GB) of a subprocess running ``step`` of this script (or a command)."""
    cmd = (
        [sys.executable, __file__, "--step", step, *args]
        if step != "info"
        else [sys.executable, "-m", "cli", "info", *args]
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", MAXRSS, *cmd], capture_output=True, text=True, env=env, cwd=ROOT)
    seconds = time.perf_counter() - t
    if out.returncode:
        raise SystemExit(f"{step} failed:\n{out.stderr[-3000:]}")
    text, peak = out.stdout.rsplit("maxrss", 1)
    return seconds, int(peak) / 1024 / 1024, text.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--tmp", help="folder for the cache (default: a temporary folder)")
    parser.add_argument("--no-results", action="store_true", help="do not write benchmarks/RESULTS.md")
    parser.add_argument("--step", help=argparse.SUPPRESS)
    parser.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.step:
        {
            "build": lambda c, r, d: build(c, int(r), int(d)),
            "reorder": lambda c, r: reorder(c, int(r)),
            "sample": sample,
            "check": check,
        }[opts.step](*opts.args)
        return 0

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="million-", dir=opts.tmp))
    cache = str(tmp / "million.h5")
    gb = opts.rows * opts.dim * 4 / 1e9
    try:
        b = measured("build", cache, str(opts.rows), str(opts.dim))
        print(f"build {b[0]:.1f} s, peak {b[1]:.2f} GB ({b[2]})", flush=True)
        measured("sample", cache, str(tmp / "sample.npz"))
        r = measured("reorder", cache, str(opts.rows))
        print(f"reordered merge {r[0]:.1f} s, peak {r[1]:.2f} GB ({r[2]})", flush=True)
        c = measured("check", cache, str(tmp / "sample.npz"))
        i = measured("info", cache)
        print(f"info {i[0]:.2f} s, peak {i[1]:.2f} GB", flush=True)
        size = os.path.getsize(cache) / 1e9
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    name, _ = cpu()
    lines = [
        f"Machine: {name}, {os.cpu_count()} cores, {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} "
        f"GiB of memory; {time.strftime('%Y-%m-%d')}. A synthetic cache of {opts.rows:,} x {opts.dim} float32 "
        f"features ({gb:.1f} GB of features, file {size:.1f} GB; random numbers, synthetic paths, 10 classes).",
        "",
        "| step | seconds (whole process) | peak memory (RSS) |",
        "|---|--:|--:|",
        f"| build: {-(-opts.rows // PART_ROWS)} parts of {PART_ROWS:,} rows, then the merge in input order "
        f"(the merge: {b[2].split()[-1]} s) | {b[0]:.1f} | {b[1]:.2f} GB |",
        f"| merge after a reordered manifest (every row moves; the merge itself: {r[2].split()[-1]} s) | {r[0]:.1f} | {r[1]:.2f} GB |",
        f"| `featurebank info` | {i[0]:.2f} | {i[1]:.2f} GB |",
        "",
        f"After the shuffle, 1,000 sampled rows have the features they had before: {c[2].split(': ')[-1]}.",
    ]
    text = "\n".join(lines)
    print(text)
    if not opts.no_results:
        write_section(ROOT / "benchmarks" / "RESULTS.md", text, "million_rows.py", "A million rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
