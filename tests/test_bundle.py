"""Model files: train on a cache, save, load; predict and evaluate new images with exactly the model's settings."""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys
import zipfile

import joblib
import numpy as np
import pytest
import torch
import torchvision
from helpers import FAST, write_bad_files, write_tree
from PIL import Image
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from classifiers.bundle import evaluate, load_bundle, predict, predict_imagenet, train
from embedder import CacheReader, extract
from embedder.kernel.errors import FeaturebankError

RUN = {k: FAST[k] for k in ("batch_size", "workers")}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, extracted):
    """A 3-class folder embedded with the FAST settings (the session's), and a logistic regression trained on it."""
    root = tmp_path_factory.mktemp("bundle")
    images = extracted.images
    shutil.copyfile(extracted.cache, root / "train.h5")
    bundle = train(str(root / "train.h5"), classifier="logreg:C=1.0", out=str(root / "model.joblib"))
    return root, images, bundle


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATUREBANK_CACHE_DIR", str(tmp_path / "cache"))


def test_saved_model_predicts_exactly_what_the_trained_one_predicts(trained):
    root, _, bundle = trained
    loaded = load_bundle(str(root / "model.joblib"))
    X = CacheReader(str(root / "train.h5")).features()
    np.testing.assert_array_equal(loaded.pipeline.predict_proba(X), bundle.pipeline.predict_proba(X))
    assert loaded.classes == ["cats", "dogs", "owls"] and loaded.layer == "flatten"
    settings = CacheReader(str(root / "train.h5")).settings
    assert loaded.settings == {**settings, "layers": ["flatten"]}
    assert loaded.settings["weights"] == "none:seed=0" and loaded.settings["preprocessing"]["crop"] == 64
    assert loaded.versions["scikit-learn"] and loaded.trained_on["rows"] == 12
    assert loaded.trained_on["class_counts"] == {"cats": 4, "dogs": 4, "owls": 4}
    assert loaded.trained_on["params"]["C"] == 1.0
    # fitted on every row: it reproduces its training labels (12 points in 512 dimensions are separable)
    assert [loaded.classes[i] for i in loaded.predict(X)] == list(CacheReader(str(root / "train.h5")).labels)


def test_predict_embeds_with_the_models_settings_and_reports_bad_files(trained, tmp_path):
    root, images, bundle = trained
    folder = tmp_path / "new"
    shutil.copytree(images / "dogs", folder)
    bad = write_bad_files(folder)
    result = predict(str(root / "model.joblib"), [str(folder)], top=2, **RUN)
    rows = {r["path"]: r for r in result["rows"]}
    assert set(rows) == {p.name for p in folder.iterdir()}
    for name, reason in bad.items():
        assert rows[name]["error"].startswith(reason) and "predicted" not in rows[name]
    train = CacheReader(str(root / "train.h5"))
    index = {p: i for i, p in enumerate(train.paths)}
    X_train = train.features()
    for name in ("img00.jpg", "img01.png", "img02.jpg", "img03.png"):
        expected = bundle.scores(X_train[[index[f"dogs/{name}"]]])[0][0]  # the calibrated probabilities
        row = rows[name]
        assert row["predicted"] == "dogs" and row["top"][0]["class"] == "dogs" and len(row["top"]) == 2
        assert row["score"] == pytest.approx(expected.max(), abs=1e-4)  # same vectors as training, to batch noise
    assert result["embedded"] == 4
    again = predict(str(root / "model.joblib"), [str(folder)], top=2, out=str(tmp_path / "p.json"), **RUN)
    assert again["embedded"] == 0 and again["cache"] == result["cache"]  # the images' cache is reused
    assert [r.get("predicted") for r in again["rows"]] == [r.get("predicted") for r in result["rows"]]
    written = json.loads((tmp_path / "p.json").read_text())  # out= writes the file, as -o does (json by suffix)
    assert [r.get("predicted") for r in written["rows"]] == [r.get("predicted") for r in result["rows"]]


def test_a_cache_made_with_other_settings_is_refused(trained, tmp_path):
    root, images, _ = trained
    other = str(tmp_path / "other.h5")
    extract(images, other, **{**FAST, "crop": 56})
    with pytest.raises(
        FeaturebankError, match="not made with the model's embedding settings .preprocessing.*give the images instead"
    ):
        evaluate(str(root / "model.joblib"), other)
    with pytest.raises(
        FeaturebankError,
        match="not made with the model's embedding settings .preprocessing.*give another --cache, or none",
    ):
        predict(str(root / "model.joblib"), [str(images)], cache=other, **RUN)


def test_a_matching_cache_with_more_layers_is_reused(trained, tmp_path):
    root, images, bundle = trained
    both = str(tmp_path / "both.h5")
    extract(images, both, layers=["layer3", "penultimate"], **FAST)
    result = predict(str(root / "model.joblib"), [str(images)], cache=both, **RUN)
    assert result["embedded"] == 0 and result["cache"] == both
    assert [r["predicted"] for r in result["rows"]] == [p.split("/")[0] for p in CacheReader(both).paths]


def test_evaluate_on_a_cache_and_on_images_gives_sklearn_metrics(trained, tmp_path):
    root, images, bundle = trained
    held_out = tmp_path / "held"
    write_tree(held_out, per_class=3, start=50)
    on_images = evaluate(str(root / "model.joblib"), str(held_out), **RUN)
    reader = CacheReader(on_images["cache"])
    y = np.array([bundle.classes.index(label) for label in reader.labels])
    pred = bundle.predict(reader.features("flatten"))
    assert on_images["rows"] == 9
    assert on_images["metrics"]["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert on_images["metrics"]["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert np.array(on_images["confusion"]).sum() == 9
    on_cache = evaluate(str(root / "model.joblib"), on_images["cache"])
    assert on_cache["metrics"] == on_images["metrics"]
    (held_out / "zebras").mkdir()
    write_tree(held_out, classes=("zebras",), per_class=1, start=90)
    fresh = tmp_path / "fresh.h5"
    with pytest.raises(FeaturebankError, match="classes the model was not trained on: zebras"):
        evaluate(str(root / "model.joblib"), str(held_out), cache=str(fresh), **RUN)
    assert not fresh.exists()  # refused before a single image was embedded


def test_a_moved_weights_file_is_found_by_its_hash(tmp_path):
    images = tmp_path / "images"
    write_tree(images, classes=("a", "b"), per_class=2)
    torch.manual_seed(1)
    weights = tmp_path / "w1.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    settings = {**FAST, "weights": str(weights)}
    extract(images, str(tmp_path / "c.h5"), **settings)
    train(str(tmp_path / "c.h5"), classifier="ridge", out=str(tmp_path / "m.joblib"))
    moved = tmp_path / "moved.pth"
    weights.rename(moved)
    with pytest.raises(FeaturebankError, match="not there: pass --weights PATH"):
        predict(str(tmp_path / "m.joblib"), [str(images)], **RUN)
    with pytest.raises(FeaturebankError, match=r"^--weights .*nope\.pth: no such file \(the model was trained on "):
        predict(str(tmp_path / "m.joblib"), [str(images)], weights=str(tmp_path / "nope.pth"), **RUN)
    result = predict(str(tmp_path / "m.joblib"), [str(images)], weights=str(moved), **RUN)
    assert result["score"] == "probability" and [r["predicted"] for r in result["rows"]] == ["a", "a", "b", "b"]
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "other.pth")
    with pytest.raises(FeaturebankError, match="is not the weights file the model was trained with"):
        predict(str(tmp_path / "m.joblib"), [str(images)], weights=str(tmp_path / "other.pth"), **RUN)


def test_unreadable_and_incompatible_model_files(tmp_path, monkeypatch):
    (tmp_path / "notes.joblib").write_text("not a model")
    with pytest.raises(FeaturebankError, match="is not a featurebank model file"):
        load_bundle(str(tmp_path / "notes.joblib"))
    with pytest.raises(FeaturebankError, match="model file not found"):
        load_bundle(str(tmp_path / "absent.joblib"))
    with zipfile.ZipFile(tmp_path / "future.fbmodel", "w") as archive:  # a model file of a later featurebank
        archive.writestr("featurebank-model.json", json.dumps({"format": "featurebank-model", "version": 99}))
        archive.writestr("pipeline.skops", b"")
    with pytest.raises(FeaturebankError, match="format version 99"):
        load_bundle(str(tmp_path / "future.fbmodel"))
    # an old (pickled) model, trusted, whose pickled classes no longer exist (another version of the code)
    (tmp_path / "gone_module.py").write_text("class Thing:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import gone_module

    joblib.dump({"format": "featurebank-model", "version": 1, "pipeline": gone_module.Thing()}, tmp_path / "old.joblib")
    (tmp_path / "gone_module.py").unlink()
    monkeypatch.delitem(sys.modules, "gone_module")
    with pytest.raises(FeaturebankError, match="is a pickle, not a featurebank model file: it was not loaded"):
        load_bundle(str(tmp_path / "old.joblib"))
    with pytest.raises(FeaturebankError, match="incompatible version .*train it again"):
        load_bundle(str(tmp_path / "old.joblib"), trust_pickle=True)


def test_train_errors(tmp_path):
    from helpers import synthetic_cache

    synthetic_cache(tmp_path / "one.h5", counts=(5,))
    with pytest.raises(FeaturebankError, match="only one class"):
        train(str(tmp_path / "one.h5"), classifier="logreg")
    synthetic_cache(tmp_path / "two.h5", counts=(5, 5))
    with pytest.raises(FeaturebankError, match="layer 'nope' is not in"):
        train(str(tmp_path / "two.h5"), classifier="logreg", layer="nope")
    with pytest.raises(FeaturebankError, match="has no groups"):
        train(str(tmp_path / "two.h5"), classifier="logreg", groups=True)
    bundle = train(str(tmp_path / "two.h5"), classifier="knn", layer="layer3", search=True)
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    from classifiers.zoo import make_classifier, search_grid

    reader = CacheReader(str(tmp_path / "two.h5"))
    y = (reader.labels == "class1").astype(int)
    theirs = GridSearchCV(
        make_classifier("knn", seed=0),
        search_grid("knn", 6),
        scoring="balanced_accuracy",
        cv=StratifiedKFold(3, shuffle=True, random_state=0),
    ).fit(reader.features("layer3"), y)
    assert bundle.layer == "layer3" and bundle.trained_on["search"]["splitter"] == "StratifiedKFold"
    assert bundle.trained_on["search"]["best_params"] == theirs.best_params_
    assert bundle.pipeline.named_steps["clf"].n_neighbors == theirs.best_params_["clf__n_neighbors"]
    # the search's rows are the calibration's inner folds' rows: both figures say they are optimistic
    assert bundle.trained_on["search"]["measured_on"] == "the inner folds that chose best_params (optimistic)"
    crossed = bundle.trained_on["calibration"]["out_of_fold"]["cross_fitted"]
    assert crossed.endswith("--search chose the hyperparameters on all of these rows, so the figures are optimistic")


def test_imagenet_head_needs_real_weights(tmp_path):
    write_tree(tmp_path / "i", classes=("a",), per_class=1)
    with pytest.raises(FeaturebankError, match="random weights have no classes"):
        predict_imagenet([str(tmp_path / "i")], backbone="resnet18", weights="none", **RUN)


def near_copies(path, seed=1):
    """24 groups (patients, cameras) of 3 near-copies each, a weak class signal between groups; the rows of the
    last two groups carry no group (each is a group of its own). Returns (X, y, groups) in row order."""
    from helpers import synthetic_cache

    rng = np.random.default_rng(seed)
    group_class = np.repeat([0, 1], 12)
    offsets = rng.normal(0, 1, (24, 8))
    offsets[:, 0] += (2 * group_class - 1) * 0.8
    X = np.repeat(offsets, 3, axis=0) + rng.normal(0, 0.05, (72, 8))
    groups = [f"g{g}" if g not in (10, 23) else "" for g in range(24) for _ in range(3)]
    synthetic_cache(path, counts=(36, 36), dim=8, features=X, groups=groups)
    return X.astype(np.float32), np.repeat(group_class, 3), groups


def test_train_search_keeps_each_group_on_one_side_of_the_inner_folds(tmp_path):
    """Near-copies of one group on both sides of an inner fold make 1-NN look perfect: the group-aware search
    scores what GridSearchCV with StratifiedGroupKFold on the cache's groups scores, well below the leak."""
    from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold

    from classifiers.zoo import make_classifier

    X, y, groups = near_copies(tmp_path / "c.h5")
    grouped = train(str(tmp_path / "c.h5"), classifier="knn", search=True, seed=0)
    leaky = train(str(tmp_path / "c.h5"), classifier="knn", search=True, seed=0, groups=False)
    own = CacheReader(str(tmp_path / "c.h5")).groups  # an ungrouped row: a group of its own (test_crossval)
    assert sum(g.startswith("\0") for g in own) == 6 and len(set(own.tolist())) == 22 + 6
    theirs = GridSearchCV(
        make_classifier("knn", seed=0),
        {"clf__n_neighbors": [1, 3, 5, 10, 20]},
        cv=StratifiedGroupKFold(3, shuffle=True, random_state=0),
        scoring="balanced_accuracy",
    ).fit(X, y, groups=own)
    found = grouped.trained_on["search"]
    assert found["splitter"] == "StratifiedGroupKFold" and found["folds"] == 3
    assert found["best_params"] == theirs.best_params_ == {"clf__n_neighbors": 5}
    assert found["best_score"] == pytest.approx(theirs.best_score_, abs=1e-4) and found["best_score"] < 0.9
    assert leaky.trained_on["search"]["splitter"] == "StratifiedKFold"
    assert leaky.trained_on["search"]["best_score"] == 1.0 and leaky.trained_on["search"]["best_params"] == {
        "clf__n_neighbors": 1
    }
    assert grouped.pipeline.named_steps["clf"].n_neighbors == 5 and leaky.pipeline.named_steps["clf"].n_neighbors == 1


def test_evaluate_on_images_none_of_which_can_be_read_says_so(trained, tmp_path):
    """A manifest whose paths all miss (written for another folder) had been "has no labels", of the cache of no
    row it made."""
    root, _, _ = trained
    manifest = tmp_path / "held.csv"
    manifest.write_text("path,label\ncats/a.jpg,cats\ndogs/b.jpg,dogs\n")
    with pytest.raises(FeaturebankError, match=r"none of the 2 images could be read, nothing to score: cats/a.jpg: "):
        evaluate(str(root / "model.joblib"), str(manifest), **RUN)


def test_predict_says_its_scores_are_calibrated_and_marks_the_images_the_model_was_fit_on(trained, tmp_path):
    from click.testing import CliRunner

    import cli

    root, images, _ = trained
    seen = images / "dogs" / "img00.jpg"  # a training image: its score is in-sample
    new = tmp_path / "new.png"
    Image.new("RGB", (70, 70), (200, 30, 90)).save(new)  # an image the model never saw
    args = ["predict", str(root / "model.joblib"), str(seen), str(new), "--json", "--workers", "0"]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 0, result.output
    rows = {r["path"]: r for r in json.loads(result.stdout)["rows"]}
    assert rows[str(seen)].get("fit_on") is True and "fit_on" not in rows[str(new)]
    said = result.stderr.splitlines()
    assert said[0] == "scores: logreg:C=1.0's calibrated probabilities"
    as_csv = CliRunner().invoke(cli.main, [a for a in args if a != "--json"])  # the CSV marks them too
    table = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert {r["path"]: r["fit_on"] for r in table} == {str(seen): "1", str(new): "0"}
    alone = CliRunner().invoke(cli.main, ["predict", str(root / "model.joblib"), str(new), "--workers", "0"])
    assert "fit_on" not in alone.stdout.splitlines()[0]  # the column only where some image was fit on
    assert said[1].startswith(f"note: 1 of the 2 image(s) are images the model was fit on (e.g. {seen}): their")
    raw = train(str(root / "train.h5"), classifier="ridge", calibrate=False, out=str(tmp_path / "raw.fbmodel"))
    assert raw.calibration is None or raw.calibration.get("method", "none") == "none"
    result = CliRunner().invoke(cli.main, [*args[:1], str(tmp_path / "raw.fbmodel"), *args[2:]])
    assert result.exit_code == 0 and result.stderr.splitlines()[0] == (
        "scores: ridge's uncalibrated probabilities (a model trained with --no-calibrate, or by a featurebank version "
        "before calibration)"
    )
    empty = CliRunner().invoke(cli.main, ["predict", str(root / "model.joblib"), ""])
    assert empty.exit_code == 2 and "an empty path: give a file or folder name" in empty.output
