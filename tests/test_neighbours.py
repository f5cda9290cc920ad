"""The blocked exact neighbour search (outliers, label issues) and the zoo's ``knn`` built on it: the same answers as
brute force and as scikit-learn's ``KNeighborsClassifier``, in tiles of bounded memory."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from classifiers import neighbours
from classifiers.neighbours import CosineKNeighbors, nearest_neighbours, search, self_search
from classifiers.zoo import make_classifier


def clustered(n, d=24, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    X = (rng.normal(0, 1, (classes, d))[y] + rng.normal(0, 0.8, (n, d))).astype(np.float32)
    return X, y


def brute(X, R, k, own=None):
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    V = R / np.linalg.norm(R, axis=1, keepdims=True)
    S = U @ V.T
    if own is not None:
        S[np.arange(len(X)), own] = -np.inf
    top = np.argsort(-S, axis=1, kind="stable")[:, :k]  # stable: ties to the earlier row
    return top, np.take_along_axis(S, top, axis=1)


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of 40 x 25 similarities: every path of the search (first tiles, later ones, self-exclusion across
    tiles, the diagonal) is taken many times on a few hundred rows."""
    monkeypatch.setattr(neighbours, "QUERY_BLOCK", 40)
    monkeypatch.setattr(neighbours, "TILE_BYTES", 40 * 25 * 4)


def test_blocked_search_equals_brute_force_with_ties_to_the_earlier_row(small_tiles):
    X, _ = clustered(230)
    X[[17, 150, 201]] = X[60]  # exact duplicates: equal similarities, so the order is the tie rule's
    index, sim = nearest_neighbours(X.copy(), k=7)
    top, best = brute(X, X, 7, np.arange(230))
    assert index[60][:3].tolist() == [17, 150, 201] and index[201][:3].tolist() == [17, 60, 150]
    np.testing.assert_allclose(sim, best, atol=1e-5)
    # a duplicate's similarity to a row may differ in the last bit with the tile it is computed in: the same image
    same = np.arange(230)
    same[[17, 150, 201]] = 60
    assert (same[index] == same[top]).all()
    # the symmetric search (each tile serves both its rows and its columns) is the plain one in half the products
    plain, plain_sim = search(
        X / np.linalg.norm(X, axis=1, keepdims=True), X / np.linalg.norm(X, axis=1)[:, None], 7, np.arange(230)
    )
    half, half_sim = self_search(X / np.linalg.norm(X, axis=1, keepdims=True), 7)
    assert (same[plain] == same[half]).all() and (same[plain] == same[top]).all()
    np.testing.assert_allclose(plain_sim, half_sim, atol=1e-6)


def test_beyond_the_reference_rows_neighbours_come_from_the_seeded_sample(small_tiles):
    X, _ = clustered(300, seed=1)
    index, sim = nearest_neighbours(X.copy(), k=4, reference=90, seed=3)
    ref = np.sort(np.random.default_rng(3).choice(300, 90, replace=False))
    own = np.full(300, -1)
    own[ref] = np.arange(90)
    top, best = brute(X, X[ref], 4, None)
    S = (X / np.linalg.norm(X, axis=1, keepdims=True)) @ (X[ref] / np.linalg.norm(X[ref], axis=1, keepdims=True)).T
    S[np.flatnonzero(own >= 0), own[own >= 0]] = -np.inf  # a sampled row is not its own neighbour either
    top = np.argsort(-S, axis=1, kind="stable")[:, :4]
    assert (index == ref[top]).all()
    np.testing.assert_allclose(sim, np.take_along_axis(S, top, axis=1), atol=1e-5)


def test_memory_is_the_tile_not_rows_squared(monkeypatch):
    """3,000 rows: a similarity matrix would be 36 MB; the search holds one 1 MB tile and its pass."""
    monkeypatch.setattr(neighbours, "QUERY_BLOCK", 256)
    monkeypatch.setattr(neighbours, "TILE_BYTES", 1 << 20)
    X, _ = clustered(3000, d=16, seed=2)
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    tracemalloc.start()
    index, _ = search(U, U, 5, np.arange(3000))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 6 << 20, peak
    assert (index[:200] == brute(X[:200], X, 5, np.arange(200))[0]).all()


@pytest.mark.parametrize("k,weights", [(1, "distance"), (5, "distance"), (7, "uniform")])
def test_knn_equals_scikit_learn(small_tiles, k, weights):
    X, y = clustered(260, seed=4)
    names = np.array(["ant", "bee", "wasp"])[y]
    train, test = slice(0, 200), slice(200, 260)
    Xt = X[test].copy()
    Xt[0] = X[5]  # an exact match: it alone decides, as in scikit-learn
    ours = CosineKNeighbors(n_neighbors=k, weights=weights).fit(X[train], names[train])
    theirs = KNeighborsClassifier(n_neighbors=k, weights=weights, metric="cosine", algorithm="brute")
    theirs.fit(X[train].astype(np.float64), names[train])
    assert (ours.classes_ == theirs.classes_).all()
    assert (ours.predict(Xt) == theirs.predict(Xt.astype(np.float64))).all()
    np.testing.assert_allclose(ours.predict_proba(Xt), theirs.predict_proba(Xt.astype(np.float64)), atol=2e-4)
    dist, index = ours.kneighbors(Xt)
    their_dist, their_index = theirs.kneighbors(Xt.astype(np.float64))
    assert (index == their_index).all()
    np.testing.assert_allclose(dist, their_dist, atol=1e-5)
    if weights == "distance":
        assert ours.predict_proba(Xt)[0].tolist() == [float(c == names[5]) for c in ours.classes_]


def test_the_zoo_knn_composes_in_a_pipeline_and_a_search():
    X, y = clustered(150, seed=5)
    pipe = make_classifier("knn")
    assert type(pipe.named_steps["clf"]).__name__ == "CosineKNeighbors"
    search_cv = GridSearchCV(
        make_pipeline(StandardScaler(), CosineKNeighbors()), {"cosinekneighbors__n_neighbors": [1, 5]}, cv=3
    )
    search_cv.fit(X, y)
    reference = GridSearchCV(
        make_pipeline(StandardScaler(), KNeighborsClassifier(metric="cosine", algorithm="brute", weights="distance")),
        {"kneighborsclassifier__n_neighbors": [1, 5]},
        cv=3,
    ).fit(X, y)
    np.testing.assert_allclose(search_cv.cv_results_["mean_test_score"], reference.cv_results_["mean_test_score"])
    assert pipe.fit(X, y).score(X, y) == 1.0  # distance weights: each training row is its own exact match


def test_knn_bad_parameters_are_one_line():
    from embedder.kernel.errors import FeaturebankError

    with pytest.raises(FeaturebankError, match="n_neighbors must be a whole number"):
        make_classifier("knn:n_neighbors=0")
    few = CosineKNeighbors(n_neighbors=5).fit(np.eye(3, 4), [0, 1, 1])  # fewer rows than k: all of them, said
    assert few.k_ == 3 and few.fallback_ == "knn: k=3, every training row, not 5 (3 rows)"
    assert few.predict(np.eye(3, 4)).tolist() == [0, 1, 1]


def structured(seed=0):
    """600 rows with clear structure: 6 tight clusters in a 6-d subspace of 48 dimensions, 5 near-duplicate pairs
    (a row and a copy moved by 1e-4) and 4 outliers (random directions, far from every cluster)."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(48, 6)))[0].T  # 6 x 48, orthonormal rows
    centres = rng.normal(0, 3, (6, 6))
    y = np.repeat(np.arange(6), 100)
    X = (centres[y] + rng.normal(0, 0.5, (600, 6))) @ basis + rng.normal(0, 0.01, (600, 48))
    pairs = [(10, 110), (250, 251), (333, 590), (400, 47), (520, 199)]
    for a, b in pairs:
        X[b] = X[a] + rng.normal(0, 1e-4, 48)
    outliers = [3, 150, 299, 480]
    X[outliers] = rng.normal(0, 3, (4, 48))
    return X.astype(np.float32), pairs, outliers


def test_below_the_switch_the_exact_search_answers_unchanged(monkeypatch):
    """Up to the switch no index is built: the same neighbours, bit for bit, as the exact self-search."""
    X, _ = clustered(300, seed=4)

    def never(*args, **kwargs):
        raise AssertionError("the index was used below the switch")

    monkeypatch.setattr(neighbours, "index_neighbours", never)
    info = {}
    index, sim = nearest_neighbours(X.copy(), k=7, approximate=300, info=info)
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    exact, exact_sim = self_search(U.astype(np.float32), 7)
    assert (index == exact).all() and np.array_equal(sim, exact_sim)
    assert info["method"] == "exact" and info["recall"] is None and info["text"] == "exact, among all 300 images"
    assert neighbours.APPROXIMATE >= 20_000  # the default switch: the exact range of before is kept


def test_beyond_the_switch_the_index_finds_the_same_duplicates_and_outliers(monkeypatch):
    """The switch forced low (and the projection to 4 of 48 dimensions, so that the principal directions are
    used): the index gives every near-duplicate its twin as nearest neighbour, the same four outliers, the exact
    similarities of what it found, and a measured recall@k near 1 on this structure."""
    monkeypatch.setattr(neighbours, "INDEX_DIMS", 8)
    X, pairs, outliers = structured()
    info = {}
    index, sim = nearest_neighbours(X.copy(), k=5, approximate=100, info=info)
    assert info["method"] == "index" and info["recall_queries"] == 300
    assert info["recall"] >= 0.95
    assert f"recall@5 {info['recall']:.3f} against the exact search" in info["text"]
    for a, b in pairs:
        assert index[a, 0] == b and index[b, 0] == a
    assert set(np.argsort(sim[:, 0])[:4]) == set(outliers)
    exact, exact_sim = brute(X, X, 5, np.arange(600))
    assert set(np.argsort(exact_sim[:, 0])[:4]) == set(outliers)
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    np.testing.assert_allclose(sim, np.einsum("id,ikd->ik", U, U[index]), atol=1e-5)  # scored exactly
    assert (index != np.arange(600)[:, None]).all()  # never itself
    assert (np.diff(sim, axis=1) <= 1e-6).all()  # most similar first


def test_recall_is_the_share_of_the_exact_neighbours_found():
    X, _ = clustered(400, seed=5)
    U = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    exact, _ = brute(X, X, 4, np.arange(400))
    assert neighbours.measured_recall(U, exact, queries=100) == (1.0, 100)
    worse = exact.copy()
    far = np.argsort(U @ U.T, axis=1)[:, :2]  # each row's two least similar rows: never among its nearest 4
    worse[:, 2:] = far
    assert neighbours.measured_recall(U, worse, queries=100) == (0.5, 100)


def _forced_report(tmp_path, monkeypatch):
    """A cv run whose neighbour search is beyond the switch (forced to 12 rows): its report and rows."""
    from helpers import synthetic_cache

    from classifiers.crossval import cross_validate

    monkeypatch.setattr(neighbours, "APPROXIMATE", 12)
    X, _ = synthetic_cache(tmp_path / "c.h5", counts=(14, 12, 10))
    return cross_validate(tmp_path / "c.h5", classifiers=["lda"], layers=["flatten"], folds=3), X


def test_the_report_states_the_index_and_its_measured_recall(tmp_path, monkeypatch):
    """report.json's outliers say how their neighbours were searched and the recall@10 measured in the run;
    report.md carries the sentence; a later run reads it back with the kept neighbours."""
    from classifiers.crossval import cross_validate
    from classifiers.report.writer import markdown, report_dict

    report, X = _forced_report(tmp_path, monkeypatch)
    d = report_dict(report, suspicious=5)
    found = d["outliers"]
    U = (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)
    _, index, _ = report.neighbours()
    recall, queries = neighbours.measured_recall(U, index)
    assert found["search_method"] == "index" and found["search_recall_queries"] == queries == 36
    assert found["search_recall"] == round(recall, 4) and 0.0 <= recall <= 1.0
    sentence = f"recall@10 {recall:.3f} against the exact search, measured in this run on 36 images"
    assert sentence in found["search"] and sentence in markdown(d)
    again = cross_validate(tmp_path / "c.h5", classifiers=["lda"], layers=["flatten"], folds=3)
    assert again.neighbour_search()["text"] == found["search"]  # read back from the kept file, not searched again


@pytest.mark.integration
def test_report_html_states_the_index_recall(tmp_path, monkeypatch):
    from classifiers.report.writer import write_report

    report, _ = _forced_report(tmp_path, monkeypatch)
    write_report(report, str(tmp_path / "out"), suspicious=5)
    d = json.loads((tmp_path / "out" / "report.json").read_text())
    html = (tmp_path / "out" / "report.html").read_text()
    assert d["outliers"]["search_recall"] is not None
    assert f"Neighbour search (these outliers and the label issues' neighbour vote): {d['outliers']['search']}." in html


def test_without_faiss_the_seeded_sample_stands_in_and_says_so(monkeypatch):
    def missing(*args, **kwargs):
        raise ImportError("No module named 'faiss'")

    monkeypatch.setattr(neighbours, "index_neighbours", missing)
    X, _ = clustered(300, seed=1)
    info = {}
    index, _ = nearest_neighbours(X.copy(), k=4, reference=90, seed=3, approximate=100, info=info)
    assert (index == nearest_neighbours(X.copy(), k=4, reference=90, seed=3, approximate=None)[0]).all()
    assert info["method"] == "sample" and "not installed: pip install faiss-cpu" in info["text"]
