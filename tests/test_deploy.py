"""One ONNX file per model: its predictions are `featurebank predict`'s, it runs without torch, int8 costs at most a
point, and a head that cannot be exported is refused in one line."""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from helpers import FAST, ROOT, write_tree

from classifiers.bundle import Bundle, predict, predict_imagenet, train
from classifiers.calibration import logits, margins, raw_scores
from classifiers.zoo import list_classifiers, make_classifier
from embedder import CacheReader, extract
from embedder.inputs.batches import ImageDataset
from embedder.kernel.errors import FeaturebankError
from embedder.kernel.preprocess import Preprocessing
from embedder.kernel.settings import Int8
from workflows.deploy.entry import export_model as export
from workflows.deploy.head import Head, check_head, head_model, refusal
from workflows.deploy.run import export_checkpoint

RUN = {k: FAST[k] for k in ("batch_size", "workers")}
EXAMPLE = ROOT / "examples" / "classify_folder.py"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """4 classes of 6 generated images, embedded with the FAST settings (resnet18, random weights, 64 px)."""
    root = tmp_path_factory.mktemp("deploy")
    images = root / "images"
    write_tree(images, classes=("cats", "dogs", "owls", "yaks"), per_class=6)
    extract(images, str(root / "train.h5"), **FAST)
    return root, images


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATUREBANK_CACHE_DIR", str(tmp_path / "cache"))


def run_onnx(path, files: list[str], outputs=("scores", "label")) -> tuple:
    """The exported file on images decoded as featurebank decodes them: ``outputs``, then the metadata."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
    p = meta["preprocessing"]
    prep = Preprocessing(p["resize"], p["crop"], tuple(p["mean"]), tuple(p["std"]), p["interpolation"], p["draft"])
    dataset = ImageDataset(files, prep)
    x = np.stack([dataset[i][1] for i in range(len(files))]).transpose(0, 2, 3, 1)
    return (*session.run(list(outputs), {"images": np.ascontiguousarray(x)}), meta)


def predicted(result: dict, classes: list[str]) -> tuple[list[str], np.ndarray]:
    """`predict`'s classes and its full score matrix (every class is in its top-k), in image order."""
    names = [r["predicted"] for r in result["rows"]]
    scores = np.array([[{t["class"]: t["score"] for t in r["top"]}[c] for c in classes] for r in result["rows"]])
    return names, scores


def files_of(result: dict, folder) -> list[str]:
    return [str(pathlib.Path(folder) / r["path"]) for r in result["rows"]]


@pytest.mark.parametrize(
    "spec,how,output,calibrate",
    [
        ("logreg", "folded", "probability", True),
        ("ridge", "folded", "probability", True),
        ("rbf-svm", "skl2onnx", "probability", True),
        pytest.param("ridge", "folded", "probability", False, marks=pytest.mark.integration),
    ],
)
def test_export_predicts_what_predict_predicts(trained, tmp_path, spec, how, output, calibrate):
    """The exported file's probabilities are predict's: calibrated by the model file's temperature (or, with
    calibrate=False, a softmax of ridge's decision scores), within float32 rounding."""
    root, images = trained
    bundle = train(str(root / "train.h5"), classifier=spec, out=str(tmp_path / "model.joblib"), calibrate=calibrate)
    assert bundle.calibration["method"] == ("margin-temperature" if calibrate else "none")
    written = export(str(tmp_path / "model.joblib"), str(tmp_path / "model.onnx"))
    assert (written.precision, written.head, written.output) == ("fp32", how, output)
    assert written.bytes == os.path.getsize(tmp_path / "model.onnx") > 1_000_000  # resnet18's weights are inside
    result = predict(str(tmp_path / "model.joblib"), [str(images)], top=4, **RUN)
    names, expected = predicted(result, bundle.classes)
    scores, labels, familiarity, meta = run_onnx(
        tmp_path / "model.onnx", files_of(result, images), ("scores", "label", "familiarity")
    )
    assert [bundle.classes[i] for i in labels] == names
    np.testing.assert_allclose(scores, expected, atol=1e-4, rtol=1e-4)
    # predict's familiarity column, to its 4 significant digits: the kept rows place each image alike
    np.testing.assert_allclose(familiarity, [r["familiarity"] for r in result["rows"]], rtol=1e-3)
    assert len(set(familiarity.round(6))) > 5  # the images are told apart, not all one value
    assert meta["familiarity"] == {
        "exact": True,
        "reference_rows": 24,
        "k": 5,
        "below": 0.01,
        "can_flag": False,
        "measured_on": "24 of the model's training images (each against the others)",
    }
    assert meta["classes"] == ["cats", "dogs", "owls", "yaks"] and meta["output"]["scores"] == output
    assert meta["preprocessing"]["resize"] == 72 and meta["preprocessing"]["crop"] == 64
    assert meta["input"]["layout"] == "NHWC" and meta["input"]["shape"] == ["batch", 64, 64, 3]
    assert meta["settings"] == bundle.settings and meta["model"]["classifier"] == spec
    model = onnx.load(str(tmp_path / "model.onnx"))
    assert [i.name for i in model.graph.input] == ["images"]
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [o.name for o in model.graph.output] == ["scores", "label", "familiarity"]
    if how == "folded":  # the whole head is one matrix product: no scikit-learn operator, one MatMul after the backbone
        head = [n.op_type for n in model.graph.node if n.name.startswith("head/")]
        assert head.count("MatMul") == 1 and not any(n.domain == "ai.onnx.ml" for n in model.graph.node)


@pytest.mark.parametrize("k", [2, 3])
def test_every_exportable_zoo_head_gives_sklearns_scores(k):
    """Head alone, no backbone: each exportable zoo classifier (and non-default steps) against Bundle.scores."""
    rng = np.random.default_rng(k)
    X = (rng.normal(size=(60, 24)) + 2 * np.eye(k, 24)[np.arange(60) % k]).astype(np.float32)
    y = np.arange(60) % k
    specs = [n for n in list_classifiers() if refusal(make_classifier(n)) is None]
    assert specs == ["logreg", "linear-svm", "rbf-svm", "ridge", "lda", "random-forest", "extra-trees"]
    extra = ["logreg:l2=on,pca=10", "ridge:scale=off,l2=on", "knn:weights=uniform", "rbf-svm:pca=off"]
    # a temperature, or a margin temperature whose power is at either bound and whose range clips the new rows
    calibrations = [{"temperature": 0.4}, {"temperature": 2.5}, {"temperature": 0.8, "margin_power": 0.5}]
    calibrations.append({"temperature": 1.7, "margin_power": -0.5})
    # each entry with one temperature and one margin temperature (the power's sign alternating over the entries):
    # every calibration meets both kinds of output (probability, decision) and both kinds of head (folded, converted)
    calibrated = [(s, calibrations[(i + j) % 4]) for i, s in enumerate(specs) for j in (0, 2)]
    assert {("margin_power" in t, s) for s, t in calibrated} == {(m, s) for m in (True, False) for s in specs}
    fitted = {spec: make_classifier(spec).fit(X, y) for spec in specs + extra}  # each fit once, read as many times
    for spec, temperature in [(s, None) for s in specs + extra] + calibrated:
        pipeline = fitted[spec]
        kind = "probability" if hasattr(pipeline, "predict_proba") else "decision"
        if temperature and "margin_power" in temperature:
            g = margins(logits(raw_scores(pipeline, X)[0], kind))
            low, high = np.percentile(g, [20, 80])
            temperature = {**temperature, "margin_median": float(np.median(g)), "margin_range": [low, high]}
        trained_on = {} if temperature is None else {"calibration": {"input": kind, **temperature}}
        bundle = Bundle(pipeline, [f"c{i}" for i in range(k)], spec, "x", {}, trained_on=trained_on)
        head = Head(bundle.classes, bundle.pipeline, spec, X, bundle.calibration, bundle.scores)
        model, _ = head_model(head, 24, 17, 8)
        assert check_head(model, head, 24)["max_difference"] < 1e-4
        X_new = (X + rng.normal(0, 0.3, X.shape)).astype(np.float32)
        got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"features": X_new}
        )
        expected, said = bundle.scores(X_new)
        assert said == ("probability" if temperature else kind)
        if temperature:  # calibrated: every row a distribution, not the raw output
            np.testing.assert_allclose(expected.sum(axis=1), 1.0, atol=1e-9)
        np.testing.assert_allclose(got[0], expected, atol=1e-4, err_msg=f"{spec} calibration {temperature}")
        np.testing.assert_array_equal(got[1], bundle.predict(X_new), err_msg=spec)


def test_a_conversion_that_disagrees_is_refused():
    """The check that guards skl2onnx: scores unlike scikit-learn's are never written."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(30, 6)).astype(np.float32), np.arange(30) % 3
    pipeline = make_classifier("logreg").fit(X, y)
    head = Head(["a", "b", "c"], pipeline, "logreg", X)
    model, _ = head_model(head, 6, 17, 8)
    assert check_head(model, head, 6)["max_difference"] < 1e-6
    pipeline.named_steps["clf"].coef_ = pipeline.named_steps["clf"].coef_ * 2  # scikit-learn now says otherwise
    with pytest.raises(FeaturebankError, match=r"disagrees with scikit-learn on \d+ of 30 training rows"):
        check_head(model, head, 6)


def test_a_head_that_cannot_be_exported_is_one_line(trained, tmp_path):
    import cli

    root, _ = trained
    train(str(root / "train.h5"), classifier="knn", out=str(tmp_path / "knn.joblib"))
    out = tmp_path / "new" / "knn.onnx"  # refused: its folder is checked, not made
    r = CliRunner().invoke(cli.main, ["export", str(tmp_path / "knn.joblib"), "-o", str(out)])
    assert r.exit_code == 1 and "Traceback" not in r.output and not (tmp_path / "new").exists()
    assert r.output.count("\n") == 1 and r.output.startswith("Error: cannot export knn (CosineKNeighbors): ")
    assert r.output.rstrip().endswith(
        "these export: logreg, linear-svm, rbf-svm, ridge, lda, random-forest, extra-trees, knn:weights=uniform"
    )
    assert not (tmp_path / "knn.onnx").exists()


def test_cli_export_prints_size_and_path(trained, tmp_path):
    import cli

    root, _ = trained
    train(str(root / "train.h5"), classifier="lda", out=str(tmp_path / "lda.joblib"))
    r = CliRunner().invoke(cli.main, ["export", str(tmp_path / "lda.joblib"), "-o", str(tmp_path / "lda.onnx")])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    size = os.path.getsize(tmp_path / "lda.onnx") / 1e6
    assert lines[0] == f"fp32, {size:.1f} MB, 4 classes, probabilities (head folded into one matrix product)"
    assert "uint8 N x 64 x 64 x 3 RGB after resizing the shorter side to 72 (bilinear)" in lines[1]
    assert lines[2] == (
        "  familiarity: output `familiarity`, each image placed among 24 kept training images by its distance to the "
        "5th nearest; under 0.01: unlike them, as predict flags (none can fall under 0.01 with so few kept: it still "
        "ranks them)"
    )
    assert lines[-1] == str(tmp_path / "lda.onnx")


def _blocked_torch_env(tmp_path) -> dict:
    """A Python that cannot import torch (a meta-path finder refuses it), as on a machine without it."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\n"
        "class _NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'torchvision', 'sklearn', 'embedder', 'classifiers'):\n"
        "            raise ImportError(f'{name} is blocked in this test')\n"
        "sys.meta_path.insert(0, _NoTorch())\n"
    )
    return {**os.environ, "PYTHONPATH": str(site)}


def test_the_example_classifies_a_folder_without_torch(trained, tmp_path):
    root, images = trained
    bundle = train(str(root / "train.h5"), classifier="logreg", out=str(tmp_path / "model.joblib"))
    export(bundle, str(tmp_path / "model.onnx"))
    env = _blocked_torch_env(tmp_path)
    blocked = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert blocked.returncode == 1 and "torch is blocked in this test" in blocked.stderr
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), str(tmp_path / "model.onnx"), str(images)],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    rows = [line.split(",") for line in done.stdout.splitlines()]
    result = predict(bundle, [str(images)], top=4, **RUN)
    expected = {str(images / r["path"]): (r["predicted"], r["score"], r["familiarity"]) for r in result["rows"]}
    assert len(rows) == len(expected) == 24
    for path, name, score, familiarity in rows:
        assert name == expected[path][0]
        assert float(score) == pytest.approx(expected[path][1], abs=2e-4)  # printed to 4 decimals
        assert float(familiarity) == pytest.approx(expected[path][2], rel=1e-3)  # 4 significant digits


def test_the_deployment_page_shows_the_example_as_it_is():
    """docs/deployment.md quotes the whole example: the copy a reader takes is the file the tests run."""
    page = (ROOT / "docs" / "deployment.md").read_text()
    quoted = page.split("```python\n", 1)[1].split("```\n", 1)[0]
    assert quoted == EXAMPLE.read_text()


def test_a_model_without_kept_rows_exports_scores_and_label_only(trained, tmp_path):
    """A model file written before it kept training rows (no familiarity): the file has the two outputs it had."""
    root, _ = trained
    bundle = train(str(root / "train.h5"), classifier="logreg", out=str(tmp_path / "model.joblib"))
    bundle.reference = None
    bundle.__dict__.pop("familiarity", None)  # the cached property, were it read
    written = export(bundle, str(tmp_path / "model.onnx"))
    model = onnx.load(str(tmp_path / "model.onnx"))
    assert [o.name for o in model.graph.output] == ["scores", "label"]
    assert "familiarity" not in written.metadata and "familiarity" not in written.metadata["output"]
    assert "familiarity" not in written.metadata["head_check"]


def test_an_exported_familiarity_that_disagrees_is_refused():
    """The check that guards the familiarity graph: values unlike featurebank's are never written."""
    from classifiers.familiarity import Familiarity, reference_rows

    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(200, 8)).astype(np.float32), np.arange(200) % 2
    X[:3] *= -1  # a few rows unlike the rest: the graph must place them low, as featurebank does
    fam = Familiarity(reference_rows(X[3:]))
    head = Head(["a", "b"], make_classifier("logreg").fit(X, y), "logreg", X, familiarity=fam)
    model, _ = head_model(head, 8, 17, 8)
    checked = check_head(model, head, 8)["familiarity"]
    assert (checked["rows"], checked["reference_rows"]) == (200 + 2 * 197, 197)  # and the kept rows, noisy or not
    assert checked["rows_a_step_apart"] <= 0.02 * checked["rows"]  # ties within float32 rounding, a step at most
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["familiarity"], {"features": X}
    )[0]
    np.testing.assert_allclose(got, fam.p_values(X), atol=1e-6)
    head.familiarity = Familiarity(reference_rows(X[3:] + 1.0))  # featurebank's rows now differ from the file's
    with pytest.raises(
        FeaturebankError, match=r"exported familiarity disagrees with featurebank's on \d+ of 594 rows by"
    ):
        check_head(model, head, 8)


def _example_pixels(prep: dict):
    """The example's ``pixels`` function, taken from its source, for the given preprocessing metadata."""
    import ast

    from PIL import Image, ImageOps

    tree = ast.parse(EXAMPLE.read_text())
    keep = [
        n
        for n in tree.body
        if isinstance(n, ast.FunctionDef)
        and n.name in ("pixels", "rgb")
        or isinstance(n, ast.Assign)
        and getattr(n.targets[0], "id", None) == "FILTERS"
    ]
    namespace = {"np": np, "Image": Image, "ImageOps": ImageOps, "prep": prep}
    exec(compile(ast.Module(keep, []), str(EXAMPLE), "exec"), namespace)
    return namespace["pixels"]


@pytest.mark.parametrize("resize,crop,interpolation", [(72, 64, "bilinear"), (57, 64, "bicubic")])
def test_the_examples_pixels_are_featurebanks(tmp_path, resize, crop, interpolation):
    """Big JPEGs (draft decoding), EXIF rotation, odd sizes, a resize under the crop (zero padding)."""
    from helpers import photo
    from PIL import Image

    from embedder.inputs.decode import decode_file

    prep = Preprocessing(resize=resize, crop=crop, interpolation=interpolation)
    cases = {"big.jpg": (640, 480), "tall.jpg": (301, 677), "small.png": (50, 41), "thin.png": (200, 61)}
    for name, size in cases.items():
        photo(len(name), size).save(tmp_path / name)
    rotated = photo(7, (400, 300))
    exif = rotated.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees on display
    rotated.save(tmp_path / "rotated.jpg", exif=exif)
    deep = np.asarray(photo(3, (90, 70)).convert("L"), dtype=np.uint16) * 257  # 16-bit: clipped to white before
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    pixels = _example_pixels({**prep.to_dict()})
    for path in sorted(tmp_path.iterdir()):
        expected = prep.to_array(decode_file(str(path), draft_size=prep.draft_size).image).transpose(1, 2, 0)
        np.testing.assert_array_equal(pixels(path), expected, err_msg=path.name)
    assert Image.open(tmp_path / "rotated.jpg").size == (400, 300)


@pytest.mark.integration
def test_a_finetune_checkpoint_exports_its_own_head(trained, tmp_path):
    from workflows.finetune import finetune

    _, images = trained
    run = finetune(
        str(images),
        str(tmp_path / "run"),
        epochs=1,
        backbone="resnet18",
        weights="none",
        resize=72,
        crop=64,
        val_split=0.25,
        **RUN,
    )
    written = export_checkpoint(run.checkpoint, str(tmp_path / "ft.onnx"))  # the backbone comes from the file
    assert (written.head, written.output) == ("softmax", "probability")
    result = predict_imagenet([str(images)], backbone="resnet18", weights=run.checkpoint, top=4, **RUN)
    classes = ["cats", "dogs", "owls", "yaks"]
    names, expected = predicted(result, classes)
    scores, labels, meta = run_onnx(tmp_path / "ft.onnx", files_of(result, images))
    assert meta["classes"] == classes and meta["model"]["layer"] == "fc"
    assert [classes[i] for i in labels] == names
    np.testing.assert_allclose(scores, expected, atol=1e-4)
    import torch

    saved = torch.load(run.checkpoint, map_location="cpu", weights_only=True)
    assert saved["classes"] == classes
    saved["classes"] = classes[:3]  # tampered: 3 names, 4 outputs
    torch.save(saved, tmp_path / "tampered.pth")
    with pytest.raises(FeaturebankError, match="^the resnet18 head gives 4 scores and the checkpoint names 3 classes"):
        export_checkpoint(str(tmp_path / "tampered.pth"), str(tmp_path / "t.onnx"))
    with pytest.raises(FeaturebankError, match="int8 needs images to calibrate on: give --images DATA"):
        export_checkpoint(run.checkpoint, str(tmp_path / "q.onnx"), precision="int8")
    q = export_checkpoint(
        run.checkpoint, str(tmp_path / "q.onnx"), precision="int8", images=str(images), int8=Int8(images=8)
    )
    assert q.accuracy["images"] == 24 and q.accuracy["source"] == f"classes:{images}"
    assert q.metadata["int8"]["accuracy"]["measured_on"] == (
        "the calibration source's images (int8 calibrated on 8 of them; not held out)"
    )
    assert q.accuracy["fp32"] == pytest.approx(np.mean(np.array(names) == [r["label"] for r in result["rows"]]))
    assert abs(q.accuracy["int8"] - q.accuracy["fp32"]) <= 0.01


@pytest.mark.integration
@pytest.mark.parametrize("spec", ["logreg", "rbf-svm"])
def test_int8_costs_at_most_a_point_on_the_training_images(trained, tmp_path, spec):
    root, _ = trained
    reader = CacheReader(str(root / "train.h5"))
    bundle = train(str(root / "train.h5"), classifier=spec, out=str(tmp_path / "model.joblib"))
    written = export(str(tmp_path / "model.joblib"), str(tmp_path / "q.onnx"), precision="int8", int8=Int8(images=16))
    a = written.accuracy
    assert a["images"] == 24 and a["unreadable"] == 0
    truth = np.array([bundle.classes.index(c) for c in reader.labels])
    assert a["fp32"] == pytest.approx(np.mean(bundle.predict(reader.features()) == truth))  # the fp32 model's
    assert abs(a["int8"] - a["fp32"]) <= 0.01
    assert written.metadata["precision"] == "int8" and written.metadata["int8"]["calibration"]["images"] == 16
    model = onnx.load(str(tmp_path / "q.onnx"))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in model.graph.node}
    head = [n for n in model.graph.node if n.name.startswith("head/")]
    assert head and not any(n.op_type.startswith(("Quantize", "Dequantize")) for n in head)  # the head stays fp32
    _, labels, _ = run_onnx(tmp_path / "q.onnx", reader.full_paths())  # the file as written, on the same images
    assert float(np.mean(labels == truth)) == pytest.approx(a["int8"])


@pytest.mark.integration
def test_cli_int8_prints_fp32_against_int8(trained, tmp_path):
    import cli

    root, images = trained
    train(str(root / "train.h5"), classifier="ridge", out=str(tmp_path / "m.joblib"))
    r = CliRunner().invoke(
        cli.main,
        [
            "export",
            str(tmp_path / "m.joblib"),
            "-o",
            str(tmp_path / "q.onnx"),
            "--precision",
            "int8",
            "--calibration-images",
            "8",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    assert r.stderr.startswith("note: int8: calibrating the backbone")  # said before the slow part
    a = json.loads(r.stdout)["accuracy"]
    r = CliRunner().invoke(
        cli.main,
        [
            "export",
            str(tmp_path / "m.joblib"),
            "-o",
            str(tmp_path / "q.onnx"),
            "--precision",
            "int8",
            "--calibration-images",
            "8",
        ],
    )
    assert r.stdout.splitlines()[3].endswith(  # the file's familiarity: an approximation in int8, and said so
        "under 0.01: unlike them (int8: the images' vectors are int8's, the kept rows' fp32: near predict's, read it "
        "as a ranking) (none can fall under 0.01 with so few kept: it still ranks them)"
    )
    line = r.stdout.splitlines()[2]
    assert line == (  # the images are the training ones, and int8 calibrated on some: said, not held out
        f"  accuracy on 24 images of {images} (the images the model was fit on; int8 calibrated on 8 of them): "
        f"fp32 {100 * a['fp32']:.2f} %, int8 {100 * a['int8']:.2f} % ({100 * (a['int8'] - a['fp32']):+.2f} points); "
        f"the same class for {100 * a['agreement']:.1f} % of them; not held out: the agreement is the figure to read, "
        "evaluate scores held-out images"
    )
    assert a["fit_on"] is True and a["calibrated_on"] == 8  # the count the file's metadata records as drawn


@pytest.mark.integration
def test_a_model_trained_on_int8_features_exports_its_own_int8_engine(trained, tmp_path):
    root, images = trained
    q = extract(images, str(tmp_path / "q.h5"), precision="int8", int8=Int8(images=12), **FAST)
    train(q.cache, classifier="logreg", out=str(tmp_path / "q.joblib"))
    written = export(str(tmp_path / "q.joblib"), str(tmp_path / "q.onnx"))  # int8 by default: the model's own
    assert written.precision == "int8" and written.metadata["settings"] == CacheReader(q.cache).settings
    result = predict(str(tmp_path / "q.joblib"), [str(images)], top=4, **RUN)
    names, expected = predicted(result, ["cats", "dogs", "owls", "yaks"])
    scores, labels, _ = run_onnx(tmp_path / "q.onnx", files_of(result, images))
    assert [["cats", "dogs", "owls", "yaks"][i] for i in labels] == names  # the same int8 engine as predict's
    np.testing.assert_allclose(scores, expected, atol=1e-4)


def test_a_checkpoint_that_is_unreadable_or_cut_short_is_said_so_not_that_it_lacks_a_backbone(tmp_path):
    """Random bytes and the first half of a checkpoint used to be `does not say its backbone: give -b BACKBONE`."""
    import torch
    from torchvision.models import resnet18

    import cli

    (tmp_path / "rand.pth").write_bytes(np.random.default_rng(0).bytes(5000))
    torch.save(resnet18(num_classes=2).state_dict(), tmp_path / "whole.pth")
    data = (tmp_path / "whole.pth").read_bytes()
    (tmp_path / "half.pth").write_bytes(data[: len(data) // 2])
    says = {
        "rand.pth": "not a PyTorch checkpoint featurebank can read safely",
        "half.pth": "damaged, or not a PyTorch checkpoint",
    }
    for name, said in says.items():
        path = str(tmp_path / name)
        for extra in ([], ["-b", "resnet18"]):
            r = CliRunner().invoke(cli.main, ["export", path, "-o", str(tmp_path / "x.onnx"), *extra])
            assert r.exit_code == 1 and r.output.count("\n") == 1, r.output
            assert r.output.startswith(f"Error: cannot read weights file {path}: {said}"), r.output
            assert "backbone" not in r.output and "weights_only" not in r.output
        with pytest.raises(FeaturebankError, match=f"^cannot read weights file {path}: {said}"):
            export_checkpoint(path, str(tmp_path / "x.onnx"))
    assert not (tmp_path / "x.onnx").exists()


def _special_outputs(tmp_path) -> list[pathlib.Path]:
    """A FIFO, and a copy of /dev/full where this user may make one (root: the rename would replace it)."""
    import stat

    os.mkfifo(tmp_path / "fifo.onnx")
    made = [tmp_path / "fifo.onnx"]
    try:
        os.mknod(tmp_path / "full.onnx", stat.S_IFCHR | 0o644, os.makedev(1, 7))
        made.append(tmp_path / "full.onnx")
    except OSError:  # not root: no device is made, and none could be replaced
        pass
    return made


def test_export_to_a_fifo_or_a_device_is_refused_before_any_work(tmp_path, monkeypatch):
    """The ONNX file is written under a temporary name and renamed over -o: over a FIFO or a device that would
    replace it with a regular file (as root, /dev/full itself)."""
    import stat

    import torch
    from torchvision.models import resnet18

    import cli
    from workflows.deploy import run
    from workflows.deploy.entry import export as export_any

    def no_work(*args, **kwargs):
        raise AssertionError("work began before -o was checked")

    monkeypatch.setattr(run, "open_engine", no_work)
    checkpoint = str(tmp_path / "ck.pth")
    torch.save(resnet18(num_classes=2).state_dict(), checkpoint)
    outs = _special_outputs(tmp_path)
    for out in outs:
        said = f"the ONNX file {out} is not a regular file (a device or a FIFO): give a file path"
        absent = str(tmp_path / "absent.fbmodel")  # refused before the model is read
        calls = [
            (export_checkpoint, (checkpoint, str(out)), {"backbone": "resnet18"}),
            (export_any, (checkpoint,), {"out": str(out), "backbone": "resnet18"}),
            (export, (absent, str(out)), {}),
            (export_any, (absent,), {"out": str(out)}),
        ]
        for call, args, kwargs in calls:
            with pytest.raises(FeaturebankError, match=f"^{re.escape(said)}$"):
                call(*args, **kwargs)
        r = CliRunner().invoke(cli.main, ["export", checkpoint, "-b", "resnet18", "-o", str(out)])
        assert r.exit_code == 1 and r.output == f"Error: {said}\n", r.output
        assert not stat.S_ISREG(os.stat(out).st_mode)
    assert sorted(os.listdir(tmp_path)) == sorted(["ck.pth", *(p.name for p in outs)])  # no temporary file left


def test_a_checkpoints_int8_accuracy_says_its_images_were_not_checked_against_training():
    """A checkpoint does not say what it was trained on: the line says so, and that int8 calibrated on them."""
    from workflows.deploy.entry import export_text

    meta = {
        "preprocessing": {"crop": 64, "resize": 72, "interpolation": "bilinear"},
        "output": {"head": "softmax"},
        "classes": ["a", "b"],
    }
    a = {"images": 10, "source": "classes:/x", "fp32": 0.9, "int8": 0.8, "agreement": 0.9, "fit_on": None}
    d = {"precision": "int8", "bytes": 1e6, "output": "probability", "metadata": meta, "path": "q.onnx"}
    line = export_text({**d, "accuracy": {**a, "calibrated_on": 8}})[2]
    assert line.startswith(
        "  accuracy on 10 images of /x (whether the network was trained or its epoch chosen on them is not checked; "
        "int8 calibrated on 8 of them): fp32 90.00 %, int8 80.00 % (-10.00 points)"
    ) and line.endswith("not held out: the agreement is the figure to read, finetune --test scores held-out images")


def test_a_model_file_whose_recorded_layer_gives_other_widths_is_refused_in_one_line(trained, tmp_path):
    """A model file edited to name another layer (or backbone): its classifier takes 512 numbers, the backbone now
    gives 256; one line before the head is built, not ONNX Runtime's shape error."""
    root, _ = trained
    bundle = train(str(root / "train.h5"), classifier="logreg", out=str(tmp_path / "model.joblib"))
    bundle.settings = {**bundle.settings, "layers": ["layer3"]}
    with pytest.raises(FeaturebankError) as err:
        export(bundle, str(tmp_path / "model.onnx"))
    assert str(err.value) == (
        "the resnet18 backbone's layer3 has 256 dimensions; the model's classifier takes 512: the model file's "
        "backbone or layer is not the one it was trained on"
    )
    assert not (tmp_path / "model.onnx").exists()


def test_int8_on_images_of_other_classes_or_none_is_one_line_before_calibrating(trained, tmp_path):
    """--images DATA whose labels the model does not know, or without labels: said why, before the calibration's
    note (a refused export is one line), not 'give --images DATA' to one who gave it."""
    import warnings

    root, _ = trained
    bundle = train(str(root / "train.h5"), classifier="logreg", out=str(tmp_path / "model.joblib"))
    write_tree(tmp_path / "others", classes=("ants", "bees"), per_class=2)
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in (tmp_path / "others" / "ants").iterdir():
        (flat / p.name).write_bytes(p.read_bytes())
    for images, said in (
        (tmp_path / "others", "are labelled ants, bees, none a class of the model (cats, dogs, owls, yaks)"),
        (flat, "no labelled images of "),
    ):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(FeaturebankError) as err:
                export(bundle, str(tmp_path / "q.onnx"), precision="int8", images=str(images))
        assert said in str(err.value) and "\n" not in str(err.value)
        assert not [w for w in caught if "calibrating" in str(w.message)]  # refused before the note
    assert not (tmp_path / "q.onnx").exists()


@pytest.mark.parametrize("opset", [17, 18])
def test_the_exported_familiarity_of_extreme_rows_is_featurebanks(opset):
    """Rows of 1e20 or 1e-24 (float32 squares overflow or vanish), zeros, NaN, inf and few kept rows (k under 5):
    the graph gives featurebank's familiarity, not another (a NaN row had been the most familiar of all)."""
    from classifiers.familiarity import Familiarity, reference_rows

    rng = np.random.default_rng(2)
    for n in (3, 6, 40):
        X = rng.normal(size=(n, 8)).astype(np.float32)
        fam = Familiarity(reference_rows(X))
        head = Head(["a", "b"], make_classifier("logreg").fit(X, np.arange(n) % 2), "logreg", X, familiarity=fam)
        model, _ = head_model(head, 8, opset, 8)
        new = np.concatenate([X[:2] * 1e20, X[:2] * 1e-24, np.zeros((1, 8)), rng.normal(size=(3, 8))]).astype(
            np.float32
        )
        odd = np.full((2, 8), 1.0, np.float32)
        odd[0, 3], odd[1, 5] = np.nan, np.inf
        rows = np.concatenate([new, odd])
        got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            ["familiarity"], {"features": rows}
        )[0]
        np.testing.assert_allclose(got, fam.p_values(rows), atol=1e-6, err_msg=f"{n} kept rows")
        assert got[-2] == got[-1] == pytest.approx(fam.floor)  # NaN and inf: the least familiarity there is
