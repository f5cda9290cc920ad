"""`featurebank cv` at 20,000 to a million rows: seconds per fold and peak memory of each zoo entry, the default
`cv --out`, and the plain scikit-learn script a user would write instead, each as a whole process.

    python benchmarks/cv_scale.py [--rows 20000 200000] [--million] [--entries logreg,ridge] [--no-default]
                                  [--write]

Synthetic caches (class means plus noise, 1,280-d float32, 10 classes), written with the project's cache writer
(``CacheWriter``: parts, then the merge) so that `featurebank cv` reads them as it reads any cache, under
``cache/scale/`` (git-ignored; made once, kept: 100 MB at 20k, 1 GB at 200k, 5 GB at 1M with ``--million``).

Every measurement is a subprocess (imports included, as a user runs it), timed, with its peak resident memory
(``ru_maxrss`` of the child). The machine may be shared: the load average is printed beside the table, and the
ratios that matter (featurebank against the plain script) are measured in the same run, one after the other.
``--write`` replaces this script's section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from cpu_engines import cpu, write_section  # noqa: E402

DIM = 1280
CLASSES = 10
PART_ROWS = 50_000
SEPARATION = 0.06  # class means' scale per dimension against unit noise: accuracy well below 100% at 1,280-d
FOLDS = 3
SETTINGS = {
    "backbone": "mobilenet_v2",
    "weights": "none:seed=0",
    "layers": ["classifier.0"],
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
LAYER = "classifier.0"

MAXRSS = (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
    "sys.stderr.write(r.stderr[-4000:]); print(r.stdout.strip()); "
    "print('maxrss', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)"
)

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


def cache_path(rows: int) -> pathlib.Path:
    return ROOT / "cache" / "scale" / f"synthetic-{rows}.h5"


def build(cache: str, rows: int, dim: int = DIM, seed: int = 0) -> None:
    """Class means plus unit Gaussian noise, parts of PART_ROWS rows through ``CacheWriter.write_batch``, then the
    merge: the file `extract` would leave, with synthetic paths (no images behind them)."""
    import numpy as np

    from embedder.cache import CacheWriter

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
        t = time.perf_counter()
        measured([sys.executable, __file__, "--step", "build", str(path), str(rows)])
        print(f"built {path} in {time.perf_counter() - t:.0f} s", flush=True)
    return str(path)


def measured(cmd: list[str]) -> tuple[float, float, str]:
    """Seconds and peak RSS (GB) of ``cmd`` as a whole process, and its output."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", MAXRSS, *cmd], capture_output=True, text=True, env=env, cwd=ROOT)
    seconds = time.perf_counter() - t
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    text, peak = out.stdout.rsplit("maxrss", 1)
    return seconds, int(peak) / 1024 / 1024, text.strip()
