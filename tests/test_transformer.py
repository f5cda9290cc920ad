"""Embedder: a scikit-learn transformer whose rows equal the cache's, usable in Pipeline and GridSearchCV."""

import pickle

import numpy as np
import pytest
from helpers import FAST, photo
from PIL import Image
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline

import embedder
from embedder import Embedder
from embedder.kernel.errors import FeaturebankError

PARAMS = dict(FAST)


def test_init_does_nothing_and_transform_needs_fit():
    e = Embedder(backbone="not-a-model", weights="whatever")  # validated in fit, like scikit-learn
    assert e.get_params()["backbone"] == "not-a-model"
    with pytest.raises(NotFittedError):
        Embedder(**PARAMS).transform(["x.jpg"])
    with pytest.raises(FeaturebankError, match="unknown backbone"):
        e.fit()


def test_transform_equals_the_cache_for_paths_and_pil_images(tree, tmp_path):
    root, paths = tree
    summary = embedder.extract(str(root), str(tmp_path / "c.h5"), layers=["penultimate", "layer3"], **FAST)
    e = Embedder(layers=["penultimate", "layer3"], **PARAMS).fit()
    full = [str(root / p) for p in paths]
    Z = e.transform(full)
    cached = np.hstack([embedder.load(summary.cache, "flatten")[0], embedder.load(summary.cache, "layer3")[0]])
    np.testing.assert_array_equal(Z, cached)
    Zpil = e.transform([Image.open(p) for p in full[:3]])
    np.testing.assert_allclose(Zpil, cached[:3], rtol=1e-6, atol=1e-6)
    assert Z.shape == (9, 768) and e.get_feature_names_out()[[0, 512]].tolist() == ["flatten:0", "layer3:0"]
    again = pickle.loads(pickle.dumps(e))
    np.testing.assert_array_equal(again.transform(full[:2]), Z[:2])


def test_a_pil_image_is_turned_by_its_exif_orientation_as_its_file_is(tmp_path):
    """A photo whose EXIF says 'rotate 90°': its path and the opened image give the same row (the image was taken
    as stored, sideways, before), and the caller's image is left as it was."""
    rng = np.random.default_rng(0)
    im = Image.fromarray(rng.integers(0, 255, (40, 64, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    path = tmp_path / "sideways.jpg"
    im.save(path, exif=exif)
    e = Embedder(**PARAMS).fit()
    opened = Image.open(path)
    from_path, from_image = e.transform([str(path)]), e.transform([opened])
    np.testing.assert_allclose(from_image, from_path, rtol=1e-6, atol=1e-6)
    as_stored = e.transform([Image.fromarray(np.asarray(Image.open(path)))])  # its pixels without the EXIF
    assert np.abs(as_stored - from_path).max() > 1e-3 and opened.size == (64, 40)


def test_bad_image_is_a_clear_error(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"")
    photo(1).save(tmp_path / "ok.jpg")
    e = Embedder(**PARAMS).fit()
    with pytest.raises(FeaturebankError, match=r"1 image\(s\) could not be embedded: .*bad.jpg: empty file"):
        e.transform([str(tmp_path / "ok.jpg"), str(tmp_path / "bad.jpg")])


def test_embedder_in_a_pipeline_and_grid_search(tmp_path):
    paths, y = [], []
    for i in range(12):
        im = Image.new("RGB", (80, 80), (230, 30, 30) if i % 2 else (30, 30, 230))
        im.paste(photo(i, (40, 40)), (20, 20))
        im.save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
        y.append("red" if i % 2 else "blue")
    pipe = make_pipeline(Embedder(**PARAMS), LogisticRegression(max_iter=1000))
    pipe.fit(paths, y)
    assert list(pipe.predict(paths)) == y
    search = GridSearchCV(pipe, {"logisticregression__C": [0.1, 1.0]}, cv=2).fit(paths, y)
    assert search.best_score_ == 1.0
    assert clone(pipe).get_params()["embedder__backbone"] == "resnet18"
