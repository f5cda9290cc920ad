"""Model files that cannot run code: a pickle (whatever its name) is refused unread, a crafted model file naming an
untrusted type is refused unbuilt, a file with a missing key is one line; a saved model predicts exactly what the
trained one did; old pickled model files load only when trusted (--trust-pickle, convert)."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile

import joblib
import numpy as np
import pytest
from click.testing import CliRunner
from helpers import digest, synthetic_cache

import cli
from classifiers import modelfile
from classifiers.bundle import evaluate, load_bundle, predict, train
from classifiers.calibration import apply_temperature
from embedder.kernel.errors import FeaturebankError
from workflows.deploy.entry import export_model as export

SPECS = [
    "logreg",
    "linear-svm",
    "rbf-svm:pca=8",
    "knn",
    "ridge",
    "lda",
    "random-forest:n_estimators=20",
    "extra-trees:n_estimators=20",
    "ensemble",
    "ensemble:members=logreg+knn,method=stack",
]


class Payload:
    """Unpickling this opens (creates) the marker file: the side effect an attacker's shell command would have."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A synthetic cache and a logistic regression trained on it, saved as a model file."""
    root = tmp_path_factory.mktemp("modelfile")
    X, _ = synthetic_cache(root / "c.h5", counts=(10, 10, 10), dim=12)
    bundle = train(str(root / "c.h5"), classifier="logreg", layer="flatten", out=str(root / "m.fbmodel"))
    held = [digest(1000 + i) for i in range(30)]  # other images than the training ones
    synthetic_cache(root / "held.h5", counts=(10, 10, 10), dim=12, seed=1, digests=held)
    return root, X, bundle


@pytest.fixture
def runner():
    return CliRunner()


def malicious_files(folder, marker) -> list:
    """The same payload in an old model file's dict, written as joblib (compressed and not) and as pickles of
    protocols 0 and 5, under names that look like anything."""
    data = {"format": "featurebank-model", "version": 1, "trained_on": {"x": Payload(marker)}, "classes": ["a", "b"]}
    folder.mkdir(exist_ok=True)
    files = []
    for name in ("evil.joblib", "evil.pkl", "evil.fbmodel", "evil"):
        joblib.dump(data, folder / name, compress=3)
        files.append(folder / name)
    joblib.dump(data, folder / "plain.joblib")
    with open(folder / "proto0.fbmodel", "wb") as fh:
        pickle.dump(data, fh, protocol=0)
    with open(folder / "proto5", "wb") as fh:
        pickle.dump(data, fh, protocol=5)
    return files + [folder / "plain.joblib", folder / "proto0.fbmodel", folder / "proto5"]


def test_the_payload_runs_when_unpickled(tmp_path):
    """The test below can fail: each file does create the marker once it is unpickled, as the old loader did."""
    for path in malicious_files(tmp_path / "files", tmp_path / "marker"):
        joblib.load(path)
        assert (tmp_path / "marker").exists(), path.name
        (tmp_path / "marker").unlink()
    with pytest.raises(FeaturebankError, match="not a complete featurebank model file"):
        load_bundle(str(tmp_path / "files" / "evil.pkl"), trust_pickle=True)  # trusted: unpickled, then checked
    assert (tmp_path / "marker").exists()


def test_a_malicious_pickle_is_never_unpickled_by_any_command(synthetic, tmp_path, runner):
    root, _, _ = synthetic
    marker = tmp_path / "marker"
    image = tmp_path / "x.jpg"
    image.write_bytes(b"")
    for path in malicious_files(tmp_path / "files", marker):
        commands = [
            ["evaluate", str(path), str(root / "c.h5")],
            ["predict", str(path), str(image)],
            ["export", str(path), "-o", str(tmp_path / "m.onnx")],
        ]
        for args in commands:
            result = runner.invoke(cli.main, args)
            assert result.exit_code == 1, (args, result.output)
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("Error: ") and "Traceback" not in result.output, lines
            assert "not a featurebank model file" in lines[0], lines[0]
            if not path.name.startswith("proto0"):
                assert "it was not loaded, since loading a pickle can run any code" in lines[0]
                assert "--trust-pickle" in lines[0] and "featurebank convert OLD NEW" in lines[0]
        for call, args in (
            (load_bundle, [str(path)]),
            (evaluate, [str(path), str(root / "c.h5")]),
            (predict, [str(path), [str(image)]]),
            (export, [str(path), str(tmp_path / "m.onnx")]),
        ):
            with pytest.raises(FeaturebankError, match="not a featurebank model file"):
                call(*args)
        assert not marker.exists(), path.name
    assert not (tmp_path / "m.onnx").exists()


def _model_zip(path, meta: dict, blob: bytes) -> str:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(modelfile.META, json.dumps(meta))
        archive.writestr(modelfile.PIPELINE, blob)
    return str(path)


def _meta(bundle) -> dict:
    return {
        "format": "featurebank-model",
        "version": modelfile.VERSION,
        **{k: getattr(bundle, k) for k in modelfile.SCHEMA},
    }


def test_a_crafted_model_file_naming_untrusted_types_is_refused_unbuilt(synthetic, tmp_path, monkeypatch, runner):
    import skops.io
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    root, _, bundle = synthetic
    marker = tmp_path / "marker"
    # a class of someone else's whose loading (its __setstate__) writes the marker: importable, so only trust stops it
    (tmp_path / "evil_module.py").write_text(
        "class Evil:\n"
        "    def __setstate__(self, state):\n"
        "        open(state['marker'], 'w').close()\n"
        "    def predict(self, X):\n"
        "        return X\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import evil_module

    evil = evil_module.Evil()
    evil.marker = str(marker)
    blob = skops.io.dumps(Pipeline([("clf", evil)]))
    skops.io.loads(blob, trusted=["evil_module.Evil"])  # trusted, it would run: the marker appears
    assert marker.exists()
    marker.unlink()
    crafted = _model_zip(tmp_path / "crafted.fbmodel", _meta(bundle), blob)
    with pytest.raises(
        FeaturebankError,
        match=r"was refused: its classifier names types featurebank does not trust "
        r"\(evil_module\.Evil\)",
    ):
        load_bundle(crafted)
    # a function of the operating system inside a scikit-learn transformer
    system = _model_zip(
        tmp_path / "system.joblib",
        _meta(bundle),
        skops.io.dumps(Pipeline([("f", FunctionTransformer(os.system)), ("clf", bundle.pipeline)])),
    )
    for path in (crafted, system):
        result = runner.invoke(cli.main, ["evaluate", path, str(root / "c.h5")])
        assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1
        assert "does not trust" in result.stderr and ("posix.system" in result.stderr or "Evil" in result.stderr)
    assert not marker.exists()


def test_a_hand_written_reduce_node_is_refused(synthetic, tmp_path):
    """skops's ConstructorFromReduceNode calls its type with arguments: a schema naming builtins.open is refused."""
    import io

    import skops.io

    _, _, bundle = synthetic
    marker = tmp_path / "marker"
    inner = zipfile.ZipFile(io.BytesIO(skops.io.dumps((str(marker), "w"))))
    schema = json.loads(inner.read("schema.json"))
    args = {k: v for k, v in schema.items() if k not in ("protocol", "_skops_version")}
    evil = {
        "__class__": "open",
        "__module__": "builtins",
        "__loader__": "ConstructorFromReduceNode",
        "content": args,
        "protocol": schema["protocol"],
        "_skops_version": schema["_skops_version"],
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("schema.json", json.dumps(evil))
    path = _model_zip(tmp_path / "reduce.fbmodel", _meta(bundle), buffer.getvalue())
    with pytest.raises(FeaturebankError, match=r"does not trust \(builtins\.open\)"):
        load_bundle(path)
    assert not marker.exists()


def test_a_crafted_tree_is_refused(synthetic, tmp_path):
    """A forest's tree whose child index points outside it would make scikit-learn read out of bounds: refused."""
    from sklearn.tree._tree import Tree

    root, _, _ = synthetic
    bundle = train(str(root / "c.h5"), classifier="random-forest:n_estimators=3", layer="flatten")
    tree = bundle.pipeline.named_steps["clf"].estimators_[1].tree_
    state = tree.__getstate__()
    nodes = state["nodes"].copy()
    split = np.flatnonzero(nodes["left_child"] != -1)[0]
    nodes["left_child"][split] = 10**6
    state["nodes"] = nodes
    bad = Tree(tree.n_features, tree.n_classes, tree.n_outputs)
    bad.__setstate__(state)
    bundle.pipeline.named_steps["clf"].estimators_[1].tree_ = bad
    path = str(tmp_path / "forest.fbmodel")
    modelfile.write_model(path, {k: getattr(bundle, k) for k in modelfile.SCHEMA}, bundle.pipeline)
    with pytest.raises(FeaturebankError, match="a decision tree in it is damaged or crafted .a child index points"):
        load_bundle(path)


def test_missing_wrong_typed_and_damaged_files_are_one_line(synthetic, tmp_path):
    import skops.io

    root, _, bundle = synthetic
    blob = skops.io.dumps(bundle.pipeline)
    for key in modelfile.SCHEMA:
        meta = _meta(bundle)
        del meta[key]
        with pytest.raises(FeaturebankError, match=f"is not a complete featurebank model file: it has no '{key}'"):
            load_bundle(_model_zip(tmp_path / f"no-{key}.fbmodel", meta, blob))
    for key, value, kind in [
        ("classes", "ab", "str"),
        ("settings", [], "list"),
        ("layer", 3, "int"),
        ("trained_on", None, "NoneType"),
        ("weights_file", 1.5, "float"),
    ]:
        meta = {**_meta(bundle), key: value}
        with pytest.raises(FeaturebankError, match=f"'{key}' is a {kind}, not a "):
            load_bundle(_model_zip(tmp_path / f"bad-{key}.fbmodel", meta, blob))
    meta = {**_meta(bundle), "settings": {"backbone": "resnet18"}}
    with pytest.raises(FeaturebankError, match="'settings' has no 'weights' name"):
        load_bundle(_model_zip(tmp_path / "settings.fbmodel", meta, blob))
    meta = {**_meta(bundle), "settings": {k: v for k, v in bundle.settings.items() if k != "backbone"}}
    with pytest.raises(FeaturebankError, match="'settings': unreadable extraction settings .KeyError: 'backbone'"):
        load_bundle(_model_zip(tmp_path / "settings2.fbmodel", meta, blob))
    with zipfile.ZipFile(tmp_path / "deep.fbmodel", "w") as archive:  # JSON nested past Python's recursion limit
        archive.writestr(modelfile.META, "[" * 100000)
        archive.writestr(modelfile.PIPELINE, blob)
    with pytest.raises(FeaturebankError, match="damaged featurebank model file"):
        load_bundle(str(tmp_path / "deep.fbmodel"))
    good = (root / "m.fbmodel").read_bytes()
    cases = {
        "empty.fbmodel": (b"", "not a featurebank model file"),
        "half.fbmodel": (good[: len(good) // 2], "damaged featurebank model file"),
        "text.fbmodel": (b"hello", "not a featurebank model file"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(FeaturebankError, match=message):
            load_bundle(str(tmp_path / name))
    with pytest.raises(FeaturebankError, match="lacks featurebank-model.json"):  # a bare skops file
        load_bundle(_write(tmp_path / "bare.skops", blob))
    with pytest.raises(FeaturebankError, match="is a damaged featurebank model file"):  # a pickle where skops goes
        load_bundle(_model_zip(tmp_path / "inner.fbmodel", _meta(bundle), pickle.dumps(bundle.pipeline)))
    with pytest.raises(FeaturebankError, match="does not say format"):
        load_bundle(_model_zip(tmp_path / "other.fbmodel", {**_meta(bundle), "format": "x"}, blob))
    with pytest.raises(FeaturebankError, match="not a regular file"):
        load_bundle(str(tmp_path))
    os.mkfifo(tmp_path / "fifo.fbmodel")  # opening it would block forever
    with pytest.raises(FeaturebankError, match="not a regular file"):
        load_bundle(str(tmp_path / "fifo.fbmodel"))


def _write(path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


@pytest.mark.integration
@pytest.mark.parametrize("spec", SPECS)
def test_a_saved_model_predicts_exactly_what_the_trained_one_did(synthetic, tmp_path, spec):
    root, X, _ = synthetic
    bundle = train(str(root / "c.h5"), classifier=spec, layer="flatten", out=str(tmp_path / "m.fbmodel"))
    assert modelfile.kind_of(str(tmp_path / "m.fbmodel")) == "model"
    loaded = load_bundle(str(tmp_path / "m.fbmodel"))
    before, kind = bundle.scores(X)
    after, kind_after = loaded.scores(X)
    assert kind == kind_after and np.array_equal(before, after)
    np.testing.assert_array_equal(loaded.predict(X), bundle.predict(X))
    assert (loaded.classes, loaded.classifier, loaded.layer, loaded.settings) == (
        bundle.classes,
        bundle.classifier,
        bundle.layer,
        json.loads(json.dumps(bundle.settings)),
    )
    assert loaded.trained_on["rows"] == 30 and loaded.trained_on["class_counts"] == bundle.trained_on["class_counts"]


def test_old_pickled_model_files_load_only_when_trusted(synthetic, tmp_path, runner):
    root, X, bundle = synthetic
    old = tmp_path / "old.joblib"
    joblib.dump({**bundle.to_dict(), "version": 1}, old, compress=3)  # what featurebank train wrote before
    refused = runner.invoke(cli.main, ["evaluate", str(old), str(root / "c.h5")])
    assert refused.exit_code == 1 and "--trust-pickle" in refused.stderr and len(refused.stderr.splitlines()) == 1
    trusted = runner.invoke(cli.main, ["evaluate", str(old), str(root / "held.h5"), "--trust-pickle", "--json"])
    assert trusted.exit_code == 0, trusted.output
    new = runner.invoke(cli.main, ["evaluate", str(root / "m.fbmodel"), str(root / "held.h5"), "--json"])
    assert json.loads(trusted.stdout)["metrics"] == json.loads(new.stdout)["metrics"]
    # an old file does not list its training images: scored on them all the same, and said
    on_training = runner.invoke(cli.main, ["evaluate", str(old), str(root / "c.h5"), "--trust-pickle"])
    assert on_training.exit_code == 0 and "does not list its training images" in on_training.stdout

    converted = runner.invoke(cli.main, ["convert", str(old), str(tmp_path / "new.fbmodel")])
    assert converted.exit_code == 0, converted.output
    assert converted.stdout.startswith(f"wrote {tmp_path / 'new.fbmodel'}: logreg, classes class0, class1, class2")
    again = load_bundle(str(tmp_path / "new.fbmodel"))  # no trust needed any more
    np.testing.assert_array_equal(again.scores(X)[0], bundle.scores(X)[0])
    assert again.trained_on["class_counts"] == bundle.trained_on["class_counts"]
    same = runner.invoke(cli.main, ["convert", str(old), str(old)])
    assert same.exit_code == 1 and "give NEW another path" in same.stderr
    already = runner.invoke(cli.main, ["convert", str(tmp_path / "new.fbmodel"), str(tmp_path / "x.fbmodel")])
    assert already.exit_code == 1 and "already a featurebank model file" in already.stderr
    assert not (tmp_path / "x.fbmodel").exists()


def test_metadata_is_plain_json_and_a_write_replaces_only_whole(synthetic, tmp_path):
    root, _, bundle = synthetic
    with zipfile.ZipFile(root / "m.fbmodel") as archive:
        assert sorted(archive.namelist()) == [modelfile.META, modelfile.PIPELINE, modelfile.SEEN, modelfile.REFERENCE]
        meta = json.loads(archive.read(modelfile.META))
        seen = np.load(io.BytesIO(archive.read(modelfile.SEEN)), allow_pickle=False)
    # the training images' fingerprints: the first 8 bytes of each row's content digest, sorted
    assert seen.dtype == np.uint64 and seen.tolist() == list(range(30)) == bundle.seen.tolist()
    assert meta["format"] == "featurebank-model" and meta["version"] == 4 and meta["classes"] == bundle.classes
    params = meta["trained_on"]["params"]  # the tuned probe: C chosen on inner folds (None), over its grid
    assert params["C"] is None and params["inner_folds"] == 3 and meta["settings"]["weights"] == "none:seed=0"
    # an existing file is replaced by a whole one, and no temporary file is left behind
    target = tmp_path / "m.fbmodel"
    target.write_bytes(b"previous")
    modelfile.write_model(str(target), {k: getattr(bundle, k) for k in modelfile.SCHEMA}, bundle.pipeline)
    assert modelfile.kind_of(str(target)) == "model" and os.listdir(tmp_path) == ["m.fbmodel"]


def test_the_trusted_list_decides(synthetic, tmp_path, monkeypatch):
    """A type is loaded because it is on the explicit list, not because skops or the file offers it: without
    featurebank's ensemble class on the list, an ensemble's model file is refused, naming it."""
    root, _, _ = synthetic
    train(
        str(root / "c.h5"), classifier="ensemble:members=logreg+knn", layer="flatten", out=str(tmp_path / "e.fbmodel")
    )
    load_bundle(str(tmp_path / "e.fbmodel"))
    monkeypatch.setattr(modelfile, "TRUSTED_TYPES", [t for t in modelfile.TRUSTED_TYPES if "ZooEnsemble" not in t])
    with pytest.raises(FeaturebankError, match=r"does not trust \(classifiers\.ensemble\.ZooEnsemble\)"):
        load_bundle(str(tmp_path / "e.fbmodel"))


def test_a_malicious_pickle_named_like_a_checkpoint_is_not_run_by_export(tmp_path, runner):
    """export sends .pth/.pt files to the checkpoint path, which reads them with torch's weights_only loader."""
    marker = tmp_path / "marker"
    data = {"state_dict": {"x": Payload(marker)}}
    for name in ("evil.pth", "evil.pt"):
        with open(tmp_path / name, "wb") as fh:
            pickle.dump(data, fh, protocol=2)
        for extra in ([], ["-b", "resnet18"]):
            result = runner.invoke(cli.main, ["export", str(tmp_path / name), "-o", str(tmp_path / "x.onnx"), *extra])
            assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1, result.output
            assert "Traceback" not in result.output
    assert not marker.exists() and not (tmp_path / "x.onnx").exists()


MARGIN = {"input": "probability", "temperature": 1.0, "margin_power": 0.3, "margin_median": 1.0}


@pytest.mark.parametrize(
    "calibration",
    [
        {"input": "probability"},
        {"input": "probability", "temperature": 0},
        {"temperature": "NaN"},
        3,
        {**MARGIN, "margin_range": [0.1, 2.0], "margin_median": 0},
        {**MARGIN, "margin_range": [2.0, 0.1]},
        {**MARGIN, "margin_range": [0.1]},
        {**MARGIN, "margin_range": [0.1, 2.0], "margin_power": "0.3"},
        {**MARGIN, "margin_range": [0.1, 2.0], "margin_power": float("inf")},
    ],
)
def test_a_calibration_train_never_writes_is_refused_in_one_line(synthetic, tmp_path, calibration):
    """A temperature that is missing, 0, not a number, or no record at all, or a margin temperature without a
    positive median or an ordered range of two positive margins, would divide by zero or give NaN probabilities: the
    file is refused before anything runs."""
    root, _, bundle = synthetic
    with zipfile.ZipFile(root / "m.fbmodel") as archive:
        meta, blob = json.loads(archive.read(modelfile.META)), archive.read(modelfile.PIPELINE)
    assert meta["trained_on"]["calibration"]["temperature"] > 0  # what train writes loads
    meta["trained_on"]["calibration"] = calibration
    path = _model_zip(tmp_path / "bad.fbmodel", meta, blob)
    with pytest.raises(FeaturebankError, match="its calibration is not one train writes") as caught:
        load_bundle(path)
    assert "\n" not in str(caught.value)


def test_the_format_version_says_calibration_and_a_later_one_is_one_line(synthetic, tmp_path):
    """Version 3 carries the temperature (a reader of version 2 refuses it rather than give uncalibrated numbers),
    version 4 the margin temperature (a reader of version 3 refuses it rather than apply the temperature alone);
    version 2 files still load (tests/test_old_model_file.py); a later version is one line naming both."""
    root, _, _ = synthetic
    with zipfile.ZipFile(root / "m.fbmodel") as archive:
        meta, blob = json.loads(archive.read(modelfile.META)), archive.read(modelfile.PIPELINE)
    assert meta["version"] == 4 and modelfile.READS == (2, 3, 4)
    meta["version"] = 5
    path = _model_zip(tmp_path / "later.fbmodel", meta, blob)
    with pytest.raises(FeaturebankError, match="format version 5; this featurebank reads versions 2, 3 and 4: train"):
        load_bundle(path)


def test_a_version_3_file_with_one_temperature_reads_and_predicts_as_it_did(synthetic, tmp_path):
    """Version 4 adds the margin's terms; a version 3 file (one temperature, none of them) loads, and its
    probabilities are ``softmax(log p / T)`` as version 3 gave them."""
    root, X, bundle = synthetic
    with zipfile.ZipFile(root / "m.fbmodel") as archive:
        meta, blob = json.loads(archive.read(modelfile.META)), archive.read(modelfile.PIPELINE)
    assert meta["trained_on"]["calibration"]["method"] == "margin-temperature"
    old = {k: v for k, v in meta["trained_on"]["calibration"].items() if not k.startswith("margin_")}
    meta |= {"version": 3, "trained_on": {**meta["trained_on"], "calibration": {**old, "method": "temperature"}}}
    loaded = load_bundle(_model_zip(tmp_path / "v3.fbmodel", meta, blob))
    p = bundle.pipeline.predict_proba(X)
    np.testing.assert_allclose(loaded.scores(X)[0], apply_temperature(p, "probability", old["temperature"]))


def test_a_model_file_is_never_written_over_a_fifo_or_a_device(tmp_path, monkeypatch):
    """The file's rename would replace what stands there: as root, ``train -o /dev/full`` had left a regular file
    where the device was. Refused before any fit, and by ``convert``; the FIFO stays a FIFO."""
    synthetic_cache(tmp_path / "c.h5", counts=(10, 10), dim=6)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    fits = []
    monkeypatch.setattr("classifiers.bundle.fit_grouped", lambda *a, **k: fits.append(1))
    with pytest.raises(FeaturebankError, match="the model file .*pipe is not a regular file .a device or a FIFO."):
        train(str(tmp_path / "c.h5"), classifier="ridge", out=str(fifo))
    assert not fits
    old = tmp_path / "old.joblib"
    joblib.dump({"not": "a model"}, old)
    with pytest.raises(FeaturebankError, match="not a regular file"):
        modelfile.convert(str(old), str(fifo))
    assert os.path.exists(fifo) and not os.path.isfile(fifo) and len(os.listdir(tmp_path)) == 3


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("backbone", 7, "backbone must be a name, not 7"),
        ("weights", None, "'settings' has no 'weights' name"),
        ("layers", "flatten", "layers must be a list of layer names, not 'flatten'"),
        ("layers", 3, "layers must be a list of layer names, not 3"),
    ],
)
def test_settings_of_the_wrong_type_are_refused_in_one_line(synthetic, tmp_path, key, value, message):
    """A number where the backbone's name goes had been a TypeError traceback when predict embedded."""
    root, _, _ = synthetic
    with zipfile.ZipFile(root / "m.fbmodel") as archive:
        meta, blob = json.loads(archive.read(modelfile.META)), archive.read(modelfile.PIPELINE)
    meta["settings"][key] = value
    with pytest.raises(FeaturebankError, match="is not a valid featurebank model file") as caught:
        load_bundle(_model_zip(tmp_path / "bad.fbmodel", meta, blob))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_a_backbone_this_featurebank_lacks_is_said_to_be_the_models(synthetic, tmp_path, runner):
    """The user gave no backbone: the line says it is the model's, for predict and export alike, before any work."""
    from helpers import write_tree

    root, _, _ = synthetic
    with zipfile.ZipFile(root / "m.fbmodel") as archive:
        meta, blob = json.loads(archive.read(modelfile.META)), archive.read(modelfile.PIPELINE)
    meta["settings"]["backbone"] = "resnet5"
    model = _model_zip(tmp_path / "other.fbmodel", meta, blob)
    write_tree(tmp_path / "images", per_class=1)
    said = "Error: the model was trained on features of a backbone this featurebank lacks: unknown backbone 'resnet5'"
    cache = str(tmp_path / "c.h5")
    for args in (["predict", model, str(tmp_path / "images"), "--cache", cache], ["export", model, "-o", "x.onnx"]):
        result = runner.invoke(cli.main, args)
        assert result.exit_code == 1 and result.stderr.startswith(said), result.output
    assert not os.path.exists(cache) and not os.path.exists("x.onnx")


def test_a_torch_checkpoint_where_a_model_file_goes_says_what_to_run(tmp_path):
    """Both of torch.save's formats (the zip, and the old pickle under a .pth name) are named a checkpoint, never
    unpickled; the same old pickle trusted (an old model file named .pt) is read as before."""
    import torch

    for name, zipped, shown in (("new format.pth", True, "'{}'"), ("old.pth", False, "{}")):
        path = tmp_path / name
        torch.save({"state_dict": {"w": torch.zeros(2)}}, path, _use_new_zipfile_serialization=zipped)
        with pytest.raises(FeaturebankError, match="is a PyTorch checkpoint, not a featurebank model file") as caught:
            load_bundle(str(path))
        assert f"featurebank predict --head -w {shown.format(path)} IMAGES" in str(caught.value)  # quoted for a shell
    with pytest.raises(FeaturebankError, match="not a featurebank model file .`featurebank train` writes them."):
        load_bundle(str(tmp_path / "old.pth"), trust_pickle=True)  # trusted: read, and found to be no model file
