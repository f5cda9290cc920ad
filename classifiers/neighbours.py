"""Nearest neighbours by cosine similarity: exact, blocked on BLAS with bounded memory, up to the switch, and from
an approximate index beyond it; the one neighbour search of a ``cv`` run, and the zoo's ``knn`` (always exact).

The exact search multiplies a block of query rows by a chunk of reference rows (one BLAS matrix product, a tile of
at most ``TILE_BYTES``) and keeps each query's ``k`` best so far; a later chunk's similarities are compared with
each query's k-th best (one pass), and only those above it are merged. Memory beyond the inputs is the tile and
the running best, whatever the number of rows; time is that of the matrix products plus a pass over each tile.

Beyond ``APPROXIMATE`` rows the exact search of every row against every row (``n²·d/2``) gives way to an
approximate index (``index_neighbours``): faiss's HNSW graph over the rows projected to their leading principal
directions proposes candidates, which are scored exactly; its recall@k against the exact search is measured in
the same call on a few hundred seeded rows, and the report states it. Without faiss, the exact search among a
fixed random sample of ``REFERENCE`` rows stands in (the report names it).

The outlier list (each image's most similar other image) and the label-issue neighbour signal (the labels of
each image's k most similar images) read the same search, made once per cache and layer (``extras.py`` keeps it
beside the cache for the next run).
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

TILE_BYTES = 64 << 20  # one similarity tile (float32), and about as much again for the pass over it
QUERY_BLOCK = 2048  # query rows per tile: large enough for BLAS to run at full speed
NEIGHBOURS = 10  # per image: the outliers read the first, the label issues' neighbour vote all of them
REFERENCE = 20_000  # without the index (approximate=None), beyond this many rows: a fixed random sample of them
APPROXIMATE = (
    20_000  # beyond this many rows the approximate index answers (the switch: see benchmarks/neighbour_index.py)
)
# The approximate index (faiss's HNSW graph, on the rows projected to their first principal directions, every
# candidate then scored exactly on all dimensions): its settings, chosen in benchmarks/neighbour_index.py.
INDEX_DIMS = 128  # the projection's dimensions (the graph's distances cost this much, not the layer's width)
INDEX_M = 12  # graph edges per node
INDEX_EF_CONSTRUCTION = 40  # candidates kept while the graph is built
INDEX_EF_SEARCH = 40  # candidates kept while each row's neighbours are sought
INDEX_CANDIDATES = 24  # rows the graph proposes per image, scored exactly on every dimension
PCA_SAMPLE = 20_000  # rows the projection is fitted on
RECALL_QUERIES = 300  # images whose exact neighbours measure the index's recall@k in every run that uses it


def normalize(X: np.ndarray, block: int = 16_384) -> np.ndarray:
    """Rows to unit length, in place (float32 stays float32), ``block`` rows at a time: the norm's squares are a
    temporary as large as the rows it is given (a second layer, at a million rows)."""
    for start in range(0, len(X), block):
        rows = X[start : start + block]
        rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12).astype(X.dtype, copy=False)
    return X


def search(Q: np.ndarray, R: np.ndarray, k: int, own: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each row of ``Q``'s ``k`` largest dot products with the rows of ``R`` (unit rows: cosine similarities),
    most similar first, ties to the earlier reference row: (indices into R, similarities), both ``(len(Q), k)``.
    ``own[i]``: the row of R that query i is (excluded: an image is not its own neighbour), or -1."""
    k = min(k, len(R) - (own is not None and bool((own >= 0).any())))
    if k < 1:
        raise ValueError(f"{len(R)} reference rows: too few for a neighbour")
    dtype = np.result_type(Q.dtype, R.dtype, np.float32)
    index = np.empty((len(Q), k), dtype=np.int64)
    similarity = np.empty((len(Q), k), dtype=dtype)
    q_rows = max(1, min(QUERY_BLOCK, len(Q)))
    r_rows = max(k, TILE_BYTES // (q_rows * np.dtype(dtype).itemsize))
    for q0 in range(0, len(Q), q_rows):
        q = Q[q0 : q0 + q_rows]
        mine = None if own is None else own[q0 : q0 + len(q)]
        best_s = np.full((len(q), k), -np.inf, dtype=dtype)
        best_i = np.full((len(q), k), np.iinfo(np.int64).max, dtype=np.int64)
        for r0 in range(0, len(R), r_rows):
            tile = q @ R[r0 : r0 + r_rows].T
            if mine is not None:
                hit = np.flatnonzero((mine >= r0) & (mine < r0 + tile.shape[1]))
                tile[hit, mine[hit] - r0] = -np.inf
            best_s, best_i = _merge(best_s, best_i, tile, r0, k)
        order = np.lexsort((best_i, -best_s), axis=1)  # by similarity, then by row: ties to the earlier row
        index[q0 : q0 + len(q)] = np.take_along_axis(best_i, order, axis=1)
        similarity[q0 : q0 + len(q)] = np.take_along_axis(best_s, order, axis=1)
    return index, similarity


def self_search(X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``search(X, X, k, own=arange)`` in half the arithmetic: the similarity of rows a and b is that of b and a,
    so each tile above the diagonal serves both its row block and its column block."""
    n = len(X)
    k = min(k, n - 1)
    if k < 1:
        raise ValueError(f"{n} rows: too few for a neighbour")
    dtype = np.result_type(X.dtype, np.float32)
    step = max(k + 1, min(n, QUERY_BLOCK, int(np.sqrt(TILE_BYTES // np.dtype(dtype).itemsize))))
    best_s = np.full((n, k), -np.inf, dtype=dtype)
    best_i = np.full((n, k), np.iinfo(np.int64).max, dtype=np.int64)
    for a in range(0, n, step):
        for b in range(a, n, step):
            tile = X[a : a + step] @ X[b : b + step].T
            if a == b:
                np.fill_diagonal(tile, -np.inf)  # an image is not its own neighbour
            rows = slice(a, a + len(tile))
            best_s[rows], best_i[rows] = _merge(best_s[rows], best_i[rows], tile, b, k)
            if a != b:
                cols = slice(b, b + tile.shape[1])
                best_s[cols], best_i[cols] = _merge(best_s[cols], best_i[cols], np.ascontiguousarray(tile.T), a, k)
    order = np.lexsort((best_i, -best_s), axis=1)  # by similarity, then by row: ties to the earlier row
    return np.take_along_axis(best_i, order, axis=1), np.take_along_axis(best_s, order, axis=1)


def _merge(best_s, best_i, tile, offset: int, k: int):
    """The running best k per row, with one tile's similarities (columns ``offset + j``) added: only the entries
    above a row's k-th best so far are looked at (after the first tile, few are)."""
    kth = best_s.min(axis=1)
    if tile.shape[1] > k and np.isneginf(kth).any():  # a first tile: its own k-th best is the bar (a partition)
        kth = np.maximum(kth, np.partition(tile, tile.shape[1] - k, axis=1)[:, tile.shape[1] - k])
    rows, cols = np.nonzero(tile >= kth[:, None])
    if len(rows) == 0:
        return best_s, best_i
    n, width = best_s.shape[0], k
    # the candidates: the kept best and the tile's entries above the bar, sorted by row, then similarity, then index
    cand_r = np.concatenate([np.repeat(np.arange(n), width), rows])
    cand_s = np.concatenate([best_s.ravel(), tile[rows, cols]])
    cand_i = np.concatenate([best_i.ravel(), cols.astype(np.int64) + offset])
    order = np.lexsort((cand_i, -cand_s, cand_r))
    cand_r, cand_s, cand_i = cand_r[order], cand_s[order], cand_i[order]
    start = np.searchsorted(cand_r, np.arange(n))
    take = start[:, None] + np.arange(width)  # every row has at least its k kept entries
    return cand_s[take], cand_i[take]


def nearest_neighbours(
    X: np.ndarray,
    k: int = NEIGHBOURS,
    reference: int = REFERENCE,
    seed: int = 0,
    approximate: int | None = APPROXIMATE,
    info: dict | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` most cosine-similar other rows (an image is not its own neighbour), most similar first:
    (indices, similarities), both ``(rows, k)``. Ties go to the earlier row. Exact up to ``approximate`` rows;
    beyond, from the approximate index (``index_neighbours``: every row searched, its recall@k measured on a
    sample of exact queries). Without the index (``approximate=None``, or faiss not installed), exact up to
    ``reference`` rows and beyond, exactly among a fixed random sample of that many rows (seeded). ``X`` is
    normalized in place (the caller's copy of the layer: no second one). ``info``, when given, receives how the
    search was made: ``method`` ("exact", "index" or "sample"), ``recall`` (the index's measured recall@k, else
    None), ``recall_queries``, and the text for reports (``search_text``)."""
    normalize(X)
    n = len(X)
    details: dict = {"method": "exact", "recall": None, "recall_queries": 0, "k": k}
    if approximate is not None and n > approximate and n > k + 1:
        try:
            index, similarity, recall, queries = index_neighbours(X, k, seed)
        except ImportError:  # faiss missing: the sampled exact search, which the report then names
            details["index_missing"] = True
        else:
            details.update(method="index", recall=recall, recall_queries=queries)
            _describe(details, n, reference)
            if info is not None:
                info.update(details)
            return index, similarity
    if n <= reference:
        ref, R = np.arange(n), X  # every row is a reference: no copy
    else:
        details["method"] = "sample"
        ref = np.sort(np.random.default_rng(seed).choice(n, reference, replace=False))
        R = X[ref]  # once: at most `reference` rows (100 MB of 1,280-d float32)
    _describe(details, n, reference)
    if info is not None:
        info.update(details)
    if len(ref) < 2:
        return np.zeros((n, 1), dtype=np.int64), np.full((n, 1), -np.inf, dtype=np.float32)
    k = max(1, min(k, len(ref) - 1))
    if R is X:
        return self_search(X, k)
    own = np.full(n, -1, dtype=np.int64)
    own[ref] = np.arange(len(ref))  # where each row sits among the references (-1: not one)
    index, similarity = search(X, R, k, own)
    return ref[index], similarity


def _describe(details: dict, rows: int, reference: int) -> None:
    details["text"] = search_text(
        rows,
        reference,
        details["method"],
        details["recall"],
        details["recall_queries"],
        details["k"],
        bool(details.get("index_missing")),
    )


def index_settings() -> dict:
    """The approximate index's settings (what its kept results are keyed on)."""
    return {
        "dims": INDEX_DIMS,
        "M": INDEX_M,
        "ef_construction": INDEX_EF_CONSTRUCTION,
        "ef_search": INDEX_EF_SEARCH,
        "candidates": INDEX_CANDIDATES,
        "pca_sample": PCA_SAMPLE,
        "recall_queries": RECALL_QUERIES,
    }


def principal_directions(X: np.ndarray, dims: int, sample: int = PCA_SAMPLE, seed: int = 0) -> np.ndarray:
    """The ``dims`` leading eigenvectors of the rows' second moment (uncentred: inner products are what is kept),
    from a seeded sample of ``sample`` rows: ``(d, dims)`` float32."""
    rows = np.sort(np.random.default_rng(seed).choice(len(X), min(sample, len(X)), replace=False))
    S = X[rows].astype(np.float32, copy=False)
    values, vectors = np.linalg.eigh((S.T @ S).astype(np.float64))
    return np.ascontiguousarray(vectors[:, ::-1][:, :dims], dtype=np.float32)


def index_neighbours(
    X: np.ndarray, k: int, seed: int = 0, queries: int = RECALL_QUERIES
) -> tuple[np.ndarray, np.ndarray, float, int]:
    """Each row's ``k`` nearest other rows (unit rows) from an approximate index: faiss's HNSW graph over the rows
    projected to their ``INDEX_DIMS`` principal directions (renormalized), which proposes ``INDEX_CANDIDATES`` rows
    per image; each candidate is then scored exactly (the dot product on every dimension) and the best ``k`` kept,
    most similar first, ties to the earlier row. Also the recall@k against the exact search on ``queries`` seeded
    images (their exact neighbours among all rows: a few hundred rows' matrix products) and how many.
    Raises ImportError when faiss is not installed."""
    import faiss

    n, d = X.shape
    k = min(k, n - 1)
    Z = X if d <= INDEX_DIMS else _project(X, principal_directions(X, INDEX_DIMS, seed=seed))
    graph = faiss.IndexHNSWFlat(Z.shape[1], INDEX_M, faiss.METRIC_INNER_PRODUCT)
    graph.hnsw.efConstruction = INDEX_EF_CONSTRUCTION
    graph.hnsw.efSearch = max(INDEX_EF_SEARCH, INDEX_CANDIDATES + 1)
    graph.add(Z)
    wanted = min(n, max(INDEX_CANDIDATES, k) + 1)  # the row itself is usually its own first answer
    index = np.empty((n, k), dtype=np.int64)
    similarity = np.empty((n, k), dtype=np.float32)
    block = 8192
    for start in range(0, n, block):
        stop = min(n, start + block)
        _, found = graph.search(Z[start:stop], wanted)
        index[start:stop], similarity[start:stop] = _rescore(X, found, start, k)
    del graph, Z
    short = np.flatnonzero(np.isneginf(similarity).any(axis=1))  # the graph proposed fewer than k other rows
    if len(short):
        index[short], similarity[short] = search(X[short], X, k, short)
    return index, similarity, *measured_recall(X, index, seed, queries)


def _project(X: np.ndarray, V: np.ndarray, block: int = 16_384) -> np.ndarray:
    """``X @ V`` with unit rows, ``block`` rows at a time (float32)."""
    Z = np.empty((len(X), V.shape[1]), dtype=np.float32)
    for start in range(0, len(X), block):
        Z[start : start + block] = X[start : start + block] @ V
    return normalize(Z)


def _rescore(X: np.ndarray, found: np.ndarray, start: int, k: int, block: int = 512):
    """The exact similarities of each query row (``start`` onward) to the rows the graph proposed (``found``, -1:
    none), itself left out; the best ``k`` per row, most similar first, ties to the earlier row."""
    rows = np.arange(start, start + len(found))
    bad = (found < 0) | (found == rows[:, None])
    cand = np.where(bad, 0, found)
    sims = np.empty(found.shape, dtype=np.float32)
    for b in range(0, len(found), block):
        q = X[start + b : start + b + block]
        sims[b : b + block] = np.einsum("id,ikd->ik", q, X[cand[b : b + block]])
    sims[bad] = -np.inf
    cand = np.where(bad, np.iinfo(np.int64).max, cand)
    order = np.lexsort((cand, -sims), axis=1)[:, :k]
    return np.take_along_axis(cand, order, axis=1), np.take_along_axis(sims, order, axis=1)


def measured_recall(X: np.ndarray, index: np.ndarray, seed: int = 0, queries: int = RECALL_QUERIES):
    """recall@k of ``index`` (each row's k neighbours) against the exact search, on ``queries`` seeded rows (their
    exact neighbours among all rows): the share of the exact neighbours found, and how many rows it was measured
    on. Ties at the k-th exact similarity count as found."""
    n, k = index.shape
    rows = np.sort(np.random.default_rng(seed + 1).choice(n, min(queries, n), replace=False))
    exact, exact_sim = search(X[rows], X, k, rows)
    found = 0
    for i, r in enumerate(rows):
        mine = index[r]
        hit = np.isin(mine, exact[i])
        # a different row at exactly the k-th similarity is as good an answer (ties)
        hit |= np.einsum("kd,d->k", X[mine], X[r]) >= exact_sim[i, -1]
        found += min(int(hit.sum()), k)
    return found / (len(rows) * k), len(rows)


def search_text(
    rows: int,
    reference: int = REFERENCE,
    method: str | None = None,
    recall: float | None = None,
    queries: int = 0,
    k: int = NEIGHBOURS,
    missing: bool = False,
) -> str:
    """What the neighbour search of ``rows`` images looked through, for reports (``missing``: the index was due
    but faiss is not installed)."""
    if method is None:
        method = "exact" if rows <= reference else "sample"
    if method == "index":
        return (
            f"approximate, among all {rows:,} images (faiss HNSW index on {INDEX_DIMS} principal directions, its "
            f"candidates scored exactly): recall@{k} {recall:.3f} against the exact search, measured in this run on "
            f"{queries:,} images"
        )
    if method == "sample":
        return f"exact among a fixed random sample of {reference:,} of the {rows:,} images" + (
            " (faiss, the approximate index's library, is not installed: pip install faiss-cpu)" if missing else ""
        )
    return f"exact, among all {rows:,} images"


class CosineKNeighbors(ClassifierMixin, BaseEstimator):
    """k nearest neighbours by cosine similarity, exact, searched in BLAS tiles of bounded memory (``search``):
    scikit-learn's ``KNeighborsClassifier(metric="cosine", algorithm="brute")``'s predictions and probabilities
    (distance 1 - cosine; ``weights="distance"`` weighs by its inverse, an exact match alone when there is one),
    without its float64 distance blocks. Fitted on fewer rows than ``n_neighbors`` (a few labelled images), it
    uses them all (``k_``) and ``fallback_`` says so."""

    def __init__(self, n_neighbors: int = 10, weights: str = "distance", copy: bool = True):
        self.n_neighbors = n_neighbors
        self.weights = weights
        self.copy = copy  # False: keep (and normalize in place) the float32 rows given to fit (cv's fold copy)

    def check_params(self) -> None:
        from sklearn.utils._param_validation import InvalidParameterError

        if not (isinstance(self.n_neighbors, (int, np.integer)) and self.n_neighbors >= 1):
            raise InvalidParameterError(f"n_neighbors must be a whole number >= 1, got {self.n_neighbors!r}")
        if self.weights not in ("uniform", "distance"):
            raise InvalidParameterError(f"weights must be 'uniform' or 'distance', got {self.weights!r}")

    def fit(self, X, y):
        self.check_params()
        X, y = validate_data(self, X, y, dtype=(np.float32, np.float64))
        check_classification_targets(y)
        self.k_, self.fallback_ = int(self.n_neighbors), None
        if self.n_neighbors > len(X):  # a few labelled images: every one of them is a neighbour
            self.k_ = len(X)
            self.fallback_ = f"knn: k={self.k_}, every training row, not {self.n_neighbors} ({len(X)} rows)"
        self.classes_, self.y_ = np.unique(y, return_inverse=True)
        self.X_ = normalize(np.array(X, dtype=np.float32, copy=True if self.copy else None))
        return self

    def kneighbors(self, X) -> tuple[np.ndarray, np.ndarray]:
        """(cosine distances, indices of the training rows), nearest first."""
        check_is_fitted(self, "X_")
        X = validate_data(self, X, reset=False, dtype=(np.float32, np.float64))
        k = getattr(self, "k_", self.n_neighbors)  # a model file written before k_ used n_neighbors
        index, similarity = search(normalize(np.array(X, dtype=np.float32)), self.X_, k)
        return np.clip(1.0 - similarity, 0.0, 2.0), index

    def predict_proba(self, X) -> np.ndarray:
        distance, index = self.kneighbors(X)
        if self.weights == "distance":
            exact = distance == 0
            with np.errstate(divide="ignore"):
                w = 1.0 / distance.astype(np.float64)
            has = exact.any(axis=1)
            w[has] = exact[has]  # an exact match decides alone, as scikit-learn's weights do
        else:
            w = np.ones(distance.shape)
        proba = np.zeros((len(index), len(self.classes_)))
        np.add.at(proba, (np.arange(len(index))[:, None], self.y_[index]), w)
        return proba / proba.sum(axis=1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        proba = self.predict_proba(X)  # NotFittedError before a fit, as scikit-learn's
        return self.classes_[proba.argmax(axis=1)]


__all__ = [
    "APPROXIMATE",
    "NEIGHBOURS",
    "REFERENCE",
    "CosineKNeighbors",
    "index_neighbours",
    "measured_recall",
    "nearest_neighbours",
    "search",
    "search_text",
]
