"""Calibrated probabilities for every zoo entry (``classifiers.calibration``): the ECE as defined, the temperature
as scikit-learn's, the margin temperature that lowers a held-out ECE one temperature cannot, calibration that lowers a deliberately over-confident model's held-out ECE and changes no
prediction, every entry's rows summing to one after ``train``, the one-image-per-class fallback said in the model
file, ``--no-calibrate`` end to end, ``evaluate``'s ECE and ``cv``'s cross-fitted ECE with its reliability diagram."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import digest, synthetic_cache
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

import cli
from classifiers.bundle import evaluate, load_bundle, pseudo_labels, train
from classifiers.calibration import (
    apply_calibration,
    apply_temperature,
    calibrate,
    cross_fitted,
    fit_calibration,
    fit_temperature,
    out_of_fold,
    platt_targets,
    raw_scores,
    scale_mismatch,
    softmax,
)
from classifiers.crossval import cross_validate
from classifiers.metrics import chance_ece, ece, reliability
from classifiers.report.writer import report_dict
from classifiers.zoo import get_spec, make_classifier


def test_ece_is_the_row_weighted_gap_between_accuracy_and_confidence_over_15_bins():
    # four rows at confidence 0.9 (3 right: accuracy 0.75), two at 0.6 (both right), top label first column
    proba = np.array([[0.9, 0.1]] * 4 + [[0.6, 0.4]] * 2)
    y = np.array([0, 0, 0, 1, 0, 0])
    assert ece(y, proba) == pytest.approx((4 * abs(0.75 - 0.9) + 2 * abs(1.0 - 0.6)) / 6)
    cells = reliability(y, proba)
    assert len(cells) == 15 and sum(c["count"] for c in cells) == 6
    high = next(c for c in cells if c["low"] <= 0.9 < c["high"])
    assert (high["count"], high["accuracy"], high["confidence"]) == (4, 0.75, pytest.approx(0.9))
    assert ece(np.array([0, 1]), np.array([[1.0, 0.0], [0.0, 1.0]])) == 0.0  # a confidence of 1 sits in the last bin


def test_the_chance_ece_is_the_ece_of_labels_drawn_from_the_models_own_probabilities():
    rng = np.random.default_rng(1)
    proba = rng.dirichlet([0.3] * 5, size=550)
    chance = chance_ece(proba)
    top, conf = proba.argmax(axis=1), proba.max(axis=1)
    drawn = [ece(np.where(rng.random(550) < conf, top, (top + 1) % 5), proba) for _ in range(400)]
    assert chance["mean"] == pytest.approx(np.mean(drawn), abs=0.003)
    assert chance["p95"] == pytest.approx(np.percentile(drawn, 95), abs=0.006)
    assert chance_ece(np.eye(3)[[0, 1, 2, 0]]) == {"mean": 0.0, "p95": 0.0}  # certain and right: nothing by chance


def test_the_temperature_is_scikit_learns_on_the_same_folds():
    """``CalibratedClassifierCV(method="temperature", ensemble=False)`` on the same folds: our T is its 1/beta."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(150, 5)) + np.eye(3, 5)[np.arange(150) % 3] * 1.5
    y = np.arange(150) % 3
    folds = list(StratifiedKFold(5, shuffle=True, random_state=0).split(X, y))
    theirs = CalibratedClassifierCV(LogisticRegression(C=10.0), method="temperature", ensemble=False, cv=folds)
    theirs.fit(X, y)
    beta = float(theirs.calibrated_classifiers_[0].calibrators[0].beta_)
    oof = np.zeros((150, 3))
    for train_rows, test_rows in folds:
        oof[test_rows] = LogisticRegression(C=10.0).fit(X[train_rows], y[train_rows]).predict_proba(X[test_rows])
    assert fit_temperature(oof, "probability", y, smooth=False) == pytest.approx(1.0 / beta, rel=1e-4)
    # Platt's targets move it by one row's doubt in 150: a little warmer, within 10 %
    assert 1.0 / beta < fit_temperature(oof, "probability", y) < 1.1 / beta


def test_scores_that_separate_every_row_get_a_finite_temperature_from_platts_targets():
    """Twenty out-of-fold rows, all right (a few labelled images): the labels alone drive the temperature to its
    bound (certainty, and a log-loss without bound on the next image it gets wrong); Platt's targets,
    (n + 1) / (n + 2) on the row's class, keep the fitted confidence at that level."""
    rng = np.random.default_rng(0)
    y = np.arange(20) % 2
    d = rng.uniform(0.2, 1.5, 20) * np.where(y == 1, 1.0, -1.0)  # a decision score on the right side of 0
    z = np.column_stack([-d, d])
    certain = apply_temperature(z, "decision", fit_temperature(z, "decision", y, smooth=False))
    assert certain[np.arange(20), y].min() > 0.9999
    for found in (fit_calibration(z, "decision", y), {"temperature": fit_temperature(z, "decision", y)}):
        p = apply_calibration(z, "decision", found)
        assert 0.8 < p[np.arange(20), y].mean() < 21 / 22 + 0.01
        wrong = apply_calibration(-z[:1], "decision", found)[0, y[0]]  # the same score on the wrong side
        assert -np.log(wrong) < 5.0
    targets = platt_targets(np.array([0, 0, 1, 2]), 3)
    np.testing.assert_allclose(targets[0], [5 / 6, 1 / 12, 1 / 12])
    np.testing.assert_allclose(targets.sum(axis=1), 1.0)
    np.testing.assert_array_equal(platt_targets(np.array([0, 2]), 3, smooth=False), [[1, 0, 0], [0, 0, 1]])


def test_inner_folds_side_by_side_give_the_scores_of_one_at_a_time():
    X, y, _, _ = over_confident()
    model = make_classifier("rbf-svm")
    one = out_of_fold(model, X, y, seed=3, jobs=1)
    two = out_of_fold(model, X, y, seed=3, jobs=2)
    # the same folds and fits; BLAS on one thread per fold sums in another order than on two (an AVX2-only CPU
    # differs in the 15th digit), so equal to rounding, not to the bit
    np.testing.assert_allclose(one[0], two[0], rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(one[2], two[2])
    assert one[1] == two[1] == "decision" and sorted(set(one[2].tolist())) == [0, 1, 2, 3, 4]


def over_confident(seed=0, n=550, d=60):
    """Two overlapping classes in 60 dimensions and a nearly unregularized logistic regression on 150 of them: it
    separates its training rows and says 0.99 where it is right about 74 % of the time."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    X = rng.normal(size=(n, d)) + 0.3 * y[:, None]
    return X[:150], y[:150], X[150:], y[150:]


def test_calibration_lowers_the_held_out_ece_of_an_over_confident_model_and_changes_no_prediction():
    X, y, X_test, y_test = over_confident()
    model = LogisticRegression(C=1e4, max_iter=5000)
    found = calibrate(model, X, y, seed=0)
    assert found["method"] == "margin-temperature" and found["input"] == "probability" and found["folds"] == 5
    assert found["temperature"] > 2  # softened
    fitted = model.fit(X, y)
    raw, kind = raw_scores(fitted, X_test)
    after = apply_calibration(raw, kind, found)
    assert ece(y_test, raw) > 0.2  # the over-confident model, on 400 rows nothing was fit or calibrated on
    assert ece(y_test, after) < 0.4 * ece(y_test, raw)
    np.testing.assert_array_equal(after.argmax(axis=1), raw.argmax(axis=1))


def margin_dependent(seed, n, classes=3):
    """Scores whose over-confidence grows with the margin: the true probabilities are ``softmax(z * 2 / (1 +
    margin))``, so that rows with a small margin are under-stated and rows with a large one over-stated; labels
    drawn from them. No one temperature fits both ends."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=3.0, size=(n, classes))
    top = np.sort(z, axis=1)
    truth = softmax(z * (2.0 / (1.0 + top[:, -1] - top[:, -2]))[:, None])
    y = (rng.random((n, 1)) > np.cumsum(truth, axis=1)).sum(axis=1)
    return z, np.minimum(y, classes - 1)


def test_the_margin_temperature_lowers_the_held_out_ece_where_one_temperature_cannot_and_keeps_the_order():
    z, y = margin_dependent(0, 2000)
    z_test, y_test = margin_dependent(1, 20000)
    one = fit_calibration(z, "decision", y, power=0)
    margin = fit_calibration(z, "decision", y)
    assert one == {"method": "temperature", "temperature": pytest.approx(fit_temperature(z, "decision", y))}
    assert margin["method"] == "margin-temperature" and margin["margin_power"] == pytest.approx(-0.5)  # its bound
    before = apply_calibration(z_test, "decision", one)
    after = apply_calibration(z_test, "decision", margin)
    assert ece(y_test, before) > 0.08  # one temperature, on 20,000 rows nothing was fit on
    assert ece(y_test, after) < 0.35 * ece(y_test, before)
    log_loss = [-np.mean(np.log(p[np.arange(len(y_test)), y_test])) for p in (before, after)]
    assert log_loss[1] < log_loss[0] - 0.03
    np.testing.assert_array_equal(after.argmax(axis=1), z_test.argmax(axis=1))  # no prediction changes


def test_a_margin_temperature_of_power_0_is_the_temperature_and_a_version_3_calibration_reads_as_before():
    rng = np.random.default_rng(0)
    p = softmax(rng.normal(scale=2.0, size=(50, 4)))
    for q in (0.0, None):
        cal = {"method": "temperature", "input": "probability", "temperature": 0.7}
        if q is not None:
            cal |= {"method": "margin-temperature", "margin_power": q, "margin_median": 1.0, "margin_range": [0.1, 5]}
        np.testing.assert_allclose(apply_calibration(p, "probability", cal), apply_temperature(p, "probability", 0.7))


def test_the_margin_fit_is_never_worse_than_one_temperature_on_the_rows_it_is_fit_on():
    """It starts at the temperature: on scores a temperature explains exactly, it stays close to it."""
    rng = np.random.default_rng(3)
    z = rng.normal(scale=2.0, size=(3000, 3))
    y = np.minimum((rng.random((3000, 1)) > np.cumsum(softmax(z / 1.5), axis=1)).sum(axis=1), 2)
    one, margin = fit_calibration(z, "decision", y, power=0), fit_calibration(z, "decision", y)
    loss = [-np.mean(np.log(apply_calibration(z, "decision", c)[np.arange(3000), y])) for c in (one, margin)]
    assert loss[1] <= loss[0] + 1e-12
    assert abs(margin["margin_power"]) < 0.1 and margin["temperature"] == pytest.approx(1.5, rel=0.1)


def test_every_zoo_entry_gives_probabilities_that_sum_to_one_after_train(tmp_path):
    X, _ = synthetic_cache(tmp_path / "c.h5", counts=(10, 8, 8), dim=8)
    specs = [
        "logreg",
        "linear-svm",
        "rbf-svm",
        "rbf-svm~nystroem",
        "knn:n_neighbors=3",
        "ridge",
        "lda",
        "random-forest:n_estimators=15",
        "extra-trees:n_estimators=15",
        "ensemble:members=lda+ridge,inner_folds=2",
    ]
    for spec in specs:
        bundle = train(str(tmp_path / "c.h5"), classifier=spec)
        proba, kind = bundle.scores(X)
        cal = bundle.calibration
        assert kind == "probability" and cal["method"] == "margin-temperature" and cal["folds"] == 5, spec
        assert proba.shape == (len(X), 3) and (proba >= 0).all(), spec
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9, err_msg=spec)
        np.testing.assert_array_equal(proba.argmax(axis=1), bundle.predict(X), err_msg=spec)
        assert cal["input"] == ("probability" if get_spec(spec.split(":")[0]).probabilities else "decision"), spec


def test_one_labelled_image_per_class_trains_and_says_it_is_not_calibrated(tmp_path):
    X, _ = synthetic_cache(tmp_path / "c.h5", counts=(1, 1, 1), dim=8)
    for spec, own in [("logreg", "its own probabilities"), ("rbf-svm", "a softmax of its decision scores")]:
        bundle = train(str(tmp_path / "c.h5"), classifier=spec)
        cal = bundle.calibration
        assert (cal["method"], cal["temperature"], cal["fits"]) == ("none", 1.0, 0)
        assert cal["note"] == (
            f"not calibrated (inner folds cannot be made: a class has 1 labelled image, inner folds need 2): {own}"
        )
        assert cal["note"] in bundle.trained_on["notes"]
        proba, kind = bundle.scores(X)
        assert kind == "probability"
        np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-9)


def test_train_says_the_cross_fitted_log_loss_each_inner_fold_calibrated_by_a_fit_on_the_others(tmp_path):
    from classifiers.report.text import train_text

    synthetic_cache(tmp_path / "c.h5", counts=(12, 10, 10), dim=8)
    bundle = train(str(tmp_path / "c.h5"), classifier="ridge")
    oof = bundle.calibration["out_of_fold"]
    y = np.searchsorted(bundle.classes, np.asarray(bundle_labels(tmp_path / "c.h5")))
    raw, kind, fold_of = out_of_fold(bundle.pipeline, bundle_rows(tmp_path / "c.h5"), y, seed=0)
    crossed, _ = cross_fitted(raw, kind, y, fold_of)
    held = -np.mean(np.log(crossed[np.arange(len(y)), y]))
    assert oof["log_loss_cross_fitted"] == pytest.approx(held, abs=1e-4)
    assert oof["log_loss_cross_fitted"] != oof["log_loss_after"]  # not the figure on the rows it was fit on
    line = next(t for t in train_text({"model": "m.fbmodel", **bundle.describe()}) if "probabilities:" in t)
    assert f"{oof['log_loss_before']:.3f} → {held:.3f}, each inner fold calibrated by a fit on the others" in line
    import copy

    said = "  calibration: it raised the held-out inner folds' log-loss here"
    for before, after, shown in ((0.30, 0.25, False), (0.230, 0.249, True)):  # said only where it rose
        d = copy.deepcopy({"model": "m.fbmodel", **bundle.describe()})
        d["trained_on"]["calibration"]["out_of_fold"].update(log_loss_before=before, log_loss_cross_fitted=after)
        assert any(t.startswith(said) for t in train_text(d)) is shown
    for power, bound in ((0.5, True), (-0.5, True), (0.3, False)):  # the power at its bound is said
        d = copy.deepcopy({"model": "m.fbmodel", **bundle.describe()})
        d["trained_on"]["calibration"].update(method="margin-temperature", margin_power=power)
        line = next(t for t in train_text(d) if "probabilities:" in t)
        assert ("(the largest power allowed)" in line) is bound and f"^{-power:.2g}" in line


def bundle_rows(path):
    import embedder

    return embedder.load(str(path))[0]


def bundle_labels(path):
    import embedder

    return embedder.load(str(path))[1]


class Scores:
    """A fitted model's stand-in: decision scores ``scale`` times the rows' first three columns."""

    classes_ = np.arange(3)

    def __init__(self, scale):
        self.scale = scale

    def decision_function(self, X):
        return self.scale * np.asarray(X)[:, :3]


def test_a_calibration_of_inner_models_on_another_scale_than_the_model_is_left_out_with_why():
    """Inner models whose held-out scores barely vary (ridge's strongest penalty on one image per class), the model
    on every row spreading its scores on unlabeled rows a thousand times wider: no calibration, said why; within a
    factor of 100 either way, or with no unlabeled rows to look at, it goes ahead."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(30, 3)), np.arange(30) % 3
    X[np.arange(30), y] += 2.0
    oof = 0.001 * X  # the inner models' scores: the same order, a thousandth of the spread
    unseen = rng.normal(size=(50, 3))
    why = scale_mismatch(Scores(1.0), unseen, oof, "decision")
    assert why.startswith("the inner folds' models score on another scale than the model on every row (median margin ")
    assert why.endswith("on unlabeled rows): a calibration of the first would not carry over")
    assert scale_mismatch(Scores(0.02), unseen, oof, "decision") is None  # 20 times: as a few labels make
    assert scale_mismatch(Scores(1e-6), unseen, oof, "decision") is not None  # the other way round
    assert scale_mismatch(Scores(1.0), None, oof, "decision") is None
    found = calibrate(LinearSVCLike(), X, y, unseen=unseen)
    assert found["method"] == "none" and "another scale" in found["note"]


class LinearSVCLike(Scores):
    """``Scores`` that fits: clones score a thousand times narrower than the fitted original (its inner models)."""

    def __init__(self, scale=1.0):
        super().__init__(scale)

    def get_params(self, deep=True):
        return {"scale": self.scale}

    def set_params(self, **params):
        self.scale = params["scale"]
        return self

    def fit(self, X, y):
        self.scale = 0.001
        return self


def test_fewer_rows_than_folds_in_a_class_calibrates_on_fewer_folds_and_says_so(tmp_path):
    synthetic_cache(tmp_path / "c.h5", counts=(12, 3, 10), dim=8)
    cal = train(str(tmp_path / "c.h5"), classifier="ridge").calibration
    assert (cal["method"], cal["folds"]) == ("margin-temperature", 3)
    assert cal["note"] == "3 inner folds, not 5: the smallest class has 3 rows"


def test_a_class_held_by_one_group_is_left_uncalibrated_with_its_reason_never_a_traceback():
    """Groups that hold a whole class leave an inner fold without that class: no temperature, said why; groups
    that cut fewer folds than asked are named as the reason."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 6))
    y = np.repeat([0, 1], 20)
    X[y == 1] += 2.0
    pipeline = make_classifier("logreg:C=1.0", seed=0)
    one_group_class = np.array(["a"] * 20 + [f"b{i % 4}" for i in range(20)], dtype=object)
    cal = calibrate(pipeline, X, y, one_group_class)
    assert (cal["method"], cal["temperature"], cal["fits"]) == ("none", 1.0, 0)
    assert "an inner fold's training rows lack a class" in cal["note"]
    three_groups = np.array([f"g{i % 3}" for i in range(40)], dtype=object)
    cal = calibrate(pipeline, X, y, three_groups)
    assert (cal["method"], cal["folds"]) == ("margin-temperature", 3)
    assert cal["note"] == "3 inner folds, not 5: the rows come in 3 groups"


@pytest.mark.integration  # two command-line runs: about 6 s
def test_no_calibrate_on_the_command_line_is_the_raw_model_end_to_end(tmp_path):
    X, _ = synthetic_cache(tmp_path / "c.h5", counts=(10, 8, 8), dim=8)
    runner = CliRunner()
    said = {}
    for flag, model in [("--no-calibrate", "raw.fbmodel"), (None, "cal.fbmodel")]:
        args = ["train", str(tmp_path / "c.h5"), "-c", "ridge", "-o", str(tmp_path / model)]
        result = runner.invoke(cli.main, args + ([flag] if flag else []))
        assert result.exit_code == 0, result.output
        said[model] = result.output
    assert (
        "probabilities: not calibrated (asked for: --no-calibrate, calibrate=False): a softmax of its decision scores"
        in said["raw.fbmodel"]
    )
    assert "probabilities: calibrated, temperature" in said["cal.fbmodel"] and "5 more fits" in said["cal.fbmodel"]
    raw, cal = load_bundle(tmp_path / "raw.fbmodel"), load_bundle(tmp_path / "cal.fbmodel")
    assert raw.calibration == {
        "method": "none",
        "input": "decision",
        "temperature": 1.0,
        "fits": 0,
        "note": "not calibrated (asked for: --no-calibrate, calibrate=False): a softmax of its decision scores",
    }
    assert cal.calibration["method"] == "margin-temperature" and cal.calibration["temperature"] != 1.0
    d = cal.pipeline.decision_function(X)
    np.testing.assert_allclose(raw.scores(X)[0], np.exp(d) / np.exp(d).sum(axis=1, keepdims=True), rtol=1e-9)
    np.testing.assert_allclose(cal.scores(X)[0], apply_calibration(d, "decision", cal.calibration))


def test_evaluate_reports_the_held_out_ece_and_log_loss_of_the_calibrated_probabilities(tmp_path):
    X, y = synthetic_cache(tmp_path / "train.h5", counts=(20, 20, 20), dim=8, seed=0)
    # 45 images, the first 5 of them the same bytes as training images 0 to 4: left out, and said
    digests = [digest(i if i < 5 else 1000 + i) for i in range(44)] + [""]  # the last one: no digest to check
    X_test, y_test = synthetic_cache(tmp_path / "test.h5", counts=(15, 15, 15), dim=8, seed=1, digests=digests)
    bundle = train(str(tmp_path / "train.h5"), classifier="rbf-svm")
    result = evaluate(bundle, str(tmp_path / "test.h5"))
    assert result["training_images"]["left_out"] == [f"class0/img00{i}.jpg" for i in range(5)]
    assert result["training_images"]["unchecked_rows"] == 1
    assert result["training_images"]["note"].endswith(
        "; 1 row(s) without a content digest in this cache could not be checked"
    )
    X_test, y_test = X_test[5:], y_test[5:]
    proba, _ = bundle.scores(X_test)
    right = int((proba.argmax(axis=1) == y_test).sum())
    assert result["rows"] == 40 and result["metrics"]["right"] == right
    assert result["metrics"]["accuracy"] == pytest.approx(right / 40)
    assert result["metrics"]["ece"] == pytest.approx(ece(y_test, proba))
    assert result["metrics"]["ece_chance"] == chance_ece(proba)
    assert result["metrics"]["log_loss"] == pytest.approx(-np.mean(np.log(proba[np.arange(len(y_test)), y_test])))
    assert result["calibration"]["method"] == "margin-temperature"
    assert sum(c["count"] for c in result["calibration"]["reliability"]) == len(y_test)
    assert [p["path"] for p in result["predictions"]][:1] == ["class0/img005.jpg"]
    from classifiers.predictions import write_evaluation_csv

    with open(write_evaluation_csv(result, str(tmp_path / "evaluated.csv")), newline="") as fh:
        rows = list(csv.DictReader(fh))  # each image's calibrated probability of its answer and of its label
    assert list(rows[0]) == ["path", "label", "predicted", "p", "p_label", "familiarity"] and len(rows) == 40
    for row, p, t in zip(rows, proba, y_test):
        assert float(row["p"]) == pytest.approx(p.max(), abs=1e-4) and float(row["p_label"]) == pytest.approx(
            p[t], abs=1e-4
        )


def test_evaluate_searches_knns_neighbours_once_and_scores_its_own_predictions(tmp_path, monkeypatch):
    from classifiers.neighbours import CosineKNeighbors

    synthetic_cache(tmp_path / "train.h5", counts=(20, 20, 20), dim=8, seed=0)
    held = [digest(1000 + i) for i in range(45)]  # other images than the training ones
    X_test, y_test = synthetic_cache(tmp_path / "test.h5", counts=(15, 15, 15), dim=8, seed=1, digests=held)
    bundle = train(str(tmp_path / "train.h5"), classifier="knn")
    searches = []
    search = CosineKNeighbors.kneighbors
    monkeypatch.setattr(
        CosineKNeighbors, "kneighbors", lambda self, *a, **k: searches.append(1) or search(self, *a, **k)
    )
    result = evaluate(bundle, str(tmp_path / "test.h5"))
    assert len(searches) == 1
    monkeypatch.undo()
    assert result["metrics"]["accuracy"] == pytest.approx(np.mean(bundle.predict(X_test) == y_test))


def test_pseudo_labels_carry_calibrated_probabilities(tmp_path):
    X, _ = synthetic_cache(tmp_path / "free.h5", counts=(6, 6, 6), dim=8, labels=False)
    synthetic_cache(tmp_path / "train.h5", counts=(10, 10, 10), dim=8)
    bundle = train(str(tmp_path / "train.h5"), classifier="linear-svm")
    out = pseudo_labels(bundle, str(tmp_path / "free.h5"), sort="path")
    assert out["score"] == "probability"
    proba, _ = bundle.scores(X)
    assert [r["confidence"] for r in out["rows"]] == pytest.approx(proba.max(axis=1).tolist())


def test_cv_reports_a_cross_fitted_ece_and_a_reliability_diagram_per_row(tmp_path):
    synthetic_cache(tmp_path / "c.h5", counts=(16, 14, 12), dim=8)
    report = cross_validate(str(tmp_path / "c.h5"), classifiers=["logreg", "ridge"], layers=["flatten"], folds=3)
    d = report_dict(report)
    assert "cross-fitted" in d["cv"]["calibration"]["of"]
    for row in d["results"]:
        result = report.result(row["classifier"], row["layer"])
        raw, kind = result.raw
        fold_of = np.zeros(len(report.data.y), dtype=int)
        for s in report.splits:
            fold_of[s.test] = s.fold
        p, _ = cross_fitted(raw[0].astype(np.float64), kind, report.data.y, fold_of)
        assert row["ece"] == pytest.approx(ece(report.data.y, p), abs=1e-4)
        assert row["calibration"]["input"] == ("decision" if row["classifier"] == "ridge" else "probability")
        assert sum(b["count"] for b in row["calibration"]["bins"]) == len(report.data.y)
        assert len(row["calibration"]["temperatures"]) == len(row["calibration"]["margin_powers"]) == 3
        assert row["calibration"]["ece_chance"] == {k: pytest.approx(v, abs=1e-4) for k, v in chance_ece(p).items()}
    logreg = next(r for r in d["results"] if r["classifier"] == "logreg")
    assert logreg["calibration"]["ece_uncalibrated"] == pytest.approx(
        ece(report.data.y, report.result("logreg", "flatten").proba[0]), abs=1e-4
    )
    assert [r["ece"] for r in d["leaderboard"]] == [
        next(x["ece"] for x in d["results"] if x["classifier"] == r["classifier"]) for r in d["leaderboard"]
    ]
    json.dumps(d)  # JSON-ready
    # the terminal's leaderboard, report.md's and leaderboard.csv carry the same ECE as report.json
    from classifiers.report.reading import leaderboard_rows
    from classifiers.report.writer import write_leaderboard_csv

    header, *cells = leaderboard_rows(d)
    at = header.index("ECE cal.")
    assert [c[at] for c in cells] == [f"{r['ece']:.3f}" for r in d["leaderboard"]]
    with open(write_leaderboard_csv(d, str(tmp_path / "board.csv")), newline="") as fh:
        board = list(csv.DictReader(fh))
    assert [float(b["ece"]) for b in board] == [r["ece"] for r in d["leaderboard"]]
    # the file travels alone: every row says what its figures were measured on
    measured = {(b["rows"], b["folds"], b["repeats"], b["seed"], b["measured_on"]) for b in board}
    assert measured == {("42", "3", "1", "0", "out of fold; #1 picked on these folds")}


def test_cvs_predictions_of_an_entry_without_probabilities_carry_its_cross_fitted_calibrated_ones(tmp_path):
    """A share of votes over one repeat is 1 for every image: ridge's predictions file gives the calibrated
    probabilities ``train`` would make instead, each fold's from a calibration fit on the others."""
    from classifiers.report.writer import write_predictions

    synthetic_cache(tmp_path / "c.h5", counts=(16, 14, 12), dim=8)
    report = cross_validate(str(tmp_path / "c.h5"), classifiers=["ridge"], layers=["flatten"], folds=3)
    result = report.result("ridge", "flatten")
    raw, kind = result.raw
    fold_of = np.zeros(len(report.data.y), dtype=int)
    for s in report.splits:
        fold_of[s.test] = s.fold
    p, _ = cross_fitted(raw[0].astype(np.float64), kind, report.data.y, fold_of)
    with open(write_predictions(report, result, str(tmp_path / "ridge.csv")), newline="") as fh:
        rows = list(csv.DictReader(fh))
    pred, _ = result.oof()
    classes = report.classes
    for i, row in enumerate(rows):
        assert row["predicted"] == classes[pred[i]]
        assert [float(row[f"p_{c}"]) for c in classes] == pytest.approx(p[i], abs=1e-4)
        assert float(row["confidence"]) == pytest.approx(p[i, pred[i]], abs=1e-4)
    assert min(float(r["confidence"]) for r in rows) < 0.99  # not the share of votes of one repeat


def test_the_report_page_draws_a_reliability_diagram_per_row(tmp_path):
    from classifiers.report.html import reliability_charts

    synthetic_cache(tmp_path / "c.h5", counts=(16, 14, 12), dim=8)
    report = cross_validate(str(tmp_path / "c.h5"), classifiers=["logreg", "ridge"], layers=["flatten"], folds=3)
    d = report_dict(report)
    charts = reliability_charts(d)
    assert [c["name"].split(" @ ")[0] for c in charts] == [r["classifier"] for r in d["leaderboard"]]
    for c, row in zip(charts, d["leaderboard"]):
        result = next(r for r in d["results"] if r["classifier"] == row["classifier"])
        assert c["ece"] == f"{result['ece']:.3f}"
        assert len(c["bars"]) == sum(1 for b in result["calibration"]["bins"] if b["count"])
    d_old = {**d, "results": [{k: v for k, v in r.items() if k != "calibration"} for r in d["results"]]}
    assert reliability_charts(d_old) == []  # a run written before calibration was reported: no section


def test_the_accuracy_interval_is_wilsons():
    from classifiers.metrics import wilson

    # textbook values (Wilson 1927; Newcombe 1998, Statistics in Medicine 17:857, Table I): 0 of 10, 10 of 10
    assert wilson(0, 10) == (0.0, pytest.approx(0.2775, abs=1e-4))
    assert wilson(10, 10) == (pytest.approx(0.7225, abs=1e-4), 1.0)
    lo, hi = wilson(148, 153)  # hymenoptera's val/ at 96.7 %: about 92.6 to 98.6
    assert (round(lo, 3), round(hi, 3)) == (0.926, 0.986) and wilson(0, 0) == (0.0, 1.0)


def test_evaluate_scores_the_class_of_the_highest_score_as_predict_and_the_exported_file_answer(tmp_path):
    """The RBF SVM's own predict counts libsvm's one-vs-one votes; predict and an ONNX file answer the class of the
    highest score. evaluate scores the latter, the model a user ships, where the two differ (tied votes)."""
    centers = np.random.default_rng(1).normal(0, 1.0, (4, 8))
    synthetic_cache(tmp_path / "train.h5", counts=(30,) * 4, dim=8, seed=1, centers=centers)
    X, y = synthetic_cache(
        tmp_path / "test.h5", counts=(60,) * 4, dim=8, seed=2, centers=centers,
        digests=[digest(10_000 + i) for i in range(240)],
    )  # fmt: skip
    bundle = train(str(tmp_path / "train.h5"), classifier="rbf-svm", calibrate=False, out=str(tmp_path / "m.fbmodel"))
    votes = bundle.pipeline.predict(X)
    highest = np.asarray(bundle.pipeline.classes_)[bundle.scores(X)[0].argmax(axis=1)]
    assert (votes != highest).sum() > 0  # the data has tied votes: else this test could not tell the two apart
    assert np.array_equal(bundle.predict(X), highest)  # the Python API's Bundle.predict answers as the file does
    result = evaluate(str(tmp_path / "m.fbmodel"), str(tmp_path / "test.h5"))
    assert result["metrics"]["accuracy"] == pytest.approx(np.mean(highest == y))
    assert result["metrics"]["accuracy"] != pytest.approx(np.mean(votes == y))


def test_the_model_file_and_train_say_what_the_tuned_classifier_chose(tmp_path):
    """The probe's C and the ridge's alpha, chosen at fit time, are in the model file's trained_on and in train's
    text; a fixed one (logreg:C=0.1) is not a choice."""
    from classifiers.report.text import train_text

    synthetic_cache(tmp_path / "c.h5", counts=(20, 20, 20), dim=8)
    for spec, name, attr, by in (
        ("logreg", "C", "C_", {"by": "log-loss"}),
        ("logreg:scoring=accuracy", "C", "C_", {"by": "accuracy"}),
        ("ridge", "alpha", "alpha_", {}),
    ):
        bundle = train(str(tmp_path / "c.h5"), classifier=spec, out=str(tmp_path / "m.fbmodel"))
        chosen = getattr(bundle.pipeline.named_steps["clf"], attr)
        assert load_bundle(str(tmp_path / "m.fbmodel")).trained_on["chosen"] == {name: chosen, **by}
        text = "\n".join(train_text({"model": "m.fbmodel", **bundle.describe()}))
        assert f"  chose {name} = {chosen:.3g} " in text and (f", by {by['by']}" in text if by else ", by" not in text)
    fixed = train(str(tmp_path / "c.h5"), classifier="logreg:C=0.1")
    assert "chosen" not in fixed.trained_on
    synthetic_cache(tmp_path / "one.h5", counts=(1, 1, 1), dim=8)  # inner folds impossible: the fixed fallback
    fallback = train(str(tmp_path / "one.h5"), classifier="logreg")
    assert "chosen" not in fallback.trained_on
    assert not any(t.startswith("  chose ") for t in train_text({"model": "m", **fallback.describe()}))


def test_evaluate_says_when_the_ece_is_above_what_a_calibrated_model_shows_by_chance(tmp_path):
    """Both figures were printed side by side and the reader had to compare them: above the 95th percentile of a
    calibrated model's ECE on as many rows, the line says the probabilities are not calibrated there."""
    from classifiers.report.text import evaluate_text

    synthetic_cache(tmp_path / "train.h5", counts=(20, 20, 20), dim=6, seed=1)
    synthetic_cache(
        tmp_path / "test.h5", counts=(20, 20, 20), dim=6, seed=2, digests=[digest(50_000 + i) for i in range(60)]
    )
    train(str(tmp_path / "train.h5"), classifier="logreg", out=str(tmp_path / "m.fbmodel"))
    d = evaluate(str(tmp_path / "m.fbmodel"), str(tmp_path / "test.h5"))
    chance = d["metrics"]["ece_chance"]
    for ece_value, said in ((chance["p95"] + 0.01, True), (chance["mean"], False)):
        line = evaluate_text({**d, "metrics": {**d["metrics"], "ece": ece_value}})[1]
        assert ("above it: these probabilities are not calibrated here)" in line) == said, line
