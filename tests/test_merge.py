"""The cache merge: bounded reads whatever the row order, parts of several ranks, the lock holder's clean-up."""

import os

import h5py
import numpy as np
import pytest
from helpers import SYNTHETIC_SETTINGS, synthetic_cache

import embedder.cache.hdf5 as cache_module
from embedder.cache.hdf5 import CacheReader, CacheWriter, copy_rows, parts_dir, spill_path


class Recorded:
    """A source dataset that records the rows of every read."""

    def __init__(self, data):
        self.data, self.reads = data, []

    def __getitem__(self, key):
        assert isinstance(key, slice) and key.step is None  # contiguous reads only
        self.reads.append(key.stop - key.start)
        return self.data[key]


def sources(sizes, dim, seed=0):
    rng = np.random.default_rng(seed)
    return [Recorded(rng.normal(size=(n, dim)).astype(np.float32)) for n in sizes]


def merged(tmp_path, srcs, where, block_bytes):
    with h5py.File(tmp_path / "out.h5", "w") as f:
        ds = f.create_dataset("x", shape=(len(where), srcs[0].data.shape[1]), dtype=np.float32)
        how = copy_rows(ds, where, lambda s: srcs[s], str(tmp_path / "spill"), block_bytes)
        return how, ds[()]


def test_a_shuffled_order_is_merged_through_the_spill_file_in_bounded_reads(tmp_path):
    srcs = sources([3000, 50, 1200], 32)
    every = np.array([(s, r) for s, src in enumerate(srcs) for r in range(len(src.data))])
    where = every[np.random.default_rng(1).permutation(len(every))[:4000]]  # a reordered manifest, some removed
    how, out = merged(tmp_path, srcs, where, block_bytes=128 * 32 * 4)  # blocks of 128 rows
    assert how == "spill"
    np.testing.assert_array_equal(out, np.stack([srcs[s].data[r] for s, r in where]))
    reads = [n for src in srcs for n in src.reads]
    assert max(reads) <= 128  # never more than a block at a time
    assert sum(reads) <= 3000 + 50 + 1200  # each source read once at most
    assert not os.path.exists(tmp_path / "spill")


def test_rows_in_about_their_old_order_are_gathered_directly_in_bounded_reads(tmp_path):
    srcs = sources([5000, 40], 256)
    kept = [(0, r) for r in range(5000) if r % 97 != 5]  # a few files left the input, 40 new ones came
    where = np.array(kept[:2000] + [(1, r) for r in range(40)] + kept[2000:])
    how, out = merged(tmp_path, srcs, where, block_bytes=300 * 256 * 4)
    assert how == "direct"
    np.testing.assert_array_equal(out, np.stack([srcs[s].data[r] for s, r in where]))
    assert max(srcs[0].reads) <= 300 and sum(srcs[0].reads) <= 5000 and sum(srcs[1].reads) == 40


def test_a_commit_in_a_new_order_moves_every_row_with_its_features(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_module, "BLOCK_BYTES", 7 * 16 * 4)  # blocks of 7 rows: many of them
    ways = []
    copy = cache_module.copy_rows
    monkeypatch.setattr(cache_module, "copy_rows", lambda *a, **k: ways.append(copy(*a, **k)))
    X, y = synthetic_cache(tmp_path / "c.h5", counts=(20, 15, 10), dim=16)
    before = CacheReader(tmp_path / "c.h5")
    layer3 = before.features("layer3")
    ways.clear()
    order = np.random.default_rng(3).permutation(len(y))[:40]
    with CacheWriter(str(tmp_path / "c.h5"), SYNTHETIC_SETTINGS, "classes:/synthetic", "/synthetic") as w:
        assert w.commit([(before.paths[i], before.labels[i], "") for i in order], {})
    after = CacheReader(tmp_path / "c.h5")
    assert list(after.paths) == [before.paths[i] for i in order]
    np.testing.assert_array_equal(after.features("flatten"), X[order])
    np.testing.assert_array_equal(after.features("layer3"), layer3[order])
    assert ways == ["spill", "spill"]  # one per layer: the shuffled order went through the spill file
    assert not os.path.exists(spill_path(after.path))


def batch(paths, dim=16, value=0.0):
    n = len(paths)
    rows = {
        "path": paths,
        "label": ["a"] * n,
        "group": [""] * n,
        "size": [1] * n,
        "mtime_ns": [1] * n,
        "digest": [f"{i:032x}" for i in range(n)],
    }
    feats = {"flatten": np.full((n, dim), value, np.float32), "layer3": np.full((n, dim // 2), value, np.float32)}
    return rows, feats, {k: [] for k in ("path", "reason", "digest", "size", "mtime_ns")}


def test_parts_of_two_ranks_merge_into_the_input_order(tmp_path):
    path = str(tmp_path / "c.h5")
    args = (SYNTHETIC_SETTINGS, "classes:/s", "/s")
    with CacheWriter(path, *args) as leader:
        tmp = os.path.join(parts_dir(path), "part-00000009-rank1.h5.tmp")  # left by a killed run: the leader's
        os.makedirs(parts_dir(path), exist_ok=True)
        open(tmp, "w").close()
        leader.__exit__(None, None, None)
        leader.__enter__()  # the lock holder cleans up what a killed run left
        assert not os.path.exists(tmp)
        with CacheWriter(path, *args, rank=1, lock=False) as other:  # rank 1 of the same job: no lock
            open(tmp, "w").close()  # rank 1 does not clean up (it could be another rank's part being written)
            with CacheWriter(path, *args, rank=2, lock=False):
                assert os.path.exists(tmp)
            os.unlink(tmp)
            leader.write_batch(*batch(["a/0.jpg", "a/1.jpg"], value=0))
            other.write_batch(*batch(["a/2.jpg", "a/3.jpg"], value=1))
            leader.write_batch(*batch(["a/4.jpg"], value=2))
            with pytest.raises(RuntimeError, match="only the writer that holds the cache's lock commits"):
                other.commit([], {})
        assert sorted(os.listdir(parts_dir(path))) == [
            "part-00000001-rank0.h5",
            "part-00000001-rank1.h5",
            "part-00000002-rank0.h5",
        ]
        assert leader.adopt_parts() == 1
        leader.commit([(f"a/{i}.jpg", "a", "") for i in range(5)], {})
    reader = CacheReader(path)
    assert list(reader.paths) == [f"a/{i}.jpg" for i in range(5)]
    np.testing.assert_array_equal(reader.features("flatten")[:, 0], [0, 0, 1, 1, 2])


def test_a_later_runs_parts_win_over_an_earlier_runs_whatever_their_rank(tmp_path):
    path = str(tmp_path / "c.h5")
    args = (SYNTHETIC_SETTINGS, "classes:/s", "/s")
    with CacheWriter(path, *args), CacheWriter(path, *args, rank=3, lock=False) as other:
        for _ in range(3):
            other.write_batch(*batch(["a/0.jpg"], value=1))  # an interrupted run: rank 3 got to part 3
    with CacheWriter(path, *args) as again:  # the next run (one process): a newer version of the same file
        again.write_batch(*batch(["a/0.jpg"], value=7))
        assert os.path.basename(again.sources[-1]) == "part-00000004-rank0.h5"
        again.commit([("a/0.jpg", "a", "")], {})
    assert CacheReader(path).features("flatten")[0, 0] == 7


def test_the_merged_parts_go_and_a_users_files_in_the_parts_folder_stay(tmp_path):
    """A merge deletes the batches it wrote into X.h5.parts and their temporary files; a file the user put there
    (notes, a folder) is kept where it was, said in a note; a folder of nothing else goes whole."""
    from embedder.cache.hdf5 import _finish_removal, _remove_folder
    from embedder.kernel.errors import Note

    folder = tmp_path / "c.h5.parts"
    (folder / "mydir").mkdir(parents=True)
    for name in ("part-00000001-rank0.h5", "part-00000002.h5", "part-00000003-rank1.h5.tmp"):
        (folder / name).write_bytes(b"batch")
    (folder / "NOTES.txt").write_text("mine")
    (folder / "mydir" / "a.txt").write_text("keep")
    with pytest.warns(Note, match=r"kept .*c\.h5\.parts: it holds what featurebank did not write there \(NOTES"):
        _remove_folder(str(folder))
    assert sorted(os.listdir(folder)) == ["NOTES.txt", "mydir"] and (folder / "mydir" / "a.txt").read_text() == "keep"
    assert not (tmp_path / "c.h5.parts.merged").exists()

    ours = tmp_path / "d.h5.parts"
    ours.mkdir()
    (ours / "part-00000001-rank0.h5").write_bytes(b"batch")
    _remove_folder(str(ours))
    assert not ours.exists() and not (tmp_path / "d.h5.parts.merged").exists()

    # a kill while the merged parts were being deleted: the next writer finishes, the user's file goes back
    gone = tmp_path / "e.h5.parts.merged"
    gone.mkdir()
    (gone / "part-00000004-rank0.h5").write_bytes(b"batch")
    (gone / "NOTES.txt").write_text("mine")
    with pytest.warns(Note, match="kept"):
        _finish_removal(str(gone), str(tmp_path / "e.h5.parts"))
    assert not gone.exists() and os.listdir(tmp_path / "e.h5.parts") == ["NOTES.txt"]

    # the same name on both sides (a kill, then the user's file again in a new parts folder): both kept, one
    # renamed, and the merge after it goes through (a raw 'Directory not empty' had failed every later merge)
    gone.mkdir()
    (gone / "NOTES.txt").write_text("older")
    (gone / "part-00000005-rank0.h5").write_bytes(b"batch")
    with pytest.warns(Note, match="kept"):
        _remove_folder(str(tmp_path / "e.h5.parts"))
    folder = tmp_path / "e.h5.parts"
    assert sorted(os.listdir(folder)) == ["NOTES.txt", "NOTES.txt.kept-1"] and not gone.exists()
    assert {(folder / n).read_text() for n in os.listdir(folder)} == {"mine", "older"}
