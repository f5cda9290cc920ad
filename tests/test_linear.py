"""The tuned linear probe: C chosen on inner folds along a warm-started path, refit on every row."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

import classifiers.linear as linear
from classifiers.linear import TunedLogisticRegression
from classifiers.rows import LayerRows
from classifiers.zoo import make_classifier


def blobs(n_per_class=40, dims=20, classes=3, spread=1.0, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (classes, dims)) * 2
    X = np.vstack([centers[c] + rng.normal(0, spread, (n_per_class, dims)) for c in range(classes)])
    y = np.repeat(np.arange(classes), n_per_class)
    return X.astype(np.float32), y


def test_the_warm_started_path_scores_what_cold_fits_score():
    X, y = blobs(spread=2.0)
    model = TunedLogisticRegression(Cs=(0.001, 0.01, 0.1, 1.0), inner_tol=1e-6).fit(X, y)  # tight: same optimum
    splits = linear.inner_splits(X, y, None, 3, 0)
    for f, (train, test) in enumerate(splits):
        for j, C in enumerate((0.001, 0.01, 0.1, 1.0)):
            cold = LogisticRegression(C=C, max_iter=5000, tol=1e-6).fit(X[train], y[train])
            loss = -np.mean(np.log(cold.predict_proba(X[test])[np.arange(len(test)), y[test]]))
            if np.isnan(model.cv_scores_[f, j]):  # past the best: never run
                continue
            assert model.cv_scores_[f, j] == pytest.approx(loss, rel=1e-3, abs=1e-4)
    best = (0.001, 0.01, 0.1, 1.0)[int(np.nanargmin(model.cv_scores_.mean(axis=0)))]
    assert best == model.C_  # a sweep that stopped early left NaN for the values it never ran
    # The refit starts from the chosen value's inner solution (without the inner fold's curvature pairs): the
    # optimum a cold fit reaches, in fewer steps (16 against 28 here; with the pairs 12, but on flowers 42 against
    # 32 and on hymenoptera 23 against 7: benchmarks/RESULTS.md, the linear probe).
    optimum = LogisticRegression(C=best, max_iter=20_000, tol=1e-10).fit(X, y)
    cold = LogisticRegression(C=best, max_iter=2000).fit(X, y)
    for fit in (model, cold):  # both to the solver's default tolerance
        np.testing.assert_allclose(fit.predict_proba(X), optimum.predict_proba(X), atol=2e-3)
        np.testing.assert_array_equal(fit.predict(X), optimum.predict(X))
    assert model.n_iter_[0] < cold.n_iter_[0]


def test_one_held_out_split_stops_one_value_past_the_best_and_chooses_what_the_full_sweep_chooses(monkeypatch):
    """From ``holdout_from`` rows one held-out split chooses C; its loss along the path is smooth, so the sweep stops
    one value past the best (three inner folds on fewer rows: two), and chooses what every value would choose."""
    X, y = blobs(n_per_class=100, dims=100, spread=5.0, seed=3)  # 300 rows; the best C mid-grid
    early = TunedLogisticRegression(holdout_from=200).fit(X, y)
    assert early.cv_scores_.shape[0] == 1  # one split
    best = linear.DEFAULT_CS.index(early.C_)
    assert 0 < best < len(linear.DEFAULT_CS) - 2
    ran = ~np.isnan(early.cv_scores_).any(axis=0)
    assert ran.tolist() == [True] * (best + 2) + [False] * (len(linear.DEFAULT_CS) - best - 2)
    monkeypatch.setattr(linear, "HELD_OUT_PATIENCE", len(linear.DEFAULT_CS))
    full = TunedLogisticRegression(holdout_from=200).fit(X, y)
    assert not np.isnan(full.cv_scores_).any() and full.C_ == early.C_


def test_noise_asks_for_strong_regularization_and_clean_data_for_weak():
    noisy_X, noisy_y = blobs(n_per_class=15, dims=200, spread=20.0, seed=1)  # few rows, many noisy dimensions
    clean_X, clean_y = blobs(n_per_class=60, dims=5, spread=0.6, seed=2)  # well separated
    noisy = TunedLogisticRegression().fit(noisy_X, noisy_y)
    clean = TunedLogisticRegression().fit(clean_X, clean_y)
    assert noisy.C_ <= 1e-3 < 1.0 <= clean.C_


def test_the_sweep_stops_past_the_best_and_chooses_what_the_full_sweep_chooses(monkeypatch):
    X, y = blobs(n_per_class=15, dims=200, spread=20.0, seed=1)  # the loss rises from the first C on
    early = TunedLogisticRegression().fit(X, y)
    ran = ~np.isnan(early.cv_scores_).any(axis=0)
    assert ran.tolist() == [True] * (1 + linear.PATIENCE) + [False] * (len(linear.DEFAULT_CS) - 1 - linear.PATIENCE)
    monkeypatch.setattr(linear, "PATIENCE", len(linear.DEFAULT_CS))
    full = TunedLogisticRegression().fit(X, y)
    assert not np.isnan(full.cv_scores_).any()
    assert full.C_ == early.C_ == linear.DEFAULT_CS[int(np.argmin(full.cv_scores_.mean(axis=0)))]
    np.testing.assert_allclose(full.cv_scores_[:, ran], early.cv_scores_[:, ran])


def test_an_explicit_C_fixes_it_without_a_sweep():
    X, y = blobs()
    model = TunedLogisticRegression(C=0.3).fit(X, y)
    assert model.C_ == 0.3 and model.cv_scores_ is None
    np.testing.assert_allclose(model.coef_, LogisticRegression(C=0.3, max_iter=2000).fit(X, y).coef_, atol=1e-6)
    pipe = make_classifier("logreg:C=0.3").fit(X, y)
    assert pipe.named_steps["clf"].C_ == 0.3


def test_inner_folds_keep_each_group_on_one_side(monkeypatch):
    X, y = blobs(n_per_class=30)
    groups = np.arange(len(y)) // 3  # triples of near-copies
    seen = []

    def recording(X, y, groups, folds, seed):
        splits = linear_inner_splits(X, y, groups, folds, seed)
        seen.append((groups, splits))
        return splits

    linear_inner_splits = linear.inner_splits
    monkeypatch.setattr(linear, "inner_splits", recording)
    make_classifier("logreg").fit(X, y, clf__groups=groups)
    ((used, splits),) = seen
    np.testing.assert_array_equal(used, groups)
    for train, test in splits:
        assert not set(groups[train]) & set(groups[test])


def test_the_zoo_probe_is_tuned_and_folds_into_one_linear_layer():
    from workflows.finetune.probe import fold_linear

    X, y = blobs(classes=4)
    pipe = make_classifier("logreg").fit(X, y)
    clf = pipe.named_steps["clf"]
    assert isinstance(clf, TunedLogisticRegression) and clf.C_ in linear.DEFAULT_CS
    W, b = fold_linear(pipe)
    np.testing.assert_allclose(X @ W.T + b, pipe.decision_function(X), rtol=1e-4, atol=1e-4)


def test_bad_values_are_one_line_when_the_spec_is_read():
    from embedder.kernel.errors import FeaturebankError

    for spec, words in (
        ("logreg:scoring=auc", "scoring must be one of"),
        ("logreg:C=-1", "C=-1: give a positive"),
        ("logreg:C=abc", "C='abc'"),
        ("logreg:inner_folds=1", "inner_folds=1"),
        ("logreg:holdout_from=-5", "holdout_from=-5"),
    ):
        with pytest.raises(FeaturebankError, match=words):
            make_classifier(spec)


def test_from_holdout_from_rows_one_inner_split_chooses_C_and_scores_what_cold_fits_score():
    X, y = blobs(n_per_class=40, dims=20, spread=2.0)
    Cs = (0.001, 0.01, 0.1, 1.0)
    model = TunedLogisticRegression(Cs=Cs, inner_tol=1e-6, holdout_from=len(y)).fit(X, y)
    assert model.cv_scores_.shape == (1, len(Cs))  # one split, not three
    train, test = linear.inner_splits(X, y, None, 3, 0)[0]  # the first of the three folds
    for j, C in enumerate(Cs):
        if np.isnan(model.cv_scores_[0, j]):
            continue
        cold = LogisticRegression(C=C, max_iter=5000, tol=1e-6).fit(X[train], y[train])
        loss = -np.mean(np.log(cold.predict_proba(X[test])[np.arange(len(test)), y[test]]))
        assert model.cv_scores_[0, j] == pytest.approx(loss, rel=1e-3, abs=1e-4)
    assert Cs[int(np.nanargmin(model.cv_scores_[0]))] == model.C_
    below = TunedLogisticRegression(Cs=Cs, inner_tol=1e-6, holdout_from=len(y) + 1).fit(X, y)
    assert below.cv_scores_.shape == (3, len(Cs))


def test_the_held_out_split_reorders_the_rows_in_place_only_when_allowed():
    import tracemalloc

    X, y = blobs(n_per_class=1000, dims=400, classes=5, spread=6.0)  # 8 MB: the solver's own state is 2.6 MB
    labels = np.array(["ant", "bee", "cat", "dog", "eel"])[y]  # string labels travel with their rows
    original = X.copy()
    kept = TunedLogisticRegression(holdout_from=1000).fit(X, labels)
    np.testing.assert_array_equal(X, original)  # copy=True (the default): the caller's rows untouched

    tracemalloc.start()
    moved = TunedLogisticRegression(holdout_from=1000, copy=False).fit(X, labels)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 0.5 * X.nbytes  # neither side of the split, nor the rows, copied
    assert not np.array_equal(X, original)  # reordered in place ...
    np.testing.assert_array_equal(np.sort(X, axis=0), np.sort(original, axis=0))  # ... the same rows
    assert moved.C_ == kept.C_
    np.testing.assert_array_equal(moved.coef_, kept.coef_)  # the same swaps on a copy: the same model
    np.testing.assert_array_equal(moved.predict(original), kept.predict(original))
    assert (kept.predict(original) == labels).mean() > 0.9


def _sklearn_objective(X, y, C, coef, intercept):
    """scikit-learn's lbfgs objective (mean log-loss + ||W||² / (2 C n)) at a solution, in float64."""
    from classifiers.solver import probabilities

    proba = probabilities(X.astype(np.float64), coef, intercept, len(np.unique(y)))
    loss = -np.mean(np.log(proba[np.arange(len(y)), y]))
    return loss + 0.5 / (C * len(y)) * float(np.sum(np.asarray(coef, dtype=np.float64) ** 2))


@pytest.mark.parametrize("device", [None, "cpu"])  # numpy, and the torch code a CUDA device runs (here on the CPU)
@pytest.mark.parametrize(
    "classes, counts",
    [(4, None), (3, (80, 25, 8)), (2, None), (2, (70, 12))],  # multinomial and binary, balanced and imbalanced
)
def test_the_path_solver_reaches_what_scikit_learn_reaches_at_each_C(classes, counts, device):
    from classifiers.solver import fit_path, probabilities

    rng = np.random.default_rng(classes)
    counts = counts or (40,) * classes
    centers = rng.normal(0, 1, (classes, 15))
    X = np.vstack([centers[c] + rng.normal(0, 1.5, (n, 15)) for c, n in enumerate(counts)])
    y = np.repeat(np.arange(classes), counts)
    Cs = (0.01, 1.0)
    for dtype, tol, close in ((np.float64, 1e-9, 1e-5), (np.float32, 1e-5, 2e-3)):
        path = fit_path([X.astype(dtype)], [y], classes, Cs, tol=tol, device=device)
        for j, C in enumerate(Cs):
            sk = LogisticRegression(C=C, tol=1e-10, max_iter=10_000).fit(X, y)
            assert path.coef[0, j].shape == sk.coef_.shape  # binary: one row, as scikit-learn's
            np.testing.assert_allclose(path.coef[0, j], sk.coef_, atol=close)
            np.testing.assert_allclose(path.intercept[0, j], sk.intercept_, atol=10 * close)
            ours = _sklearn_objective(X, y, C, path.coef[0, j], path.intercept[0, j])
            assert ours == pytest.approx(_sklearn_objective(X, y, C, sk.coef_, sk.intercept_), rel=1e-6, abs=1e-7)
            loss = -np.mean(
                np.log(probabilities(X, path.coef[0, j], path.intercept[0, j], classes)[np.arange(len(y)), y])
            )
            assert loss == pytest.approx(-np.mean(np.log(sk.predict_proba(X)[np.arange(len(y)), y])), abs=close)


@pytest.mark.parametrize("classes", [2, 4])
def test_on_a_torch_device_the_weighted_standardized_folds_reach_numpys_solutions(classes):
    """What ``fit_rows`` hands the solver (each problem weighing its own rows of one span, the standardization
    folded in), on the torch path (the CPU standing in for a CUDA device) against numpy: the same objective at every
    C to float32 rounding, and the same coefficients within what the stopping test (gradient 1e-5) leaves open."""
    from classifiers.solver import fit_path

    rng = np.random.default_rng(classes)
    y = rng.integers(0, classes, 900)
    X = (rng.normal(3.0, 2.0, (900, 40)) + 1.5 * np.eye(classes, 40)[y]).astype(np.float32)
    weights = [np.stack([np.arange(900) % 3 != p for p in range(3)], axis=1).astype(np.float32)]
    standardize = (X.mean(axis=0), X.std(axis=0))
    Cs = (0.01, 0.1, 1.0)
    args = dict(weights=weights, standardize=standardize, tol=1e-5)
    numpy_path = fit_path([X], [y], classes, Cs, **args)
    torch_path = fit_path([X], [y], classes, Cs, device="cpu", **args)
    Xs = ((X - standardize[0]) / standardize[1]).astype(np.float64)
    for p in range(3):
        rows = weights[0][:, p] > 0
        for j, C in enumerate(Cs):
            ours, theirs = (
                _sklearn_objective(Xs[rows], y[rows], C, path.coef[p, j], path.intercept[p, j])
                for path in (torch_path, numpy_path)
            )
            assert ours == pytest.approx(theirs, rel=1e-6), (p, C)
            np.testing.assert_allclose(torch_path.coef[p, j], numpy_path.coef[p, j], atol=2e-4, err_msg=f"{p} {C}")
            np.testing.assert_allclose(torch_path.intercept[p, j], numpy_path.intercept[p, j], atol=2e-4)


def test_the_solver_device_is_cuda_only_for_large_fits_that_fit_and_the_variable_overrides_it(monkeypatch):
    import sys

    import torch

    from classifiers import solver
    from embedder.kernel.errors import FeaturebankError

    monkeypatch.delenv(solver.SOLVER_DEVICE, raising=False)
    assert solver.device_for(1_000, 1_280, 5e6) is None  # small: numpy, and torch is not even asked
    monkeypatch.setattr(solver.os.path, "exists", lambda path: False)  # no NVIDIA driver here
    with monkeypatch.context() as m:  # and torch not loaded: numpy, without importing torch
        m.delitem(sys.modules, "torch")
        assert solver.device_for(1_000_000, 1_280, 5e9) is None and "torch" not in sys.modules
    # a GPU torch sees, 8 GB free and 2 GB more in torch's cache: large rows go there while they take half of that
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda: (8e9, 80e9))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda: 3e9)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda: 1e9)
    assert solver.device_for(1_000_000, 1_280, 5e9) == "cuda"
    assert solver.device_for(1_000_000, 1_280, 5.1e9) is None  # over half of what is free
    assert solver.device_for(15_000, 1_280, 8e7) is None  # under DEVICE_FROM entries

    def busy():
        raise RuntimeError("CUDA error: all CUDA-capable devices are busy or unavailable")

    monkeypatch.setattr(torch.cuda, "mem_get_info", busy)
    assert solver.device_for(1_000_000, 1_280, 5e9) is None  # a GPU that cannot answer: numpy, no error
    for value, expected in (("numpy", None), ("NumPy", None), ("cpu", "cpu"), ("cuda:1", "cuda:1")):
        monkeypatch.setenv(solver.SOLVER_DEVICE, value)
        assert solver.device_for(10, 10, 400) == expected
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for value, says in (("gpu", "give numpy or a torch device"), ("cuda", "torch sees no CUDA device")):
        monkeypatch.setenv(solver.SOLVER_DEVICE, value)
        with pytest.raises(FeaturebankError, match=f"^FEATUREBANK_SOLVER_DEVICE={value}: {says}"):
            solver.device_for(10, 10, 400)


def test_rows_that_cannot_be_copied_to_the_device_are_fitted_in_numpy_and_said(monkeypatch):
    import torch

    from classifiers import solver

    X, y = blobs(n_per_class=40, dims=12, classes=3, spread=3.0)
    numpy_path = solver.fit_path([X], [y], 3, (0.1, 1.0))
    built = solver._Products

    class Full(built):
        def __init__(self, *args, **kwargs):
            if args[4] is not None:  # the device
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 5.00 GiB")
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(solver, "_Products", Full)
    with pytest.warns(UserWarning, match=r"runs on the CPU: its rows could not be copied to cpu \(CUDA out of memory"):
        path = solver.fit_path([X], [y], 3, (0.1, 1.0), device="cpu")
    np.testing.assert_array_equal(path.coef, numpy_path.coef)


def test_a_device_fit_leaves_torchs_float32_settings_as_the_user_set_them():
    import torch

    from classifiers import solver

    matmul = torch.backends.cuda.matmul
    if not hasattr(matmul, "fp32_precision"):
        pytest.skip("this torch has no fp32_precision setting")
    before = matmul.fp32_precision
    X, y = blobs(n_per_class=20, dims=8, classes=2, spread=3.0)
    try:
        matmul.fp32_precision = "tf32"  # torch's own API; mixing it with allow_tf32 is an error in torch >= 2.9
        solver.fit_path([X], [y], 2, (0.1,), device="cpu")
        assert matmul.fp32_precision == "tf32"
    finally:
        matmul.fp32_precision = before


def test_the_tuned_probe_on_the_torch_path_chooses_numpys_C(monkeypatch):
    from classifiers import solver

    X, y = blobs(n_per_class=60, dims=50, classes=3, spread=3.0, seed=4)
    monkeypatch.setenv(solver.SOLVER_DEVICE, "numpy")
    plain = TunedLogisticRegression().fit(X, y)
    monkeypatch.setenv(solver.SOLVER_DEVICE, "cpu")  # torch, on the CPU
    on_torch = TunedLogisticRegression().fit(X, y)
    assert on_torch.C_ == plain.C_
    np.testing.assert_allclose(on_torch.cv_scores_, plain.cv_scores_, atol=1e-3)  # inner fits stop at 1e-3
    np.testing.assert_allclose(on_torch.predict_proba(X), plain.predict_proba(X), atol=2e-3)
    # one held-out split (what a fold of 6,000 rows or more uses), and rows by index (what cv hands a large fold)
    monkeypatch.setenv(solver.SOLVER_DEVICE, "numpy")
    split_numpy = TunedLogisticRegression(holdout_from=100).fit(X, y)
    rows = LayerRows(X, np.arange(len(X)), X.mean(axis=0), X.std(axis=0))
    rows_numpy = TunedLogisticRegression().fit_rows(rows, y)
    monkeypatch.setenv(solver.SOLVER_DEVICE, "cpu")
    assert TunedLogisticRegression(holdout_from=100).fit(X, y).C_ == split_numpy.C_
    rows_torch = TunedLogisticRegression().fit_rows(rows, y)
    assert rows_torch.C_ == rows_numpy.C_
    np.testing.assert_allclose(rows_torch.coef_, rows_numpy.coef_, atol=2e-3)


def test_a_binary_problem_on_large_scores_fits_without_overflow_warnings():
    """Unscaled rows of large values (no scale step): scores of hundreds, whose sigmoid once overflowed exp()
    (a RuntimeWarning on every such fit, though the values came out right)."""
    import warnings

    from classifiers.solver import fit_path, probabilities

    rng = np.random.default_rng(0)
    y = np.arange(400) % 2
    X = (rng.normal(size=(400, 300)) * 50 + 200 * y[:, None]).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = fit_path([X], [y], 2, (1e-4, 0.01, 1.0))
        proba = probabilities(X, path.coef[0, -1], path.intercept[0, -1], 2)
    assert (proba.argmax(axis=1) == y).all() and np.isfinite(path.coef).all()


def test_the_folds_problems_fit_only_their_blocks_and_equal_separate_fits():
    from classifiers.solver import fit_path

    X, y = blobs(n_per_class=30, dims=10, classes=3, spread=2.0)
    X = X.astype(np.float64)  # exact enough to compare at 1e-6
    blocks = [X[0::3], X[1::3], X[2::3]]
    labels = [y[0::3], y[1::3], y[2::3]]
    member = ~np.eye(3, dtype=bool)  # problem p holds block p out
    together = fit_path(blocks, labels, 3, (0.1, 1.0), member, tol=1e-7)
    for p in range(3):
        rows = [b for b in range(3) if b != p]
        alone = fit_path(
            [np.vstack([blocks[b] for b in rows])], [np.concatenate([labels[b] for b in rows])], 3, (0.1, 1.0), tol=1e-7
        )
        np.testing.assert_allclose(together.coef[p], alone.coef[0], atol=1e-6)


def test_a_weak_C_is_fit_not_ended_where_the_last_value_left_it(monkeypatch):
    X, y = blobs(n_per_class=30, dims=300, spread=8.0, seed=2)  # few rows, many dims: weak C fits slowly
    Cs = (0.01, 0.1, 1.0, 10.0)
    monkeypatch.setattr(linear, "PATIENCE", len(Cs))  # every value scored
    relative = TunedLogisticRegression(Cs=Cs).fit(X, y)
    monkeypatch.setattr(linear, "RELATIVE", None)  # the absolute test alone: a weak C begins within it
    absolute = TunedLogisticRegression(Cs=Cs).fit(X, y)
    cold = np.array(
        [
            [
                -np.mean(
                    np.log(
                        LogisticRegression(C=C, tol=1e-8, max_iter=10_000)
                        .fit(X[train], y[train])
                        .predict_proba(X[test])[np.arange(len(test)), y[test]]
                    )
                )
                for C in Cs
            ]
            for train, test in linear.inner_splits(X, y, None, 3, 0)
        ]
    ).mean(axis=0)
    error = np.abs(relative.cv_scores_.mean(axis=0) / cold - 1)
    assert error.max() < 0.03  # every value's mean inner log-loss within 3 % of the exact optimum's
    assert np.abs(absolute.cv_scores_.mean(axis=0)[-1] / cold[-1] - 1) > 3 * error[-1]  # 12 % off at C = 10
    assert Cs[int(np.argmin(cold))] == relative.C_


def test_the_refit_is_a_fitted_scikit_learn_model_at_the_chosen_C():
    X, y = blobs(n_per_class=30, classes=3, spread=2.0)
    labels = np.array(["a", "b", "c"])[y]
    model = TunedLogisticRegression().fit(X, labels)
    assert isinstance(model.model_, LogisticRegression) and model.model_.C == model.C_
    optimum = LogisticRegression(C=model.C_, tol=1e-10, max_iter=10_000).fit(X, labels)
    np.testing.assert_allclose(model.predict_proba(X), optimum.predict_proba(X), atol=2e-3)
    np.testing.assert_array_equal(model.predict(X), optimum.predict(X))
    assert set(model.predict(X)) <= {"a", "b", "c"}


@pytest.mark.parametrize("spec", ["logreg", "ridge", "lda", "rbf-svm~nystroem", "ensemble:members=logreg+knn"])
def test_the_zoo_refuses_nan_rows_and_one_class_before_any_fit(spec):
    """As scikit-learn's own estimators: a NaN had given the scaler a NaN mean (ridge then answered one class for
    every row), and one class an IndexError (lda) or rows of [0.5, 0.5] (logreg)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 6))
    y = np.where(X[:, 0] > 0, "a", "b")
    holed = X.copy()
    holed[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        make_classifier(spec).fit(holed, y)
    with pytest.raises(ValueError, match="at least 2 classes; the rows have one class, 'a'"):
        make_classifier(spec).fit(X[y == "a"], y[y == "a"])
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        make_classifier(spec).fit(X, y[:-1])


def test_the_probe_fits_integer_rows_as_their_float_values():
    """Integer rows had reached the solver as integers: C 1e-4 and half the training rows wrong."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 8))
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int)
    whole = np.round(X * 10).astype(np.int64)
    as_int = TunedLogisticRegression().fit(whole, y)
    as_float = TunedLogisticRegression().fit(whole.astype(np.float64), y)
    assert as_int.C_ == as_float.C_
    np.testing.assert_allclose(as_int.predict_proba(whole), as_float.predict_proba(whole), rtol=1e-6, atol=1e-9)
    assert (as_int.predict(whole) == y).mean() > 0.9


def test_no_scikit_learn_warning_leaks_from_a_class_of_one_row_or_copies_of_one_image():
    """cv printed four lines of 'Only one sample available' for LDA on a few labels per class, and select a
    ConvergenceWarning for a pool of identical images: both are what these rows are, said by nothing."""
    import warnings

    from classifiers.select_rules import kmeans

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(7, 5)), np.array([0, 0, 0, 1, 1, 1, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert make_classifier("lda").fit(X, y).predict(X[:3]).tolist() == [0, 0, 0]
        _, assigned = kmeans(np.ones((20, 4), dtype=np.float32), 5, 0)
    assert set(assigned.tolist()) == {0}


def test_lda_under_five_images_per_class_is_the_nearest_class_mean_and_says_so():
    """At 2 a class, LDA's Ledoit-Wolf covariance had scored 16 % on flowers' 5 classes (below chance): under
    ``LDA_FROM`` rows per class on average the nearest class mean answers, named in ``fallback_``."""
    from classifiers.registry import LDA_FROM, FewShotLDA

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 30)) * 2
    y = np.repeat([0, 1, 2], 2)
    X = centres[y] + rng.normal(size=(6, 30))
    few = FewShotLDA(solver="lsqr", shrinkage="auto").fit(X, y)
    means = np.stack([X[y == c].mean(axis=0) for c in range(3)])
    test = centres[[0, 1, 2, 0]] + rng.normal(size=(4, 30))
    nearest = np.argmin(((test[:, None, :] - means[None]) ** 2).sum(axis=2), axis=1)
    assert few.predict(test).tolist() == nearest.tolist()
    assert few.fallback_ == "lda: 2.0 labelled images per class, too few for a within-class spread (LDA from 5): " + (
        "the nearest class mean"
    )
    y5 = np.repeat([0, 1, 2], LDA_FROM)
    assert (
        FewShotLDA(solver="lsqr", shrinkage="auto").fit(centres[y5] + rng.normal(size=(15, 30)), y5).fallback_ is None
    )
