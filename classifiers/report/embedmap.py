"""A 2-D map of the embeddings (PCA, then t-SNE), made while ``cv`` has the features in memory.

It is saved as data (``map.json``: the points with their paths, labels and out-of-fold predictions) and as a
picture (``map.png``), so that the HTML page can be rendered again later without the cache.
"""

from __future__ import annotations

import json
import os

import numpy as np

from classifiers.extras import remembered, valid_map

MAX_ROWS = 2000  # t-SNE's time grows faster than its rows; beyond this, a fixed random sample of rows (plotted as such)
PCA_DIMS = 50  # t-SNE's usual first step: faster, and less noise in the neighbourhoods
ITERATIONS = 500  # half of scikit-learn's default, half the time; the picture is settled by then


def embedding_map(X: np.ndarray, seed: int = 0, max_rows: int = MAX_ROWS) -> tuple[np.ndarray, np.ndarray, str]:
    """The rows drawn (all, or a fixed random sample of ``max_rows``, in row order), their 2-D coordinates, and
    how they were made. Rows are L2-normalized first (the cosine geometry of the outlier search); with fewer
    than 10 rows t-SNE has no meaningful neighbourhoods, so the map is the first two principal components."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    n = len(X)
    rows = np.arange(n) if n <= max_rows else np.sort(np.random.default_rng(seed).choice(n, max_rows, replace=False))
    Z = X[rows].astype(np.float64)
    Z /= np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)
    dims = min(PCA_DIMS, len(rows), Z.shape[1])
    Z = PCA(dims, random_state=seed).fit_transform(Z)
    if len(rows) < 10:
        xy = np.zeros((len(rows), 2))
        xy[:, : min(2, Z.shape[1])] = Z[:, :2]
        return rows, xy, "PCA (too few images for t-SNE)"
    perplexity = min(30.0, (len(rows) - 1) / 3)
    # One OpenMP thread: the same picture on any machine (threads change the order of the gradient's sums), and
    # no spinning threads on a busy CPU (on 2 shared cores, 3 times faster than two threads for 2,500 rows)
    with threadpool_limits(1, user_api="openmp"):
        xy = TSNE(
            2, perplexity=perplexity, init="pca", learning_rate="auto", max_iter=ITERATIONS, random_state=seed
        ).fit_transform(Z)
    return (
        rows,
        xy,
        (
            f"L2-normalized, PCA to {dims} dimensions, t-SNE (perplexity {perplexity:.3g}, {ITERATIONS} "
            f"iterations, seed {seed})"
        ),
    )


def write_map(report, out_dir: str, max_rows: int = MAX_ROWS) -> dict[str, str]:
    """map.json and map.png of the best result's layer, the points coloured by label, the images the best
    result misclassifies (out of fold) marked."""
    from .plots import map_png

    best = report.best
    data = report.source(best)

    def compute():  # the layer is read only when the map is not kept beside the cache already
        rows, xy, method = embedding_map(data.features(best.layer), report.seed, max_rows)
        return {"rows": rows, "xy": xy, "method": np.array(method)}

    params = {"seed": report.seed, "max_rows": max_rows, "pca": PCA_DIMS, "iterations": ITERATIONS}
    made, _ = remembered(data, best.layer, "map", params, compute, valid_map(len(report.data.y)))
    rows, xy, method = made["rows"], made["xy"], str(made["method"])
    pred, _ = best.oof()
    classes, y = report.classes, report.data.y
    data = {
        "layer": best.layer,
        "classifier": best.classifier,
        "method": method,
        "rows": int(len(y)),
        "points": {
            "path": [str(report.data.paths[i]) for i in rows],
            "label": [classes[y[i]] for i in rows],
            "predicted": [classes[pred[i]] for i in rows],
            "x": [round(float(v), 3) for v in xy[:, 0]],
            "y": [round(float(v), 3) for v in xy[:, 1]],
        },
    }
    files = {"map_json": os.path.join(out_dir, "map.json"), "map_png": os.path.join(out_dir, "map.png")}
    with open(files["map_json"], "w", encoding="utf-8") as fh:
        json.dump(data, fh)
    sample = f"{len(rows)} of {len(y)} images" if len(rows) < len(y) else f"{len(y)} images"
    map_png(
        xy,
        y[rows],
        classes,
        pred[rows] != y[rows],
        f"{best.layer}: {sample}, t-SNE" if "t-SNE" in method else f"{best.layer}: {sample}, PCA",
        files["map_png"],
    )
    return files
