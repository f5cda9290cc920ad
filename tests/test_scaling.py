"""The zoo's scale step (``classifiers.scaling.ShrunkScaler``): variances from few rows shrunk toward their common
level, the same as ``StandardScaler`` from a few thousand rows, blocked, and saved in model files."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from classifiers.registry import BlockedScaler, make_classifier
from classifiers.scaling import ShrunkScaler, blocked_moments, shrink_weight, shrunk_variances


def _signal_and_noise(rng, n_per_class, signal=5, noise=45, noise_sd=0.1):
    """Two classes apart in ``signal`` features (sd 1 within a class, means ±1); ``noise`` features of sd
    ``noise_sd`` that carry no class."""
    y = np.repeat([0, 1], n_per_class)
    X = np.hstack(
        [rng.normal(size=(len(y), signal)) + (2 * y[:, None] - 1), noise_sd * rng.normal(size=(len(y), noise))]
    )
    return X, y


def test_from_four_rows_the_noise_features_stay_small_and_a_probe_classifies_better():
    """4 labelled rows in 50-d, 45 features pure noise of small variance: StandardScaler gives every feature the
    same variance on the 4 rows, so the 45 noise features outweigh the 5 that carry the class; the shrunk scale
    keeps them small, and the same logistic regression on it classifies held-out rows better (12 seeded draws)."""
    rng = np.random.default_rng(0)
    ratios, plain, shrunk = [], [], []
    for _ in range(12):
        X, y = _signal_and_noise(rng, 2)
        Xt, yt = _signal_and_noise(rng, 200)
        scaler = ShrunkScaler().fit(X)
        Z = scaler.transform(Xt)
        ratios.append(Z[:, :5].var(axis=0).mean() / Z[:, 5:].var(axis=0).mean())
        for s, out in ((StandardScaler(), plain), (ShrunkScaler(), shrunk)):
            s.fit(X)
            model = LogisticRegression(C=0.1).fit(s.transform(X), y)
            out.append((model.predict(s.transform(Xt)) == yt).mean())
    # held-out variance of a signal feature over a noise one, after scaling: about 1 with StandardScaler's (each of
    # the 4 rows' features at unit variance), well above with the shrunk one
    assert np.median(ratios) > 2
    assert np.mean(shrunk) > np.mean(plain) + 0.05, (np.mean(shrunk), np.mean(plain))


def test_from_thousands_of_rows_it_is_standard_scaler():
    """2,000 rows of 200 features whose variances spread as a CNN layer's (log-variances sd 0.8): the scale is
    StandardScaler's within 1 %; the mean is the same."""
    rng = np.random.default_rng(1)
    sd = np.exp(rng.normal(scale=0.4, size=200))
    X = (rng.normal(size=(2000, 200)) * sd).astype(np.float32) + 3
    ours, theirs = ShrunkScaler().fit(X), StandardScaler().fit(X)
    assert ours.weight_ > 0.99
    np.testing.assert_allclose(ours.scale_, theirs.scale_, rtol=1e-2)
    np.testing.assert_allclose(ours.mean_, theirs.mean_, rtol=1e-6)
    np.testing.assert_allclose(ours.transform(X[:5]), theirs.transform(X[:5]), rtol=1e-2, atol=1e-2)


def test_the_weight_goes_from_0_to_1_with_the_rows():
    """Features of one true variance: their estimates differ by sampling noise alone, the weight is 0 and every
    feature gets one common scale (their mean variance). Spread variances: the weight grows with the rows."""
    rng = np.random.default_rng(2)
    same = rng.normal(size=(6, 400))
    scaler = ShrunkScaler().fit(same)
    assert scaler.weight_ == 0.0
    np.testing.assert_allclose(scaler.var_, np.full(400, same.var(axis=0).mean()))
    sd = np.exp(rng.normal(scale=0.4, size=400))
    weights = [ShrunkScaler().fit(rng.normal(size=(n, 400)) * sd).weight_ for n in (3, 10, 100, 1000)]
    assert weights == sorted(weights) and weights[0] < 0.3 and weights[-1] > 0.98
    assert shrink_weight(np.log(sd**2), 1) == 0.0  # one row: no variance to weigh


def test_shrunk_variances_keep_their_mean_and_leave_constant_columns_alone():
    var = np.array([0.0, 0.01, 0.1, 1.0, 2.0])
    out, weight = shrunk_variances(var, 4)
    assert out[0] == 0.0 and 0.0 <= weight < 1.0
    assert out[1:].mean() == pytest.approx(var[1:].mean())
    assert out[1] > var[1] and out[4] < var[4]  # pulled toward their common level
    scaler = ShrunkScaler().fit(np.array([[1.0, 0.0, 5.0], [1.0, 1.0, 7.0], [1.0, 3.0, 6.0]]))
    assert scaler.scale_[0] == 1.0  # a constant column scales by 1, as StandardScaler's


def test_blocks_of_float32_rows_give_the_float64_moments():
    rng = np.random.default_rng(3)
    X = (rng.normal(size=(1000, 7)) * 1e3 + 1e4).astype(np.float32)
    mean, var = blocked_moments(X, block_bytes=8 * 7 * 33)  # 33 rows a block
    np.testing.assert_allclose(mean, X.astype(np.float64).mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(var, X.astype(np.float64).var(axis=0), rtol=1e-9)
    plain = ShrunkScaler(shrink=False).fit(X)
    np.testing.assert_allclose(plain.scale_, BlockedScaler().fit(X).scale_, rtol=1e-12)


def test_the_zoo_scales_with_it_and_a_model_file_keeps_it(tmp_path):
    """The zoo's scale step is a ShrunkScaler; a trained pipeline saved as a model file loads (its class is trusted)
    and predicts the same."""
    from classifiers import modelfile

    assert isinstance(make_classifier("logreg").named_steps["scale"], ShrunkScaler)
    assert make_classifier("logreg", scale=False).named_steps["scale"] == "passthrough"
    rng = np.random.default_rng(4)
    X, y = _signal_and_noise(rng, 6)
    model = make_classifier("logreg:C=0.1").fit(X, y)
    assert modelfile._name(ShrunkScaler) in modelfile.TRUSTED_TYPES
    import skops.io

    again = skops.io.loads(skops.io.dumps(model), trusted=list(modelfile.TRUSTED_TYPES))
    np.testing.assert_array_equal(again.predict_proba(X), model.predict_proba(X))
    assert again.named_steps["scale"].weight_ == model.named_steps["scale"].weight_
