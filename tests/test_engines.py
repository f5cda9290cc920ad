"""The engine seam: one settings value, torch and ONNX Runtime engines that agree, the engine folder, int8."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import FAST, ROOT, photo, rows_close, write_bad_files, write_tree
from PIL import Image

import embedder
from embedder.cache.hdf5 import CacheReader
from embedder.kernel.errors import FeaturebankError
from embedder.kernel.preprocess import Preprocessing
from embedder.kernel.settings import ExtractionSettings, Int8
from embedder.kernel.store import EngineStore


# -- preprocessing without torch ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "prep",
    [
        Preprocessing(),
        Preprocessing(resize=232),
        Preprocessing(resize=200, crop=224),
        Preprocessing(resize=342, crop=299, interpolation="bicubic"),
        Preprocessing(resize=72, crop=64),
    ],
)
def test_pixels_equal_torchvisions_preset(prep):
    """to_array (Pillow and NumPy only) gives exactly torchvision's resize + center crop, padding included."""
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    rng = np.random.default_rng(0)
    for w, h in [(500, 375), (375, 500), (256, 256), (257, 1000), (100, 50), (224, 300), (1, 400)]:
        image = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        expected = TF.pil_to_tensor(
            TF.center_crop(
                TF.resize(image, [prep.resize], InterpolationMode(prep.interpolation), antialias=True), [prep.crop]
            )
        ).numpy()
        np.testing.assert_array_equal(prep.to_array(image), expected)


# -- the settings value -------------------------------------------------------------------------------------
FORMAT_1 = {
    "backbone": "resnet18",
    "weights": "none:seed=0",
    "layers": ["flatten"],
    "pooling": "avg",
    "preprocessing": {
        "resize": 72,
        "crop": 64,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "interpolation": "bilinear",
        "draft": True,
    },
    "precision": "fp32",
}


def test_a_format_1_dict_reads_back_to_the_same_dict_and_key():
    """Caches written before the settings value existed keep their settings key, hence their default file name."""
    from embedder.kernel.settings import settings_key

    s = ExtractionSettings.from_dict(FORMAT_1)
    assert s.to_dict() == FORMAT_1 and s.key == settings_key(FORMAT_1)
    older = {k: v for k, v in FORMAT_1.items() if k not in ("pooling", "precision")}  # keys that took defaults
    assert ExtractionSettings.from_dict(older) == s
    q = ExtractionSettings.from_dict({**FORMAT_1, "precision": "int8", "int8": Int8(calibration_set="abc").to_dict()})
    assert q.key != s.key and q.to_dict()["int8"]["calibration_set"] == "abc"
    assert s.differences(q) == [
        f"int8: None in the cache, {q.int8.to_dict()!r} now",
        "precision: 'fp32' in the cache, 'int8' now",
    ]
    with pytest.raises(FeaturebankError, match="int8 settings go with precision int8"):
        ExtractionSettings("resnet18", "none:seed=0", ("flatten",), precision="int8")


def test_an_old_cache_opens_and_reruns_without_embedding(tree, tmp_path):
    """A cache whose settings lack newer keys (as a format-1 writer left it) is continued, not refused."""
    import h5py

    root, _ = tree
    path = str(tmp_path / "c.h5")
    embedder.extract(str(root), path, **FAST)
    with h5py.File(path, "r+") as f:
        stored = json.loads(f.attrs["settings"])
        del stored["pooling"]  # a key an older writer might not have written: it takes its default
        f.attrs["settings"] = json.dumps(stored)
    again = embedder.extract(str(root), path, **FAST)
    assert again.embedded == 0 and again.reused == 9


# -- engines agree --------------------------------------------------------------------------------------------
def test_onnxruntime_fp32_rows_match_torch_within_1e4(tree, tmp_path):
    root, _ = tree
    opts = {**FAST, "layers": ["flatten", "layer3"], "pooling": "avgmax"}
    ort = embedder.extract(str(root), str(tmp_path / "ort.h5"), engine="onnxruntime", **opts)
    torch_run = embedder.extract(str(root), str(tmp_path / "torch.h5"), engine="torch", **opts)
    assert ort.engine["name"] == "onnxruntime" and torch_run.engine["name"] == "torch"
    assert ort.settings == torch_run.settings  # the engine is not a setting: both fill the same rows
    for layer in ("flatten", "layer3"):
        a, b = embedder.load(ort.cache, layer)[0], embedder.load(torch_run.cache, layer)[0]
        assert a.shape == b.shape == (9, {"flatten": 512, "layer3": 512}[layer])
        rows_close(a, b)
    runs = CacheReader(ort.cache).info["runs"]
    assert [r["engine"]["name"] for r in runs] == ["onnxruntime"] and runs[0]["embedded"] == 9


def test_auto_measures_once_and_records_its_choice(tree, tmp_path, monkeypatch):
    root, _ = tree
    store_dir = tmp_path / "engines"
    monkeypatch.setenv("FEATUREBANK_ENGINE_DIR", str(store_dir))
    first = embedder.extract(str(root), str(tmp_path / "a.h5"), **FAST)
    side = next(store_dir.glob("resnet18-*-fp32.json"))
    choice = json.loads(side.read_text())["choice"]
    rates = choice["images_per_second"]
    assert set(rates) == {"onnxruntime", "torch"} and min(rates.values()) > 0 and choice["agreement"] < 1e-4
    assert choice["engine"] == max(rates, key=rates.get) and set(choice["versions"]) >= {"torch", "onnxruntime"}
    assert first.engine["name"] == choice["engine"] and any("measured" in s for s in first.prepared)
    # the recorded choice is used as it is: set to torch, the next run uses torch and measures nothing
    side.write_text(json.dumps({**json.loads(side.read_text()), "choice": {**choice, "engine": "torch"}}))
    second = embedder.extract(str(root), str(tmp_path / "b.h5"), **FAST)
    assert second.engine["name"] == "torch" and second.prepared == []
    rows_close(embedder.load(second.cache)[0], embedder.load(first.cache)[0])


def test_a_corrupt_engine_file_is_rebuilt_not_trusted(tree, tmp_path, monkeypatch, capfd):
    root, _ = tree
    monkeypatch.setenv("FEATUREBANK_ENGINE_DIR", str(tmp_path / "engines"))
    first = embedder.extract(str(root), str(tmp_path / "a.h5"), engine="onnxruntime", **FAST)
    model = next((tmp_path / "engines").glob("*-fp32.onnx"))
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the weights: still loads, computes garbage
    model.write_bytes(bytes(data))
    second = embedder.extract(str(root), str(tmp_path / "b.h5"), engine="onnxruntime", **FAST)
    assert "does not match its record" in capfd.readouterr().err
    assert any("exported" in s for s in second.prepared)
    np.testing.assert_array_equal(embedder.load(first.cache)[0], embedder.load(second.cache)[0])
    model.write_bytes(b"")  # truncated to nothing
    third = embedder.extract(str(root), str(tmp_path / "c.h5"), engine="onnxruntime", **FAST)
    np.testing.assert_array_equal(embedder.load(first.cache)[0], embedder.load(third.cache)[0])


def test_missing_onnxruntime_falls_back_or_fails_in_one_line(tree, tmp_path, monkeypatch, capfd):
    from embedder.engines import engine as engines

    def missing():
        raise FeaturebankError(
            "onnxruntime is not installed (No module named 'onnxruntime'); pip install onnxruntime, or --engine torch"
        )

    monkeypatch.setattr(engines, "import_onnxruntime", missing)
    root, _ = tree
    s = embedder.extract(str(root), str(tmp_path / "a.h5"), **FAST)
    assert (
        s.engine["name"] == "torch" and "using the torch engine: onnxruntime is not installed" in capfd.readouterr().err
    )
    with pytest.raises(FeaturebankError, match="onnxruntime is not installed"):
        embedder.extract(str(root), str(tmp_path / "b.h5"), engine="onnxruntime", **FAST)


def test_a_model_onnx_cannot_export_falls_back_to_torch(tree, tmp_path, monkeypatch):
    from embedder.engines import export

    def refuse(model, settings, path):
        raise FeaturebankError("resnet18 cannot be exported to ONNX (RuntimeError: unsupported operator)")

    monkeypatch.setattr(export, "export_onnx", refuse)
    monkeypatch.setenv("FEATUREBANK_ENGINE_DIR", str(tmp_path / "engines"))
    root, _ = tree
    s = embedder.extract(str(root), str(tmp_path / "a.h5"), **FAST)
    assert (
        s.engine["name"] == "torch"
        and s.prepared == []
        and s.notes
        == ["using the torch engine: resnet18 cannot be exported to ONNX (RuntimeError: unsupported operator)"]
    )
    assert not list((tmp_path / "engines").glob("*.onnx*"))  # no half-written file left behind
    with pytest.raises(FeaturebankError, match="cannot be exported to ONNX"):
        embedder.extract(str(root), str(tmp_path / "b.h5"), engine="onnxruntime", **FAST)


@pytest.mark.integration  # CLI subprocesses
def test_a_run_whose_engine_is_ready_imports_no_torch(tree, tmp_path):
    """Importing torch costs seconds per process; a prepared engine and a resolved request need none of it (layers
    given, as bundles always give them, included)."""
    root, _ = tree
    code = (
        "import sys, embedder; s = embedder.extract(sys.argv[1], sys.argv[2], backbone='resnet18', weights='none',"
        " resize=72, crop=64, batch_size=4, layers=['layer3', 'flatten'], engine='onnxruntime');"
        " print(s.embedded, s.engine.get('name'), 'torch' in sys.modules)"
    )
    env = {**os.environ, "FEATUREBANK_ENGINE_DIR": str(tmp_path / "engines")}

    def run(cache):
        command = [sys.executable, "-c", code, str(root), str(tmp_path / cache)]
        return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout.split()

    assert run("a.h5") == ["9", "onnxruntime", "True"]  # the first run resolves and exports: torch is needed
    assert run("b.h5") == ["9", "onnxruntime", "False"]  # the same settings again: no torch at all
    assert run("b.h5") == ["0", "None", "False"]  # nothing to do: no engine, no torch


def test_a_weights_file_replaced_by_one_of_the_same_size_and_mtime_is_recognized(tree, tmp_path, monkeypatch):
    """The recorded resolution (sha256 of the file) is reused only for that very file."""
    import torch
    import torchvision

    from embedder.kernel.store import sha256_of

    root, _ = tree
    monkeypatch.setenv("FEATUREBANK_ENGINE_DIR", str(tmp_path / "engines"))
    files = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        path = tmp_path / f"w{seed}.pth"
        torch.save(torchvision.models.squeezenet1_1().state_dict(), path)
        files.append(path)
    assert files[0].stat().st_size == files[1].stat().st_size
    opts = dict(backbone="squeezenet1_1", resize=72, crop=64, batch_size=4)
    first = embedder.extract(str(root), str(tmp_path / "a.h5"), weights=str(files[0]), **opts)
    assert first.settings["weights"] == f"sha256:{sha256_of(str(files[0]))}"
    st = files[0].stat()
    files[0].write_bytes(files[1].read_bytes())
    os.utime(files[0], ns=(st.st_atime_ns, st.st_mtime_ns))  # as cp -p or rsync -a leave it
    assert files[0].stat().st_mtime_ns == st.st_mtime_ns and files[0].stat().st_size == st.st_size
    second = embedder.extract(str(root), str(tmp_path / "b.h5"), weights=str(files[0]), **opts)
    assert second.settings["weights"] == f"sha256:{sha256_of(str(files[1]))}" != first.settings["weights"]
    assert not np.allclose(embedder.load(first.cache)[0], embedder.load(second.cache)[0])


# -- int8 -------------------------------------------------------------------------------------------------------
def test_int8_has_its_own_rows_its_calibration_and_its_measured_cosine(tmp_path, monkeypatch):
    root = tmp_path / "images"
    write_tree(root, per_class=6)
    bad = write_bad_files(root / "cats")  # bad files may be drawn for calibration: skipped like any bad file
    monkeypatch.setenv("FEATUREBANK_ENGINE_DIR", str(tmp_path / "engines"))
    fp32 = embedder.extract(str(root), str(tmp_path / "fp32.h5"), **FAST)
    int8 = embedder.extract(str(root), str(tmp_path / "int8.h5"), precision="int8", int8=Int8(images=30), **FAST)
    s = ExtractionSettings.from_dict(int8.settings)
    assert s.precision == "int8" and s.int8.images == 30 and len(s.int8.calibration_set) == 24
    assert s.key != ExtractionSettings.from_dict(fp32.settings).key
    assert int8.engine["name"] == "onnxruntime" and any("calibrated int8" in p for p in int8.prepared)
    assert len(int8.failed) == len(bad) and int8.rows == fp32.rows == 18
    a, b = embedder.load(int8.cache)[0], embedder.load(fp32.cache)[0]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.9 and not np.allclose(a, b, rtol=1e-4)  # close to fp32, but its own numbers
    info = CacheReader(int8.cache).info["int8"]
    measured = info["cosine_to_fp32"]["flatten"]
    assert info["calibration"]["images"] == 18 == measured["images"]  # every file drawn; the bad ones skipped
    assert 0.9 < measured["min"] <= measured["mean"] <= 1.0
    # rerun after a change: the same engine (no new calibration), only the new file embedded
    photo(500).save(root / "dogs" / "new.jpg")
    again = embedder.extract(str(root), str(tmp_path / "int8.h5"), precision="int8", int8=Int8(images=30), **FAST)
    assert again.embedded == 1 and again.prepared == [] and again.settings == int8.settings
    # another folder embedded with this cache's engine, as --calibration-from does: its rows equal the first's
    other = tmp_path / "other"
    write_tree(other, per_class=1)
    from embedder.job import int8_of_cache

    wanted, folder = int8_of_cache(int8.cache)
    third = embedder.extract(
        str(other), str(tmp_path / "other.h5"), precision="int8", int8=wanted, engine_dir=folder, **FAST
    )
    assert third.settings == int8.settings and third.prepared == []
    X, _, paths = embedder.load(third.cache)
    X0, _, paths0 = embedder.load(int8.cache)
    np.testing.assert_array_equal(X[list(paths).index("cats/img00.jpg")], X0[list(paths0).index("cats/img00.jpg")])


def test_int8_refusals_are_one_line(tree, tmp_path):
    root, _ = tree
    with pytest.raises(FeaturebankError, match="int8 runs on the onnxruntime engine"):
        embedder.extract(str(root), str(tmp_path / "a.h5"), precision="int8", engine="torch", **FAST)
    with pytest.raises(FeaturebankError, match="is not in"):  # a bundle's exact engine, and the folder lacks it
        embedder.extract(
            str(root),
            str(tmp_path / "b.h5"),
            precision="int8",
            int8=Int8(calibration_set="f" * 24),
            engine_dir=str(tmp_path / "empty"),
            **FAST,
        )
    fp32 = embedder.extract(str(root), str(tmp_path / "c.h5"), **FAST)
    from embedder.job import int8_of_cache

    with pytest.raises(FeaturebankError, match="is not an int8 cache"):
        int8_of_cache(fp32.cache)


def test_tail_nodes_stop_at_the_first_convolution_or_merge(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from embedder.engines.quantize import tail_nodes

    t = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, None)  # noqa: E731
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1"),
        helper.make_node("Relu", ["a"], ["b"], name="relu1"),
        helper.make_node("Conv", ["b", "w2"], ["c"], name="conv2"),
        helper.make_node("Add", ["c", "b"], ["d"], name="add"),
        helper.make_node("Relu", ["d"], ["e"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["e"], ["y"], name="pool"),
        helper.make_node("Relu", ["c"], ["f"], name="relu3"),
        helper.make_node("Flatten", ["f"], ["z"], name="flat"),
    ]
    graph = helper.make_graph(nodes, "g", [t("x"), t("w1"), t("w2")], [t("y"), t("z")])
    onnx.save(helper.make_model(graph), tmp_path / "g.onnx")
    assert sorted(tail_nodes(str(tmp_path / "g.onnx"))) == ["add", "conv2", "flat", "pool", "relu2", "relu3"]


def test_embedder_int8_calibrates_in_fit_and_matches_its_engine(tree, tmp_path):
    from embedder import Embedder

    root, paths = tree
    full = [str(root / p) for p in paths]
    params = dict(FAST)
    e = Embedder(precision="int8", engine_dir=str(tmp_path / "engines"), **params)
    with pytest.raises(FeaturebankError, match="int8 calibrates on images"):
        e.fit()
    Z = e.fit(full).transform(full)
    ref = Embedder(engine_dir=str(tmp_path / "engines"), **params).fit().transform(full)
    cos = (Z * ref).sum(1) / np.linalg.norm(Z, axis=1) / np.linalg.norm(ref, axis=1)
    assert e.settings_.precision == "int8" and 0.9 < cos.min() < 1.0 and not np.allclose(Z, ref, rtol=1e-4)
    import pickle

    np.testing.assert_array_equal(pickle.loads(pickle.dumps(e)).transform(full), Z)


# -- the store -----------------------------------------------------------------------------------------------------
def test_store_records_are_keyed_and_survive_a_bad_file(tmp_path):
    store = EngineStore(str(tmp_path))
    store.put_record("resolved", {"a": 1}, {"x": 2})

    def read(value):
        return value["x"] + 1

    assert store.record("resolved", {"a": 1}, read) == 3 and store.record("resolved", {"a": 2}, read) is None
    (record,) = (tmp_path / "records").iterdir()
    # damaged, or valid JSON of another shape (a hand edit): computed again, never a traceback
    for text in ("{not json", "[1, 2]", '{"key": {"a": 1}, "value": [1]}', '{"key": {"a": 1}, "value": {"x": "y"}}'):
        record.write_text(text)
        assert store.record("resolved", {"a": 1}, read) is None, text


@pytest.mark.integration  # 5 s: two extractions with the engine measured
def test_an_engine_folder_edited_by_hand_is_computed_again(tree, tmp_path, monkeypatch):
    root, _ = tree
    store_dir = tmp_path / "engines"
    monkeypatch.setenv("FEATUREBANK_ENGINE_DIR", str(store_dir))
    first = embedder.extract(str(root), str(tmp_path / "a.h5"), **FAST)
    for record in (store_dir / "records").iterdir():
        record.write_text("[1, 2]")
    side = next(store_dir.glob("resnet18-*-fp32.json"))
    side.write_text(json.dumps({**json.loads(side.read_text()), "choice": "x"}))
    second = embedder.extract(str(root), str(tmp_path / "b.h5"), **FAST)
    assert second.settings == first.settings
    rows_close(embedder.load(second.cache)[0], embedder.load(first.cache)[0])
    side.write_text("[1, 2]")  # the whole sidecar of another shape: the engine rebuilt
    third = embedder.extract(str(root), str(tmp_path / "c.h5"), **FAST)
    assert third.settings == first.settings and isinstance(json.loads(side.read_text()), dict)
    rows_close(embedder.load(third.cache)[0], embedder.load(first.cache)[0])


@pytest.mark.integration  # 6 s: int8 calibrations from the command line
def test_cli_engine_and_int8_options(tree, tmp_path, monkeypatch):
    from click.testing import CliRunner

    import cli

    root, _ = tree
    monkeypatch.setenv("FEATUREBANK_ENGINE_DIR", str(tmp_path / "engines"))
    base = [str(root), "-b", "resnet18", "-w", "none", "--resize", "72", "--crop", "64", "--batch-size", "4"]
    runner = CliRunner()
    r = runner.invoke(
        cli.main,
        [
            "extract",
            *base,
            "--cache",
            str(tmp_path / "q.h5"),
            "--precision",
            "int8",
            "--calibration-images",
            "5",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["settings"]["int8"]["images"] == 5 and out["engine"]["name"] == "onnxruntime"
    r = runner.invoke(cli.main, ["info", str(tmp_path / "q.h5")])
    assert "int8         flatten: cosine to fp32 mean" in r.output and "engine       onnxruntime" in r.output
    r = runner.invoke(
        cli.main,
        [
            "extract",
            *base,
            "--cache",
            str(tmp_path / "v.h5"),
            "--precision",
            "int8",
            "--calibration-from",
            str(tmp_path / "q.h5"),
            "--json",
        ],
    )
    assert r.exit_code == 0 and json.loads(r.output)["settings"] == out["settings"]
    r = runner.invoke(
        cli.main, ["extract", *base, "--cache", str(tmp_path / "t.h5"), "--precision", "int8", "--engine", "torch"]
    )
    assert r.exit_code == 1 and r.output.strip().splitlines() == [
        "Error: int8 runs on the onnxruntime engine: use --engine onnxruntime (or auto)"
    ]


@pytest.mark.integration  # 3-4 s of int8 calibration; the fast tier keeps test_int8_has_its_own_rows_its_calibration_and_its_measured_cosine
# -- int8 across reruns, lost engines, bundles ---------------------------------------------------------------------
def test_int8_with_the_default_cache_path_stays_one_cache_as_the_input_grows(tmp_path, monkeypatch):
    root = tmp_path / "images"
    write_tree(root, per_class=3)
    monkeypatch.setenv("FEATUREBANK_ENGINE_DIR", str(tmp_path / "engines"))
    opts = dict(precision="int8", cache_dir=str(tmp_path / "caches"), **FAST)
    first = embedder.extract(str(root), **opts)
    photo(600).save(root / "cats" / "added.jpg")  # the input is smaller than the draw: the new file is in it
    again = embedder.extract(str(root), **opts)
    assert again.cache == first.cache and again.embedded == 1 and again.reused == 9 and again.prepared == []
    assert again.settings == first.settings


@pytest.mark.integration  # two int8 calibrations
def test_a_lost_int8_engine_is_rebuilt_only_from_the_same_images(tmp_path, monkeypatch):
    import shutil

    root = tmp_path / "images"
    write_tree(root, per_class=3)
    engines = tmp_path / "engines"
    monkeypatch.setenv("FEATUREBANK_ENGINE_DIR", str(engines))
    cache = str(tmp_path / "q.h5")
    first = embedder.extract(str(root), cache, precision="int8", **FAST)
    X0 = embedder.load(cache)[0]
    shutil.rmtree(engines)  # the same images: calibrating again gives the same engine and rows
    rebuilt = embedder.extract(str(root), str(tmp_path / "r.h5"), precision="int8", **FAST)
    assert rebuilt.settings == first.settings and any("calibrated" in p for p in rebuilt.prepared)
    np.testing.assert_array_equal(embedder.load(rebuilt.cache)[0], X0)
    shutil.rmtree(engines)  # now other images: this cache's rows cannot be reproduced, and nothing is mixed
    photo(701).save(root / "owls" / "img00.jpg")
    with pytest.raises(FeaturebankError, match="cannot be reproduced"):
        embedder.extract(str(root), cache, precision="int8", **FAST)
    np.testing.assert_array_equal(embedder.load(cache)[0], X0)


@pytest.mark.integration  # 3-4 s of int8 calibration; the fast tier keeps test_int8_has_its_own_rows_its_calibration_and_its_measured_cosine
def test_an_interrupted_first_int8_run_finishes_after_the_input_changed(tmp_path, monkeypatch):
    from test_extract import Interrupt, interrupt_after

    root = tmp_path / "images"
    write_tree(root, per_class=3)
    monkeypatch.setenv("FEATUREBANK_ENGINE_DIR", str(tmp_path / "engines"))
    cache = str(tmp_path / "q.h5")
    with monkeypatch.context() as m:
        interrupt_after(m, 1)
        with pytest.raises(Interrupt):
            embedder.extract(str(root), cache, precision="int8", **FAST)
    assert not os.path.exists(cache) and os.listdir(cache + ".parts")
    photo(800).save(root / "cats" / "later.jpg")  # enters the draw: a fresh draw would give other settings
    done = embedder.extract(str(root), cache, precision="int8", **FAST)
    assert done.rows == 10 and done.embedded == 6  # 4 of the 9 were in the finished part, plus the new file


@pytest.mark.integration  # 3-4 s of int8 calibration; the fast tier keeps test_int8_has_its_own_rows_its_calibration_and_its_measured_cosine
def test_an_int8_model_predicts_with_its_own_engine_and_layers(tmp_path, monkeypatch):
    from classifiers import predict, train

    root = tmp_path / "images"
    write_tree(root, per_class=4)
    monkeypatch.setenv("FEATUREBANK_ENGINE_DIR", str(tmp_path / "engines"))
    cache = str(tmp_path / "q.h5")
    embedder.extract(str(root), cache, precision="int8", layers=["layer3", "flatten"], **FAST)
    bundle = train(cache, classifier="logreg", layer="flatten", out=str(tmp_path / "m.joblib"))
    images = [str(root / "cats" / "img00.jpg"), str(root / "owls" / "img03.png")]
    rows = predict(str(tmp_path / "m.joblib"), images)["rows"]
    X, _, paths = embedder.load(cache, "flatten")
    expected = bundle.scores(X[[list(paths).index("cats/img00.jpg"), list(paths).index("owls/img03.png")]])[0]
    assert [r["predicted"] for r in rows] == [bundle.classes[i] for i in expected.argmax(1)]
    np.testing.assert_allclose([r["score"] for r in rows], expected.max(1), atol=1e-6)  # scores rounded to 6 places
    assert bundle.trained_on["layers"] == ["layer3", "flatten"]
