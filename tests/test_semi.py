"""Few labels, many images: every zoo entry at one label per class, --labels, unlabeled rows that help (label
spreading, its switch-off rule), cv with and without them, pseudo-labels of a cache."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import synthetic_cache
from sklearn.preprocessing import StandardScaler

import cli
from classifiers.bundle import load_bundle, pseudo_labels, train
from classifiers.crossval import cross_validate
from classifiers.folds import fallbacks
from classifiers.report.writer import report_dict, write_report
from classifiers.semi import UNLABELED, SemiSupervised, knn_graph, spread
from classifiers.zoo import list_classifiers, make_classifier
from embedder.kernel.errors import FeaturebankError
from embedder.kernel.store import sha256_of


def blobs(n=40, dim=8, gap=8.0, seed=0):
    """Two tight blobs far apart, ``n`` rows each."""
    rng = np.random.default_rng(seed)
    centres = np.zeros((2, dim))
    centres[1, 0] = gap
    centres[:, 1] = 3.0  # off the origin, so that cosine similarity separates them as well
    y = np.repeat([0, 1], n)
    return (centres[y] + rng.normal(0, 0.5, (2 * n, dim))).astype(np.float32), y


def test_label_spreading_on_two_separated_blobs_labels_every_point():
    X, y = blobs()
    seeds = np.array([0, len(y) - 1])  # one label per blob
    proba = spread(knn_graph(X, 5), seeds, y[seeds], 2)
    assert (proba.argmax(axis=1) == y).all()
    assert np.allclose(proba.sum(axis=1), 1.0) and proba.min() >= 0
    partial = np.full(len(y), UNLABELED)
    partial[seeds] = y[seeds]
    model = SemiSupervised(make_classifier("logreg")).fit(X, partial)
    assert model.used_ and model.pseudo_ == len(y) - 2 and model.decision_.startswith("used, not checked")
    assert (model.predict(X) == y).all()


def hurtful(n=60, seed=0):
    """A class told by one feature that the cosine graph cannot see: the other 15 features are large noise shared
    by both classes, so each row's nearest neighbours (by angle) are of either class at random, while a linear
    probe on standardized features finds the one that matters."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.repeat([0, 1], n))
    X = rng.normal(0, 10.0, (2 * n, 16))
    X[:, 0] = 4.0 * y + rng.normal(0, 0.3, 2 * n)
    return X.astype(np.float32), y


def test_the_switch_off_rule_leaves_the_unlabeled_rows_out_where_they_hurt():
    X, y = hurtful()
    rng = np.random.default_rng(1)
    seeds = np.concatenate([rng.choice(np.flatnonzero(y == c), 6, replace=False) for c in (0, 1)])
    partial = np.full(len(y), UNLABELED)
    partial[seeds] = y[seeds]

    # a fixed probe on per-feature standardized features: the rule is under test, not the probe's own tuning (nor
    # the zoo's shrunk scale step, which pulls the one small-variance feature that carries the class toward the 15
    # large noise ones: the probe alone scores 66 % with it, 79 % with StandardScaler)
    def probe():
        return make_classifier("logreg:C=1.0").set_params(scale=StandardScaler())

    forced = SemiSupervised(probe(), switch=False).fit(X, partial)
    alone = probe().fit(X[seeds], y[seeds])
    # the pseudo-labels are noise here: fit on them, the probe is worse than on the 12 labels alone
    assert np.mean(forced.predict(X) == y) < np.mean(alone.predict(X) == y) - 0.1
    model = SemiSupervised(probe()).fit(X, partial)
    assert not model.used_ and model.pseudo_ == 0 and model.decision_.startswith("left out")
    assert model.inner_["with"] < model.inner_["without"]
    inner = model.inner_  # said as counts of the held-out predictions that decided, not as an estimate
    assert inner["right_without"] == round(inner["without"] * inner["rows"])
    assert inner["right_with"] == round(inner["with"] * inner["rows"])
    assert model.decision_ == (
        f"left out: on inner folds of the 12 labelled rows, the classifier alone right {inner['right_without']} "
        f"times of {inner['rows']}, label spreading's pseudo-labels {inner['right_with']} times (the held-out "
        "predictions that decided: not an estimate of the model); --unlabeled-rule always fits on them whatever the "
        "inner folds say"
    )
    assert (model.predict(X) == alone.predict(X)).all()  # the same fit as the labels alone


def test_the_switch_keeps_them_where_they_help():
    X, y = blobs(n=60, gap=3.0, seed=2)
    X[:, 2:] += np.random.default_rng(3).normal(0, 2.0, (len(y), X.shape[1] - 2))  # noisy labels alone
    rng = np.random.default_rng(4)
    seeds = np.concatenate([rng.choice(np.flatnonzero(y == c), 3, replace=False) for c in (0, 1)])
    partial = np.full(len(y), UNLABELED)
    partial[seeds] = y[seeds]
    probe = make_classifier("logreg:C=1.0").set_params(scale=StandardScaler())  # the probe these rows were made for
    model = SemiSupervised(probe, inner_repeats=3).fit(X, partial)
    assert model.inner_["with"] >= model.inner_["without"] and model.used_


def test_a_tie_on_the_inner_folds_uses_the_unlabeled_rows():
    X, y = blobs(n=30, seed=3)  # far apart: the probe alone and the pseudo-labels are right on every held-out row
    seeds = np.concatenate([np.flatnonzero(y == c)[:6] for c in (0, 1)])
    partial = np.full(len(y), UNLABELED)
    partial[seeds] = y[seeds]
    model = SemiSupervised(make_classifier("logreg:C=1.0")).fit(X, partial)
    assert model.inner_["right_with"] == model.inner_["right_without"] == model.inner_["rows"]
    assert model.used_ and model.pseudo_ == len(y) - 12 and model.decision_.startswith("used: on inner folds")
    assert model.decision_.endswith(
        "times (a tie uses them; the held-out predictions that decided: not an estimate of the model)"
    )


def one_per_class_cache(tmp_path, counts=(6, 6, 6)):
    """A cache extracted without labels and a path,label CSV naming one image per class."""
    X, y = synthetic_cache(tmp_path / "c.h5", counts=counts, labels=False, seed=5)
    from embedder.cache.hdf5 import CacheReader

    paths = CacheReader(str(tmp_path / "c.h5")).paths
    first = [int(np.flatnonzero(y == c)[0]) for c in range(len(counts))]
    csv = tmp_path / "labelled.csv"
    csv.write_text("path,label\n" + "".join(f"{paths[i]},class{y[i]}\n" for i in first))
    return str(tmp_path / "c.h5"), str(csv), X, y, first


# every zoo entry as built, the tree ensembles with 30 trees (300 on a dozen rows only cost the fast tier seconds)
EVERY_ENTRY = [n + (":n_estimators=30" if n in ("random-forest", "extra-trees") else "") for n in list_classifiers()]


@pytest.mark.parametrize("spec", EVERY_ENTRY)
def test_every_zoo_entry_trains_on_one_labelled_image_per_class(tmp_path, spec):
    cache, csv, X, y, first = one_per_class_cache(tmp_path)
    bundle = train(cache, classifier=spec, out=str(tmp_path / "m.fbmodel"), labels=csv)
    assert bundle.trained_on["rows"] == 3 and bundle.trained_on["class_counts"] == {f"class{c}": 1 for c in range(3)}
    assert bundle.trained_on["labels"] == {"csv": csv, "sha256": sha256_of(csv)}
    assert (bundle.predict(X[first]) == [0, 1, 2]).all()  # each labelled image is its own class
    expected = {"logreg": "logreg: C=0.1 fixed", "knn": "knn: k=3", "lda": "lda: one labelled image per class"}
    if spec in expected:
        assert any(n.startswith(expected[spec]) for n in bundle.trained_on["notes"])
    if spec == "ensemble":
        assert any("rbf-svm left out" in n for n in bundle.trained_on["notes"])
    loaded = load_bundle(str(tmp_path / "m.fbmodel"))
    assert (loaded.predict(X) == bundle.predict(X)).all()


@pytest.mark.parametrize("spec", EVERY_ENTRY)
def test_every_zoo_entry_cross_validates_at_one_labelled_image_per_class(tmp_path, spec):
    synthetic_cache(tmp_path / "c.h5", counts=(4, 4, 4), seed=6)
    report = cross_validate(
        str(tmp_path / "c.h5"), classifiers=[spec], layers=["flatten"], folds=2, shots="1,all", draws=2, extras=None
    )
    curve = {r["shots"]: r for r in report.curve}
    assert curve[1]["draws"] == 2 and 0.0 <= curve[1]["mean"] <= 1.0
    assert curve["all"]["mean"] == report.results[0].metric("balanced_accuracy")["mean"]


def test_cv_refuses_one_image_per_class_in_one_line(tmp_path):
    cache, csv, *_ = one_per_class_cache(tmp_path)
    with pytest.raises(FeaturebankError, match="1 labelled image: cross-validation .* cv --shots"):
        cross_validate(cache, classifiers=["logreg"], layers=["flatten"], folds=2, labels=csv, extras=None)


def test_train_with_unlabeled_rows_records_what_was_decided(tmp_path):
    cache, csv, X, y, first = one_per_class_cache(tmp_path, counts=(10, 10, 10))
    bundle = train(cache, classifier="logreg", labels=csv, unlabeled=True)
    u = bundle.trained_on["unlabeled"]
    assert u["rows"] == 27 and u["mode"] == "spread" and u["used"] and u["pseudo_labelled"] == 27
    assert u["decision"].startswith("used, not checked: a class has 1 labelled image")
    assert type(bundle.pipeline).__name__ == "Pipeline"  # the classifier as fit: a plain zoo Pipeline
    from classifiers.report.text import train_text

    chose = [t for t in train_text({"model": "m", **bundle.describe()}) if t.startswith("  chose C = ")]
    assert chose and "on held-out training rows (its labelled and 27 pseudo-labelled rows), by log-loss" in chose[0]
    with pytest.raises(FeaturebankError, match="no unlabeled rows for --unlabeled: .*it never unlabels one"):
        synthetic_cache(tmp_path / "full.h5", counts=(3, 3))
        train(str(tmp_path / "full.h5"), classifier="logreg", unlabeled=True)


def partly_labelled(tmp_path, labelled_per_class=4, counts=(14, 14)):
    """A cache without labels, and a CSV labelling the first ``labelled_per_class`` images of each class."""
    X, y = synthetic_cache(tmp_path / "c.h5", counts=counts, labels=False, seed=7, dim=8)
    from embedder.cache.hdf5 import CacheReader

    paths = CacheReader(str(tmp_path / "c.h5")).paths
    chosen = [int(i) for c in range(len(counts)) for i in np.flatnonzero(y == c)[:labelled_per_class]]
    csv = tmp_path / "labelled.csv"
    csv.write_text("path,label\n" + "".join(f"{paths[i]},class{y[i]}\n" for i in chosen))
    return str(tmp_path / "c.h5"), str(csv), paths, chosen


def test_cv_unlabeled_scores_only_labelled_held_out_rows_side_by_side(tmp_path):
    cache, csv, paths, chosen = partly_labelled(tmp_path)
    report = cross_validate(
        cache, classifiers=["logreg:C=1.0", "knn"], layers=["flatten"], folds=2, labels=csv, unlabeled=True, extras=None
    )
    names = [r.classifier for r in report.results]
    assert names == ["logreg:C=1.0", "logreg:C=1.0 +unlabeled", "knn", "knn +unlabeled"]
    for r in report.results:
        assert r.predictions.shape == (1, len(chosen))  # the labelled rows only, each held out once
        assert sorted(i for s in report.splits for i in s.test) == list(range(len(chosen)))
    assert set(report.data.paths.tolist()) == {paths[i] for i in chosen}
    d = report_dict(report)
    pairs = {p["classifier"]: p for p in d["unlabeled"]["pairs"]}
    assert set(pairs) == {"logreg:C=1.0", "knn"} and d["unlabeled"]["rows"] == 28 - len(chosen)
    assert pairs["logreg:C=1.0"]["without"]["mean"] == round(
        report.result("logreg:C=1.0", "flatten").metric("balanced_accuracy")["mean"], 4
    )
    with_rows = report.result("logreg:C=1.0 +unlabeled", "flatten")
    assert pairs["logreg:C=1.0"]["with"]["mean"] == round(with_rows.metric("balanced_accuracy")["mean"], 4)
    assert with_rows.unlabeled["folds"] == 2 and len(with_rows.unlabeled["decisions"]) == 2
    # the difference paired by fold, and its corrected t-test on the same folds
    from classifiers.significance import corrected_t_test

    alone, joined = report.result("logreg:C=1.0", "flatten").fold_scores(), with_rows.fold_scores()
    n_train, n_test = (float(np.mean([len(getattr(s, side)) for s in report.splits])) for side in ("train", "test"))
    assert pairs["logreg:C=1.0"]["difference"] == round(float(np.mean(joined - alone)), 4)
    assert pairs["logreg:C=1.0"]["p_value"] == float(f"{corrected_t_test(joined, alone, n_train, n_test)[1]:.4g}")
    assert d["unlabeled"]["held_out_rows"] == len(chosen)
    files = write_report(report, str(tmp_path / "run"), 20, d)
    written = (tmp_path / "run" / "predictions").iterdir()
    for f in written:
        listed = {line.split(",")[0] for line in f.read_text().splitlines()[1:]}
        assert listed == {paths[i] for i in chosen}  # no unlabeled row is ever predicted or scored
    html = (tmp_path / "run" / "report.html").read_text()
    assert "With and without the unlabeled rows" in html and "logreg:C=1.0 +unlabeled" in html
    unlabeled = 28 - len(chosen)  # the page's facts say what the terminal and report.md say of them
    assert f"{unlabeled} unlabeled joined the training folds of the +unlabeled rows" in html
    assert "unlabeled left out" not in html
    md = (tmp_path / "run" / "report.md").read_text()
    assert "## With and without the unlabeled rows" in md and "| with - without, p |" in md
    assert f"Balanced accuracy on {len(chosen)} labelled held-out images; p: the corrected resampled t-test" in md
    assert files


def test_learning_curve_all_equals_plain_cv_and_draws_are_reproducible(tmp_path):
    synthetic_cache(tmp_path / "c.h5", counts=(12, 10, 8), seed=8)
    cache = str(tmp_path / "c.h5")
    specs = ["logreg:C=1.0", "knn"]  # fixed, fast entries: the curve is under test
    plain = cross_validate(cache, classifiers=specs, layers=["flatten"], folds=3, extras=None)
    curved = cross_validate(
        cache, classifiers=specs, layers=["flatten"], folds=3, shots="1,2,5,all", draws=2, extras=None, n_jobs=2
    )
    again = cross_validate(
        cache, classifiers=specs, layers=["flatten"], folds=3, shots=[5, 1, 2, "all"], draws=2, extras=None, n_jobs=1
    )
    assert curved.curve == again.curve  # seeded by place: the same draws, the same scores, side by side or not
    for spec in specs:
        points = {r["shots"]: r for r in curved.curve if r["classifier"] == spec and not r.get("projection")}
        assert list(points) == [1, 2, 5, "all"]
        assert points["all"]["mean"] == plain.result(spec, "flatten").metric("balanced_accuracy")["mean"]
        assert points["all"]["std"] == plain.result(spec, "flatten").metric("balanced_accuracy")["std"]
        assert all(points[k]["draws"] == 2 for k in (1, 2, 5))
    d = report_dict(curved)
    assert d["learning_curve"] == curved.curve
    for row in d["learning_curve"]:
        assert {"shots", "classifier", "metric", "mean", "std", "draws"} <= set(row)
        assert row["metric"] == "balanced_accuracy"
    json.dumps(d)  # JSON-ready
    from classifiers.report.text import cv_text
    from classifiers.report.writer import markdown

    assert "## Learning curve" in markdown(d) and "| logreg:C=1.0 @ flatten |" in markdown(d)
    assert any(line.startswith("Learning curve: balanced accuracy") for line in "\n".join(cv_text(d)).splitlines())
    # what each ± is over: the draws, all scored on the same held-out images; all's over the folds
    said = f"(± over 2 draws, all scored on the same {d['rows']} held-out images; all: the leaderboard, ± over folds;"
    assert said in "\n".join(cv_text(d))
    assert f"scored on the held-out rows ({d['rows']} labelled images, each once a repeat" in markdown(d)


def test_shots_draws_depend_on_the_seed_and_take_k_per_class():
    from classifiers.shots import draw_rows, parse_shots, projection

    y = np.repeat([0, 1, 2], [5, 3, 1])
    train_rows = np.arange(len(y))
    a = draw_rows(train_rows, y, 2, np.random.default_rng([0, 2, 0, 0]))
    b = draw_rows(train_rows, y, 2, np.random.default_rng([0, 2, 0, 0]))
    c = draw_rows(train_rows, y, 2, np.random.default_rng([1, 2, 0, 0]))
    assert (a == b).all() and np.bincount(y[a]).tolist() == [2, 2, 1]  # a class with fewer: all of it
    assert np.bincount(y[c]).tolist() == [2, 2, 1]
    assert parse_shots("10, 1,all,2") == [1, 2, 10, "all"]
    with pytest.raises(FeaturebankError, match="whole numbers"):
        parse_shots("0,2")
    # a power law through 1 - score = 0.5 k^-0.5: twice the largest k is projected on the same law
    points = [(k, 1 - 0.5 * k**-0.5) for k in (1, 2, 4, 8)]
    k, score = projection(points)
    assert k == 16 and score == pytest.approx(1 - 0.5 * 16**-0.5)
    assert projection([(1, 0.5), (2, 0.9), (4, 0.9)]) is None  # flat at the end: nothing projected


@pytest.mark.integration  # the whole report: map, thumbnails, page
def test_cv_shots_on_the_command_line_prints_the_curve_and_writes_it(tmp_path):
    synthetic_cache(tmp_path / "c.h5", counts=(8, 8), seed=9)
    out = tmp_path / "run"
    result = CliRunner().invoke(
        cli.main,
        [
            "cv",
            str(tmp_path / "c.h5"),
            "-c",
            "logreg",
            "-l",
            "flatten",
            "--folds",
            "2",
            "--shots",
            "1,2,all",
            "--draws",
            "2",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "Learning curve" in result.output and "k=1" in result.output
    assert "note: logreg: C=0.1 fixed" in result.output  # the fallback, said once
    d = json.loads((out / "report.json").read_text())
    assert [r["shots"] for r in d["learning_curve"] if not r.get("projection")] == [1, 2, "all"]
    assert "<svg" in (out / "report.html").read_text()


def test_predict_on_a_cache_writes_pseudo_labels_least_confident_first(tmp_path):
    cache, csv, paths, chosen = partly_labelled(tmp_path)
    model = str(tmp_path / "m.fbmodel")
    train(cache, classifier="logreg:C=1.0", out=model, labels=csv)
    out = tmp_path / "pseudo.csv"
    result = CliRunner().invoke(cli.main, ["predict", model, cache, "-o", str(out)])
    assert result.exit_code == 0, result.output
    data = out.read_bytes()
    assert b"\r\n" not in data
    lines = data.decode().splitlines()
    assert lines[0] == "path,label,confidence,fit_on,familiarity" and len(lines) == 1 + len(paths)  # no labels
    confidence = [float(line.split(",")[2]) for line in lines[1:]]
    assert confidence == sorted(confidence)
    # the images the labels CSV gave the model are its training images: marked, and said
    fit_on = {line.split(",")[0] for line in lines[1:] if line.split(",")[3] == "1"}
    assert (
        fit_on == {paths[i] for i in chosen} and f"note: the model was fit on {len(chosen)} of these" in result.output
    )
    # trained without --unlabeled, those are its labelled images: the way out is --labels, not another model
    assert f"they are its labelled images: --labels with the CSV it was trained with skips them ({csv})" in (
        result.output.replace("\n", " ")
    )
    by_path = pseudo_labels(model, cache, sort="path")
    assert [r["path"] for r in by_path["rows"]] == sorted(paths)
    assert {r["label"] for r in by_path["rows"]} <= {"class0", "class1"}


def test_predict_with_labels_skips_the_labelled_rows_and_says_what_it_wrote(tmp_path):
    cache, csv, paths, chosen = partly_labelled(tmp_path)
    model = str(tmp_path / "m.fbmodel")
    train(cache, classifier="logreg:C=1.0", out=model, labels=csv)
    out = tmp_path / "pseudo.csv"
    result = CliRunner().invoke(cli.main, ["predict", model, cache, "--labels", csv, "-o", str(out)])
    assert result.exit_code == 0, result.output
    written = [line.split(",")[0] for line in out.read_text().splitlines()[1:]]
    assert sorted(written) == sorted(p for i, p in enumerate(paths) if i not in set(chosen))
    assert result.output.splitlines() == [  # stderr (CliRunner mixes it in): one summary line, no note
        f"{len(written)} pseudo-label(s) of {cache} to {out}, least confident first (logreg:C=1.0 on flatten, "
        f"confidence: its calibrated probability); {len(chosen)} labelled row(s) skipped (with {csv})"
    ]
    assert "note:" not in result.output  # that 8 training images can flag no image was said once, by train:
    assert any(
        "the model keeps 8 training images: no image can be shown unlike them" in n
        for n in load_bundle(model).trained_on["notes"]
    )
    raw = str(tmp_path / "raw.fbmodel")
    train(cache, classifier="logreg:C=1.0", out=raw, labels=csv, calibrate=False)
    said = CliRunner().invoke(cli.main, ["predict", raw, cache, "--labels", csv, "-o", str(tmp_path / "p2.csv")])
    assert "confidence: its uncalibrated probability" in said.output
    images = CliRunner().invoke(cli.main, ["predict", model, str(tmp_path / "x.jpg"), "--labels", csv])
    assert images.exit_code == 2 and "--labels goes with MODEL CACHE.h5" in images.output


def test_pseudo_labels_of_the_rows_a_model_was_fit_on_say_they_are_in_sample(tmp_path):
    cache, csv, paths, chosen = partly_labelled(tmp_path)
    model = str(tmp_path / "u.fbmodel")
    bundle = train(cache, classifier="logreg:C=1.0", out=model, labels=csv, unlabeled=True, unlabeled_mode="spread")
    assert bundle.trained_on["unlabeled"]["used"]
    from classifiers.report.text import train_text

    printed = train_text({"model": model, **bundle.describe()})  # the calibration's figures are of another model
    assert any(line.startswith("  probabilities: calibrated") for line in printed)
    said_calibration = [line for line in printed if line.startswith("  calibration: ")]
    assert len(said_calibration) == 1
    assert "fit on inner folds of the labelled rows alone, without the pseudo-labelled ones" in said_calibration[0]
    said = pseudo_labels(model, cache, labels=csv)
    n = len(paths) - len(chosen)
    assert len(said["rows"]) == n and all(r["fit_on"] for r in said["rows"])  # every one, with its pseudo-label
    assert bundle.trained_on["unlabeled"]["pseudo_labelled"] == n
    assert said["notes"] == [
        f"the model was fit on {n} of these {n} images (fit_on = 1: the same bytes as one of its labelled images, "
        "or of the unlabeled rows it pseudo-labelled (train --unlabeled)): their confidences are in-sample scores (it "
        "was fit on these images), not held-out probabilities, and rank them poorly; to review pseudo-labels, predict "
        "with a model not fit on them (trained without --unlabeled)"
    ]
    bundle.seen = None  # a model file written before it listed its images: told by the cache's source
    older = pseudo_labels(bundle, cache, labels=csv)
    assert "fit_on" not in older["rows"][0] and older["notes"] == [
        f"the model was fit on {n} unlabeled rows of this data with their pseudo-labels (train --unlabeled): on "
        "those rows its confidences are in-sample (it was fit on them), not held-out probabilities, and rank them "
        "poorly; to review pseudo-labels, predict with a model trained without --unlabeled"
    ]


def test_a_confidence_near_1_keeps_the_digits_that_tell_it_from_1():
    from classifiers.predictions import confidence_text

    assert [confidence_text(v) for v in (0.5, 0.87341, 0.99991, 0.99999871, 0.9999999922, 1.0)] == [
        "0.5000", "0.8734", "0.999910", "0.9999987", "0.9999999922", "1.0000"
    ]  # fmt: skip
    assert confidence_text(1 - 1e-15) == "1.000000000000"  # at most 12 decimals


def test_info_says_how_many_rows_are_unlabeled(tmp_path):
    synthetic_cache(tmp_path / "c.h5", counts=(3, 2), labels=False)
    result = CliRunner().invoke(cli.main, ["info", str(tmp_path / "c.h5")])
    assert "  unlabeled    5" in result.output and "classes      none" in result.output
    data = json.loads(CliRunner().invoke(cli.main, ["info", str(tmp_path / "c.h5"), "--json"]).output)
    assert data["classes"] == {} and data["unlabeled"] == 5


def test_shots_that_would_repeat_the_full_run_are_left_out_and_said(tmp_path):
    """Two folds of 4 labelled images per class: 2 a class in each training fold, so k=2 and k=5 would draw every
    labelled training row (the all column again, every draw the same): left out, said once on the curve; asked
    for alone, one line."""
    from classifiers.shots import usable_shots

    cache, csv, paths, chosen = partly_labelled(tmp_path)
    report = cross_validate(
        cache, classifiers=["knn"], layers=["flatten"], folds=2, labels=csv, shots="1,2,5,all", draws=2, extras=None
    )
    assert [r["shots"] for r in report.curve] == [1, "all"]
    assert report.curve[-1]["notes"] == [
        "k=2, 5 left out: no class has more than 2 labelled image(s) in a training fold, so every draw would be the "
        "full run (the all column)"
    ]
    with pytest.raises(FeaturebankError, match="--shots 2,5: a class has at most 2 labelled image.s. in a training"):
        cross_validate(cache, classifiers=["knn"], layers=["flatten"], folds=2, labels=csv, shots="2,5", extras=None)
    # a k some class cannot reach in some fold: kept, said
    y = np.array([0] * 9 + [1] * 3)

    class Split:
        def __init__(self, train):
            self.train = np.asarray(train)

    kept, notes, fewest = usable_shots([1, 2, "all"], y, [Split(range(12))], 2)
    assert kept == [1, 2, "all"] and fewest == 3.0 and notes == {}  # the class of 3, not the mean of 9 and 3
    kept, notes, _ = usable_shots([2, 4, "all"], y, [Split(range(12))], 2)
    assert kept == [2, 4, "all"] and notes == {
        4: "k=4: a class has 3 labelled image(s) in some training fold; there it is drawn whole"
    }


def test_fallbacks_are_found_inside_an_ensemble():
    X = np.eye(3, 6, dtype=np.float32)
    notes = fallbacks(make_classifier("ensemble").fit(X, [0, 1, 2]))
    assert notes[0].startswith("ensemble: rbf-svm left out") and any(n.startswith("knn: k=3") for n in notes)


def test_the_learning_curve_with_unlabeled_rows_has_both_curves(tmp_path):
    cache, csv, paths, chosen = partly_labelled(tmp_path, labelled_per_class=6)  # 3 a class in a training fold
    report = cross_validate(
        cache,
        classifiers=["knn"],
        layers=["flatten"],
        folds=2,
        labels=csv,
        unlabeled=True,
        shots="1,2,all",
        draws=1,
        extras=None,
    )
    curves = {(r["classifier"], r["shots"]): r for r in report.curve if not r.get("projection")}
    assert set(curves) == {(c, k) for c in ("knn", "knn +unlabeled") for k in (1, 2, "all")}
    plus = report.result("knn +unlabeled", "flatten").metric("balanced_accuracy")["mean"]
    assert curves[("knn +unlabeled", "all")]["mean"] == plus


class GroupCounter:
    """A classifier that remembers how many groups its fit was given."""

    def get_params(self, deep=True):
        return {}

    def set_params(self, **params):
        return self

    def fit(self, X, y, groups=None):
        self.groups_, self.classes_ = len(set(groups.tolist())), np.unique(y)
        return self

    def predict(self, X):
        return np.full(len(X), self.classes_[0])


def test_unlabeled_rows_are_groups_of_their_own():
    X, y = blobs(n=20)
    partial = np.full(len(y), UNLABELED)
    seeds = np.array([0, 1, 2, 20, 21, 22])
    partial[seeds] = y[seeds]
    groups = np.array([f"g{i % 3}" if i in seeds else "" for i in range(len(y))], dtype=object)
    model = SemiSupervised(GroupCounter(), switch=False).fit(X, partial, groups)
    assert model.pseudo_ == 34 and model.model_.groups_ == 3 + 34  # not 3 + one group of all 34


def test_cv_on_select_picks_says_they_are_no_random_sample(tmp_path):
    from classifiers.report.reading import selection_note

    cache, csv, paths, chosen = partly_labelled(tmp_path)
    plain = report_dict(cross_validate(cache, classifiers=["knn"], layers=["flatten"], folds=2, labels=csv))
    assert not plain["labels"]["picked_by_select"] and "select's picks" not in selection_note(plain)
    rows = pathlib.Path(csv).read_text().splitlines()[1:]  # the same labels, as a filled-in select manifest
    manifest = tmp_path / "picked.csv"
    manifest.write_text("path,label,reason,score\n" + "".join(f"{r},cold start: typical,0.5\n" for r in rows))
    picked = report_dict(cross_validate(cache, classifiers=["knn"], layers=["flatten"], folds=2, labels=str(manifest)))
    assert picked["labels"]["picked_by_select"]
    assert f"The labels come from select's picks ({manifest}), chosen for coverage or doubt, not drawn at random" in (
        selection_note(picked)
    )
    assert [r["balanced_accuracy"] for r in picked["leaderboard"]] == [
        r["balanced_accuracy"] for r in plain["leaderboard"]
    ]


def test_no_projection_beyond_the_labels_the_training_folds_hold_with_or_without_all():
    from classifiers.shots import curve_rows

    class Result:
        classifier, layer, backbone = "knn", "flatten", "resnet18"

        def metric(self, name):
            return {"mean": 0.8, "std": 0.1}

    points = [{"shots": k, "scores": [s], "draws": 1} for k, s in ((1, 0.5), (2, 0.6), (5, 0.7))]
    for shots, said in (
        ([1, 2, 5], " (--shots ...,all measures them)"),
        ([1, 2, 5, "all"], ", and the full run (all) measures them"),
    ):
        rows = curve_rows(points, Result(), shots, "balanced_accuracy", full=8.0)  # 2 x 5 = 10 > 8 in a class
        assert not any(r.get("projection") for r in rows)
        assert rows[-1]["notes"] == [
            f"no projection to k=10: a class has 8 labelled image(s) in some training fold{said}"
        ]
    rows = curve_rows(points, Result(), [1, 2, 5], "balanced_accuracy", full=10.0)  # k=10 would draw a class whole
    assert not any(r.get("projection") for r in rows)
    rows = curve_rows(points, Result(), [1, 2, 5], "balanced_accuracy", full=12.0)  # every class has 10: projected
    assert rows[-1]["projection"] and rows[-1]["shots"] == 10 and rows[-1]["std"] is None


def test_labels_that_cannot_mark_the_unlabeled_rows_are_one_line():
    """numpy makes -1 the text '-1' in an array of class names: a class of that name before; an empty label, too;
    and labels that are not one per row."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 4))
    names = np.where(X[:, 0] > 0, "ants", "bees")
    as_text = np.asarray(list(names[:30]) + [-1] * 10)
    assert as_text.dtype.kind == "U" and "-1" in as_text
    with pytest.raises(ValueError, match="give y as an object array"):
        SemiSupervised().fit(X, as_text)
    with pytest.raises(ValueError, match="a label is empty"):
        SemiSupervised().fit(X, np.where(np.arange(40) < 30, names, ""))
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        SemiSupervised().fit(X, names[:-5])
    marked = np.where(np.arange(40) < 30, names.astype(object), -1)
    assert SemiSupervised().fit(X, marked).classes_.tolist() == ["ants", "bees"]


def test_train_from_a_best_row_with_unlabeled_rows_on_a_cache_without_them_names_the_row(tmp_path):
    """The row fit the unlabeled rows too; a cache without any had been told '... for --unlabeled', an option the
    user never gave."""
    from classifiers.from_run import train_best

    cache, csv, _, _ = partly_labelled(tmp_path)
    report = cross_validate(
        cache, classifiers=["knn"], layers=["flatten"], folds=2, labels=csv, unlabeled=True, extras=None
    )
    run = tmp_path / "run"
    write_report(report, str(run))
    d = json.loads((run / "report.json").read_text())
    d["best"] = next(r for r in d["leaderboard"] if r["classifier"] == "knn +unlabeled")
    (run / "report.json").write_text(json.dumps(d))
    full = tmp_path / "full"
    full.mkdir()
    synthetic_cache(full / "c.h5", counts=(14, 14), seed=7, dim=8)
    with pytest.raises(FeaturebankError, match=r"--from .*its best row, knn \+unlabeled on flatten, fit the unlabeled"):
        train_best(str(full / "c.h5"), str(run))


def test_unlabeled_rule_always_joins_them_in_cv_train_and_train_from(tmp_path):
    """--unlabeled-rule always: every fold fits on the unlabeled rows, train does without asking the inner folds,
    and train --from a run made so does the same; without --unlabeled the rule is one line, not ignored."""
    from classifiers.from_run import train_best

    cache, csv, _, _ = partly_labelled(tmp_path)
    report = cross_validate(
        cache,
        classifiers=["knn"],
        layers=["flatten"],
        folds=2,
        labels=csv,
        unlabeled=True,
        unlabeled_rule="always",
        extras=None,
    )
    joined = report.result("knn +unlabeled", "flatten").unlabeled
    assert joined["used_in_folds"] == joined["folds"] == 2
    assert all(d.startswith("used, always (--unlabeled-rule always") for d in joined["decisions"])
    run = tmp_path / "run"
    write_report(report, str(run))
    d = json.loads((run / "report.json").read_text())
    assert d["unlabeled"]["rule"] == "always" and d["unlabeled"]["mode"] == "spread"
    from classifiers.report.text import cv_text

    assert any("unlabeled rows (spread, in every fold), on the same labelled" in line for line in cv_text(d))
    for page in ("report.md", "report.html"):  # the page says why they joined: the rule, not the inner folds
        text = " ".join((run / page).read_text().split())
        assert "in every fold (--unlabeled-rule always)" in text and "found that they help" not in text, page
    d["best"] = next(r for r in d["leaderboard"] if r["classifier"] == "knn +unlabeled")
    (run / "report.json").write_text(json.dumps(d))
    bundle, _ = train_best(cache, str(run), labels=csv)
    u = bundle.trained_on["unlabeled"]
    assert (u["rule"], u["used"], u["inner"], u["pseudo_labelled"]) == ("always", True, None, 20)
    default = train(cache, classifier="knn", labels=csv, unlabeled=True).trained_on["unlabeled"]
    assert default["rule"] == "inner-folds" and default["inner"] is not None  # the inner folds were asked
    with pytest.raises(FeaturebankError, match="--unlabeled-rule always says when the unlabeled rows join: give --unl"):
        train(cache, classifier="knn", labels=csv, unlabeled_rule="always")
    r = CliRunner().invoke(cli.main, ["cv", cache, "--labels", csv, "--unlabeled-rule", "always", "-c", "knn"])
    assert r.exit_code != 0 and "Traceback" not in r.output and "give --unlabeled too" in r.output


def test_evaluate_on_a_cache_without_labels_says_what_evaluate_takes(tmp_path):
    """Not labeled()'s 'give --labels', an option evaluate does not have."""
    from classifiers.bundle import evaluate

    cache, csv, *_ = one_per_class_cache(tmp_path)
    train(cache, classifier="knn", out=str(tmp_path / "m.fbmodel"), labels=csv)
    with pytest.raises(FeaturebankError) as err:
        evaluate(str(tmp_path / "m.fbmodel"), cache)
    said = str(err.value)
    assert said.startswith(f"{cache} has no labels: evaluate scores labelled images") and "--labels" not in said
    assert said.endswith("to classify unlabeled images, use predict")


def test_train_says_what_to_do_next_with_the_model(tmp_path):
    """evaluate on held-out images, predict; with --labels, the pseudo-labels of the rest of the cache."""
    cache, csv, *_ = one_per_class_cache(tmp_path)
    out = tmp_path / "my model.fbmodel"
    r = CliRunner().invoke(cli.main, ["train", cache, "--labels", csv, "-c", "knn", "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[-1] == (
        f"next: featurebank evaluate '{out}' HELD-OUT (labelled images nothing was fit or chosen on), featurebank "
        f"predict '{out}' IMAGES; the rest of the cache labelled for review: featurebank predict '{out}' {cache} "
        f"--labels {csv} -o pseudo-labels.csv"
    )


def test_train_from_a_run_on_labels_from_a_csv_takes_that_csv_while_it_is_unchanged(tmp_path):
    """The run's report.json records the --labels CSV and its sha256: train --from on the same unlabeled cache uses
    it (said in a note); changed since, one line asks for --labels; given, --labels wins."""
    import warnings

    from classifiers.from_run import train_best
    from embedder.kernel.errors import Note

    cache, csv, _, chosen = partly_labelled(tmp_path)
    report = cross_validate(cache, classifiers=["knn"], layers=["flatten"], folds=2, labels=csv, extras=None)
    run = tmp_path / "run"
    write_report(report, str(run))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bundle, _ = train_best(cache, str(run))
    assert bundle.trained_on["labels"]["csv"] == csv and bundle.trained_on["rows"] == len(chosen)
    assert any(
        f"labels from {csv}, as the run laid them over the cache" in str(w.message)
        for w in caught
        if issubclass(w.category, Note)
    )
    pathlib.Path(csv).write_text(pathlib.Path(csv).read_text() + "\n")  # a byte more: not what the run read
    with pytest.raises(FeaturebankError, match=f"{csv} has changed since the run read it .*give --labels"):
        train_best(cache, str(run))
    again, _ = train_best(cache, str(run), labels=csv)  # named: used as it is now
    assert again.trained_on["labels"]["sha256"] == sha256_of(csv)


@pytest.mark.parametrize("command", ["train", "cv", "select", "predict"])
def test_labels_given_twice_is_refused_not_the_last_one_kept(tmp_path, command):
    """click keeps the last of a repeated option: train --labels labelled.csv --labels pseudo.csv had trained on
    the pseudo-labels alone, the hand labels gone without a word."""
    cache, csv, *_ = one_per_class_cache(tmp_path)
    other = tmp_path / "other.csv"
    other.write_text(pathlib.Path(csv).read_text())
    args = {
        "train": ["train", cache, "-c", "knn", "-o", str(tmp_path / "m.fbmodel")],
        "cv": ["cv", cache, "-c", "knn"],
        "select": ["select", cache, "--budget", "1", "-o", str(tmp_path / "p.csv")],
        "predict": ["predict", str(tmp_path / "m.fbmodel"), cache],
    }[command]
    if command == "predict":
        train(cache, classifier="knn", out=str(tmp_path / "m.fbmodel"), labels=csv)
    r = CliRunner().invoke(cli.main, [*args, "--labels", csv, "--labels", str(other)])
    said = " ".join(r.output.split())
    assert r.exit_code == 2 and f"given 2 times ({csv}, {other}): it takes one CSV: keep every label in it" in said
    assert not (tmp_path / "p.csv").exists()
