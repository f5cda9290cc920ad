"""The ``ensemble`` zoo entry: a scikit-learn estimator whose soft vote is the mean of its members' probabilities,
whose stacking learns from out-of-fold probabilities of the training rows only, and which goes wherever a zoo
classifier goes (Pipeline, GridSearchCV, cv's folds, model files); its ONNX export is refused in one line."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import digest, synthetic_cache
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, RepeatedStratifiedKFold, StratifiedKFold, cross_val_predict
from sklearn.model_selection import cross_validate as sk_cross_validate

from classifiers.bundle import evaluate, load_bundle, train
from classifiers.crossval import cross_validate, make_splits
from classifiers.ensemble import ZooEnsemble
from classifiers.zoo import describe, list_classifiers, make_classifier, parse_spec
from embedder.kernel.errors import FeaturebankError


def blobs(n=90, k=3, dim=12, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    X = rng.normal(0, 1.0, (n, dim)) + 1.5 * np.eye(k, dim)[y]
    return X.astype(np.float32), y


def members_fit_alone(X, y, seed=0, folds=3):
    """logreg, rbf-svm with a sigmoid calibration on 3 shuffled inner folds (the ensemble's default), knn: each fit
    on its own."""
    inner = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return [
        make_classifier("logreg", seed=seed).fit(X, y),
        CalibratedClassifierCV(make_classifier("rbf-svm", seed=seed), method="sigmoid", cv=inner, ensemble=False).fit(
            X, y
        ),
        make_classifier("knn", seed=seed).fit(X, y),
    ]


def test_an_estimator_that_does_nothing_in_init_and_clones():
    e = ZooEnsemble(members="logreg+nope", method="vote")  # checked in fit, as scikit-learn does
    assert clone(e).get_params() == {"members": "logreg+nope", "method": "vote", "inner_folds": 3, "random_state": 0}
    X, y = blobs()
    with pytest.raises(FeaturebankError, match="unknown classifier 'nope'"):
        e.fit(X, y)
    for members, message in [
        ("logreg", "two or more different members"),
        ("logreg+logreg", "two or more"),
        ("logreg+ensemble", "cannot be a member of an ensemble"),
    ]:
        with pytest.raises(FeaturebankError, match=message):
            ZooEnsemble(members=members).fit(X, y)
    with pytest.raises(FeaturebankError, match="unknown ensemble method 'boost': choose one of vote, stack"):
        ZooEnsemble(method="boost").fit(X, y)


def test_the_spec_round_trips_into_the_estimators_parameters():
    spec = "ensemble:members=logreg+rbf-svm,method=stack,inner_folds=3"
    assert parse_spec(spec) == ("ensemble", {"members": "logreg+rbf-svm", "method": "stack", "inner_folds": 3})
    clf = make_classifier(spec, seed=7).named_steps["clf"]
    assert clf.get_params() == {"members": "logreg+rbf-svm", "method": "stack", "inner_folds": 3, "random_state": 7}
    assert "ensemble" in list_classifiers()
    assert describe("ensemble") == (
        "soft vote of [logreg: scale → TunedLogisticRegression() | rbf-svm: l2 → pca(256) → "
        "SVC(C=10.0) + sigmoid calibration | knn: CosineKNeighbors()]"
    )


def test_soft_vote_is_the_mean_of_the_members_probabilities_fit_alone():
    X, y = blobs()
    X_new, _ = blobs(seed=1)
    ensemble = make_classifier("ensemble").fit(X, y)
    alone = members_fit_alone(X, y)
    expected = np.mean([m.predict_proba(X_new) for m in alone], axis=0)
    np.testing.assert_allclose(ensemble.predict_proba(X_new), expected, atol=1e-12)
    np.testing.assert_array_equal(ensemble.predict(X_new), expected.argmax(1))
    assert not np.allclose(alone[0].predict_proba(X_new), expected, atol=1e-2)  # the members do differ


def test_stacking_learns_from_out_of_fold_probabilities_of_its_training_rows_only():
    X, y = blobs(n=120)
    train_rows = make_splits(y, folds=4)[0].train
    stacked = make_classifier("ensemble:method=stack,members=logreg+knn", seed=2).fit(X[train_rows], y[train_rows])
    inner = StratifiedKFold(3, shuffle=True, random_state=2)
    oof = np.hstack(
        [
            cross_val_predict(
                make_classifier(m, seed=2), X[train_rows], y[train_rows], cv=inner, method="predict_proba"
            )
            for m in ("logreg", "knn")
        ]
    )
    final = LogisticRegression(max_iter=2000).fit(oof, y[train_rows])
    fitted = stacked.named_steps["clf"].final_
    np.testing.assert_allclose(fitted.coef_, final.coef_, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(fitted.intercept_, final.intercept_, rtol=1e-6, atol=1e-8)
    # and the members it predicts with are refit on all the training rows
    knn = make_classifier("knn", seed=2).fit(X[train_rows], y[train_rows])
    np.testing.assert_allclose(
        stacked.named_steps["clf"].members_[1].predict_proba(X), knn.predict_proba(X), atol=1e-12
    )


@pytest.mark.parametrize(
    "spec",
    ["ensemble", pytest.param("ensemble:method=stack,members=logreg+lda+rbf-svm", marks=pytest.mark.integration)],
)
def test_cross_validated_like_any_classifier(tmp_path, spec):
    X, y = synthetic_cache(tmp_path / "c.h5")
    report = cross_validate(
        tmp_path / "c.h5", classifiers=[spec, "logreg"], layers=["flatten"], folds=3, repeats=1, seed=1
    )
    ours = report.result(spec, "flatten")
    theirs = sk_cross_validate(
        make_classifier(spec, seed=1),
        X,
        y,
        cv=RepeatedStratifiedKFold(n_splits=3, n_repeats=1, random_state=1),
        scoring={"accuracy": "accuracy", "log_loss": "neg_log_loss"},
    )
    np.testing.assert_allclose([f.scores["accuracy"] for f in ours.folds], theirs["test_accuracy"], atol=1e-12)
    np.testing.assert_allclose([f.scores["log_loss"] for f in ours.folds], -theirs["test_log_loss"], rtol=1e-6)
    assert ours.proba is not None and ours.pipeline.startswith(("soft vote of [logreg", "stacking"))


@pytest.mark.integration  # over 4 s on 2 cores: the second tier
def test_in_grid_search_and_in_a_model_file(tmp_path):
    X, y = blobs()
    grid = GridSearchCV(
        make_classifier("ensemble:members=logreg+knn"),
        {"clf__method": ["vote", "stack"]},
        cv=StratifiedKFold(3, shuffle=True, random_state=0),
    ).fit(X, y)
    for i, method in enumerate(["vote", "stack"]):
        alone = sk_cross_validate(
            make_classifier(f"ensemble:members=logreg+knn,method={method}"),
            X,
            y,
            cv=StratifiedKFold(3, shuffle=True, random_state=0),
        )
        assert grid.cv_results_["mean_test_score"][i] == pytest.approx(alone["test_score"].mean())
    X, y = synthetic_cache(tmp_path / "c.h5")
    bundle = train(str(tmp_path / "c.h5"), classifier="ensemble", layer="flatten", out=str(tmp_path / "m.joblib"))
    again = load_bundle(str(tmp_path / "m.joblib"))
    np.testing.assert_array_equal(again.pipeline.predict_proba(X), bundle.pipeline.predict_proba(X))
    np.testing.assert_array_equal(again.scores(X)[0], bundle.scores(X)[0])  # calibrated, as trained
    assert again.scores(X)[1] == "probability" and again.describe()["pipeline"].startswith("soft vote of")
    held = [digest(1000 + i) for i in range(30)]  # other images than the training ones
    X, y = synthetic_cache(tmp_path / "held.h5", seed=1, digests=held)
    result = evaluate(str(tmp_path / "m.joblib"), str(tmp_path / "held.h5"))
    assert result["metrics"]["accuracy"] == pytest.approx(np.mean(again.predict(X) == y))


def test_cli_errors_and_export_refusal_are_one_line(tmp_path):
    import cli
    from workflows.deploy.head import refusal

    synthetic_cache(tmp_path / "c.h5")
    runner = CliRunner()
    r = runner.invoke(cli.main, ["cv", str(tmp_path / "c.h5"), "-c", "ensemble:members=logreg+nope"])
    # checked when -c is parsed, as an unknown classifier is: a usage error, before the cache is read
    assert r.exit_code == 2 and "Error: Invalid value for '-c' / '--classifier': unknown classifier 'nope'" in r.output
    refused = refusal(make_classifier("ensemble"))
    assert refused.classifier == "ZooEnsemble" and "ensemble's head has no ONNX export" in str(refused)
    train(
        str(tmp_path / "c.h5"),
        classifier="ensemble:members=logreg+lda",
        layer="flatten",
        out=str(tmp_path / "m.joblib"),
    )
    r = runner.invoke(cli.main, ["export", str(tmp_path / "m.joblib"), "-o", str(tmp_path / "m.onnx")])
    assert r.exit_code == 1 and r.output.count("\n") == 1
    assert r.output.startswith("Error: cannot export ensemble:members=logreg+lda (ZooEnsemble): ")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.integration  # over 4 s on 2 cores: the second tier
def test_with_groups_every_inner_fold_keeps_a_group_on_one_side(tmp_path):
    """Near-copies of one group on both sides of the stacking's inner folds would let kNN's out-of-fold
    probabilities look perfect: with groups, the final regression learns from group-aware folds (a hand
    computation with StratifiedGroupKFold), and cv and train hand the cache's groups to the ensemble."""
    from sklearn.model_selection import StratifiedGroupKFold
    from test_bundle import near_copies

    from classifiers.folds import fit_grouped
    from embedder.cache.hdf5 import CacheReader

    X, y, _ = near_copies(tmp_path / "c.h5")
    groups = CacheReader(str(tmp_path / "c.h5")).groups  # a row without a group is a group of its own
    # 5 inner folds (the default is 3): with 4/5 of the rows in each, near-copies of a held-out row sit on the
    # training side often enough that the blind stacking's trust in kNN shows in its weights on these rows
    spec = "ensemble:method=stack,members=logreg+knn,inner_folds=5"
    stacked = make_classifier(spec, seed=3).fit(X, y, clf__groups=groups).named_steps["clf"]
    inner = list(StratifiedGroupKFold(5, shuffle=True, random_state=3).split(X, y, groups))
    assert all(not set(groups[a]) & set(groups[b]) for a, b in inner)
    oof = np.hstack(
        [
            cross_val_predict(  # the tuned logreg's own inner folds take the groups too
                make_classifier(m, seed=3),
                X,
                y,
                cv=inner,
                method="predict_proba",
                params={"clf__groups": groups} if m == "logreg" else None,
            )
            for m in ("logreg", "knn")
        ]
    )
    final = LogisticRegression(max_iter=2000).fit(oof, y)
    np.testing.assert_allclose(stacked.final_.coef_, final.coef_, rtol=1e-6, atol=1e-8)
    blind = make_classifier(spec, seed=3).fit(X, y).named_steps["clf"]
    knn_weight = lambda s: np.abs(s.final_.coef_[0, 2:]).sum()  # noqa: E731  (knn's columns)
    # the leak: knn looks better than it is (1.22x with the tuned logreg as the other member, 1.4x with C = 0.1)
    assert knn_weight(blind) > 1.15 * knn_weight(stacked)

    report = cross_validate(tmp_path / "c.h5", classifiers=[spec], layers=["flatten"], folds=3, seed=3)
    assert report.grouped
    for split, fold in zip(report.splits, report.results[0].folds):
        model = fit_grouped(make_classifier(spec, seed=3), X[split.train], y[split.train], groups[split.train])
        assert fold.scores["log_loss"] == pytest.approx(
            float(
                -np.mean(
                    np.log(
                        np.clip(
                            model.predict_proba(X[split.test])[np.arange(len(split.test)), y[split.test]], 1e-15, None
                        )
                    )
                )
            ),
            rel=1e-9,
        )
    bundle = train(str(tmp_path / "c.h5"), classifier=spec, layer="flatten", seed=3)
    np.testing.assert_allclose(bundle.pipeline.named_steps["clf"].final_.coef_, stacked.final_.coef_, rtol=1e-9)
