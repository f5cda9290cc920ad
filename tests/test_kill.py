"""A real `kill -9` in the middle of `featurebank extract` loses only the batches in flight."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import embedder
from embedder.cache import CacheReader, parts_dir

from conftest import FAST, ROOT, write_tree

pytestmark = pytest.mark.slow


def run_cli(root, cache, *extra):
    args = [sys.executable, "-c", "import cli; cli.main()", "extract", str(root), "--cache", str(cache), "-q",
            "-b", "resnet18", "-w", "none", "--resize", "72", "--crop", "64", "--workers", "0", *extra]
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_kill_9_mid_run_then_resume_gives_the_uninterrupted_rows(tmp_path):
    root = tmp_path / "images"
    paths = write_tree(root, per_class=10)
    whole = embedder.extract(str(root), str(tmp_path / "whole.h5"), **FAST)
    cache = tmp_path / "killed.h5"
    proc = run_cli(root, cache, "--batch-size", "1")
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        folder = parts_dir(str(cache))
        if os.path.isdir(folder) and len([n for n in os.listdir(folder) if n.endswith(".h5")]) >= 5:
            break
        time.sleep(0.01)
    assert proc.poll() is None, proc.communicate()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = len([n for n in os.listdir(parts_dir(str(cache))) if n.endswith(".h5")])
    assert 5 <= kept < 30
    done = run_cli(root, cache)
    out, err = done.communicate(timeout=300)
    assert done.returncode == 0, err.decode()
    a, b = CacheReader(whole.cache), CacheReader(cache)
    assert list(b.paths) == list(a.paths) == paths
    np.testing.assert_allclose(b.features(), a.features(), rtol=1e-5, atol=1e-6)
    assert not os.path.exists(parts_dir(str(cache)))
