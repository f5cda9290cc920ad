"""A real `kill -9` in the middle of `featurebank extract` loses only the batches in flight."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import FAST, FAST_ARGS, ROOT, write_tree

import embedder
from embedder.cache.hdf5 import CacheReader, parts_dir

pytestmark = pytest.mark.integration


def run_cli(root, cache, *extra):
    args = [
        sys.executable,
        "-c",
        "import cli; cli.main()",
        "extract",
        str(root),
        "--cache",
        str(cache),
        "-q",
        *FAST_ARGS,
        *extra,
    ]
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


def test_kill_9_mid_finetune_then_resume_gives_the_uninterrupted_weights(tmp_path):
    """Killed while training epoch 2 or later, `finetune --resume` ends with the weights of a run never killed."""
    import torch

    root = tmp_path / "images"
    write_tree(root, per_class=4)
    env = {**os.environ, "FEATUREBANK_CACHE_DIR": str(tmp_path / "cache")}

    def finetune(out, *extra):
        args = [
            sys.executable,
            "-c",
            "import cli; cli.main()",
            "finetune",
            str(root),
            "-o",
            str(out),
            "-q",
            *FAST_ARGS,
            "--batch-size",
            "2",
            "--epochs",
            "6",
            "--patience",
            "6",
            "--val-split",
            "0.25",
            "--augment",
            "pixels",  # every epoch decodes again: slow enough to be killed mid-run (views: tests/test_finetune_views)
            *extra,
        ]
        return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    whole = finetune(tmp_path / "whole")
    assert whole.wait(timeout=300) == 0, whole.communicate()
    killed = finetune(tmp_path / "killed")
    last = tmp_path / "killed" / "last.pt"
    deadline = time.time() + 300
    while time.time() < deadline and killed.poll() is None:
        try:
            if torch.load(last, weights_only=True)["state"]["epoch"] >= 2:
                break
        except (FileNotFoundError, RuntimeError, EOFError):
            pass
        time.sleep(0.05)
    assert killed.poll() is None, killed.communicate()
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    epoch = torch.load(last, weights_only=True)["state"]["epoch"]
    assert 2 <= epoch < 6
    again = finetune(tmp_path / "killed")
    assert again.wait(timeout=300) == 1 and b"add --resume" in again.communicate()[1]
    resumed = finetune(tmp_path / "killed", "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.communicate()
    a = torch.load(tmp_path / "whole" / "last.pt", weights_only=True)
    b = torch.load(last, weights_only=True)
    assert b["state"]["epoch"] == a["state"]["epoch"] == 6
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
