"""The report's neighbour search beyond the exact range: the approximate index against the exact search, in time
and in what the outliers and label issues make of it.

    python benchmarks/neighbour_index.py [--rows 200000] [--switch 10000 20000 40000] [--sample 1000]
                                         [--libraries 50000] [--real] [--write]

Rows: ``cv_scale.py``'s synthetic generator (class means plus unit Gaussian noise, 1,280-d float32, 10 classes; the
same seed, made in memory, no cache written), and with ``--real`` the flowers caches (MobileNetV2 ImageNet
checkpoint, ``classifier.0``, ``train/`` and ``val/`` together) with the switch forced below their size.

Every time is CPU seconds with BLAS and faiss on one thread (``time.process_time``: what the other jobs of a
shared machine change least), with the wall seconds and the load average beside it; ratios are measured in the
same process, one after the other.

- ``--switch``: the exact search of all rows (``self_search``) against the index (``index_neighbours``), at
  each size: where the exact search stops being the cheaper one.
- ``--libraries``: the same graph (the rows projected to 128 principal directions, M, efConstruction, efSearch and
  the exact rescoring of the candidates alike) built with faiss-cpu and with hnswlib, time and recall@10.
- ``--rows``: at that size, the index for every row, timed; then on ``--sample`` seeded rows the exact neighbours
  among all rows (and the former search: exact among a fixed sample of 20,000 rows), timed and extrapolated to
  every row (a search's time is linear in its queries); recall@10, and what the outliers and the label issues
  make of each: Spearman's rank correlation of the scores on the sample and the overlap of the rows flagged. The
  label issues' members are the out-of-fold posterior of the generator's own model (class means, unit noise:
  3 folds) mixed 3:1 with the neighbour vote as ``label_issues`` does. Last, the plan of the default ``cv --out``
  at that size (5 folds, the default 12-minute budget) on this machine now, and its estimate of the extras
  against the measured index (plus the map, timed on its 2,000 rows).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from cpu_engines import cpu, write_section  # noqa: E402

from classifiers import neighbours as nb  # noqa: E402

DIM, CLASSES, PART_ROWS, SEPARATION = 1280, 10, 50_000, 0.06  # cv_scale.py's generator


def synthetic(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``cv_scale.build``'s rows, labels and class means, in memory (the same random stream)."""
    rng = np.random.default_rng(seed)
    means = (SEPARATION * rng.standard_normal((CLASSES, DIM))).astype(np.float32)
    labels = rng.integers(0, CLASSES, rows)
    X = np.empty((rows, DIM), dtype=np.float32)
    for start in range(0, rows, PART_ROWS):
        n = min(PART_ROWS, rows - start)
        X[start : start + n] = rng.standard_normal((n, DIM), dtype=np.float32)
        X[start : start + n] += means[labels[start : start + n]]
    return X, labels, means


def shaped(rows: int, spectrum: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``synthetic``'s rows with the noise drawn from a Gaussian with the covariance of real embeddings
    (``spectrum``: their rows; its total variance scaled to the unit noise's, 1,280): rows with the structure of
    real ones (a few hundred directions carry most of the variance) and the generator's class means."""
    X, labels, means = synthetic(rows, seed)
    C = np.cov(spectrum, rowvar=False).astype(np.float64)
    values, vectors = np.linalg.eigh(C)
    values = np.clip(values, 0, None) * DIM / values.clip(0, None).sum()
    root = (vectors * np.sqrt(values)).T.astype(np.float32)  # z @ root has covariance C, scaled
    for start in range(0, rows, PART_ROWS):
        block = X[start : start + PART_ROWS]
        block -= means[labels[start : start + len(block)]]  # the unit noise, drawn as cv_scale does
        block[:] = block @ root + means[labels[start : start + len(block)]]
    return X, labels, means


def flowers() -> np.ndarray | None:
    """flowers' train/ and val/ features from the caches benchmarks/few_labels.py makes (None when absent)."""
    import h5py

    parts = []
    for split in ("train", "val"):
        path = ROOT / "cache" / "fewlabels" / f"flowers-{split}.h5"
        if not path.exists():
            return None
        with h5py.File(path, "r") as f:
            parts.append(f["features/classifier.0"][()].astype(np.float32))
    return np.concatenate(parts)


def timed(f):
    wall, cpu_s = time.perf_counter(), time.process_time()
    out = f()
    return out, time.process_time() - cpu_s, time.perf_counter() - wall


def load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(a, b)) / exact.shape[1] for a, b in zip(found, exact)]))


def switch_table(sizes: list[int]) -> list[str]:
    lines = [
        "**Where the switch goes**: every row's 10 neighbours, exact (`self_search`) against the index, CPU seconds "
        "on one thread (wall seconds; load average at the end).",
        "",
        "| rows | exact: CPU s (wall) | index: CPU s (wall) | exact / index | index recall@10 (synthetic) | load |",
        "|--:|--:|--:|--:|--:|--:|",
    ]
    for n in sizes:
        X, _, _ = synthetic(n)
        nb.normalize(X)
        (_, _), ce, we = timed(lambda X=X: nb.self_search(X, 10))
        (_, _, r, _), ci, wi = timed(lambda X=X: nb.index_neighbours(X, 10))
        lines.append(f"| {n:,} | {ce:.1f} ({we:.1f}) | {ci:.1f} ({wi:.1f}) | {ce / ci:.2f} | {r:.3f} | {load()} |")
        print(lines[-1], flush=True)
    return lines


def graph_candidates(library: str, Z: np.ndarray, wanted: int) -> np.ndarray:
    """The graph's candidates for every row, built with ``library`` on the projected rows ``Z``."""
    if library == "faiss":
        import faiss

        graph = faiss.IndexHNSWFlat(Z.shape[1], nb.INDEX_M, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = nb.INDEX_EF_CONSTRUCTION
        graph.hnsw.efSearch = max(nb.INDEX_EF_SEARCH, wanted)
        graph.add(Z)
        return graph.search(Z, wanted)[1]
    import hnswlib

    graph = hnswlib.Index(space="ip", dim=Z.shape[1])
    graph.init_index(len(Z), M=nb.INDEX_M, ef_construction=nb.INDEX_EF_CONSTRUCTION, random_seed=0)
    graph.add_items(Z, num_threads=1)
    graph.set_ef(max(nb.INDEX_EF_SEARCH, wanted))
    return graph.knn_query(Z, k=wanted, num_threads=1)[0].astype(np.int64)


def library_table(sets: list[tuple[str, np.ndarray]]) -> list[str]:
    lines = [
        "**faiss-cpu against hnswlib**: the same graph (rows projected to "
        f"{nb.INDEX_DIMS} principal directions, M {nb.INDEX_M}, efConstruction {nb.INDEX_EF_CONSTRUCTION}, "
        f"efSearch {nb.INDEX_EF_SEARCH}, {nb.INDEX_CANDIDATES} candidates scored exactly), one thread.",
        "",
        "| rows | library | graph: CPU s (wall) | recall@10 (300 exact queries) | load |",
        "|---|---|--:|--:|--:|",
    ]
    for name, X in sets:
        nb.normalize(X)
        Z = nb._project(X, nb.principal_directions(X, nb.INDEX_DIMS)) if X.shape[1] > nb.INDEX_DIMS else X
        for library in ("faiss", "hnswlib"):
            found, c, w = timed(lambda lib=library, Z=Z: graph_candidates(lib, Z, nb.INDEX_CANDIDATES + 1))
            index, _ = nb._rescore(X, found, 0, 10)
            r, q = nb.measured_recall(X, index)
            lines.append(f"| {name} | {library} | {c:.1f} ({w:.1f}) | {r:.3f} | {load()} |")
            print(lines[-1], flush=True)
    return lines


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def overlap(a: np.ndarray, b: np.ndarray, share: float) -> tuple[float, int]:
    """The share of the rows flagged by ``a`` (its highest ``share``) that ``b`` flags too, and how many that is."""
    m = max(1, int(round(share * len(a))))
    top_a, top_b = np.argsort(-a, kind="stable")[:m], np.argsort(-b, kind="stable")[:m]
    return len(np.intersect1d(top_a, top_b)) / m, m


def members(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Out-of-fold posterior of the generator's model (class means estimated on the other folds, unit noise)."""
    from sklearn.model_selection import StratifiedKFold

    out = np.empty((len(X), CLASSES))
    for train, test in StratifiedKFold(3, shuffle=True, random_state=0).split(np.zeros(len(y)), y):
        mu = np.stack([X[train[y[train] == c]].mean(axis=0) for c in range(CLASSES)])
        logits = X[test] @ mu.T - 0.5 * (mu**2).sum(axis=1)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        out[test] = p / p.sum(axis=1, keepdims=True)
    return out


def members_fitted(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Out-of-fold probabilities of linear discriminant analysis (3 folds): the members where the noise is not
    unit (``shaped``)."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.model_selection import cross_val_predict

    return cross_val_predict(LinearDiscriminantAnalysis(solver="lsqr"), X, y, cv=3, method="predict_proba")


def scale_table(rows: int, sample: int, like: np.ndarray | None = None, plan: bool = True) -> list[str]:
    from classifiers import budget, cost
    from classifiers.label_issues import NEIGHBOUR_WEIGHT, combine, find_label_issues, neighbour_probs
    from classifiers.parallel import fold_jobs
    from classifiers.report.embedmap import embedding_map

    X, y, _ = synthetic(rows) if like is None else shaped(rows, like)
    if like is not None:  # separable classes: 5 % of the labels flipped (seeded), for label issues to find
        flip = np.random.default_rng(3).random(rows) < 0.05
        y = np.where(flip, (y + np.random.default_rng(4).integers(1, CLASSES, rows)) % CLASSES, y)
    probs = members(X, y) if like is None else members_fitted(X, y)
    nb.normalize(X)
    speed = cost.machine_speed()
    before = load()
    (index, sim, rec, queries), c_index, w_index = timed(lambda: nb.index_neighbours(X, 10))
    rows_s = np.sort(np.random.default_rng(7).choice(rows, sample, replace=False))
    (ex_i, ex_s), c_exact, w_exact = timed(lambda: nb.search(X[rows_s], X, 10, rows_s))
    ref = np.sort(np.random.default_rng(0).choice(rows, nb.REFERENCE, replace=False))
    own = np.full(rows, -1)
    own[ref] = np.arange(len(ref))
    (sa_i, sa_s), c_sample, w_sample = timed(lambda: nb.search(X[rows_s], X[ref], 10, own[rows_s]))
    sa_i = ref[sa_i]
    _, c_map, w_map = timed(lambda: embedding_map(X, 0))
    after = load()
    scale = rows / sample  # a search's time is linear in its queries; the exact self-search does half the products
    exact_all, sample_all = c_exact * scale / 2, c_sample * scale
    lines = [
        f"**{rows:,} synthetic rows** (1,280-d float32, 10 classes"
        + ("" if like is None else "; the noise with the covariance of the flowers embeddings, 5 % of labels flipped")
        + f"); load average {before} before, {after} after; "
        f"`machine_speed()` {speed:.2f} (the plan's probe with BLAS held to one thread, over the calibration "
        "machine's).",
        "",
        "| search of every row's 10 neighbours | CPU s, one thread | wall s | exact / this | recall@10 on "
        f"{sample:,} rows |",
        "|---|--:|--:|--:|--:|",
        f"| index (this change; recall measured in the same call on {queries} rows: {rec:.3f}) | {c_index:.1f} | "
        f"{w_index:.1f} | **{exact_all / c_index:.1f}** | {recall(index[rows_s], ex_i):.3f} |",
        f"| exact among all rows (`self_search`: {sample:,} rows timed, x {scale:.0f} / 2) | {exact_all:.0f} | "
        f"({w_exact * scale / 2:.0f}) | 1.0 | 1.000 |",
        f"| former: exact among a fixed sample of 20,000 rows ({sample:,} rows timed, x {scale:.0f}) | "
        f"{sample_all:.0f} | ({w_sample * scale:.0f}) | {exact_all / sample_all:.1f} | {recall(sa_i, ex_i):.3f} |",
        f"| the map (t-SNE of 2,000 rows, the other extra) | {c_map:.1f} | {w_map:.1f} | | |",
    ]
    # what the outliers and the label issues make of each, on the sample
    vote = {name: neighbour_probs(i, y, CLASSES) for name, i in (("exact", ex_i), ("index", index[rows_s]))}
    vote["former"] = neighbour_probs(sa_i, y, CLASSES)
    mixed = {name: combine([probs[rows_s]], v, NEIGHBOUR_WEIGHT) for name, v in vote.items()}
    score = {name: 1 - m[np.arange(sample), y[rows_s]] for name, m in mixed.items()}
    full = find_label_issues(y, combine([probs], neighbour_probs(index, y, CLASSES), NEIGHBOUR_WEIGHT), size_from=probs)
    flagged_share = max(full.estimated, 1) / rows
    nearest = {"exact": ex_s[:, 0], "index": sim[rows_s, 0], "former": sa_s[:, 0]}
    lines += [
        "",
        f"What the outliers and the label issues make of it, on the same {sample:,} rows (against the exact search):",
        "",
        "| search | outliers: Spearman of the nearest similarity | outliers: lowest 5 % flagged by both | "
        "label issues: Spearman of the score | label issues: flagged by both | mean nearest similarity (exact "
        f"{ex_s[:, 0].mean():.4f}) |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for name in ("index", "former"):
        o, m = overlap(-nearest["exact"], -nearest[name], 0.05)
        li, ml = overlap(score["exact"], score[name], flagged_share)
        lines.append(
            f"| {name} | {spearman(nearest['exact'], nearest[name]):.3f} | {o:.2f} of {m} | "
            f"{spearman(score['exact'], score[name]):.4f} | {li:.2f} of {ml} | {nearest[name].mean():.4f} |"
        )
    lines += [
        "",
        f"Label issues: the estimated set on all rows is {full.estimated:,} ({100 * flagged_share:.1f} %); on the "
        f"sample, the top {100 * flagged_share:.1f} % by score under each search are compared.",
    ]
    if not plan:
        print("\n".join(lines), flush=True)
        return lines
    # the plan of the default cv --out at this size, now, against the extras as cv runs them (every core)
    import faiss

    faiss.omp_set_num_threads(os.cpu_count() or 1)
    cost._MEASURED.clear()  # probed now, on every core, as cv does at its start (not the value kept from above)
    at_once = fold_jobs(None, 5)  # cv's default: as many folds side by side as the cores
    with threadpool_limits(os.cpu_count()):
        speed = cost.machine_speed(jobs=at_once)
        _, c_all, w_all = timed(lambda: nb.index_neighbours(X, 10))
        _, c_map2, w_map2 = timed(lambda: embedding_map(X, 0))
    faiss.omp_set_num_threads(1)
    shapes = [cost.Shape(rows * 4 / 5, rows / 5, DIM, CLASSES)] * 5
    extras = budget.extras_estimate(rows, DIM, True, True, nb.REFERENCE)
    the_plan = budget.plan(
        None,
        shapes,
        12 * 60,
        cost.machine_speed,
        extras=extras,
        layer_bytes=4.0 * rows * DIM,
        jobs=at_once,
        folds=5,
    )
    lines += [
        "",
        f"As `cv` runs them (every core, `machine_speed(jobs={at_once})` {speed:.2f} just before, load {load()} "
        "after): the index "
        f"{w_all:.1f} s wall ({c_all:.1f} CPU s), the map {w_map2:.1f} s; together {w_all + w_map2:.1f} s. The plan of "
        f"the default `cv --out` at {rows:,} rows here now: {the_plan.message}. Its extras estimate: "
        f"{the_plan.extras:.0f} s; measured / estimated {(w_all + w_map2) / the_plan.extras:.2f}.",
    ]
    print("\n".join(lines), flush=True)
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000, help="the scale check's rows (0: skip)")
    parser.add_argument("--sample", type=int, default=1000, help="rows whose exact neighbours are the check")
    parser.add_argument("--switch", type=int, nargs="*", default=[], help="sizes of the exact-or-index table")
    parser.add_argument("--libraries", type=int, default=0, help="synthetic rows of the faiss/hnswlib table (0: skip)")
    parser.add_argument("--real", action="store_true", help="flowers in the library table")
    parser.add_argument(
        "--like-flowers", action="store_true", help="the scale check on rows with the flowers embeddings' covariance"
    )
    parser.add_argument("--no-plan", action="store_true", help="skip the every-core run and the plan")
    parser.add_argument("--write", action="store_true", help="replace this script's section of RESULTS.md")
    opts = parser.parse_args()
    import faiss

    faiss.omp_set_num_threads(1)
    name, _ = cpu()
    lines = [
        f"Machine: {name}, {os.cpu_count()} cores, shared with other jobs; {time.strftime('%Y-%m-%d %H:%M')}; one run. "
        f"faiss-cpu {faiss.__version__}. CPU seconds with BLAS and faiss on one thread.",
        "",
    ]
    with threadpool_limits(1):
        if opts.switch:
            lines += switch_table(opts.switch) + [""]
        sets = []
        if opts.real:
            real = flowers()
            if real is not None:
                sets.append((f"flowers train/ + val/ ({len(real):,})", real))
        if opts.libraries:
            sets.append((f"synthetic {opts.libraries:,}", synthetic(opts.libraries)[0]))
        if sets:
            lines += library_table(sets) + [""]
            del sets
        if opts.rows:
            like = flowers() if opts.like_flowers else None
            lines += scale_table(opts.rows, opts.sample, like, not opts.no_plan)
    text = "\n".join(lines).rstrip()
    print(text)
    if opts.write:
        write_section(
            ROOT / "benchmarks" / "RESULTS.md", text, "neighbour_index.py", "The report's neighbour search at scale"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
