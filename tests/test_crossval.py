"""Cross-validation: scores equal scikit-learn's on the same folds, preprocessing is fit per fold, same seed
same report, and a real folder's suspicious images and outliers are found."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import (GridSearchCV, RepeatedStratifiedKFold, StratifiedKFold,
                                     cross_validate as sk_cross_validate)

from classifiers.crossval import cross_validate, make_splits
from classifiers.report import report_dict, write_report
from classifiers.zoo import ClassifierSpec, make_classifier, register_classifier, unregister_classifier
from conftest import synthetic_cache
from embedder.errors import FeaturebankError

SCORING = {"accuracy": "accuracy", "balanced_accuracy": "balanced_accuracy", "f1_macro": "f1_macro",
           "log_loss": "neg_log_loss"}


@pytest.mark.parametrize("spec", ["logreg", "knn:n_neighbors=3", "rbf-svm:pca=8", "ridge", "lda", "random-forest"])
def test_scores_equal_sklearn_on_the_same_folds(tmp_path, spec):
    X, y = synthetic_cache(tmp_path / "c.h5")
    report = cross_validate(tmp_path / "c.h5", [spec], ["flatten"], folds=4, repeats=2, seed=3)
    ours = report.results[0]
    proba = ours.proba is not None
    theirs = sk_cross_validate(make_classifier(spec, seed=3), X, y,
                               cv=RepeatedStratifiedKFold(n_splits=4, n_repeats=2, random_state=3),
                               scoring={k: v for k, v in SCORING.items() if proba or k != "log_loss"})
    assert len(ours.folds) == 8
    for metric in ("accuracy", "balanced_accuracy", "f1_macro"):
        np.testing.assert_allclose([f.scores[metric] for f in ours.folds], theirs[f"test_{metric}"], atol=1e-12)
    if proba:
        np.testing.assert_allclose([f.scores["log_loss"] for f in ours.folds], -theirs["test_log_loss"], rtol=1e-6)
    else:
        assert all(f.scores["log_loss"] is None for f in ours.folds)
    assert 0.4 < ours.metric("accuracy")["mean"] < 1.0  # a task that separates good from bad classifiers
    # every row is predicted once per repeat, and the out-of-fold predictions give the fold accuracies
    assert (ours.predictions >= 0).all()
    for f, split in zip(ours.folds, make_splits(y, None, 4, 2, 3)):
        assert f.scores["accuracy"] == pytest.approx(np.mean(ours.predictions[split.repeat, split.test] == y[split.test]))


class Spy(ClassifierMixin, BaseEstimator):
    """Records what the classifier at the end of the pipeline receives."""

    seen: list = []

    def fit(self, X, y):
        Spy.seen.append(("fit", X.copy()))
        self.classes_ = np.unique(y)
        return self

    def predict(self, X):
        Spy.seen.append(("predict", X.copy()))
        return np.full(len(X), self.classes_[0])


@pytest.fixture
def spy():
    Spy.seen = []
    register_classifier(ClassifierSpec("spy", "records its input", lambda seed: Spy(), steps={"scale": True}))
    yield Spy
    unregister_classifier("spy")


def test_preprocessing_is_fit_inside_each_fold(tmp_path, spy):
    X, y = synthetic_cache(tmp_path / "c.h5")
    X = X.astype(np.float64)
    cross_validate(tmp_path / "c.h5", ["spy"], ["flatten"], folds=3, seed=1)
    splits = make_splits(y, None, 3, 1, 1)
    fits = [x for kind, x in spy.seen if kind == "fit"]
    predicts = [x for kind, x in spy.seen if kind == "predict"]
    assert len(fits) == len(predicts) == 3
    for split, fitted, predicted in zip(splits, fits, predicts):
        train, test = X[split.train], X[split.test]
        mean, std = train.mean(0), train.std(0)
        # scaled with the training rows' statistics only ...
        np.testing.assert_allclose(fitted, (train - mean) / std, atol=1e-5)
        np.testing.assert_allclose(predicted, (test - mean) / std, atol=1e-5)
        # ... which differ from statistics over all rows (so the check above can fail)
        assert np.abs((train - X.mean(0)) / X.std(0) - fitted).max() > 1e-3


def test_same_seed_same_report_and_another_seed_other_folds(tmp_path):
    synthetic_cache(tmp_path / "c.h5")

    def stable(seed):
        d = report_dict(cross_validate(tmp_path / "c.h5", ["logreg", "knn"], folds=3, seed=seed))
        for r in d["results"]:
            r.pop("fit_seconds"), r.pop("predict_seconds")
        for r in d["leaderboard"]:
            r.pop("fit_seconds"), r.pop("predict_seconds")
        d.pop("seconds")
        return json.dumps(d, sort_keys=True)

    assert stable(0) == stable(0)
    assert stable(0) != stable(1)


def test_leaderboard_ranks_layers_and_classifiers_on_the_same_folds(tmp_path):
    synthetic_cache(tmp_path / "c.h5")
    report = cross_validate(tmp_path / "c.h5", ["logreg", "knn"], folds=3)
    assert {(r.classifier, r.layer) for r in report.results} == {(c, l) for c in ("logreg", "knn")
                                                                 for l in ("flatten", "layer3")}
    board = [r.metric("balanced_accuracy")["mean"] for r in report.leaderboard()]
    assert board == sorted(board, reverse=True)
    assert report.best.layer == "flatten"  # layer3 keeps half of the dimensions
    cm = report.confusion(report.best)
    assert cm.sum() == len(report.data.y) and cm.sum(axis=1).tolist() == [12, 10, 8]
    per_class = report.per_class(report.best)
    assert per_class["class0"]["recall"] == pytest.approx(cm[0, 0] / 12)


def test_groups_never_straddle_a_fold(tmp_path):
    groups = [f"g{i // 2}" for i in range(30)]  # pairs of rows share a group
    _, y = synthetic_cache(tmp_path / "c.h5", groups=groups)
    report = cross_validate(tmp_path / "c.h5", ["logreg"], ["flatten"], folds=3, repeats=2)
    assert report.grouped
    g = np.array(groups)
    for split in make_splits(y, g, 3, 2, 0):
        assert not set(g[split.train]) & set(g[split.test])
    no_groups = cross_validate(tmp_path / "c.h5", ["logreg"], ["flatten"], folds=3, groups=False)
    assert not no_groups.grouped


def test_nested_search_equals_gridsearch_inside_each_fold(tmp_path):
    X, y = synthetic_cache(tmp_path / "c.h5")
    report = cross_validate(tmp_path / "c.h5", ["knn"], ["flatten"], folds=3, search=True, seed=2)
    # 20 training rows per outer fold, ~13 per inner fold: k above that cannot be fit and leaves the grid
    grid = GridSearchCV(make_classifier("knn", seed=2), {"clf__n_neighbors": [1, 3, 5, 10]},
                        cv=StratifiedKFold(3, shuffle=True, random_state=2), scoring="balanced_accuracy")
    theirs = sk_cross_validate(grid, X, y, cv=RepeatedStratifiedKFold(n_splits=3, n_repeats=1, random_state=2),
                               scoring="accuracy", return_estimator=True)
    result = report.results[0]
    assert [f.best_params for f in result.folds] == [e.best_params_ for e in theirs["estimator"]]
    np.testing.assert_allclose([f.scores["accuracy"] for f in result.folds], theirs["test_score"])
    assert report_dict(report)["results"][0]["best_params"][0]["clf__n_neighbors"] in (1, 3, 5, 10)


def test_parallel_folds_give_the_same_scores(tmp_path):
    synthetic_cache(tmp_path / "c.h5")
    one = cross_validate(tmp_path / "c.h5", ["logreg", "rbf-svm"], ["flatten"], folds=3)
    two = cross_validate(tmp_path / "c.h5", ["logreg", "rbf-svm"], ["flatten"], folds=3, n_jobs=2)
    for a, b in zip(one.results, two.results):
        assert [f.scores for f in a.folds] == [f.scores for f in b.folds]
        assert (a.predictions == b.predictions).all()


def test_suspicious_images_outliers_and_duplicates(tmp_path):
    rng = np.random.default_rng(5)
    centers = np.eye(3, 16) * 6
    y = np.repeat(np.arange(3), [12, 10, 8])
    X = centers[y] + rng.normal(0, 1.0, (30, 16))
    X[3] = centers[1] + rng.normal(0, 0.3, 16)  # labelled class0, looks like class1: a label error
    X[20] = -20 * np.ones(16)  # unlike anything: a placeholder picture
    digests = [f"{i:032x}" for i in range(30)]
    digests[25] = digests[5]  # the same file under class0 and class2
    synthetic_cache(tmp_path / "c.h5", features=X, digests=digests)
    report = cross_validate(tmp_path / "c.h5", ["logreg", "knn"], ["flatten"], folds=3)
    judge, suspicious = report.suspicious(5)
    assert judge.proba is not None
    assert suspicious[0]["path"] == "class0/img003.jpg" and suspicious[0]["predicted"] == "class1"
    assert suspicious[0]["confidence"] > 0.8 and suspicious[0]["p_label"] < 0.2
    confidences = [s["confidence"] for s in suspicious]
    assert confidences == sorted(confidences, reverse=True)
    layer, outliers = report.outliers(3)
    assert layer == "flatten" and outliers[0]["path"] == "class1/img020.jpg"
    dups = report.duplicates()
    assert dups == [{"paths": ["class0/img005.jpg", "class2/img025.jpg"], "labels": ["class0", "class2"],
                     "conflicting": True}]


def test_report_files(tmp_path):
    synthetic_cache(tmp_path / "c.h5")
    report = cross_validate(tmp_path / "c.h5", ["logreg", "ridge"], ["flatten"], folds=3)
    files = write_report(report, str(tmp_path / "out"), suspicious=5)
    d = json.loads((tmp_path / "out" / "report.json").read_text())
    assert d["best"] == {"classifier": report.best.classifier, "layer": "flatten"}
    assert [r["rank"] for r in d["leaderboard"]] == [1, 2]
    assert d["class_counts"] == {"class0": 12, "class1": 10, "class2": 8}
    assert d["cv"]["splitter"] == "RepeatedStratifiedKFold" and len(d["results"][0]["metrics"]["accuracy"]["folds"]) == 3
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| 1 | " + report.best.classifier in md and "## Suspicious images" in md
    for png in ("leaderboard_png", "confusion_png"):
        with Image.open(files[png]) as im:
            assert im.format == "PNG" and im.size[0] > 200
    lines = (tmp_path / "out" / "predictions" / "logreg@flatten.csv").read_text().splitlines()
    assert lines[0] == "path,label,predicted,correct,confidence,p_class0,p_class1,p_class2"
    assert len(lines) == 31
    pred, _ = report.result("logreg", "flatten").oof()
    assert [ln.split(",")[2] for ln in lines[1:]] == [f"class{p}" for p in pred]


def test_clear_errors(tmp_path):
    synthetic_cache(tmp_path / "small.h5", counts=(12, 3))
    with pytest.raises(FeaturebankError, match="'class1' has 3 image.*fewer than --folds 5"):
        cross_validate(tmp_path / "small.h5", ["logreg"], folds=5)
    synthetic_cache(tmp_path / "one.h5", counts=(12,))
    with pytest.raises(FeaturebankError, match="only one class"):
        cross_validate(tmp_path / "one.h5", ["logreg"])
    synthetic_cache(tmp_path / "unlabeled.h5", labels=False)
    with pytest.raises(FeaturebankError, match="has no labels"):
        cross_validate(tmp_path / "unlabeled.h5", ["logreg"])
    with pytest.raises(FeaturebankError, match=r"layer .layer4. is not in .* \(it has flatten, layer3\)"):
        cross_validate(tmp_path / "small.h5", ["logreg"], ["layer4"], folds=3)
    with pytest.raises(FeaturebankError, match="unknown classifier 'logregg' .did you mean logreg"):
        cross_validate(tmp_path / "small.h5", ["logregg"], folds=3)
    with pytest.raises(FeaturebankError, match="knn:n_neighbors=40 on flatten failed: Expected n_neighbors"):
        cross_validate(tmp_path / "small.h5", ["knn:n_neighbors=40"], ["flatten"], folds=3)
    with pytest.raises(FeaturebankError, match="has no groups"):
        cross_validate(tmp_path / "small.h5", ["logreg"], folds=3, groups=True)


def test_ungrouped_rows_are_groups_of_their_own(tmp_path):
    """In a manifest where only some rows have a group, each ungrouped row is its own group (not one shared "")."""
    from embedder.cache import CacheReader

    groups = ["a", "a", "b", "b"] + [""] * 26
    synthetic_cache(tmp_path / "c.h5", groups=groups)
    got = CacheReader(tmp_path / "c.h5").groups
    assert list(got[:4]) == ["a", "a", "b", "b"]
    assert len(set(got[4:].tolist())) == 26 and not set(got[4:].tolist()) & {"a", "b", ""}
    synthetic_cache(tmp_path / "none.h5")
    assert CacheReader(tmp_path / "none.h5").groups is None
