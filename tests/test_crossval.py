"""Cross-validation: scores equal scikit-learn's on the same folds, preprocessing is fit per fold, same seed
same report, and a real folder's suspicious images and outliers are found."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import digest, synthetic_cache
from PIL import Image
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import GridSearchCV, RepeatedStratifiedKFold, StratifiedKFold
from sklearn.model_selection import cross_validate as sk_cross_validate

from classifiers.crossval import cross_validate
from classifiers.report.writer import leaderboard_lines, report_dict, write_report
from classifiers.scaling import shrunk_variances
from classifiers.zoo import ClassifierSpec, make_classifier, register_classifier, unregister_classifier
from embedder.kernel.errors import FeaturebankError

SCORING = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced_accuracy",
    "f1_macro": "f1_macro",
    "log_loss": "neg_log_loss",
}


@pytest.mark.parametrize(
    "spec",
    [
        "logreg",
        "knn:n_neighbors=3",
        "rbf-svm:pca=8",
        "ridge",
        "lda",
        pytest.param("random-forest", marks=pytest.mark.integration),
        "extra-trees:n_estimators=40",
    ],
)
def test_scores_equal_sklearn_on_the_same_folds(tmp_path, spec):
    X, y = synthetic_cache(tmp_path / "c.h5")
    report = cross_validate(tmp_path / "c.h5", classifiers=[spec], layers=["flatten"], folds=4, repeats=2, seed=3)
    ours = report.results[0]
    proba = ours.proba is not None
    theirs = sk_cross_validate(
        make_classifier(spec, seed=3),
        X,
        y,
        cv=RepeatedStratifiedKFold(n_splits=4, n_repeats=2, random_state=3),
        scoring={k: v for k, v in SCORING.items() if proba or k != "log_loss"},
    )
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
    assert len(report.splits) == 8
    for f, split in zip(ours.folds, report.splits):  # the folds cross_validate used, not a fresh make_splits
        assert (f.repeat, f.fold) == (split.repeat, split.fold)
        assert f.scores["accuracy"] == pytest.approx(
            np.mean(ours.predictions[split.repeat, split.test] == y[split.test])
        )
    theirs_splits = list(RepeatedStratifiedKFold(n_splits=4, n_repeats=2, random_state=3).split(X, y))
    for split, (train, test) in zip(report.splits, theirs_splits):
        assert split.train.tolist() == train.tolist() and split.test.tolist() == test.tolist()


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
    # one fold at a time: the spy records in the order the fits run, which side by side is the order they end
    splits = cross_validate(
        tmp_path / "c.h5", classifiers=["spy"], layers=["flatten"], folds=3, seed=1, n_jobs=1
    ).splits
    fits = [x for kind, x in spy.seen if kind == "fit"]
    predicts = [x for kind, x in spy.seen if kind == "predict"]
    assert len(fits) == len(predicts) == 3
    for split, fitted, predicted in zip(splits, fits, predicts):
        train, test = X[split.train], X[split.test]
        mean, std = train.mean(0), np.sqrt(shrunk_variances(train.var(0), len(train))[0])  # the zoo's scale step
        # scaled with the training rows' statistics only ...
        np.testing.assert_allclose(fitted, (train - mean) / std, atol=1e-5)
        np.testing.assert_allclose(predicted, (test - mean) / std, atol=1e-5)
        # ... which differ from statistics over all rows (so the check above can fail)
        assert np.abs((train - X.mean(0)) / X.std(0) - fitted).max() > 1e-3


def test_same_seed_same_report_and_another_seed_other_folds(tmp_path):
    synthetic_cache(tmp_path / "c.h5")

    def stable(seed):
        d = report_dict(cross_validate(tmp_path / "c.h5", classifiers=["logreg", "knn"], folds=3, seed=seed))
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
    report = cross_validate(tmp_path / "c.h5", classifiers=["logreg", "knn"], folds=3)
    assert {(r.classifier, r.layer) for r in report.results} == {
        (c, layer) for c in ("logreg", "knn") for layer in ("flatten", "layer3")
    }
    board, ties = report.leaderboard(), report.ties()
    firsts = [t[0].metric("balanced_accuracy")["mean"] for t in ties]
    assert firsts == sorted(firsts, reverse=True)  # the ties in the order of their first rows' fold means
    # each tie's rows together, the lower calibrated log-loss first
    assert board == [r for t in ties for r in sorted(t, key=lambda r: report.calibration(r)["log_loss"])]
    from classifiers.report.reading import tie_note

    d = report_dict(report)
    tied = [[board.index(r) + 1 for r in t] for t in ties if len(t) > 1]
    marked = [[row["rank"] for row in d["leaderboard"] if row.get("tie") == k] for k in range(len(tied))]
    assert marked == tied and all(len(t) > 1 for t in tied) == bool(tied)
    assert (tie_note(d) != "") == bool(tied) and all(f"ranks {', '.join(map(str, t))} (" in tie_note(d) for t in tied)
    import csv as csv_module

    from classifiers.report.writer import write_leaderboard_csv

    with open(write_leaderboard_csv(d, str(tmp_path / "board.csv")), newline="") as fh:
        rows = list(csv_module.DictReader(fh))
    in_csv = [[int(r["rank"]) for r in rows if r["tie"] == str(k)] for k in range(len(tied))]
    assert in_csv == tied and all(r["tie_log_loss"] for r in rows if r["tie"])
    assert report.best.layer == "flatten"  # layer3 keeps half of the dimensions
    cm = report.confusion(report.best)
    assert cm.sum() == len(report.data.y) and cm.sum(axis=1).tolist() == [12, 10, 8]
    per_class = report.per_class(report.best)
    assert per_class["class0"]["recall"] == pytest.approx(cm[0, 0] / 12)


def test_rows_within_half_an_image_tie_and_the_lower_calibrated_log_loss_goes_first(tmp_path):
    """Fold means differ by where the errors fell and which classes traded them (hymenoptera: lda 0.9677, 119 ants
    and 118 bees right; logreg 0.9675, 120 and 117; log-loss 0.71 against 0.09): on the whole out-of-fold
    predictions such rows are within half an image of each other, tie, and the calibrated log-loss decides; one
    image more right still ranks first whatever its log-loss."""
    from dataclasses import replace

    from sklearn.metrics import balanced_accuracy_score

    synthetic_cache(tmp_path / "c.h5")  # classes of 12, 10 and 8 rows
    report = cross_validate(tmp_path / "c.h5", classifiers=["logreg"], layers=["flatten"], folds=3, repeats=2)
    base = report.results[0]
    y = report.data.y
    # each repeat's whole, as scikit-learn scores it, averaged over the repeats
    expected = np.mean([balanced_accuracy_score(y, base.predictions[k]) for k in range(2)])
    assert report.pooled(base) == pytest.approx(expected, abs=1e-12)
    base = replace(base, predictions=np.repeat(base.predictions[:1], 2, axis=0))  # the same answers in both repeats
    wrong, right = base.predictions[0] != y, base.predictions[0] == y

    def one(mask):
        return int(np.flatnonzero(mask)[0])

    def answers(changes):
        out = base.predictions.copy()
        for i, to in changes:
            out[:, i] = to
        return out

    def folds_plus(delta):  # fold scores as if the errors had fallen elsewhere: the fold means move, not the counts
        return [
            replace(f, scores={**f.scores, "balanced_accuracy": f.scores["balanced_accuracy"] + delta})
            for f in base.folds
        ]

    better_mean = replace(base, classifier="better-mean", folds=folds_plus(+0.001))
    lower_loss = replace(base, classifier="lower-loss", folds=folds_plus(-0.001))
    i = one(wrong & (y == 0))
    one_more = replace(base, classifier="one-more", predictions=answers([(i, 0)]), folds=folds_plus(+0.003))
    gained, lost = one(wrong & (y == 1)), one(right & (y == 0))  # a class-1 image (10 rows) for a class-0 one (12)
    trade = [(gained, 1), (lost, 2)]
    traded = replace(base, classifier="traded", predictions=answers(trade), folds=folds_plus(-0.0015))
    assert report.pooled(traded) - report.pooled(base) == pytest.approx((1 / 10 - 1 / 12) / 3)  # under half of 1/36
    losses = {"better-mean": 0.9, "lower-loss": 0.1, "one-more": 5.0, "traded": 0.05, "between": 0.01, "twice": 0.0}
    asked = []

    def calibration(result):
        asked.append(result.classifier)
        return {"log_loss": losses[result.classifier]}

    def board(*rows):
        report.results = list(rows)
        report._calibrations.clear()
        return [r.classifier for r in report.leaderboard()]

    report._calibration = calibration  # the fit calibration() keeps, once a row
    # the tie keeps its place (under "one-more"), and the lower log-loss leads it
    assert board(better_mean, lower_loss, one_more, traded) == ["one-more", "traded", "lower-loss", "better-mean"]
    assert sorted(asked) == ["better-mean", "lower-loss", "traded"]  # only the tied rows' calibration is computed
    report.leaderboard()
    assert len(asked) == 3  # and once
    assert [[r.classifier for r in t] for t in report.ties()] == [["one-more"], ["better-mean", "lower-loss", "traded"]]
    # a row that does not join ends the run: a tie never passes over a row with other images right
    i = one(right & (y == 2))
    between = replace(base, classifier="between", predictions=answers([(i, 0)]), folds=folds_plus(+0.0005))
    assert board(better_mean, lower_loss, between) == ["better-mean", "between", "lower-loss"]
    # anchored at its first row: two trades are within half an image of one trade, not of the first row
    others = np.arange(len(y))
    more = [(one(wrong & (y == 1) & (others != gained)), 1), (one(right & (y == 0) & (others != lost)), 2)]
    twice = replace(base, classifier="twice", predictions=answers(trade + more), folds=folds_plus(-0.002))
    assert board(better_mean, traded, twice) == ["traded", "better-mean", "twice"]
    # in a tie, a row fit with the unlabeled rows too goes after the plain ones: more work, no more images right
    joined = replace(lower_loss, classifier="lower-loss +unlabeled")
    losses["lower-loss +unlabeled"] = 0.0
    assert board(better_mean, joined) == ["better-mean", "lower-loss +unlabeled"]


def test_groups_never_straddle_the_folds_cv_used_and_ungrouped_rows_spread(tmp_path):
    """A manifest where only some rows have a group: the folds cross_validate scored on (report.splits) keep
    each group on one side, and the ungrouped rows, each a group of its own, spread over every fold."""
    groups = [f"g{i // 3}" if i % 2 == 0 else "" for i in range(30)]  # 15 grouped rows (in 3s and singles), 15 not
    _, y = synthetic_cache(tmp_path / "c.h5", groups=groups)
    report = cross_validate(tmp_path / "c.h5", classifiers=["logreg"], layers=["flatten"], folds=3, repeats=2)
    assert report.grouped and len(report.splits) == 6
    named = np.array(groups)
    ungrouped = np.flatnonzero(named == "")
    result = report.results[0]
    for split in report.splits:
        assert not set(named[split.train]) & set(named[split.test]) - {""}  # no named group on both sides
        assert len(np.intersect1d(split.test, ungrouped)) >= 3  # not all 15 in one fold (as one group "" was)
        # these are the folds the scores came from
        assert result.folds[split.repeat * 3 + split.fold].scores["accuracy"] == pytest.approx(
            np.mean(result.predictions[split.repeat, split.test] == y[split.test])
        )
    for r in range(2):
        tested = np.concatenate([s.test for s in report.splits if s.repeat == r])
        assert sorted(tested.tolist()) == list(range(30))  # each row tested once per repeat
    no_groups = cross_validate(tmp_path / "c.h5", classifiers=["logreg"], layers=["flatten"], folds=3, groups=False)
    assert not no_groups.grouped
    theirs = list(RepeatedStratifiedKFold(n_splits=3, n_repeats=1, random_state=0).split(np.zeros(30), y))
    assert [s.test.tolist() for s in no_groups.splits] == [test.tolist() for _, test in theirs]


def test_nested_search_equals_gridsearch_inside_each_fold(tmp_path):
    X, y = synthetic_cache(tmp_path / "c.h5")
    report = cross_validate(tmp_path / "c.h5", classifiers=["knn"], layers=["flatten"], folds=3, search=True, seed=2)
    # 20 training rows per outer fold, ~13 per inner fold: k above that cannot be fit and leaves the grid
    grid = GridSearchCV(
        make_classifier("knn", seed=2),
        {"clf__n_neighbors": [1, 3, 5, 10]},
        cv=StratifiedKFold(3, shuffle=True, random_state=2),
        scoring="balanced_accuracy",
    )
    theirs = sk_cross_validate(
        grid,
        X,
        y,
        cv=RepeatedStratifiedKFold(n_splits=3, n_repeats=1, random_state=2),
        scoring="accuracy",
        return_estimator=True,
    )
    result = report.results[0]
    assert [f.best_params for f in result.folds] == [e.best_params_ for e in theirs["estimator"]]
    np.testing.assert_allclose([f.scores["accuracy"] for f in result.folds], theirs["test_score"])
    assert report_dict(report)["results"][0]["best_params"][0]["clf__n_neighbors"] in (1, 3, 5, 10)


def test_parallel_folds_give_the_same_scores(tmp_path):
    synthetic_cache(tmp_path / "c.h5")
    one = cross_validate(tmp_path / "c.h5", classifiers=["logreg", "rbf-svm"], layers=["flatten"], folds=3, n_jobs=1)
    two = cross_validate(tmp_path / "c.h5", classifiers=["logreg", "rbf-svm"], layers=["flatten"], folds=3, n_jobs=2)
    assert one.plan.jobs == {} and two.plan.jobs == {"logreg": 2, "rbf-svm": 2}
    for a, b in zip(one.results, two.results):
        assert [f.scores for f in a.folds] == [f.scores for f in b.folds]
        assert (a.predictions == b.predictions).all()


class _Where(ClassifierMixin, BaseEstimator):
    """Records the thread it is fitted in and the BLAS threads it may use there."""

    seen: list = []

    def fit(self, X, y):
        import threading
        import time

        from threadpoolctl import threadpool_info

        blas = sorted({p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"})
        _Where.seen.append((threading.get_ident(), blas))
        time.sleep(0.3)  # the other fold starts meanwhile
        self.classes_ = np.unique(y)
        return self

    def predict(self, X):
        return np.full(len(X), self.classes_[0])


def test_folds_side_by_side_run_in_threads_with_the_cores_shared_out_as_blas_threads(tmp_path, monkeypatch):
    """Without -j, on 4 cores, 2 folds: both at once, in two threads of the process (which share the layer), each
    with 2 BLAS threads; -j 1: one at a time in the calling thread with BLAS as it was; BLAS as it was after."""
    import threading

    from threadpoolctl import threadpool_info

    from classifiers import parallel

    def blas_now():
        return sorted({p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"})

    synthetic_cache(tmp_path / "c.h5")
    monkeypatch.setattr(parallel, "cores", lambda: 4)
    register_classifier(ClassifierSpec("where", "records its thread", lambda seed: _Where()))
    before = blas_now()
    try:
        _Where.seen = []
        report = cross_validate(tmp_path / "c.h5", classifiers=["where"], layers=["flatten"], folds=2)
        assert report.plan.jobs == {"where": 2}
        assert len({ident for ident, _ in _Where.seen}) == 2 and threading.get_ident() not in dict(_Where.seen)
        assert [blas for _, blas in _Where.seen] == [[2], [2]]
        assert blas_now() == before
        _Where.seen = []
        cross_validate(tmp_path / "c.h5", classifiers=["where"], layers=["flatten"], folds=2, n_jobs=1)
        assert [ident for ident, _ in _Where.seen] == [threading.get_ident()] * 2
        assert [blas for _, blas in _Where.seen] == [before, before]
    finally:
        unregister_classifier("where")


def test_suspicious_images_outliers_and_duplicates(tmp_path):
    rng = np.random.default_rng(5)
    centers = np.eye(3, 16) * 6
    y = np.repeat(np.arange(3), [12, 10, 8])
    X = centers[y] + rng.normal(0, 1.0, (30, 16))
    X[3] = centers[1] + rng.normal(0, 0.3, 16)  # labelled class0, looks like class1: a label error
    X[20] = -20 * np.ones(16)  # unlike anything: a placeholder picture
    digests = [digest(i) for i in range(30)]
    digests[25] = digests[5]  # the same file under class0 and class2
    synthetic_cache(tmp_path / "c.h5", features=X, digests=digests)
    report = cross_validate(tmp_path / "c.h5", classifiers=["logreg", "knn"], layers=["flatten"], folds=3)
    judge, suspicious = report.suspicious(5)
    assert judge.proba is not None
    assert suspicious[0]["path"] == "class0/img003.jpg" and suspicious[0]["predicted"] == "class1"
    assert suspicious[0]["confidence"] > 0.8 and suspicious[0]["p_label"] < 0.2
    confidences = [s["confidence"] for s in suspicious]
    assert confidences == sorted(confidences, reverse=True)
    layer, outliers = report.outliers(3)
    assert layer == "flatten" and outliers[0]["path"] == "class1/img020.jpg"
    # every image's nearest neighbour, by brute force: among all rows, then among a sample of 2,048 (here 12) rows
    U = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    for reference, ref in (
        (20_000, np.arange(30)),
        (12, np.sort(np.random.default_rng(0).choice(30, 12, replace=False))),
    ):
        S = U @ U[ref].T
        S[ref, np.arange(len(ref))] = -np.inf
        name = [f"class{y[i]}/img{i:03d}.jpg" for i in range(30)]
        _, found = report.outliers(30, reference=reference)
        # (mutual nearest neighbours tie on their similarity: compare each image's entry, then the order's values)
        assert {o["path"]: o["nearest"] for o in found} == {
            name[i]: name[ref[j]] for i, j in enumerate(S.argmax(axis=1))
        }
        np.testing.assert_allclose([o["similarity"] for o in found], np.sort(S.max(axis=1)), atol=1e-4)
    dups = report.duplicates()
    assert dups == [
        {"paths": ["class0/img005.jpg", "class2/img025.jpg"], "labels": ["class0", "class2"], "conflicting": True}
    ]


def test_report_files(tmp_path):
    synthetic_cache(tmp_path / "c.h5")
    report = cross_validate(tmp_path / "c.h5", classifiers=["logreg", "ridge"], layers=["flatten"], folds=3)
    files = write_report(report, str(tmp_path / "out"), suspicious=5)
    d = json.loads((tmp_path / "out" / "report.json").read_text())
    assert {k: v for k, v in d["best"].items() if k != "selected_on"} == {
        "backbone": "resnet18",
        "classifier": report.best.classifier,
        "layer": "flatten",
    }
    assert d["best"]["selected_on"].startswith("the out-of-fold scores it is reported with, so they are optimistic")
    assert [r["rank"] for r in d["leaderboard"]] == [1, 2]
    assert d["class_counts"] == {"class0": 12, "class1": 10, "class2": 8}
    assert (
        d["cv"]["splitter"] == "RepeatedStratifiedKFold" and len(d["results"][0]["metrics"]["accuracy"]["folds"]) == 3
    )
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| 1 | " + report.best.classifier in md and "## Suspicious images" in md
    # what every figure was measured on, and #1's optimism, beside the leaderboard and under "Best"
    assert "Every figure: out of fold on the 30 labelled images of this run, mean ± std over 3 folds × 1" in md
    assert "#1 is the best of 2 rows on these same folds, so its figure is optimistic for new images" in md
    assert "#1 of the leaderboard, picked on the folds that score it" in md
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
        cross_validate(tmp_path / "small.h5", classifiers=["logreg"], folds=5)
    synthetic_cache(tmp_path / "one.h5", counts=(12,))
    with pytest.raises(FeaturebankError, match="only one class"):
        cross_validate(tmp_path / "one.h5", classifiers=["logreg"])
    synthetic_cache(tmp_path / "unlabeled.h5", labels=False)
    with pytest.raises(FeaturebankError, match="has no labels"):
        cross_validate(tmp_path / "unlabeled.h5", classifiers=["logreg"])
    with pytest.raises(FeaturebankError, match=r"layer .layer4. is not in .* \(it has flatten, layer3\)"):
        cross_validate(tmp_path / "small.h5", classifiers=["logreg"], layers=["layer4"], folds=3)
    with pytest.raises(FeaturebankError, match="unknown classifier 'logregg' .did you mean logreg"):
        cross_validate(tmp_path / "small.h5", classifiers=["logregg"], folds=3)
    # more neighbours than a fold's rows: every row, said once per result (it was an error before)
    few = cross_validate(
        tmp_path / "small.h5", classifiers=["knn:n_neighbors=40"], layers=["flatten"], folds=3, extras=None
    )
    assert few.results[0].notes == ["knn: k=10, every training row, not 40 (10 rows)"]
    with pytest.raises(FeaturebankError, match="has no groups"):
        cross_validate(tmp_path / "small.h5", classifiers=["logreg"], folds=3, groups=True)


def test_ungrouped_rows_are_groups_of_their_own(tmp_path):
    """In a manifest where only some rows have a group, each ungrouped row is its own group (not one shared "")."""
    from embedder.cache.hdf5 import CacheReader

    groups = ["a", "a", "b", "b"] + [""] * 26
    synthetic_cache(tmp_path / "c.h5", groups=groups)
    got = CacheReader(tmp_path / "c.h5").groups
    assert list(got[:4]) == ["a", "a", "b", "b"]
    assert len(set(got[4:].tolist())) == 26 and not set(got[4:].tolist()) & {"a", "b", ""}
    synthetic_cache(tmp_path / "none.h5")
    assert CacheReader(tmp_path / "none.h5").groups is None


def write_cache(path, paths, labels, features: dict, settings=None, digests=None):
    """A cache of exactly these rows (any order, "" labels for unlabeled rows), written through CacheWriter."""
    from helpers import SYNTHETIC_SETTINGS

    from embedder.cache.hdf5 import CacheWriter

    n = len(paths)
    settings = {**SYNTHETIC_SETTINGS, **(settings or {}), "layers": list(features)}
    rows = {
        "path": list(paths),
        "label": list(labels),
        "group": [""] * n,
        "size": [100] * n,
        "mtime_ns": [1] * n,
        "digest": list(digests) if digests is not None else [""] * n,
    }  # "": no digest recorded
    empty = {k: [] for k in ("path", "reason", "digest", "size", "mtime_ns")}
    with CacheWriter(str(path), settings, "classes:/synthetic", "/synthetic", {"weights_file": None}) as w:
        w.write_batch(rows, {k: np.asarray(v, dtype=np.float32) for k, v in features.items()}, empty)
        w.commit([(p, label, "") for p, label in zip(paths, labels)], {})


def stable_results(report):
    return [
        (
            r.backbone,
            r.classifier,
            r.layer,
            [f.scores for f in r.folds],
            r.predictions.tolist(),
            None if r.proba is None else r.proba.tolist(),
        )
        for r in report.results
    ]


@pytest.mark.integration  # over 4 s on 2 cores: the second tier
def test_two_caches_equal_two_separate_runs_on_the_same_folds(tmp_path):
    """Another backbone's cache of the same images, rows in another order plus an unlabeled row: ranked with the
    first on the first's folds, each result equals that of a separate run of its cache in the first's order."""
    X, y = synthetic_cache(tmp_path / "a.h5")
    paths = [f"class{c}/img{i:03d}.jpg" for i, c in enumerate(y)]
    labels = [f"class{c}" for c in y]
    Z = np.random.default_rng(7).normal(0, 1, (30, 6)) + y[:, None]  # the other backbone's features
    other = {"weights": "sha256:" + "ab" * 32, "pooling": "max"}
    write_cache(tmp_path / "b-same-order.h5", paths, labels, {"penultimate_b": Z}, other)
    shuffled = np.random.default_rng(1).permutation(30)
    write_cache(
        tmp_path / "b.h5",
        [paths[i] for i in shuffled] + ["new/unlabeled.jpg"],
        [labels[i] for i in shuffled] + [""],
        {"penultimate_b": np.vstack([Z[shuffled], np.full((1, 6), 99)])},
        other,
        digests=[digest(i) for i in shuffled] + ["f" * 32],
    )  # synthetic_cache's digests
    options = dict(folds=3, repeats=2, seed=4)
    both = cross_validate([tmp_path / "a.h5", tmp_path / "b.h5"], classifiers=["logreg", "knn"], **options)
    alone_a = cross_validate(tmp_path / "a.h5", classifiers=["logreg", "knn"], **options)
    alone_b = cross_validate(tmp_path / "b-same-order.h5", classifiers=["logreg", "knn"], **options)
    assert [s.name for s in both.sources] == ["resnet18/none", "resnet18/sha256:abababab"]
    assert (
        [(s.train.tolist(), s.test.tolist()) for s in both.splits]
        == [(s.train.tolist(), s.test.tolist()) for s in alone_a.splits]
        == [(s.train.tolist(), s.test.tolist()) for s in alone_b.splits]
    )
    got = stable_results(both)
    expected = [("resnet18/none", *r[1:]) for r in stable_results(alone_a)] + [
        ("resnet18/sha256:abababab", *r[1:]) for r in stable_results(alone_b)
    ]
    assert got == expected
    assert {(r.backbone, r.layer) for r in both.leaderboard()} == {
        ("resnet18/none", "flatten"),
        ("resnet18/none", "layer3"),
        ("resnet18/sha256:abababab", "penultimate_b"),
    }
    d = report_dict(both)
    assert [c["backbone"] for c in d["caches"]] == ["resnet18/none", "resnet18/sha256:abababab"]
    assert {r["cache"] for r in d["leaderboard"]} == {str(tmp_path / "a.h5"), str(tmp_path / "b.h5")}
    files = write_report(both, str(tmp_path / "out"), suspicious=3)
    lines = (
        (tmp_path / "out" / "predictions" / "resnet18_sha256_abababab--knn@penultimate_b.csv").read_text().splitlines()
    )
    pred, _ = both.result("knn", "penultimate_b", "resnet18/sha256:abababab").oof()
    assert [ln.split(",")[0] for ln in lines[1:]] == paths and [ln.split(",")[2] for ln in lines[1:]] == [
        f"class{p}" for p in pred
    ]
    board = (tmp_path / "out" / "leaderboard.csv").read_text().splitlines()
    assert board[0].startswith("rank,backbone,cache,classifier,layer,features,") and len(board) == 7
    assert "| # | backbone | classifier |" in (tmp_path / "out" / "report.md").read_text()
    assert files["html"].endswith("report.html")


def test_caches_of_other_images_or_labels_are_refused_in_one_line(tmp_path):
    X, y = synthetic_cache(tmp_path / "a.h5")
    paths = [f"class{c}/img{i:03d}.jpg" for i, c in enumerate(y)]
    labels = [f"class{c}" for c in y]
    write_cache(tmp_path / "fewer.h5", paths[1:], labels[1:], {"flatten": X[1:]})
    with pytest.raises(
        FeaturebankError,
        match=r"do not hold the same labelled images: 1 labelled image\(s\) only in "
        r".*a.h5 \(e.g. class0/img000.jpg\); extract the same input",
    ):
        cross_validate([tmp_path / "a.h5", tmp_path / "fewer.h5"], classifiers=["logreg"], folds=3)
    relabelled = labels[:5] + ["class2"] + labels[6:]
    write_cache(tmp_path / "relabelled.h5", paths, relabelled, {"flatten": X})
    with pytest.raises(
        FeaturebankError,
        match=r"label 1 image\(s\) differently \(e.g. class0/img005.jpg: class0 in "
        r".*a.h5, class2 in .*relabelled.h5\)",
    ):
        cross_validate([tmp_path / "a.h5", tmp_path / "relabelled.h5"], classifiers=["logreg"], folds=3)
    write_cache(tmp_path / "changed.h5", paths, labels, {"flatten": X}, digests=["0" * 32] * 30)  # row 0 keeps its own
    with pytest.raises(FeaturebankError, match=r"29 image\(s\) changed between the caches \(e.g. class0/img001.jpg\)"):
        cross_validate([tmp_path / "a.h5", tmp_path / "changed.h5"], classifiers=["logreg"], folds=3)
    with pytest.raises(FeaturebankError, match="layer 'nope' is in none of the caches"):
        cross_validate([tmp_path / "a.h5", tmp_path / "a.h5"], classifiers=["logreg"], layers=["nope"], folds=3)


def test_backbone_names_are_short_and_unique():
    from types import SimpleNamespace

    from classifiers.data import backbone_names

    def reader(path, **s):
        return SimpleNamespace(path=path, settings={"weights": "DEFAULT", "pooling": "avg", "precision": "fp32", **s})

    got = backbone_names(
        [
            reader("/c/a.h5", backbone="resnet50", weights="ResNet50_Weights.IMAGENET1K_V2"),
            reader("/c/b.h5", backbone="mobilenet_v2"),
            reader("/c/c.h5", backbone="resnet50", weights="ResNet50_Weights.IMAGENET1K_V1"),
            reader("/c/d.h5", backbone="vgg16", pooling="avg"),
            reader("/c/e.h5", backbone="vgg16", pooling="max"),
            reader("/c/f.h5", backbone="alexnet"),
            reader("/d/f.h5", backbone="alexnet"),
            reader("/c/g.h5", backbone="squeezenet1_1"),
            reader("/c/h.h5", backbone="squeezenet1_1", tta="flip"),
        ]
    )
    assert got == [
        "resnet50/IMAGENET1K_V2",
        "mobilenet_v2",
        "resnet50/IMAGENET1K_V1",
        "vgg16/avg",
        "vgg16/max",
        "alexnet#1",
        "alexnet#2",
        "squeezenet1_1/tta-none",
        "squeezenet1_1/tta-flip",
    ]


def test_corrected_t_test_against_a_hand_computation():
    from classifiers.significance import compare_to_best, corrected_t_test

    best = [0.80, 0.85, 0.90, 0.75, 0.80]
    other = [0.70, 0.80, 0.85, 0.75, 0.70]
    # d = .10 .05 .05 0 .10: mean .06, sample variance .007/4 = .00175; 5 folds: n_test/n_train = 1/4
    t_hand = 0.06 / np.sqrt((1 / 5 + 1 / 4) * 0.00175)
    assert t_hand == pytest.approx(2.138090, abs=1e-6)
    # Student's t with 4 degrees of freedom in closed form: P(|T| > t) = 1 - x(3 - x^2)/2, x = t/sqrt(4 + t^2)
    x = t_hand / np.sqrt(4 + t_hand**2)
    p_hand = 1 - x * (3 - x**2) / 2
    t, p = corrected_t_test(np.array(best), np.array(other), n_train=80, n_test=20)
    assert t == pytest.approx(t_hand, rel=1e-9) and p == pytest.approx(p_hand, rel=1e-9)
    assert p == pytest.approx(0.0993, abs=1e-4)  # not significant at 0.05 ...
    t_plain = 0.06 / np.sqrt(0.00175 / 5)  # ... where the uncorrected paired t-test (t 3.21, p 0.033) would be
    assert 1 - (x := t_plain / np.sqrt(4 + t_plain**2)) * (3 - x**2) / 2 < 0.05
    # zero variance: equal scores on every fold are not worse; a constant difference is
    assert corrected_t_test(np.array(best), np.array(best), 80, 20) == (0.0, 1.0)
    assert corrected_t_test(np.array(best), np.array(best) - 0.1, 80, 20)[1] == 0.0
    rows = compare_to_best([np.array(best), np.array(other), np.array(best) - 0.1], 80, 20)
    assert [(c.p_value is None, c.not_worse) for c in rows] == [(True, True), (False, True), (False, False)]
    # a row above the first on every fold (the first ahead of it in a tie, by its log-loss) is not worse, whatever p
    above = compare_to_best([np.array(best), np.array(best) + 0.1], 80, 20)[1]
    assert above.p_value == 0.0 and above.t < 0 and above.not_worse


def test_every_leaderboard_row_carries_its_p_value_against_the_best(tmp_path):
    synthetic_cache(tmp_path / "c.h5")
    report = cross_validate(tmp_path / "c.h5", classifiers=["logreg", "knn", "ridge"], folds=3, repeats=3)
    d = report_dict(report)
    board = d["leaderboard"]
    assert board[0]["p_value"] is None and board[0]["not_worse"]
    best = np.array(
        d["results"][
            [(r["classifier"], r["layer"]) for r in d["results"]].index((board[0]["classifier"], board[0]["layer"]))
        ]["metrics"]["balanced_accuracy"]["folds"]
    )
    assert len(best) == 9
    for row in board[1:]:
        entry = next(r for r in d["results"] if (r["classifier"], r["layer"]) == (row["classifier"], row["layer"]))
        diff = best - np.array(entry["metrics"]["balanced_accuracy"]["folds"])
        # 30 rows in 3 stratified folds, 3 repeats: 20 train, 10 test each; J = 9, df 8
        t = diff.mean() / np.sqrt((1 / 9 + 10 / 20) * diff.var(ddof=1)) if diff.std() > 0 else None
        if t is None:
            assert row["p_value"] == (1.0 if diff[0] == 0 else 0.0)
            continue
        from scipy import stats

        # the fold scores and the p-value are both rounded to 4 digits in report.json
        assert row["p_value"] == pytest.approx(2 * stats.t.sf(abs(t), 8), rel=5e-3)
        assert row["not_worse"] == (row["p_value"] >= 0.05)
    # layer3 rows lose (p about 0.02 against 0.6 to 0.9 for the flatten rows; with 2 repeats the p-values sat at
    # 0.05 to 0.10, a coin toss between the two marks): the task tells them apart
    assert {r["not_worse"] for r in board[1:]} == {True, False}
    assert d["cv"]["significance"]["df"] == 8 and d["cv"]["significance"]["n_test/n_train"] == 0.5
    lines = [ln for ln in leaderboard_lines(d) if not ln.startswith("|--")]
    assert lines[0].endswith("| p vs #1 |") and lines[1].endswith("| best |")
    assert all(ln.endswith(" ≈ |") == row["not_worse"] for ln, row in zip(lines[2:], board[1:]))


def test_one_row_has_no_p_value_paragraph(tmp_path):
    """With one row there is nothing to compare it with: no "p vs #1" paragraph under the leaderboard."""
    from classifiers.report.reading import significance_note

    synthetic_cache(tmp_path / "c.h5")
    one = report_dict(cross_validate(tmp_path / "c.h5", classifiers=["logreg"], layers=["flatten"], folds=3))
    two = report_dict(cross_validate(tmp_path / "c.h5", classifiers=["logreg"], folds=3))
    assert significance_note(one) == "" and significance_note(two).startswith("p vs #1: two-sided corrected")


def test_composite_layer_is_the_two_layers_side_by_side(tmp_path):
    X, y = synthetic_cache(tmp_path / "c.h5")
    report = cross_validate(
        tmp_path / "c.h5", classifiers=["logreg"], layers=["flatten+layer3", "layer3"], folds=3, seed=2
    )
    both = np.hstack([X, X[:, :8] * 2 + 1])
    theirs = sk_cross_validate(
        make_classifier("logreg", seed=2),
        both,
        y,
        scoring="balanced_accuracy",
        cv=RepeatedStratifiedKFold(n_splits=3, n_repeats=1, random_state=2),
    )
    result = report.result("logreg", "flatten+layer3")
    np.testing.assert_allclose(result.fold_scores("balanced_accuracy"), theirs["test_score"], atol=1e-12)
    d = report_dict(report)
    assert {r["layer"]: r["features"] for r in d["leaderboard"]} == {"flatten+layer3": 24, "layer3": 8}
    with pytest.raises(FeaturebankError, match=r"layer 'layer4' is not in"):
        cross_validate(tmp_path / "c.h5", classifiers=["logreg"], layers=["flatten+layer4"], folds=3)
    with pytest.raises(FeaturebankError, match=r"names a layer twice"):
        cross_validate(tmp_path / "c.h5", classifiers=["logreg"], layers=["flatten+flatten"], folds=3)


def test_rows_are_taken_in_place_in_any_order():
    from classifiers.data import take_rows_in_place

    rng = np.random.default_rng(0)
    for n, m in ((50, 50), (50, 31), (1000, 999), (7, 1)):
        X = rng.normal(size=(n, 5)).astype(np.float32)
        rows = rng.choice(n, m, replace=False)
        expected = X[rows]
        got = take_rows_in_place(X, rows)
        assert np.shares_memory(got, X) and (got == expected).all()
        X = rng.normal(size=(n, 5)).astype(np.float32)
        sorted_rows = np.sort(rows)
        expected = X[sorted_rows]
        assert (take_rows_in_place(X, sorted_rows) == expected).all()


def test_cv_holds_one_layer_at_a_time(tmp_path, monkeypatch):
    """Each layer read from a cache is gone before the next is read, across layers, composites and caches (a
    cache with its rows in another order and an unlabeled row included: no second copy while aligning)."""
    import gc
    import weakref

    from classifiers.data import Labeled
    from embedder.cache.hdf5 import CacheReader

    X, y = synthetic_cache(tmp_path / "a.h5")
    paths = [f"class{c}/img{i:03d}.jpg" for i, c in enumerate(y)]
    write_cache(
        tmp_path / "b.h5",
        paths[::-1] + ["x/unlabeled.jpg"],
        [f"class{c}" for c in y[::-1]] + [""],
        {"b1": np.vstack([X[::-1], X[:1]]), "b2": np.vstack([X[::-1], X[:1]])},
        {"backbone": "vgg11"},
    )
    read, labeled_features = CacheReader.features, Labeled.features
    refs, alive, in_place = [], [], []

    def features(self, layer=None):  # every array read from a cache, and how many earlier ones still live
        gc.collect()
        alive.append(sum(r() is not None for r in refs))
        out = read(self, layer)
        refs.append(weakref.ref(out))
        return out

    def aligned_features(self, layer):  # the matrices cv works on (a composite's too)
        out = labeled_features(self, layer)
        in_place.append(np.shares_memory(out, refs[-1]()))  # in the buffer read, not a copy of it
        refs.append(weakref.ref(out))
        return out

    monkeypatch.setattr(CacheReader, "features", features)
    monkeypatch.setattr(Labeled, "features", aligned_features)
    cross_validate([tmp_path / "a.h5", tmp_path / "b.h5"], classifiers=["ridge"], layers=None, folds=3)
    assert alive == [0, 0, 0, 0]  # flatten, layer3 of a.h5; b1, b2 of b.h5
    assert in_place == [True] * 4
    report = cross_validate([tmp_path / "b.h5"], classifiers=["ridge"], layers=["b1+b2", "b2"], folds=3)
    assert len(report.results) == 2 and alive[4:] == [0, 0, 0]  # b1, b2 of the composite, then b2


def test_groups_that_leave_a_fold_training_on_one_class_are_one_line_before_any_fit():
    """Each class in groups of its own, 2 folds: each fold would train on one class. It had failed inside the fold
    with "one class, '0'" (the class's index), or a traceback before the zoo checked its input."""
    from classifiers.crossval import make_splits

    y = np.array([0] * 6 + [1] * 6)
    with pytest.raises(FeaturebankError, match=r"fold 1 \(repeat 1\) would train on one class only \((ants|bees)\)"):
        make_splits(y, np.array(["a"] * 6 + ["b"] * 6), folds=2, classes=["ants", "bees"])
    assert len(make_splits(y, np.array(list("abcdef") * 2), folds=2, classes=["ants", "bees"])) == 2
