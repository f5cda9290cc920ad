"""The extraction cache: its rows equal a direct forward pass, survive interruption, follow the input, and
never mix settings."""

import dataclasses
import os
import time

import h5py
import numpy as np
import pytest
import torch
import torchvision
from helpers import FAST, photo, write_bad_files, write_tree
from PIL import Image
from torchvision.transforms._presets import ImageClassification

import embedder
from embedder.cache.hdf5 import CacheReader, CacheWriter, parts_dir
from embedder.kernel.errors import FeaturebankError


def reference_features(paths, seed=0, crop=64, resize=72):
    """What a user would compute by hand: torchvision's resnet18 and preset, PIL, a forward hook."""
    torch.manual_seed(seed)
    model = torchvision.models.resnet18().eval()
    preset = ImageClassification(crop_size=crop, resize_size=resize)
    seen = {}
    model.layer3.register_forward_hook(lambda m, i, o: seen.__setitem__("layer3", o))
    penultimate, layer3_avg, layer3_max = [], [], []
    with torch.no_grad():
        for p in paths:
            x = preset(Image.open(p).convert("RGB")).unsqueeze(0)
            model.fc = torch.nn.Identity()
            penultimate.append(model(x)[0].numpy())
            layer3_avg.append(seen["layer3"].mean((2, 3))[0].numpy())
            layer3_max.append(seen["layer3"].amax((2, 3))[0].numpy())
    return np.stack(penultimate), np.stack(layer3_avg), np.stack(layer3_max)


def test_cached_features_equal_a_direct_forward_pass(tree, tmp_path):
    root, paths = tree
    summary = embedder.extract(str(root), str(tmp_path / "c.h5"), layers=["penultimate", "layer3"], **FAST)
    assert (summary.rows, summary.embedded, summary.failed) == (9, 9, [])
    assert summary.layers == {"flatten": 512, "layer3": 256} and summary.classes == ["cats", "dogs", "owls"]
    reader = CacheReader(summary.cache)
    assert list(reader.paths) == paths  # input order
    assert list(reader.labels) == [p.split("/")[0] for p in paths]
    pen, l3, _ = reference_features([root / p for p in paths])
    np.testing.assert_allclose(reader.features("flatten"), pen, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(reader.features("layer3"), l3, rtol=1e-4, atol=1e-5)
    X, y, p = embedder.load(summary.cache, "layer3")
    assert X.dtype == np.float32 and X.shape == (9, 256) and list(y) == list(reader.labels) and list(p) == paths


def test_avgmax_pooling_concatenates_average_and_maximum(tree, tmp_path):
    root, paths = tree
    summary = embedder.extract(str(root), str(tmp_path / "c.h5"), layers=["layer3"], pooling="avgmax", **FAST)
    _, avg, mx = reference_features([root / p for p in paths])
    np.testing.assert_allclose(embedder.load(summary.cache)[0], np.hstack([avg, mx]), rtol=1e-4, atol=1e-5)


def test_settings_and_provenance_are_recorded(tree, tmp_path):
    root, _ = tree
    summary = embedder.extract(str(root), str(tmp_path / "c.h5"), seed=5, **FAST)
    reader = CacheReader(summary.cache)
    assert reader.settings == {
        "backbone": "resnet18",
        "weights": "none:seed=5",
        "layers": ["flatten"],
        "pooling": "avg",
        "precision": "fp32",
        "preprocessing": {
            "resize": 72,
            "crop": 64,
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
            "interpolation": "bilinear",
            "draft": True,
        },
    }
    assert reader.attrs["source"] == f"classes:{root}" and reader.attrs["root"] == str(root)
    assert reader.info["versions"]["torch"] == torch.__version__
    st = os.stat(root / reader.paths[0])
    with h5py.File(summary.cache) as f:
        assert f["rows/size"][0] == st.st_size and f["rows/mtime_ns"][0] == st.st_mtime_ns
        assert len(f["rows/digest"].asstr()[0]) == 32


class Interrupt(Exception):
    pass


def interrupt_after(monkeypatch, batches):
    """Make the run die right after ``batches`` batches are committed, as a kill would."""
    real = CacheWriter.write_batch
    count = {"n": 0}

    def write_batch(self, *args, **kwargs):
        if count["n"] == batches:
            raise Interrupt()
        count["n"] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(CacheWriter, "write_batch", write_batch)


def test_interrupted_then_resumed_run_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    root = tmp_path / "images"
    paths = write_tree(root, per_class=4)
    whole = embedder.extract(str(root), str(tmp_path / "whole.h5"), **FAST)
    with monkeypatch.context() as m:
        interrupt_after(m, 2)
        with pytest.raises(Interrupt):
            embedder.extract(str(root), str(tmp_path / "resumed.h5"), **FAST)
    assert not os.path.exists(tmp_path / "resumed.h5")
    assert len(os.listdir(parts_dir(str(tmp_path / "resumed.h5")))) == 2
    with pytest.raises(FeaturebankError, match="interrupted run left batches"):
        CacheReader(tmp_path / "resumed.h5")
    resumed = embedder.extract(str(root), str(tmp_path / "resumed.h5"), **FAST)
    assert resumed.embedded == 12 - 2 * FAST["batch_size"] and resumed.reused == 8
    assert not os.path.exists(parts_dir(resumed.cache)) and not os.path.exists(resumed.cache + ".lock")
    a, b = CacheReader(whole.cache), CacheReader(resumed.cache)
    assert list(a.paths) == list(b.paths) == paths and list(a.labels) == list(b.labels)
    np.testing.assert_allclose(a.features(), b.features(), rtol=1e-5, atol=1e-6)


def test_interrupted_twice_during_resume_still_converges(tmp_path, monkeypatch):
    root = tmp_path / "images"
    write_tree(root, per_class=4)
    cache = str(tmp_path / "c.h5")
    embedder.extract(str(root), cache, **FAST)
    for i in range(3):
        photo(100 + i).save(root / "cats" / f"new{i}.png")
    with monkeypatch.context() as m:
        interrupt_after(m, 0)
        with pytest.raises(Interrupt):
            embedder.extract(str(root), cache, **{**FAST, "batch_size": 1})
    assert len(CacheReader(cache)) == 12  # the finished cache stays readable while a run is unfinished
    summary = embedder.extract(str(root), cache, **FAST)
    assert (summary.rows, summary.embedded, summary.reused) == (15, 3, 12)


def test_a_failure_during_the_merge_leaves_the_old_cache_and_every_batch(tmp_path, monkeypatch):
    root = tmp_path / "images"
    write_tree(root)
    cache = str(tmp_path / "c.h5")
    embedder.extract(str(root), cache, **FAST)
    old = embedder.load(cache)[0]
    photo(77).save(root / "owls" / "late.png")
    with monkeypatch.context() as m:

        def crash(*args, **kwargs):
            raise Interrupt()

        m.setattr(CacheWriter, "_copy_features", crash)
        with pytest.raises(Interrupt):
            embedder.extract(str(root), cache, **FAST)
    np.testing.assert_array_equal(embedder.load(cache)[0], old)  # the finished cache is untouched
    assert CacheReader(cache).pending_parts == 1
    summary = embedder.extract(str(root), cache, **FAST)
    assert (summary.rows, summary.embedded) == (10, 0)  # the batch of the crashed run is reused
    assert not os.path.exists(cache + ".tmp")


def test_rerun_embeds_only_new_and_changed_files_and_drops_removed_ones(tmp_path):
    root = tmp_path / "images"
    write_tree(root)
    cache = str(tmp_path / "c.h5")
    first = embedder.extract(str(root), cache, **FAST)
    assert first.embedded == 9
    again = embedder.extract(str(root), cache, **FAST)
    assert (again.embedded, again.reused, again.removed) == (0, 9, 0)
    before = os.stat(cache).st_mtime_ns
    photo(500).save(root / "dogs" / "new.png")  # new
    photo(501, (96, 80)).save(root / "cats" / "img00.jpg")  # changed content
    os.remove(root / "owls" / "img01.png")  # removed
    touched = root / "owls" / "img02.jpg"  # same bytes, new mtime
    os.utime(touched, ns=(time.time_ns(), time.time_ns() + 10**9))
    summary = embedder.extract(str(root), cache, **FAST)
    assert (summary.rows, summary.embedded, summary.reused, summary.removed) == (9, 2, 7, 1)
    reader = CacheReader(cache)
    assert os.stat(cache).st_mtime_ns != before
    assert list(reader.paths) == sorted(reader.paths) and "owls/img01.png" not in reader.paths
    pen, _, _ = reference_features([root / p for p in reader.paths])
    np.testing.assert_allclose(reader.features(), pen, rtol=1e-4, atol=1e-5)  # the changed file's new row too
    with h5py.File(cache) as f:
        i = list(reader.paths).index("owls/img02.jpg")
        assert f["rows/mtime_ns"][i] == os.stat(touched).st_mtime_ns


def test_bad_files_are_skipped_recorded_and_never_retried_unless_changed(tmp_path):
    root = tmp_path / "images"
    paths = write_tree(root, classes=("a", "b"), per_class=2)
    expected = write_bad_files(root / "a")
    Image.new("L", (2000, 2000)).save(root / "b" / "huge.png")
    cache = str(tmp_path / "c.h5")
    summary = embedder.extract(str(root), cache, max_pixels=1_000_000, **FAST)
    reasons = {f["path"]: f["reason"] for f in summary.failed}
    assert set(reasons) == {f"a/{n}" for n in expected} | {"b/huge.png"}
    for name, start in expected.items():
        assert reasons[f"a/{name}"].startswith(start)
    # over twice the limit, Pillow (whose limit follows --max-pixels) refuses it at open: the reason counts pixels
    assert reasons["b/huge.png"].startswith("decompression bomb: 4,000,000 pixels is over the limit of 1,000,000")
    assert summary.rows == 4 and list(CacheReader(cache).paths) == paths  # every good file has its row
    pen, _, _ = reference_features([root / p for p in paths])
    np.testing.assert_allclose(embedder.load(cache)[0], pen, rtol=1e-4, atol=1e-5)
    again = embedder.extract(str(root), cache, max_pixels=1_000_000, **FAST)
    assert again.embedded == 0 and again.new_failures == 1 and len(again.failed) == 6  # only the directory re-listed
    photo(3).save(root / "a" / "truncated.jpg")  # the bad file is replaced by a good one
    fixed = embedder.extract(str(root), cache, max_pixels=1_000_000, **FAST)
    assert fixed.embedded == 1 and fixed.rows == 5 and "a/truncated.jpg" not in {f["path"] for f in fixed.failed}


def test_strict_fails_after_saving_the_good_rows(tmp_path):
    root = tmp_path / "images"
    write_tree(root, classes=("a",), per_class=2)
    (root / "a" / "empty.jpg").write_bytes(b"")
    with pytest.raises(FeaturebankError, match=r"1 file\(s\) could not be embedded \(--strict\): a/empty.jpg: empty"):
        embedder.extract(str(root), str(tmp_path / "c.h5"), strict=True, **FAST)
    assert len(CacheReader(tmp_path / "c.h5")) == 2


def test_other_settings_never_share_rows(tree, tmp_path):
    root, _ = tree
    cache_dir = str(tmp_path / "cache")
    a = embedder.extract(str(root), cache_dir=cache_dir, **FAST)
    b = embedder.extract(str(root), cache_dir=cache_dir, pooling="max", **FAST)
    c = embedder.extract(str(root), cache_dir=cache_dir, seed=1, **FAST)
    assert len({a.cache, b.cache, c.cache}) == 3 and os.path.basename(a.cache).startswith(
        f"{tmp_path.name}-images-resnet18-"
    )
    assert embedder.extract(str(root), cache_dir=cache_dir, **FAST).cache == a.cache
    assert not np.allclose(embedder.load(a.cache)[0], embedder.load(c.cache)[0])
    with pytest.raises(FeaturebankError, match="made with other settings .*pooling: 'avg' in the cache, 'max' now"):
        embedder.extract(str(root), a.cache, **{**FAST, "resize": 72}, pooling="max")
    with pytest.raises(FeaturebankError, match="made with other settings .*weights: 'none:seed=0' in the cache"):
        embedder.extract(str(root), a.cache, **{**FAST, "seed": 2})
    other = tmp_path / "other"
    write_tree(other, classes=("z",), per_class=1)
    with pytest.raises(FeaturebankError, match="mirrors another input"):
        embedder.extract(str(other), a.cache, **FAST)
    assert len(CacheReader(a.cache)) == 9


def test_a_second_writer_is_refused_with_a_clear_message(tree, tmp_path):
    root, _ = tree
    cache = str(tmp_path / "c.h5")
    embedder.extract(str(root), cache, **FAST)
    settings = CacheReader(cache).settings
    with (
        CacheWriter(cache, settings, f"classes:{root}", str(root)),
        pytest.raises(FeaturebankError, match="another featurebank process is writing"),
    ):
        embedder.extract(str(root), cache, **FAST)


def test_manifest_labels_and_groups_reach_the_cache_and_relabeling_needs_no_embedding(tmp_path):
    root = tmp_path / "images"
    paths = write_tree(root, classes=("x",), per_class=4)
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "path,label,group\n" + "".join(f"images/{p},{'ab'[i % 2]},g{i // 2}\n" for i, p in enumerate(paths))
    )
    cache = str(tmp_path / "c.h5")
    embedder.extract(str(manifest), cache, **FAST)
    reader = CacheReader(cache)
    assert list(reader.labels) == ["a", "b", "a", "b"] and list(reader.groups) == ["g0", "g0", "g1", "g1"]
    manifest.write_text("path,label\n" + "".join(f"images/{p},c\n" for p in paths[:3]))
    summary = embedder.extract(str(manifest), cache, **FAST)
    assert (summary.embedded, summary.removed, summary.classes) == (0, 1, ["c"])
    assert CacheReader(cache).groups is None


def test_a_reordered_manifest_reorders_the_rows_without_embedding(tmp_path):
    root = tmp_path / "images"
    paths = write_tree(root, classes=("x", "y"), per_class=3)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\n" + "".join(f"images/{p},{p[0]}\n" for p in paths))
    cache = str(tmp_path / "c.h5")
    embedder.extract(str(manifest), cache, **FAST)
    X, _, before = embedder.load(cache)
    order = [4, 0, 5, 2, 1, 3]
    manifest.write_text("path,label\n" + "".join(f"images/{paths[i]},{paths[i][0]}\n" for i in order))
    summary = embedder.extract(str(manifest), cache, **FAST)
    Y, y, after = embedder.load(cache)
    assert (
        summary.embedded == 0
        and list(after) == [before[i] for i in order]
        and list(y) == [p.split("/")[1] for p in after]
    )
    np.testing.assert_array_equal(Y, X[order])


def test_unlabeled_folder_loads_without_labels(tmp_path):
    for i in range(3):
        photo(i).save(tmp_path / f"{i}.jpg")
    summary = embedder.extract(str(tmp_path), str(tmp_path / "c.h5"), **FAST)
    X, y, paths = embedder.load(summary.cache)
    assert y is None and list(paths) == ["0.jpg", "1.jpg", "2.jpg"] and X.shape == (3, 512)


def test_decoding_workers_give_the_same_rows_as_decoding_in_process(tree, tmp_path):
    root, _ = tree
    a = embedder.extract(str(root), str(tmp_path / "a.h5"), **FAST)
    b = embedder.extract(str(root), str(tmp_path / "b.h5"), **{**FAST, "workers": 2})
    np.testing.assert_array_equal(embedder.load(a.cache)[0], embedder.load(b.cache)[0])


def test_a_forked_child_does_not_keep_the_lock_of_a_killed_writer(tree, tmp_path):
    """A decoding worker forked by a writer outlives a kill -9 of it for a while; it must not hold the lock then."""
    import signal
    import subprocess
    import sys

    root, _ = tree
    cache = str(tmp_path / "c.h5")
    embedder.extract(str(root), cache, **FAST)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    writer = (
        "import os, sys, time; from embedder.cache.hdf5 import CacheWriter, CacheReader; r = CacheReader(sys.argv[1]); "
        "w = CacheWriter(sys.argv[1], r.settings, r.attrs['source'], r.attrs['root']); w.__enter__(); "
        "child = os.fork()\nif child == 0:\n    time.sleep(30); os._exit(0)\n"
        "print(child, flush=True); time.sleep(30)"
    )
    proc = subprocess.Popen([sys.executable, "-c", writer, cache], stdout=subprocess.PIPE, text=True, cwd=repo)
    child = int(proc.stdout.readline())  # the writer holds the lock and has forked its "worker"
    try:
        proc.send_signal(signal.SIGKILL)  # as kill -9: no release, the child lives on with every descriptor
        proc.wait()
        second = (
            "import sys; from embedder.cache.hdf5 import CacheWriter, CacheReader; r = CacheReader(sys.argv[1]); "
            "w = CacheWriter(sys.argv[1], r.settings, r.attrs['source'], r.attrs['root']); w.__enter__(); print('ok')"
        )
        out = subprocess.run([sys.executable, "-c", second, cache], capture_output=True, text=True, cwd=repo)
        assert out.stdout.strip() == "ok", out.stderr
    finally:
        os.kill(child, signal.SIGKILL)


def test_merged_parts_are_renamed_before_deletion(tree, tmp_path, monkeypatch):
    """A kill while the merged parts are deleted must not leave some of them where unmerged batches wait."""

    from embedder.cache import hdf5 as cache_module

    root, _ = tree
    path = str(tmp_path / "c.h5")
    real = cache_module._unlink_quietly

    def killed_midway(file):
        if os.path.dirname(file).endswith(".parts.merged"):
            os.unlink(file)  # one part gone, then "kill -9"
            raise KeyboardInterrupt
        return real(file)

    monkeypatch.setattr(cache_module, "_unlink_quietly", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        embedder.extract(str(root), path, **FAST)
    monkeypatch.setattr(cache_module, "_unlink_quietly", real)
    assert os.path.isdir(parts_dir(path) + ".merged")  # the kill came while the merged parts were deleted
    assert len(CacheReader(path)) == 9 and not os.path.exists(parts_dir(path))  # the merge itself was complete
    again = embedder.extract(str(root), path, **FAST)
    assert again.embedded == 0 and again.reused == 9 and not os.path.exists(parts_dir(path) + ".merged")


def test_extract_builds_one_job_and_every_option_lands_in_its_own_field(monkeypatch):
    """``extract(source, cache, options, **overrides)`` becomes one ``ExtractJob``: every field of
    ``ExtractOptions`` (given a value unlike any other) is in the job's options, and the ``Request`` and
    ``Execution`` fields take the option of their name, none dropped, none swapped, none without an option."""
    from dataclasses import fields

    from embedder import job as job_module
    from embedder.kernel.settings import Int8
    from embedder.options import ExtractOptions, ShardOptions
    from embedder.resolve import Request

    given = dict(
        backbone="resnet18",
        weights="w.pth",
        layers=("layer3", "layer2"),
        pooling="max",
        resize=80,
        crop=48,
        draft=False,
        precision="int8",
        engine="torch",
        tta="flip",
        calibration_images=5,
        calibration="minmax",
        int8_scheme="u8s8",
        force_int8=True,
        calibration_from=None,
        device="cpu",
        batch_size=3,
        workers=2,
        seed=7,
        layout="flat",
        max_pixels=12345,
        strict=True,
        confine=True,
        shards=ShardOptions(image_column="jpg", label_key="json:label"),
        cache_dir="cached",
        engine_dir="engines",
        threads=1,
        int8=Int8(images=5, seed=9),
    )
    assert set(given) == {f.name for f in fields(ExtractOptions)}  # every option is exercised
    seen = []
    monkeypatch.setattr(job_module, "_extract", lambda group, started, job: seen.append(job))
    job_module.extract("photos/", "c.h5", progress=True, **given)
    (job,) = seen
    assert (job.source, job.cache) == ("photos/", "c.h5")
    assert {f.name: getattr(job.options, f.name) for f in fields(ExtractOptions)} == given
    assert {f.name: getattr(job.request, f.name) for f in fields(Request)} == {
        **{f.name: given[f.name] for f in fields(Request)},
        "int8": given["int8"],  # an exact int8 engine asked for wins over the calibration options
    }
    execution = {f.name: getattr(job.execution, f.name) for f in fields(job_module.Execution)}
    assert execution == {**{k: given[k] for k in execution if k != "progress"}, "progress": True}
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.options.strict = False  # type: ignore[misc]
    # the int8 request goes with precision int8 only; without an exact one, the calibration options make it
    fp32 = {**given, "precision": "fp32", "int8_scheme": "auto", "force_int8": False}  # int8's own options refused
    job_module.extract("photos/", "c.h5", ExtractOptions(**fp32))
    assert seen[-1].request.int8 is None and seen[-1].request.precision == "fp32"
    job_module.extract("photos/", "c.h5", ExtractOptions(**{**given, "int8": None}))
    assert seen[-1].request.int8 == Int8(images=5, seed=7, method="minmax", scheme="u8s8")


def test_an_override_that_is_no_option_is_one_error_naming_the_options(tmp_path):
    """A misspelt keyword is refused before anything is read, naming it and the fields there are."""
    with pytest.raises(TypeError, match=r"ExtractOptions has no field 'batchsize'; its fields are: .*batch_size"):
        embedder.extract(str(tmp_path / "none"), str(tmp_path / "c.h5"), batchsize=8)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"pooling": "mean"}, "unknown pooling 'mean'"),
        ({"batch_size": 0}, "--batch-size must be at least 1"),
        ({"tta": "rotate"}, "unknown test-time augmentation 'rotate'"),
    ],
)
def test_bad_options_are_refused_before_the_input_is_read(tmp_path, bad, message):
    with pytest.raises(FeaturebankError, match=message):
        embedder.extract(str(tmp_path / "no such folder"), str(tmp_path / "c.h5"), **{**FAST, **bad})
    assert os.listdir(tmp_path) == []


def test_every_option_reaches_the_cache_and_its_run_record(tree, tmp_path):
    """Non-default settings end up in the cache's settings, the execution options in the run it records."""
    root, paths = tree
    engines = tmp_path / "engines"
    summary = embedder.extract(
        str(root),
        backbone="resnet18",
        weights="none",
        seed=3,
        layers=["layer3"],
        pooling="max",
        resize=80,
        crop=48,
        draft=False,
        tta="flip",
        engine="torch",
        batch_size=5,
        workers=0,
        threads=1,
        device="cpu",
        layout="flat",
        cache_dir=str(tmp_path / "cached"),
        engine_dir=str(engines),
    )
    reader = CacheReader(summary.cache)
    assert reader.settings == {
        "backbone": "resnet18",
        "weights": "none:seed=3",
        "layers": ["layer3"],
        "pooling": "max",
        "precision": "fp32",
        "tta": "flip",
        "preprocessing": {
            "resize": 80,
            "crop": 48,
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
            "interpolation": "bilinear",
            "draft": False,
        },
    }
    assert os.path.dirname(summary.cache) == str(tmp_path / "cached") and "-resnet18-" in summary.cache
    assert sorted(reader.paths) == sorted(paths) and summary.classes == []  # flat: unlabeled
    run = reader.info["runs"][-1]
    assert (run["batch_size"], run["engine"]["name"], run["engine"]["device"], summary.device) == (
        5,
        "torch",
        "cpu",
        "cpu",
    )
    assert os.listdir(engines) and not os.path.exists(os.path.join(str(tmp_path / "cached"), "engines"))
