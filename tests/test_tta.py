"""Flip test-time augmentation (``--tta flip``): the mean of the image's and its mirror's vectors, the same in both
engines, in int8, in ``Embedder``, in model files and in their ONNX export; a setting of its own."""

from __future__ import annotations

import json
import os

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from helpers import FAST, photo, rows_close
from PIL import Image, ImageOps

import embedder
from embedder.kernel.errors import FeaturebankError
from embedder.kernel.settings import ExtractionSettings, settings_key

LAYERS = ["flatten", "layer3"]


@pytest.fixture
def pairs(tmp_path):
    """Square 72 px PNGs (resize 72 leaves them as they are, the 64 px crop is centred to the pixel, so the mirror
    of the crop is the crop of the mirror) and their mirrored copies, in two folders with the same names."""
    for folder in ("images/a", "mirrored/a"):
        (tmp_path / folder).mkdir(parents=True)
    for i in range(5):
        image = photo(i, (72, 72))
        image.save(tmp_path / "images" / "a" / f"{i}.png")
        ImageOps.mirror(image).save(tmp_path / "mirrored" / "a" / f"{i}.png")
    return tmp_path / "images", tmp_path / "mirrored"


def features(summary, layer):
    return embedder.load(summary.cache, layer)[0]


# -- the setting ---------------------------------------------------------------------------------------------------
def test_tta_is_recorded_only_when_on_so_older_settings_keep_their_key():
    plain = {
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
    s = ExtractionSettings.from_dict(plain)
    assert s.tta == "none" and s.to_dict() == plain and s.key == settings_key(plain)
    flip = ExtractionSettings.from_dict({**plain, "tta": "flip"})
    assert flip.tta == "flip" and flip.to_dict() == {**plain, "tta": "flip"} and flip.key != s.key
    assert s.differences(flip) == ["tta: None in the cache, 'flip' now"]
    with pytest.raises(FeaturebankError, match="unknown test-time augmentation 'rotate': choose one of none, flip"):
        ExtractionSettings.from_dict({**plain, "tta": "rotate"})


# -- the values ----------------------------------------------------------------------------------------------------
def test_flip_features_are_the_mean_of_the_image_and_its_mirror_in_both_engines(pairs, tmp_path):
    images, mirrored = pairs
    opts = {**FAST, "layers": LAYERS, "cache_dir": str(tmp_path / "cache")}
    plain = embedder.extract(str(images), engine="torch", **opts)
    mirror = embedder.extract(str(mirrored), engine="torch", **opts)
    runs = {
        engine: embedder.extract(str(images), str(tmp_path / f"{engine}.h5"), engine=engine, tta="flip", **opts)
        for engine in ("torch", "onnxruntime")
    }
    assert runs["torch"].engine["name"] == "torch" and runs["onnxruntime"].engine["name"] == "onnxruntime"
    assert runs["torch"].settings == runs["onnxruntime"].settings and runs["torch"].settings["tta"] == "flip"
    for layer in LAYERS:
        expected = (features(plain, layer).astype(np.float64) + features(mirror, layer)) / 2
        assert not np.allclose(features(plain, layer), expected, rtol=1e-3)  # the mirror does change the vector
        rows_close(features(runs["torch"], layer), expected, 1e-5)
        rows_close(features(runs["onnxruntime"], layer), features(runs["torch"], layer))


def test_a_symmetric_image_has_the_same_features_with_and_without_flip(tmp_path):
    (tmp_path / "s" / "a").mkdir(parents=True)
    for i in range(3):
        half = np.asarray(photo(i, (36, 72)))
        Image.fromarray(np.concatenate([half, half[:, ::-1]], axis=1)).save(tmp_path / "s" / "a" / f"{i}.png")
    opts = {**FAST, "layers": LAYERS, "cache_dir": str(tmp_path / "cache"), "engine": "onnxruntime"}
    plain = embedder.extract(str(tmp_path / "s"), **opts)
    flip = embedder.extract(str(tmp_path / "s"), tta="flip", **opts)
    assert plain.cache != flip.cache
    for layer in LAYERS:
        rows_close(features(flip, layer), features(plain, layer), 1e-5)


@pytest.mark.integration  # int8 calibrations; flip in fp32 is in the fast tier
def test_flip_features_do_not_change_when_the_image_is_mirrored_int8_too(pairs, tmp_path):
    """tta(x) = tta(mirror(x)) for fp32 and for int8, whose graph (calibration included) carries the flip."""
    images, mirrored = pairs
    opts = {**FAST, "layers": LAYERS, "tta": "flip", "engine_dir": str(tmp_path / "engines")}
    for precision in ("fp32", "int8"):
        a = embedder.extract(str(images), str(tmp_path / f"a-{precision}.h5"), precision=precision, **opts)
        b = embedder.extract(str(mirrored), str(tmp_path / f"b-{precision}.h5"), precision=precision, **opts)
        assert a.settings["tta"] == "flip" and a.settings["precision"] == precision
        for layer in LAYERS:
            rows_close(features(b, layer), features(a, layer), 1e-5)
    q = embedder.load(str(tmp_path / "a-int8.h5"), "flatten")[0]
    f = embedder.load(str(tmp_path / "a-fp32.h5"), "flatten")[0]
    cosine = (q * f).sum(1) / np.linalg.norm(q, axis=1) / np.linalg.norm(f, axis=1)
    assert cosine.min() > 0.9 and not np.allclose(q, f, rtol=1e-4)  # int8: close to fp32, not equal


# -- the cache, Embedder, the command line -----------------------------------------------------------------------
def test_a_cache_without_tta_refuses_tta_rows_and_the_default_name_differs(pairs, tmp_path):
    images, _ = pairs
    path = str(tmp_path / "plain.h5")
    embedder.extract(str(images), path, engine="torch", **FAST)
    with pytest.raises(FeaturebankError, match=r"made with other settings \(tta: None in the cache, 'flip' now\)"):
        embedder.extract(str(images), path, tta="flip", engine="torch", **FAST)
    assert len(embedder.CacheReader(path)) == 5  # nothing lost
    cache_dir = str(tmp_path / "cache")
    names = {
        embedder.extract(str(images), cache_dir=cache_dir, tta=t, engine="torch", **FAST).cache
        for t in ("none", "flip")
    }
    assert len(names) == 2


def test_embedder_with_flip_equals_the_cache(pairs, tmp_path):
    from embedder import Embedder

    images, _ = pairs
    summary = embedder.extract(str(images), str(tmp_path / "c.h5"), tta="flip", layers=LAYERS, **FAST)
    files = sorted(str(p) for p in (images / "a").iterdir())
    e = Embedder(layers=LAYERS, tta="flip", **FAST).fit()
    assert e.settings_.to_dict() == summary.settings
    np.testing.assert_array_equal(
        e.transform(files), np.hstack([features(summary, "flatten"), features(summary, "layer3")])
    )


def test_cli_extract_tta_and_info_shows_it(pairs, tmp_path):
    import cli

    images, _ = pairs
    base = [
        "extract",
        str(images),
        "-b",
        "resnet18",
        "-w",
        "none",
        "--resize",
        "72",
        "--crop",
        "64",
        "--engine",
        "torch",
    ]
    runner = CliRunner()
    r = runner.invoke(cli.main, [*base, "--cache", str(tmp_path / "f.h5"), "--tta", "flip", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["settings"]["tta"] == "flip"
    assert "; tta flip" in runner.invoke(cli.main, ["info", str(tmp_path / "f.h5")]).output
    r = runner.invoke(cli.main, [*base, "--cache", str(tmp_path / "p.h5"), "-q"])
    assert r.exit_code == 0 and "; tta" not in runner.invoke(cli.main, ["info", str(tmp_path / "p.h5")]).output
    r = runner.invoke(cli.main, [*base, "--tta", "rotate"])
    assert r.exit_code == 2 and "'rotate' is not one of 'none', 'flip'" in r.output


# -- model files and their ONNX export ---------------------------------------------------------------------------
def test_a_model_on_flip_features_predicts_and_exports_with_flip(pairs, tmp_path, monkeypatch):
    from classifiers.bundle import predict, train
    from workflows.deploy.entry import export_model as export

    monkeypatch.setenv("FEATUREBANK_CACHE_DIR", str(tmp_path / "cache"))
    images, mirrored = pairs
    for i in range(5):  # a second class: the images upside down
        os.makedirs(images / "b", exist_ok=True)
        ImageOps.flip(Image.open(images / "a" / f"{i}.png")).save(images / "b" / f"{i}.png")
    embedder.extract(str(images), str(tmp_path / "train.h5"), tta="flip", **FAST)
    bundle = train(str(tmp_path / "train.h5"), classifier="logreg", out=str(tmp_path / "m.joblib"))
    assert bundle.settings["tta"] == "flip"
    result = predict(str(tmp_path / "m.joblib"), [str(mirrored)], top=2, batch_size=4)
    assert embedder.CacheReader(result["cache"]).settings["tta"] == "flip"
    by_name = {r["path"]: {t["class"]: t["score"] for t in r["top"]} for r in result["rows"]}
    written = export(str(tmp_path / "m.joblib"), str(tmp_path / "m.onnx"))
    session = ort.InferenceSession(written.path, providers=["CPUExecutionProvider"])
    assert json.loads(session.get_modelmeta().custom_metadata_map["settings"])["tta"] == "flip"
    names = sorted(by_name)
    x = np.stack([np.asarray(Image.open(mirrored / n).convert("RGB"))[4:68, 4:68] for n in names])
    scores = session.run(["scores"], {"images": x})[0]
    expected = np.array([[by_name[n][c] for c in bundle.classes] for n in names])
    np.testing.assert_allclose(scores, expected, atol=1e-4)
    # the mirrored images get the scores of the originals (flip features do not see the mirror)
    originals = bundle.scores(embedder.load(str(tmp_path / "train.h5"))[0][:5])[0]
    np.testing.assert_allclose(expected, originals, atol=1e-4)
