"""`torchrun -m cli extract`: ranks embed disjoint shards into one cache equal to a single-process run, a rank
killed with SIGKILL loses only its batches in flight, and the rank set-up itself."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import FAST, ROOT, write_tree

import embedder
from embedder.cache.hdf5 import CacheReader, CacheWriter, parts_dir
from embedder.distributed import Rank
from embedder.kernel.errors import FeaturebankError

OPTIONS = ["-b", "resnet18", "-w", "none", "--resize", "72", "--crop", "64", "--workers", "0", "--engine", "torch"]


def torchrun(root, cache, *extra, nproc=2):
    args = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        "-m",
        "cli",
        "extract",
        str(root),
        "--cache",
        str(cache),
        *OPTIONS,
        *extra,
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )


def single_process(root, tmp_path, batch_size):
    """The reference: the same settings in this process, one rank."""
    return CacheReader(
        embedder.extract(
            str(root), str(tmp_path / "single.h5"), engine="torch", **{**FAST, "batch_size": batch_size}
        ).cache
    )


def assert_same_cache(cache, reference):
    got = CacheReader(cache)
    assert list(got.paths) == list(reference.paths) and list(got.labels) == list(reference.labels)
    # Bit-identical, not close: each rank's batches are the very batches of a single-process run (the shard is
    # every second batch), and the same batch through the same model gives the same bytes.
    assert np.array_equal(got.features(), reference.features())
    assert not os.path.exists(parts_dir(str(cache)))


@pytest.mark.integration
def test_two_cpu_ranks_give_the_rows_and_features_of_a_single_process(tmp_path):
    root = tmp_path / "images"
    write_tree(root, per_class=5)  # 15 images: 8 batches of 2, four to each rank
    reference = single_process(root, tmp_path, 2)
    proc = torchrun(root, tmp_path / "two.h5", "--batch-size", "2")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-3000:]
    assert_same_cache(tmp_path / "two.h5", reference)
    lines = out.decode().splitlines()  # rank 0 speaks for the job, once
    assert lines[0] == f"15 rows in {tmp_path / 'two.h5'}" and sum("rows in" in line for line in lines) == 1
    assert "embedded 15 (" in lines[-2] and "torch on cpu, 2 ranks), kept 0" in lines[-2]
    assert lines[-1].startswith(f"next: featurebank cv {tmp_path / 'two.h5'}")  # then what to run next
    run = CacheReader(tmp_path / "two.h5").info["runs"][-1]
    assert (run["embedded"], run["ranks"], run["engine"]["threads"]) == (
        15,
        2,
        max(1, len(os.sched_getaffinity(0)) // 2),
    )

    again = torchrun(root, tmp_path / "two.h5", "--batch-size", "2")  # nothing to do: nothing embedded
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err.decode()[-3000:]
    assert "embedded 0 (" in out.decode() and "kept 15" in out.decode()
    assert_same_cache(tmp_path / "two.h5", reference)


def children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc)."""
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as fh:
                        ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                if ppid == parent:
                    found.append(int(entry))
                    frontier.append(int(entry))
    return found


def rank_pid(launcher: int, rank: int) -> int | None:
    for pid in children(launcher):
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                env = dict(v.split(b"=", 1) for v in fh.read().split(b"\0") if b"=" in v)
        except OSError:
            continue
        if env.get(b"RANK") == str(rank).encode():
            return pid
    return None


@pytest.mark.integration
def test_a_rank_killed_with_sigkill_loses_only_its_batches_in_flight(tmp_path):
    root = tmp_path / "images"
    write_tree(root, per_class=10)
    reference = single_process(root, tmp_path, 1)
    cache = tmp_path / "killed.h5"
    proc = torchrun(root, cache, "--batch-size", "1")
    folder = parts_dir(str(cache))
    deadline, victim = time.time() + 180, None
    while time.time() < deadline and proc.poll() is None:
        names = os.listdir(folder) if os.path.isdir(folder) else []
        if sum(n.endswith("-rank1.h5") for n in names) >= 3:
            victim = rank_pid(proc.pid, 1)
            break
        time.sleep(0.01)
    assert victim is not None, proc.communicate()
    os.kill(victim, signal.SIGKILL)
    assert proc.wait(timeout=120) != 0  # torchrun stops the job when a rank dies
    names = os.listdir(folder)
    kept = {r: sum(n.endswith(f"-rank{r}.h5") for n in names) for r in (0, 1)}
    assert kept[1] >= 3 and kept[0] >= 1 and sum(kept.values()) < 30  # finished parts of both ranks are kept
    assert not cache.exists()

    again = torchrun(root, cache, "--batch-size", "1")  # the same command completes the cache
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err.decode()[-3000:]
    assert f"kept {sum(kept.values())}" in out.decode()  # the kept parts were not embedded again
    assert_same_cache(cache, reference)


@pytest.mark.integration
def test_a_second_job_on_a_cache_being_written_is_refused_on_every_rank(tmp_path):
    root = tmp_path / "images"
    write_tree(root, per_class=1)
    cache = tmp_path / "busy.h5"
    settings = {"backbone": "resnet18"}
    with CacheWriter(str(cache), settings, "classes:/x", "/x"):
        proc = torchrun(root, cache)
        out, err = proc.communicate(timeout=300)
    assert proc.returncode != 0 and not cache.exists()
    text = err.decode()
    assert text.count(f"Error: another featurebank process is writing {cache}") == 1  # rank 0's own words
    assert text.count("Error: rank 0 failed while opening the cache: another featurebank process is writing") == 1


def test_rank_comes_from_torchruns_environment():
    assert Rank.from_env({}) == Rank() and not Rank().distributed and Rank().leader
    assert Rank.from_env({"WORLD_SIZE": "1", "RANK": "0"}) == Rank()
    env = {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    assert Rank.from_env(env) == Rank(3, 4, 1, 2)
    with pytest.raises(FeaturebankError, match="RANK is not set"):
        Rank.from_env({"WORLD_SIZE": "2"})
    with pytest.raises(FeaturebankError, match="inconsistent ranks: RANK=2"):
        Rank.from_env({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"})


def test_shards_are_the_batches_of_a_single_process_dealt_in_turn():
    items = list(range(11))
    shards = [Rank(r, 3, r, 3).shard(items, 2) for r in range(3)]
    assert shards == [[0, 1, 6, 7], [2, 3, 8, 9], [4, 5, 10]]
    assert sorted(sum(shards, [])) == items
    assert Rank(5, 8, 1, 4).shard(items, 2) == [10] and Rank(6, 8, 2, 4).shard(items, 2) == []  # 6 batches, 8 ranks
    assert Rank().shard(items, 2) == items


def test_each_rank_of_a_machine_gets_its_own_cores_and_its_own_gpu():
    assert [Rank(r, 4, r % 2, 2).cores([0, 1, 2, 3, 4]) for r in range(2)] == [[0, 1], [2, 3]]
    assert [Rank(r, 3, r, 3).cores([0, 1]) for r in range(3)] == [[0], [1], [0]]
    assert Rank().cores([3, 1]) == [1, 3]
    assert Rank(3, 4, 1, 2).device("cuda") == "cuda:1" and Rank(3, 4, 1, 2).device("cpu") == "cpu"
    assert Rank().device("cuda") == "cuda"


def test_a_single_process_run_does_not_import_torch_distributed(tree, tmp_path):
    root, _ = tree
    embedder.extract(str(root), str(tmp_path / "c.h5"), **FAST)
    code = (
        "import sys, embedder; embedder.extract(sys.argv[1], sys.argv[2], backbone='resnet18', weights='none', "
        "resize=72, crop=64, batch_size=4, workers=0); print('torch' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(root), str(tmp_path / "c.h5")],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"  # a rerun with nothing to do: neither torch nor torch.distributed
