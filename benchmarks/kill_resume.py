"""Crash safety, proven by force: `kill -9` featurebank extract at random moments (start-up, embedding, the
final merge), again and again on the same cache, until a run finishes by itself; then its rows must equal those
of an uninterrupted run. After every kill the last finished cache must still open.

    python benchmarks/kill_resume.py --rounds 4 --images 60

Round 1 starts from nothing; later rounds add, change and delete files first, so that kills also hit a merge
over an existing cache. Generated images, a seeded random resnet18 at 64 px, batches of 2.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import random
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from helpers import photo, write_tree  # noqa: E402

import embedder  # noqa: E402
from embedder.cache.hdf5 import CacheReader, parts_dir  # noqa: E402

ARGS = ["-b", "resnet18", "-w", "none", "--resize", "72", "--crop", "64", "--workers", "1", "--batch-size", "2", "-q"]


def command(root, cache):
    return [sys.executable, "-c", "import cli; cli.main()", "extract", str(root), "--cache", str(cache), *ARGS]


def change_input(root: pathlib.Path, rng: random.Random, round_no: int) -> str:
    files = sorted(root.rglob("*.*"))
    for i in range(8):
        photo(1000 * round_no + i).save(root / "cats" / f"r{round_no}_{i}.png")
    for p in rng.sample(files, 3):
        photo(5000 * round_no + len(str(p)), (90, 70)).save(p)
    for p in rng.sample([f for f in files if f.exists()], 3):
        p.unlink()
    return "8 added, 3 changed, 3 deleted"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--images", type=int, default=60, help="images in all, over 3 classes")
    parser.add_argument("--seed", type=int, default=0)
    opts = parser.parse_args()
    rng = random.Random(opts.seed)
    work = pathlib.Path(tempfile.mkdtemp(prefix="fb-kill-"))
    root = work / "images"
    write_tree(root, per_class=opts.images // 3)
    cache = work / "killed.h5"
    # the first run prepares the engine (export, measuring); the kills aim at runs like every later one
    assert subprocess.run(command(root, work / "prepare.h5"), cwd=ROOT, capture_output=True).returncode == 0
    t = time.perf_counter()
    assert subprocess.run(command(root, work / "timing.h5"), cwd=ROOT, capture_output=True).returncode == 0
    run_seconds = time.perf_counter() - t
    print(f"one uninterrupted run from scratch, engine ready: {run_seconds:.1f} s (start-up included)\n")
    print(
        "| round | input change | kills | kills during the merge | cache opened after every kill | runs to finish | rows | rows equal an uninterrupted run | max feature diff |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    failures = 0
    for round_no in range(1, opts.rounds + 1):
        change = "none (from scratch)" if round_no == 1 else change_input(root, rng, round_no)
        kills = in_merge = opened_ok = runs = 0
        broken = []
        while True:
            runs += 1
            proc = subprocess.Popen(command(root, cache), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(rng.uniform(0.05, 1.0) * run_seconds)
            if proc.poll() is not None:
                assert proc.returncode == 0, proc.stderr.read().decode()
                break
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            in_merge += os.path.exists(str(cache) + ".tmp")
            if cache.exists():
                try:
                    len(CacheReader(cache))
                    opened_ok += 1
                except Exception as exc:  # noqa: BLE001 - exactly what this benchmark looks for
                    broken.append(str(exc))
            else:
                opened_ok += 1  # no finished cache yet: nothing to break
        fresh = embedder.extract(
            str(root),
            str(work / f"fresh{round_no}.h5"),
            backbone="resnet18",
            weights="none",
            resize=72,
            crop=64,
            batch_size=2,
            workers=0,
        )
        got, want = CacheReader(cache), CacheReader(fresh.cache)
        same = list(got.paths) == list(want.paths) and list(got.labels) == list(want.labels)
        diff = float(np.abs(got.features() - want.features()).max()) if same else float("nan")
        ok = same and diff < 1e-5 and not broken and not os.path.exists(parts_dir(str(cache)))
        failures += not ok
        print(
            f"| {round_no} | {change} | {kills} | {in_merge} | {opened_ok}/{kills}{' BROKEN: ' + broken[0] if broken else ''} "
            f"| {runs} | {len(got)} | {same} | {diff:.1e} |",
            flush=True,
        )
    # Kills aimed at the merge: wait for X.h5.tmp to appear (the merge has begun), then kill at once.
    change_input(root, rng, opts.rounds + 1)
    before = len(CacheReader(cache))
    aimed = hit = intact = 0
    for _ in range(5):
        proc = subprocess.Popen(command(root, cache), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None and not os.path.exists(str(cache) + ".tmp"):
            time.sleep(0.0005)
        aimed += 1
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            hit += 1
        proc.wait()
        try:
            intact += len(CacheReader(cache)) in (before, before + 5)
        except Exception as exc:  # noqa: BLE001
            print(f"BROKEN after a kill in the merge: {exc}")
    assert subprocess.run(command(root, cache), cwd=ROOT, capture_output=True).returncode == 0
    fresh = embedder.extract(
        str(root),
        str(work / "fresh-merge.h5"),
        backbone="resnet18",
        weights="none",
        resize=72,
        crop=64,
        batch_size=2,
        workers=0,
    )
    got, want = CacheReader(cache), CacheReader(fresh.cache)
    same = list(got.paths) == list(want.paths)
    diff = float(np.abs(got.features() - want.features()).max()) if same else float("nan")
    ok = same and diff < 1e-5 and intact == aimed
    failures += not ok
    print(
        f"| merge | 8 added, 3 changed, 3 deleted | {hit} | {hit} (aimed) | {intact}/{aimed} | {aimed + 1} | {len(got)} | {same} | {diff:.1e} |"
    )
    print(f"\n{'all rounds passed' if not failures else f'{failures} round(s) FAILED'} (work folder {work})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
