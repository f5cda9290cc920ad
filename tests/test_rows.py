"""A fold fitted from the layer's rows by index (classifiers/rows.py): the tuned probe without a copy of its fold's
rows, the same model as the copying fit, and the memory the plan counts for it."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from sklearn.base import clone

import classifiers.crossval as crossval
import classifiers.rows as rows_module
import classifiers.solver as solver
from classifiers.budget import peak, plan
from classifiers.cost import Shape
from classifiers.crossval import Split, _predict_blocks, _run_fold
from classifiers.folds import fit_grouped
from classifiers.registry import BlockedScaler, get_spec, list_classifiers
from classifiers.rows import LayerRows, by_index, fit_by_index, fits_by_index
from classifiers.scaling import ShrunkScaler
from classifiers.solver import fit_path
from classifiers.zoo import make_classifier


def offset_blobs(n: int = 900, d: int = 24, k: int = 3, seed: int = 0):
    """Classes apart by their means, every column shifted and scaled (a mean of 3 to 6 standard deviations): the
    standardization matters, and raw rows are far from centred."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    centre = rng.normal(size=(k, d))
    X = rng.normal(size=(n, d)) + 0.6 * centre[y]
    X = X * rng.uniform(0.5, 3.0, d) + rng.uniform(3.0, 6.0, d) * 2.0
    return X, y


@pytest.mark.parametrize("k", [2, 4])
def test_the_solver_fits_standardized_rows_from_raw_ones_through_the_identity(k):
    """Weights pick each problem's rows from one span, the standardization folded into the products: the same
    optimum as fitting a standardized copy of each problem's rows (float64, tight tolerance)."""
    X, y = offset_blobs(600, 12, k)
    fits = [np.arange(0, 600, 2), np.flatnonzero(np.arange(600) % 3)]
    mean, scale = X[fits[0]].mean(axis=0), X[fits[0]].std(axis=0)
    weights = np.zeros((600, 2))
    for p, rows in enumerate(fits):
        weights[rows, p] = 1.0
    Cs = [0.03, 0.3]
    folded = fit_path([X], [y], k, Cs, tol=1e-8, weights=[weights], standardize=(mean, scale))
    for p, rows in enumerate(fits):
        copied = fit_path([(X[rows] - mean) / scale], [y[rows]], k, Cs, tol=1e-8)
        np.testing.assert_allclose(folded.coef[p], copied.coef[0], atol=1e-6)
        np.testing.assert_allclose(folded.intercept[p], copied.intercept[0], atol=1e-6)


@pytest.mark.parametrize("scaler", [ShrunkScaler, BlockedScaler])
def test_the_scaler_fits_on_rows_by_index_bit_for_bit(scaler):
    X, _ = offset_blobs(3000, 16)
    X = X.astype(np.float32)
    index = np.flatnonzero(np.arange(3000) % 5)
    scaler.BLOCK_BYTES, before = 8 * 16 * 100, scaler.BLOCK_BYTES  # several blocks
    try:
        taken = scaler().fit(X[index])
        by_rows = scaler().fit_rows(X, index)
    finally:
        scaler.BLOCK_BYTES = before
    for name in ("mean_", "var_", "scale_"):
        assert np.array_equal(getattr(taken, name), getattr(by_rows, name)), name
    assert by_rows.n_samples_seen_ == len(index) and by_rows.n_features_in_ == 16


@pytest.mark.parametrize(
    "k, holdout_from, grouped", [(3, 6000, False), (3, 300, False), (2, 300, False), (3, 300, True)]
)
def test_the_probe_fitted_by_index_is_the_probe_fitted_on_a_copy(k, holdout_from, grouped):
    """The zoo's logreg Pipeline (scale, then the tuned probe), float32 rows, its own tolerances: by index and on a
    copy of the fold's rows, the same standardization, the same C chosen, inner log-losses within 2e-3 (each fit
    stops within the solver's relative tolerance) and the same predictions, and coefficients within
    5e-3 of each other (coefficients up to about 1.2: both stop within the solver's tolerance of the same optimum,
    summing in another order). With groups, the same group-aware inner split."""
    X, y = offset_blobs(1000, 20, k, seed=k)
    X = X.astype(np.float32)
    groups = np.arange(1000) // 4 if grouped else None
    train, test = np.flatnonzero(np.arange(1000) % 5), np.arange(0, 1000, 5)
    copied = make_classifier("logreg", holdout_from=holdout_from)
    indexed = clone(copied)
    assert fits_by_index(indexed)
    fit_grouped(copied, X[train], y[train], None if groups is None else groups[train])
    assert fit_by_index(indexed, X, y, train, groups) is indexed
    a, b = copied.named_steps["clf"], indexed.named_steps["clf"]
    assert a.C_ == b.C_
    assert a.cv_scores_.shape == b.cv_scores_.shape == ((1 if holdout_from < 1000 else 3), len(a.Cs))
    np.testing.assert_allclose(a.cv_scores_, b.cv_scores_, atol=2e-3)
    np.testing.assert_allclose(b.coef_, a.coef_, atol=5e-3)
    np.testing.assert_allclose(b.intercept_, a.intercept_, atol=5e-3)
    assert np.array_equal(copied.predict(X[test]), indexed.predict(X[test]))
    np.testing.assert_allclose(indexed.predict_proba(X[test]), copied.predict_proba(X[test]), atol=5e-3)
    for name in ("mean_", "scale_"):  # the same standardization: what differs is where the solver stopped
        np.testing.assert_array_equal(
            getattr(indexed.named_steps["scale"], name), getattr(copied.named_steps["scale"], name)
        )


def test_a_fixed_C_by_index_is_scikit_learns_fit_within_its_tolerance():
    X, y = offset_blobs(800, 16, 3)
    X = X.astype(np.float32)
    train = np.flatnonzero(np.arange(800) % 4)
    copied = make_classifier("logreg:C=0.1").fit(X[train], y[train])
    indexed = fit_by_index(make_classifier("logreg:C=0.1"), X, y, train)
    assert indexed.named_steps["clf"].C_ == 0.1 and indexed.named_steps["clf"].cv_scores_ is None
    np.testing.assert_allclose(indexed.named_steps["clf"].coef_, copied.named_steps["clf"].coef_, atol=5e-3)
    np.testing.assert_allclose(indexed.predict_proba(X), copied.predict_proba(X), atol=5e-3)


def test_only_pipelines_that_read_rows_where_they_are_are_fitted_by_index():
    assert fits_by_index(make_classifier("logreg")) and fits_by_index(make_classifier("logreg:scale=off"))
    for spec in ("logreg:l2=on", "logreg:pca=8", "ridge", "lda", "knn", "ensemble"):
        assert not fits_by_index(make_classifier(spec)), spec
    assert by_index(make_classifier("logreg"), 800_000, 1280)  # 4.1 GB of rows
    assert not by_index(make_classifier("logreg"), 160_000, 1280)  # 0.8 GB: the copy costs less than it saves
    assert not by_index(make_classifier("logreg"), rows_module.BY_INDEX_FROM - 1, 10**6)  # and a few rows too
    for name in list_classifiers():  # the plan's memory model follows the code: an entry fitted by index has one
        assert (get_spec(name).memory_by_index is not None) == fits_by_index(make_classifier(name)), name


def test_the_probes_fold_by_index_holds_blocks_not_its_rows(monkeypatch):
    """One fold of the tuned probe on a 16 MB layer, blocks of 4,096 rows: beyond the layer, blocks (the copying
    fold holds 0.8 of the layer for its rows alone, 1.2 in all); the same predictions as the copying fold."""
    monkeypatch.setattr(solver, "ROW_BLOCK", 4096)
    monkeypatch.setattr(crossval, "PREDICT_BLOCK", 4096)
    monkeypatch.setattr(ShrunkScaler, "BLOCK_BYTES", 1 << 20)
    monkeypatch.setattr(rows_module, "BY_INDEX_BYTES", 1 << 20)  # as 16 MB are beside 5 GB
    rng = np.random.default_rng(0)
    n, d = 16_000, 256
    y = np.arange(n) % 4
    X = rng.normal(size=(n, d)).astype(np.float32)
    split = Split(0, 0, np.flatnonzero(np.arange(n) % 5), np.arange(0, n, 5))
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        pred, proba = _run_fold(make_classifier("logreg"), X, y, None, split, 4)[:2]
        held = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert held < 0.5 * X.nbytes, f"{held / X.nbytes:.2f} layers"
    monkeypatch.setattr(rows_module, "BY_INDEX_FROM", 10**9)  # the copying fold
    copied_pred, copied_proba = _run_fold(make_classifier("logreg"), X, y, None, split, 4)[:2]
    assert np.array_equal(pred, copied_pred)
    np.testing.assert_allclose(proba, copied_proba, atol=2e-3)


def test_the_test_rows_predicted_in_blocks_are_those_predicted_at_once():
    X, y = offset_blobs(700, 10, 3)
    test = np.arange(1, 700, 3)
    for spec in ("logreg:C=0.1", "ridge"):
        model = make_classifier(spec).fit(X[::3], y[::3])
        whole = _predict_blocks(model, X, test, 3, block=10_000)
        blocks = _predict_blocks(model, X, test, 3, block=50)
        for a, b in zip(whole, blocks):
            assert (a is None) == (b is None)
            if a is not None:
                np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
        assert (whole[1] is None) == (spec == "ridge") and (whole[2] is None) == (spec != "ridge")


@pytest.mark.parametrize("spec", ["knn", "extra-trees:n_estimators=20", "ensemble:members=logreg+knn"])
def test_labels_read_off_the_probabilities_are_the_models_own_predictions_from_one_pass(spec, monkeypatch):
    """kNN, the trees and the ensemble predict ``classes_[argmax(predict_proba)]``: a fold reads its labels off the
    probabilities, and the neighbour search runs once a block, not twice."""
    from classifiers.neighbours import CosineKNeighbors

    X, y = offset_blobs(700, 10, 3)
    test = np.arange(1, 700, 3)
    model = make_classifier(spec).fit(X[::3], y[::3])
    searches = []
    search = CosineKNeighbors.kneighbors
    monkeypatch.setattr(
        CosineKNeighbors, "kneighbors", lambda self, *a, **k: searches.append(1) or search(self, *a, **k)
    )
    pred, proba, decision = _predict_blocks(model, X, test, 3, block=100)
    assert len(searches) == (0 if "trees" in spec else 3)  # 233 rows: 3 blocks, one search each
    monkeypatch.undo()
    assert np.array_equal(pred, model.predict(X[test])) and decision is None
    # kNN's float32 distances, a block of 100 rows against all 233: rounded in another order (on an AVX2-only CPU
    # its distance weights differ by up to 2e-5 relative; the answers not at all)
    np.testing.assert_allclose(proba, model.predict_proba(X[test]), rtol=1e-4, atol=1e-7)


def test_a_fold_scores_the_rbf_svm_by_its_highest_score_as_evaluate_and_predict_do():
    """libsvm's own ``predict`` counts one-vs-one votes; ``evaluate``, ``predict`` and an exported file answer the
    class of the highest one-vs-rest score. A fold scores that same rule, so cross-validated and held-out figures
    are of one decision, and reads it off the scores it keeps for the calibration (one kernel pass)."""
    X, y = offset_blobs(700, 10, 3, seed=1)
    test = np.arange(1, 700, 3)
    model = make_classifier("rbf-svm").fit(X[::3], y[::3])
    pred, proba, decision = _predict_blocks(model, X, test, 3, block=100)
    scores = model.decision_function(X[test])
    assert proba is None and np.array_equal(pred, model.classes_[scores.argmax(axis=1)])
    np.testing.assert_allclose(decision, scores, rtol=1e-5, atol=1e-5)
    assert (pred != model.predict(X[test])).sum() == 5  # rows where the votes tie: the two rules differ there


def test_every_path_that_scores_a_model_answers_its_highest_score():
    """``answers``: the learning curve, the unlabeled rows' switch and ``Bundle.predict`` answer as ``evaluate`` does;
    two classes by the sign of the score, as scikit-learn's own predict (no vote to tie there)."""
    from classifiers.metrics import answers
    from classifiers.semi import UNLABELED, SemiSupervised

    X, y = offset_blobs(700, 10, 3, seed=1)
    test = np.arange(1, 700, 3)
    model = make_classifier("rbf-svm").fit(X[::3], y[::3])
    best = model.classes_[model.decision_function(X[test]).argmax(axis=1)]
    assert np.array_equal(answers(model, X[test]), best) and not np.array_equal(model.predict(X[test]), best)
    partial = y.copy()
    partial[1::2] = UNLABELED
    semi = SemiSupervised(make_classifier("rbf-svm"), switch=False).fit(X[::3], partial[::3])
    assert semi.pseudo_ > 0 and np.array_equal(semi.predict(X[test]), answers(semi.model_, X[test]))
    assert not np.array_equal(semi.model_.predict(X[test]), semi.predict(X[test]))
    two = y < 2
    binary = make_classifier("rbf-svm").fit(X[two][::2], y[two][::2])
    assert np.array_equal(answers(binary, X[two]), binary.predict(X[two]))


def test_at_a_million_rows_the_plan_keeps_the_probe_within_the_memory_bound():
    """The layer (5.1 GB) and blocks: 1.5 layers at most (issue 30), where the copying fold counted 2.0 and was
    left out over the bound; an explicit search still copies its rows."""
    layer = 4.0 * 1_000_000 * 1280
    shapes = [Shape(800_000, 200_000, 1280, 10)] * 5
    assert peak("logreg", shapes, layer) < 1.5 * layer
    assert peak("logreg", shapes, layer, indexed=False) > 2.0 * layer
    assert peak("logreg:pca=64", shapes, layer) > 1.8 * layer  # its PCA step reads a copy: not by index
    the_plan = plan(None, shapes, None, layer_bytes=layer)  # no budget: every entry, the memory not checked
    assert "logreg" in the_plan.classifiers
    budgeted = plan(None, shapes, 10 * 3600.0, layer_bytes=layer)
    assert "logreg" in budgeted.classifiers and "logreg" not in budgeted.over_memory


def test_layer_rows_say_their_shape_and_span():
    layer = np.zeros((50, 3), dtype=np.float32)
    rows = LayerRows(layer, np.array([4, 9, 30]))
    assert rows.shape == (3, 3) and len(rows) == 3 and rows.dtype == np.float32 and rows.span() == (4, 31)
    assert rows.gather([0, 2]).shape == (2, 3)


def test_a_fold_by_index_is_estimated_at_its_measured_extra_cost_and_the_default_run_keeps_the_probe():
    """The fold by index reads the layer's whole span (BY_INDEX_COST times the copying fold's CPU, measured at a
    million rows); a fold below the by-index size keeps the plain estimate. The default 12-minute plan at a million
    rows on the calibration machine runs the probe (alone: the report's extras and its folds take the budget)."""
    from classifiers.budget import estimate, extras_estimate
    from classifiers.cost import logreg
    from classifiers.rows import BY_INDEX_COST

    big, small = Shape(800_000, 200_000, 1280, 10), Shape(8_000, 2_000, 1280, 10)
    assert estimate("logreg", big) == pytest.approx(BY_INDEX_COST * logreg(big, {}))
    assert estimate("logreg", small) == pytest.approx(logreg(small, {}))
    layer = 4.0 * 1_000_000 * 1280
    default = plan(None, [big] * 5, 12 * 60.0, layer_bytes=layer, extras=extras_estimate(1_000_000, 1280, True, True))
    assert default.classifiers == ["logreg"] and "logreg" not in default.over_memory
