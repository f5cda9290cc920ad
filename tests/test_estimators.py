"""The zoo's own estimators as scikit-learn users expect them: input checked at predict as at fit, labels that are
classes, numpy numbers as parameters (a grid from ``np.arange``), any ``random_state``, a DataFrame's column names
kept, no state left over from a former fit, and scikit-learn's ``NotFittedError`` before a fit."""

import warnings

import numpy as np
import pyarrow as pa
import pytest
from sklearn.base import clone
from sklearn.datasets import make_classification
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.preprocessing import StandardScaler

from classifiers.ensemble import ZooEnsemble
from classifiers.linear import TunedLogisticRegression
from classifiers.registry import FewShotLDA, ReducedPCA, make_classifier
from classifiers.ridge import NystroemRidge, TunedRidge
from classifiers.scaling import ShrunkScaler
from classifiers.semi import SemiSupervised
from embedder.kernel.errors import InvalidValue

X, Y = make_classification(n_samples=90, n_features=6, n_informative=4, n_classes=3, random_state=0)


def table(rows, names=None) -> pa.Table:
    """Rows as a dataframe (pyarrow's, which scikit-learn reads through the dataframe protocol)."""
    names = names or [f"f{i}" for i in range(rows.shape[1])]
    return pa.table({n: rows[:, i] for i, n in enumerate(names)})


def test_ridge_checks_rows_at_predict_as_at_fit():
    """A NaN had been predicted as class 0, one row given flat had given one answer per feature."""
    model = TunedRidge().fit(X, Y)
    nan = X[:3].copy()
    nan[1, 2] = np.nan
    with pytest.raises(InvalidValue, match="ridge: Input X contains NaN"):
        model.predict(nan)
    with pytest.raises(InvalidValue, match="Expected 2D array"):
        model.predict(X[0])
    with pytest.raises(InvalidValue, match="X has 5 features, but TunedRidge is expecting 6"):
        model.predict(X[:, :5])
    with pytest.raises(InvalidValue, match="ridge: Input X contains NaN"):
        make_classifier("ridge", 0).fit(X, Y).predict(nan)  # the scale step lets a NaN through, the ridge not


@pytest.mark.parametrize(
    "estimator",
    [TunedRidge(), NystroemRidge(n_components=20), FewShotLDA(), TunedLogisticRegression(C=1.0), SemiSupervised()],
)
def test_continuous_labels_are_refused_not_made_a_class_each(estimator):
    with pytest.raises(InvalidValue, match="Unknown label type: continuous"):
        clone(estimator).fit(X, np.linspace(0, 1, len(X)))


def test_numpy_numbers_are_parameters_as_python_numbers_are():
    """``np.arange`` and float32 values in a grid had been refused as 'not a whole number' on every fit."""
    for estimator, grid in [
        (TunedLogisticRegression(), {"inner_folds": np.arange(2, 4)}),
        (TunedRidge(), {"alpha": np.array([0.5, 1.0], dtype=np.float32)}),
        (NystroemRidge(), {"n_components": np.array([10, 20])}),
    ]:
        search = GridSearchCV(estimator, grid, cv=3, error_score="raise").fit(X, Y)
        assert search.best_params_ and search.best_score_ > 0.5
    with pytest.raises(InvalidValue, match="inner_folds=True: give a whole number"):
        TunedLogisticRegression(inner_folds=True).fit(X, Y)


def test_semi_supervised_takes_any_random_state():
    """None and a RandomState had been a TypeError (``random_state + repeat``); an int is as before."""
    y = Y.copy()
    y[::3] = -1
    fitted = {}
    for state in (None, np.random.RandomState(0), 0, 0):
        model = SemiSupervised(random_state=state).fit(X, y)
        assert model.predict(X).shape == (len(X),) and set(model.classes_) == {0, 1, 2}
        fitted.setdefault(repr(state), []).append(model.predict_proba(X))
    np.testing.assert_array_equal(*fitted["0"])


def test_semi_supervised_decide_leaves_a_fitted_models_classes():
    y = Y.copy()
    y[::3] = -1
    model = SemiSupervised().fit(X, y)
    two = np.where(np.isin(Y, [0, 1]), Y, -1)
    model.decide(X, two)
    assert list(model.classes_) == [0, 1, 2] and model.predict_proba(X).shape == (len(X), 3)
    fresh = SemiSupervised()
    fresh.decide(X, y)
    assert not hasattr(fresh, "classes_")


def test_ensemble_takes_a_column_of_labels_and_says_not_fitted():
    flat = ZooEnsemble(members="logreg+lda").fit(X, Y)
    column = ZooEnsemble(members="logreg+lda").fit(X, Y[:, None])  # had been 'object too deep for desired array'
    np.testing.assert_array_equal(column.predict_proba(X), flat.predict_proba(X))
    with pytest.raises(NotFittedError):
        ZooEnsemble().predict(X)


def test_refits_leave_nothing_of_the_former_fit():
    """A swept probe refit with a fixed C, a stacked ensemble refit as a vote, and a full LDA refit on few rows
    (where it falls back to the nearest mean) had kept attributes of the former fit."""
    probe = TunedLogisticRegression().fit(X, Y)
    assert probe.n_inner_iter_ is not None
    assert not hasattr(probe.set_params(C=1.0).fit(X, Y), "n_inner_iter_")
    stacked = ZooEnsemble(members="logreg+lda", method="stack").fit(X, Y)
    assert hasattr(stacked, "final_") and not hasattr(stacked.set_params(method="vote").fit(X, Y), "final_")
    lda = FewShotLDA(solver="svd").fit(X, Y)
    assert hasattr(lda, "xbar_") and lda.transform(X).shape == (len(X), 2)
    few = np.concatenate([np.flatnonzero(c == Y)[:2] for c in range(3)])
    lda.fit(X[few], Y[few])
    assert lda.fallback_ and not hasattr(lda, "xbar_") and not hasattr(lda, "scalings_")
    with pytest.raises(NotImplementedError, match="no discriminant projection"):
        lda.transform(X)


def test_the_nearest_mean_fallback_honours_priors():
    """Given priors had been ignored (uniform) where LDA falls back to the nearest class mean."""
    few = np.concatenate([np.flatnonzero(c == Y)[:2] for c in range(3)])
    even = FewShotLDA().fit(X[few], Y[few])
    np.testing.assert_allclose(even.priors_, [1 / 3] * 3)
    leaning = FewShotLDA(priors=[98, 1, 1]).fit(X[few], Y[few])
    np.testing.assert_allclose(leaning.priors_, [0.98, 0.01, 0.01])
    shift = leaning.decision_function(X) - even.decision_function(X)
    np.testing.assert_allclose(shift, np.broadcast_to(np.log([0.98, 0.01, 0.01]) - np.log(1 / 3), shift.shape))
    assert (leaning.predict(X) == 0).sum() > (even.predict(X) == 0).sum()
    with pytest.raises(InvalidValue, match="priors must be 3 non-negative numbers"):
        FewShotLDA(priors=[1, 1]).fit(X[few], Y[few])


@pytest.mark.parametrize("name", ["logreg", "lda", "ridge", "rbf-svm", "linear-svm", "knn"])
def test_a_dataframes_column_names_are_kept_and_checked(name):
    """Fit on a dataframe, predict on one: no 'fitted without feature names' warning on every predict (the steps
    had seen a plain array at fit); columns in another order are refused, as scikit-learn refuses them."""
    model = make_classifier(name, 0).fit(table(X), Y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(model.predict(table(X)), make_classifier(name, 0).fit(X, Y).predict(X))
    with pytest.raises(ValueError, match="feature names should match"):
        model.predict(table(X[:, ::-1], [f"f{i}" for i in reversed(range(X.shape[1]))]))


def test_reduced_pca_reads_lists_and_names_its_outputs():
    pca = ReducedPCA(n_components=3).fit(X.tolist())
    assert pca.transform(X[:2].tolist()).shape == (2, 3)
    assert list(pca.get_feature_names_out()) == ["reducedpca0", "reducedpca1", "reducedpca2"]
    del pca.__dict__["n_features_in_"]  # as a model file of before holds it: pca_ fitted, nothing else to count
    assert len(pca.get_feature_names_out(["a"] * 6)) == 3
    pipe = make_classifier("rbf-svm", 0).fit(X, Y)
    assert len(pipe[:-1].get_feature_names_out()) == pipe.named_steps["pca"]._n_features_out


def test_shrunk_scaler_shrinks_on_every_path_and_refuses_partial_fit():
    """Weights and no centring had silently given StandardScaler's variances; partial_fit had been an
    AttributeError; NaN is refused at fit, and the tags say so."""
    rows = X[:6]
    plain = ShrunkScaler().fit(rows)
    assert plain.weight_ < 1
    weighted = ShrunkScaler().fit(rows, sample_weight=np.ones(len(rows)))
    np.testing.assert_allclose(weighted.scale_, plain.scale_, rtol=1e-10)
    uncentred = ShrunkScaler(with_mean=False).fit(rows)
    np.testing.assert_allclose(uncentred.scale_, plain.scale_, rtol=1e-10)
    # the plain path (weights, no centring) reads lists and refuses NaN as fit does
    as_list = ShrunkScaler(with_mean=False).fit(rows.tolist())
    np.testing.assert_allclose(as_list.scale_, plain.scale_, rtol=1e-10)
    nan = rows.copy()
    nan[2, 1] = np.nan
    for fitting in (
        lambda: ShrunkScaler(with_mean=False).fit(nan),
        lambda: ShrunkScaler().fit(nan, sample_weight=np.ones(6)),
    ):
        with pytest.raises(InvalidValue, match="scale: Input contains NaN"):
            fitting()
    with pytest.raises(InvalidValue, match="partial_fit cannot shrink"):
        ShrunkScaler().partial_fit(rows)
    unshrunk = ShrunkScaler(shrink=False).fit(rows[:3]).partial_fit(rows[3:])
    np.testing.assert_allclose(unshrunk.scale_, StandardScaler().fit(rows).scale_, rtol=1e-10)
    assert ShrunkScaler().__sklearn_tags__().input_tags.allow_nan is False
