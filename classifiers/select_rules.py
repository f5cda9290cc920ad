"""Which unlabeled rows to label next: the selection rules, on arrays (``selection.py`` reads the cache and writes
the files around them).

Every rule works on L2-normalized vectors (cosine geometry) and picks through a ``Batch``, which refuses a second
row of a group already picked and a near-duplicate (cosine above ``duplicate_cosine``) of a row picked or labelled
before; a rule that meets a refused row takes its next candidate instead. The coverage rules (k-means, typicality,
ProbCover's balls) work in ``coverage_space``: the top ``COMPONENTS`` principal directions of the rows, at unit
length; the probe and the duplicate check in the whole space.

Cold start (nothing labelled, or one class only): coverage and typicality of the embedding space.
- ``kmeans``: k-means with (labelled + budget) centres; in each cluster without a labelled row, largest first, the
  row nearest the centre.
- ``typiclust`` (Hacohen et al., ICML 2022): the same clusters; in each, the most typical row (the inverse of the
  mean distance to its 20 nearest neighbours inside the cluster).
- ``probcover`` (Yehuda et al., NeurIPS 2022): balls of radius delta (the largest with 95 % of the balls inside one
  k-means cluster); greedily the row whose ball covers the most rows not yet covered (labelled rows cover theirs).

Later rounds (two classes labelled or more): what a probe fitted on the labelled rows is least sure of, spread.
- ``coverage-margin`` (the default): under ``MARGIN_FROM`` labelled rows per class on average, coverage alone,
  class by class: a probe fitted on so few has margins worth nothing (on flowers and its class pairs, a second round
  chosen by them lost 4 points to coverage alone at 1 label per class, and gained nothing at 2), but the labels can
  already say which class each region belongs to. Label spreading (``semi.spread`` on ``semi.knn_graph``) from the
  labelled rows gives each pool row a class; the budget is split equally over the labelled classes (and the rows no
  label reaches, a group of their own, first in line for what does not divide equally), and each share is the
  ``kmeans`` rule over its class's pool rows, that class's labelled rows counting as covered (measured on flowers
  and its 10 class pairs: 1.9 points above coverage of the whole pool at 1 and at 2 labels per class;
  ``benchmarks/cold_start.py warm``). From there: k-means with (labelled + 2 × budget) centres; of the clusters without a
  labelled row, those whose rows the probe is least sure of in all (size × mean of 1 − margin), the row nearest
  each centre: coverage first, uncertainty to choose which uncovered regions (0.6 points above coverage alone at
  5 and 10 per class there). Uncertainty alone (the three below) did no better than random.
- ``margin``: the smallest margin between the probe's two most probable classes (no spreading: a baseline).
- ``cluster-margin`` (after Citovsky et al., NeurIPS 2021): the 10 × budget smallest margins, grouped by k-means
  into budget clusters, the smallest margin of each.
- ``badge`` (Ash et al., ICLR 2020): k-means++ seeding on the probe's gradient embeddings, (p − onehot(ŷ)) ⊗ x;
  the distances come from the factors, so no gradient embedding is ever held (C × D numbers a row).

``random`` is the baseline of both stages. The probe is the zoo's ``logreg``: C chosen on inner folds when every
labelled class has ``TUNED_FROM`` images or more, else fixed at ``FIXED_C`` (no inner fold can be made from one
image, and folds of 1 to 3 images choose C by chance: on generated blobs, 3 per class chose the strongest
regularization, which flattened every probability).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from embedder.kernel.errors import InvalidValue

COLD = ("kmeans", "typiclust", "probcover")
WARM = ("margin", "cluster-margin", "badge", "coverage-margin")
RULES = (*COLD, *WARM, "random")
DEFAULT_COLD = "kmeans"  # measured: benchmarks/few_labels.py (chosen on flowers, checked on hymenoptera)
DEFAULT_WARM = "coverage-margin"  # measured likewise
DUPLICATE_COSINE = 0.95  # above this to a picked or labelled row, a row is a near-duplicate
FIXED_C = 0.1  # the probe's C below TUNED_FROM labelled images in a class (the zoo's logreg, standardized features)
TUNED_FROM = 5  # labelled images in every class from which the probe's C is chosen on inner folds
TYPICAL_NEIGHBOURS = 20
TYPICAL_SAMPLE = 2000  # typicality within a cluster measured against at most this many of its rows
PURITY = 0.95
GRAPH_ROWS = 20_000  # probcover's ball graph on at most this many rows (a seeded sample beyond)
CANDIDATES_PER_PICK = 10  # cluster-margin's uncertain candidates per pick
FULL_KMEANS_ROWS = 20_000  # exact k-means up to here, mini-batch k-means beyond
BLOCK = 8192  # rows per block in the distance passes
KMEANS_INIT = 1  # k-means restarts (the best of them kept)
MARGIN_FROM = 5  # coverage-margin uses the probe's margins from this many labelled images per class on average
COMPONENTS = 64  # the coverage rules' space: the top principal directions of the prepared rows
PCA_ROWS = 20_000  # those directions from at most this many rows


@dataclass
class Picked:
    """The rows picked (indices into X, best first) with why and the rule's score of each; ``notes`` say what the
    run decided on its own (the probe's C, a fallback)."""

    rows: list[int] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    rule: str = ""
    stage: str = ""  # "cold start" or "labelled"
    notes: list[str] = field(default_factory=list)
    refused: dict = field(default_factory=lambda: {"group": 0, "duplicate": 0})


class Batch:
    """The picks of one batch, with what they rule out: a second row of a picked group, a near-duplicate of a
    picked or labelled row."""

    def __init__(self, X, budget, groups, duplicate_cosine, labelled_rows, picked: Picked):
        self.X, self.budget, self.groups, self.cos = X, budget, groups, duplicate_cosine
        self.used_groups: set = set()
        self.picked = picked
        self.taken = np.zeros(len(X), dtype=bool)
        self.refused_rows: dict[str, set[int]] = {}
        known = np.asarray(labelled_rows, dtype=np.int64)
        self.bank = np.empty((len(known) + budget, X.shape[1]), dtype=X.dtype)
        self.bank[: len(known)] = X[known]
        self.filled = len(known)

    @property
    def full(self) -> bool:
        return len(self.picked.rows) >= self.budget

    def allowed(self, i: int) -> bool:
        i = int(i)
        if self.taken[i]:
            return False
        if self.groups is not None and self.groups[i] in self.used_groups:
            return self._refuse("group", i)
        if self.cos < 1 and self.filled and float((self.bank[: self.filled] @ self.X[i]).max()) > self.cos:
            return self._refuse("duplicate", i)
        return True

    def _refuse(self, why: str, i: int) -> bool:
        """Row ``i`` passed over for ``why``: counted once however often a rule meets it again."""
        self.refused_rows.setdefault(why, set()).add(i)
        self.picked.refused[why] = len(self.refused_rows[why])
        return False

    def take(self, i: int, reason: str, score: float) -> None:
        i = int(i)
        self.taken[i] = True
        if self.groups is not None:
            self.used_groups.add(self.groups[i])
        self.bank[self.filled] = self.X[i]
        self.filled += 1
        self.picked.rows.append(i)
        self.picked.reasons.append(reason)
        self.picked.scores.append(float(score))

    def first_allowed(self, candidates) -> int | None:
        for i in candidates:
            if self.allowed(i):
                return int(i)
        return None


def prepared(X: np.ndarray) -> np.ndarray:
    """The space every rule works in: the rows less their mean (over every row given: no label is read), at unit
    length; in place (float32). Centring first measured better than the raw rows on flowers (k-means picks, the
    fixed probe on val/, 5 seeds: 60.0 % against 58.2 % at 2 images per class, 75.2 % against 70.3 % at 5): CNN
    features after a ReLU all point into one orthant, where cosine similarity is mostly their shared mean."""
    X = np.asarray(X, dtype=np.float32)
    mean = np.zeros(X.shape[1], dtype=np.float64)
    for start in range(0, len(X), BLOCK):
        mean += X[start : start + BLOCK].sum(axis=0, dtype=np.float64)
    mean = (mean / max(1, len(X))).astype(np.float32)
    for start in range(0, len(X), BLOCK):
        X[start : start + BLOCK] -= mean
    return normalized(X)


def coverage_space(X: np.ndarray) -> np.ndarray:
    """The space of the coverage rules (k-means, typicality, ProbCover's balls): the ``prepared`` rows projected on
    their top ``COMPONENTS`` principal directions (not whitened: whitening weighs the noisy directions as much as
    the main ones), at unit length; a new array. The directions come from at most ``PCA_ROWS`` rows (a fixed sample
    beyond). Measured on flowers and its 10 class pairs (k-means picks, the fixed probe on val/, 10 seeds, mean of the
    11 tasks): 0.8 and 1.6 points more above random at 2 and 5 images per class than the 1,280 dimensions themselves;
    16 to 128 directions within 0.9 points of each other; whitened, 6.1 and 2.4 points less than not. Rows of
    ``COMPONENTS`` dimensions or fewer are returned as they are."""
    X = np.asarray(X, dtype=np.float32)
    if X.shape[1] <= COMPONENTS or len(X) < 2:
        return X
    sample = X if len(X) <= PCA_ROWS else X[np.sort(np.random.default_rng(0).choice(len(X), PCA_ROWS, replace=False))]
    mean = sample.mean(axis=0, dtype=np.float64)
    cov = np.zeros((X.shape[1], X.shape[1]), dtype=np.float64)
    for start in range(0, len(sample), BLOCK):
        part = sample[start : start + BLOCK] - mean.astype(np.float32)
        cov += (part.T @ part).astype(np.float64)
    _, vectors = np.linalg.eigh(cov)
    W = vectors[:, ::-1][:, : min(COMPONENTS, len(sample))].astype(np.float32)
    S = np.empty((len(X), W.shape[1]), dtype=np.float32)
    for start in range(0, len(X), BLOCK):
        S[start : start + BLOCK] = (X[start : start + BLOCK] - mean.astype(np.float32)) @ W
    return normalized(S)


def normalized(X: np.ndarray) -> np.ndarray:
    """Rows at unit length, in place (float32)."""
    X = np.asarray(X, dtype=np.float32)
    for start in range(0, len(X), BLOCK):
        rows = X[start : start + BLOCK]
        rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    return X


def choose(
    X: np.ndarray,
    labels: np.ndarray,
    pool: np.ndarray,
    budget: int,
    rule: str = "auto",
    seed: int = 0,
    groups: np.ndarray | None = None,
    duplicate_cosine: float = DUPLICATE_COSINE,
    space: np.ndarray | None = None,
) -> Picked:
    """``budget`` rows of ``pool`` (a boolean mask over X's rows) to label next. ``X``: the rows ``prepared``;
    ``labels``: the class name of each row, "" for unlabeled. ``rule``: one of ``RULES`` or ``auto`` (the measured
    default of the stage: ``DEFAULT_WARM`` once two classes are labelled, else ``DEFAULT_COLD``). ``space``: X's
    ``coverage_space`` where the caller has it already (made here when needed otherwise)."""
    labels = np.asarray(labels, dtype=object)
    labelled = np.flatnonzero(labels != "")
    classes = sorted(set(labels[labelled].tolist()))
    warm_possible = len(classes) >= 2
    if rule == "auto":
        rule = DEFAULT_WARM if warm_possible else DEFAULT_COLD
    if rule not in RULES:
        raise InvalidValue(f"unknown strategy {rule!r}: choose auto, {', '.join(RULES)}")
    if rule in WARM and not warm_possible:
        raise InvalidValue(
            f"--strategy {rule} needs labelled images of two classes or more "
            f"({len(classes)} class labelled): label a first batch picked by a cold-start rule ({', '.join(COLD)})"
        )
    rows = np.flatnonzero(pool)
    if budget > len(rows):
        raise InvalidValue(f"the budget ({budget}) is larger than the pool ({len(rows)} unlabeled images)")
    rng = np.random.default_rng(seed)

    def S() -> np.ndarray:  # made once a rule needs it
        return coverage_space(X) if space is None else space

    picked = Picked(rule=rule, stage="labelled" if rule in WARM else "cold start")
    batch = Batch(X, budget, groups, duplicate_cosine, labelled, picked)
    if rule == "random":
        for i in rng.permutation(rows):
            if batch.full:
                break
            if batch.allowed(i):
                batch.take(i, "random draw", 0.0)
    elif rule in ("kmeans", "typiclust"):
        _clusters(S(), rows, labelled, budget, rule, rng, batch)
    elif rule == "probcover":
        _probcover(S(), rows, labelled, budget, rng, batch)
    else:
        per_class = len(labelled) / len(classes)
        if rule == "coverage-margin" and per_class < MARGIN_FROM:
            picked.notes.append(
                f"coverage-margin: {per_class:.1f} labelled images per class, under {MARGIN_FROM}: the probe's "
                f"margins are not used yet; the budget is split equally over the {len(classes)} labelled classes, "
                f"each share covering what its labelled images do not among the images label spreading gives it "
                f"(as --strategy kmeans, class by class)"
            )
            _by_class(X, S(), rows, labels, labelled, classes, budget, rng, batch)
            _fill(rows, rng, batch)
            return picked
        proba, note = probe_proba(X, labels, labelled, rows, classes, seed)
        picked.notes.append(note)
        if rule == "margin":
            margin = _margin(proba)
            for j in np.argsort(margin, kind="stable"):
                if batch.full:
                    break
                if batch.allowed(rows[j]):
                    batch.take(rows[j], "smallest margin", 1 - margin[j])
        elif rule == "coverage-margin":
            _clusters(S(), rows, labelled, budget, "kmeans", rng, batch, uncertainty=1 - _margin(proba))
        elif rule == "cluster-margin":
            _cluster_margin(S(), rows, proba, budget, rng, batch)
        else:
            _badge(X, rows, proba, rng, batch)
    _fill(rows, rng, batch)
    return picked


def _fill(rows, rng, batch: Batch) -> None:
    """What the rule left short (its candidates all refused): the pool's rows farthest from every pick."""
    if batch.full:
        return
    left = rows[~batch.taken[rows]]
    V = pool_rows(batch.X, left)
    far = np.full(len(left), np.inf, dtype=np.float32)
    for i in batch.picked.rows:
        far = np.minimum(far, 1 - V @ batch.X[i])
    for j in np.argsort(-far, kind="stable"):
        if batch.full:
            break
        if batch.allowed(left[j]):
            batch.take(left[j], "farthest from the picks (the rule's candidates were refused)", float(far[j]))
    if not batch.full:
        batch.picked.notes.append(
            f"only {len(batch.picked.rows)} images could be picked: the rest of the pool repeats a picked group "
            f"or nearly duplicates a picked or labelled image"
        )


def _by_class(X, S, rows, labels, labelled, classes, budget, rng, batch: Batch) -> None:
    """coverage-margin under ``MARGIN_FROM``: label spreading from the labelled rows over the kNN graph of the pool
    (at most ``GRAPH_ROWS`` of its rows, a seeded sample beyond) and the labelled rows, in the whole space ``X``;
    each pool row's class is its largest share. The budget split equally over the classes, and the rows no label
    reached (a group of their own where there are any); what does not divide goes to that group first, then to the
    largest classes. Each share: the ``kmeans`` rule in ``S`` over the group's pool rows, with the class's labelled
    rows counting as covered."""
    from .semi import knn_graph, spread

    graph_rows = rows if len(rows) <= GRAPH_ROWS else np.sort(rng.choice(rows, GRAPH_ROWS, replace=False))
    nodes = np.concatenate([graph_rows, labelled])
    seeds = np.arange(len(graph_rows), len(nodes))
    index = np.array([classes.index(c) for c in labels[labelled]])
    share = spread(knn_graph(X[nodes]), seeds, index, len(classes))[: len(graph_rows)]
    reached = np.isfinite(share).all(axis=1) & (np.ptp(share, axis=1) > 0)  # an unreached row is uniform
    group = np.where(reached, share.argmax(axis=1), len(classes))  # len(classes): no label reached it
    sizes = np.bincount(group, minlength=len(classes) + 1)
    groups = list(range(len(classes))) + ([len(classes)] if sizes[-1] else [])
    shares = dict.fromkeys(groups, budget // len(groups))
    for g in sorted(groups, key=lambda g: (g != len(classes), -sizes[g], g))[: budget - sum(shares.values())]:
        shares[g] += 1
    if len(graph_rows) < len(rows):
        batch.picked.notes.append(f"label spreading on a sample of {GRAPH_ROWS:,} of the pool's {len(rows):,} rows")
    for g in groups:
        mine = graph_rows[group == g]
        n = min(shares[g], len(mine))
        if n == 0:
            continue
        known = labelled[labels[labelled] == classes[g]] if g < len(classes) else labelled[:0]
        among = f" that label spreading calls {classes[g]}" if g < len(classes) else " that no label reaches"
        batch.budget, whole = len(batch.picked.rows) + n, batch.budget
        try:
            _clusters(S, mine, known, n, "kmeans", rng, batch, among=among)
        finally:
            batch.budget = whole


def pool_rows(X: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``X[rows]``, without a copy when the rows are all of X in order (a cache with nothing labelled)."""
    if len(rows) == len(X) and (len(rows) == 0 or (rows[0] == 0 and rows[-1] == len(X) - 1)):
        return X
    return X[rows]


def kmeans(X: np.ndarray, k: int, seed: int):
    """(centres, label of each row): exact k-means up to ``FULL_KMEANS_ROWS`` rows, mini-batch k-means beyond.
    Fewer distinct rows than ``k`` (copies of one image) leave clusters empty, which the picks handle: scikit-learn's
    ConvergenceWarning about it is not printed."""
    import warnings

    from sklearn.cluster import KMeans, MiniBatchKMeans
    from sklearn.exceptions import ConvergenceWarning

    k = max(1, min(k, len(X)))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Number of distinct clusters", ConvergenceWarning)
        if len(X) <= FULL_KMEANS_ROWS:
            km = KMeans(k, n_init=KMEANS_INIT, random_state=seed).fit(X)
        else:
            km = MiniBatchKMeans(k, n_init=1, batch_size=4096, random_state=seed).fit(X)  # 3 inits: 2x the time
    return km.cluster_centers_.astype(np.float32), km.labels_


def _clusters(X, rows, labelled, budget, rule, rng, batch: Batch, uncertainty=None, among: str = "") -> None:
    """kmeans / typiclust: clusters over the pool and the labelled rows, (labelled + budget) of them (at most
    4 × budget); clusters holding no labelled row first, largest first; then the others by rows per label.
    ``uncertainty`` (coverage-margin: 1 − the probe's margin of each pool row): (labelled + 2 × budget) clusters,
    ranked by their size times their rows' mean uncertainty. ``among``: what the rows are, for the reasons."""
    everything = np.concatenate([rows, labelled])
    extra = budget if uncertainty is None else 2 * budget
    k = min(len(labelled) + extra, 4 * budget, len(everything))
    seed = int(rng.integers(2**31))
    centres, assigned = kmeans(X[everything], k, seed)
    in_pool = np.zeros(len(everything), dtype=bool)
    in_pool[: len(rows)] = True
    sizes = np.bincount(assigned, minlength=k)
    known = np.bincount(assigned[~in_pool], minlength=k)
    weight = sizes.astype(np.float64)
    if uncertainty is not None:
        weight = np.asarray(np.bincount(assigned[in_pool], weights=uncertainty, minlength=k), dtype=np.float64)
        # the sum of the pool rows' uncertainty: size × mean uncertainty
    order = sorted(range(k), key=lambda c: (known[c] > 0, -weight[c] / (known[c] + 1), c))
    members = {c: np.flatnonzero((assigned == c) & in_pool) for c in order}
    rounds = 0
    while not batch.full and rounds < 3:  # a cluster refused whole gives its turn to the next
        for c in order:
            if batch.full:
                break
            mine = everything[members[c]]
            mine = mine[~batch.taken[mine]]
            if len(mine) == 0:
                continue
            if rule == "kmeans":
                closeness = X[mine] @ centres[c] / max(float(np.linalg.norm(centres[c])), 1e-12)
                ranked, scores = mine[np.argsort(-closeness, kind="stable")], np.sort(closeness)[::-1]
                what = "nearest the centre of"
            else:
                typical = _typicality(X, mine, rng)
                ranked, scores = mine[np.argsort(-typical, kind="stable")], np.sort(typical)[::-1]
                what = "the most typical image of"
            i = batch.first_allowed(ranked)
            if i is None:
                continue
            cover = "a cluster" if known[c] == 0 else f"a cluster with {known[c]} labelled"
            if uncertainty is not None:  # what ranked the cluster is its score: its pool rows' summed uncertainty
                mean = float(weight[c] / max(1, sizes[c] - known[c]))  # (per label it holds, plus one)
                reason = (
                    f"{what} {cover} of {_images(sizes[c])}, ranked by the probe's doubt (mean 1 − margin {mean:.2f})"
                )
                batch.take(i, reason, float(weight[c] / (known[c] + 1)))
            else:
                batch.take(i, f"{what} {cover} of {_images(sizes[c])}{among}", scores[list(ranked).index(i)])
        rounds += 1


def _images(n: int) -> str:
    return f"{n} image" if n == 1 else f"{n} images"


def _typicality(X, mine, rng) -> np.ndarray:
    """1 / mean cosine distance to the ``TYPICAL_NEIGHBOURS`` nearest other rows of the cluster (a sample of at
    most ``TYPICAL_SAMPLE`` of them)."""
    if len(mine) == 1:
        return np.ones(1, dtype=np.float32)
    ref = mine if len(mine) <= TYPICAL_SAMPLE else rng.choice(mine, TYPICAL_SAMPLE, replace=False)
    k = min(TYPICAL_NEIGHBOURS, len(ref) - 1)
    out = np.empty(len(mine), dtype=np.float32)
    R = X[ref]
    for start in range(0, len(mine), BLOCK // 4):
        part = mine[start : start + BLOCK // 4]
        d = np.maximum(1 - X[part] @ R.T, 0)
        d[part[:, None] == ref[None, :]] = np.inf  # not its own neighbour
        nearest = np.partition(d, k - 1, axis=1)[:, :k]
        out[start : start + len(part)] = 1 / (nearest.mean(axis=1) + 1e-6)
    return out


def _probcover(X, rows, labelled, budget, rng, batch: Batch) -> None:
    """Greedy maximum coverage of delta-balls (cosine distance), on at most ``GRAPH_ROWS`` rows."""
    from scipy import sparse

    graph_rows = rows if len(rows) <= GRAPH_ROWS else np.sort(rng.choice(rows, GRAPH_ROWS, replace=False))
    nodes = np.concatenate([graph_rows, labelled])
    V = X[nodes]
    delta = _purest_delta(V, budget, rng)
    parts_r, parts_c = [], []
    for start in range(0, len(V), BLOCK // 4):
        d = 1 - V[start : start + BLOCK // 4] @ V.T
        r, c = np.nonzero(d <= delta)
        parts_r.append(r + start)
        parts_c.append(c)
    r, c = np.concatenate(parts_r), np.concatenate(parts_c)
    A = sparse.csr_matrix((np.ones(len(r), dtype=np.float32), (r, c)), shape=(len(V), len(V)))
    covered = np.zeros(len(V), dtype=bool)
    for j in range(len(graph_rows), len(V)):  # the labelled rows cover their balls
        covered[A.indices[A.indptr[j] : A.indptr[j + 1]]] = True
    candidate = np.ones(len(V), dtype=bool)
    candidate[len(graph_rows) :] = False
    batch.picked.notes.append(
        f"probcover: balls of cosine distance {delta:.3f}"
        + (f", on a sample of {GRAPH_ROWS:,} of the pool's {len(rows):,} rows" if len(graph_rows) < len(rows) else "")
    )
    while not batch.full:
        gain = A @ (~covered).astype(np.float32)
        gain[~candidate] = -1
        j = int(np.argmax(gain))
        if gain[j] <= 0:
            break  # everything covered: the rest by _fill
        candidate[j] = False
        if not batch.allowed(nodes[j]):
            continue
        covered[A.indices[A.indptr[j] : A.indptr[j + 1]]] = True
        batch.take(nodes[j], f"its neighbourhood covers {int(gain[j])} images not yet covered", gain[j] / len(V))


def _purest_delta(V, budget, rng) -> float:
    """ProbCover's radius: the largest cosine distance at which ``PURITY`` of the rows have every neighbour within
    it in their own k-means cluster (k = budget), over a grid of candidate radii, on a sample of rows."""
    _, assigned = kmeans(V, max(2, budget), int(rng.integers(2**31)))
    probe = np.arange(len(V)) if len(V) <= 2000 else rng.choice(len(V), 2000, replace=False)
    d = np.maximum(1 - V[probe] @ V.T, 0)
    same = assigned[probe][:, None] == assigned[None, :]
    other = np.where(same, np.inf, d).min(axis=1)  # the nearest row of another cluster
    best = float(np.quantile(np.sort(d, axis=1)[:, 1], 0.5))  # at least a radius with a neighbour for half the rows
    for delta in np.quantile(d[d > 0], np.linspace(0.001, 0.2, 40)):
        if (other > delta).mean() >= PURITY:
            best = max(best, float(delta))
    return best


def probe_proba(X, labels, labelled, rows, classes, seed) -> tuple[np.ndarray, str]:
    """The probe's class probabilities of the pool's rows, and a line that says how its C was chosen."""
    from .registry import make_classifier

    y = np.array([classes.index(c) for c in labels[labelled]])
    counts = np.bincount(y, minlength=len(classes))
    if counts.min() >= TUNED_FROM:
        model = make_classifier("logreg", seed)
        note = "probe: the zoo's logreg, C chosen on inner folds of the labelled images"
    else:
        model = make_classifier(f"logreg:C={FIXED_C}", seed)
        few = [c for c, n in zip(classes, counts) if n < TUNED_FROM]
        single = any(n < 2 for n in counts)
        note = (
            f"probe: the zoo's logreg with C fixed at {FIXED_C} ("
            + (
                "a class has a single labelled image: no inner folds can be made"
                if single
                else f"fewer than {TUNED_FROM} labelled images in {', '.join(few[:3])}{' …' if len(few) > 3 else ''}: "
                f"inner folds that small choose C by chance"
            )
            + ")"
        )
    model.fit(X[labelled], y)
    proba = np.empty((len(rows), len(classes)), dtype=np.float64)
    for start in range(0, len(rows), BLOCK * 4):
        proba[start : start + BLOCK * 4] = model.predict_proba(X[rows[start : start + BLOCK * 4]])
    return proba, note


def _margin(proba: np.ndarray) -> np.ndarray:
    top = np.partition(proba, -2, axis=1)[:, -2:]
    return top[:, 1] - top[:, 0]


def _cluster_margin(X, rows, proba, budget, rng, batch: Batch) -> None:
    margin = _margin(proba)
    m = min(len(rows), CANDIDATES_PER_PICK * budget)
    cand = np.argsort(margin, kind="stable")[:m]
    _, assigned = kmeans(X[rows[cand]], budget, int(rng.integers(2**31)))
    rounds = 0
    while not batch.full and rounds < 3:
        firsts = []
        for c in range(budget):
            mine = cand[assigned == c]
            mine = mine[~batch.taken[rows[mine]]]
            if len(mine):
                firsts.append(mine[np.argsort(margin[mine], kind="stable")])
        for ranked in sorted(firsts, key=lambda r: margin[r[0]]):
            if batch.full:
                break
            i = batch.first_allowed(rows[ranked])
            if i is not None:
                j = ranked[list(rows[ranked]).index(i)]
                batch.take(i, "the least certain of its cluster of uncertain images", 1 - margin[j])
        rounds += 1


def _badge(X, rows, proba, rng, batch: Batch) -> None:
    """k-means++ seeding on g = (p − onehot(ŷ)) ⊗ x; ‖g_i − g_j‖² = ‖a_i‖²‖x_i‖² + ‖a_j‖²‖x_j‖² − 2(a_i·a_j)(x_i·x_j)
    with a = p − onehot(ŷ) and x the unit row: each step costs one pass over the pool's vectors."""
    a = proba.copy()
    a[np.arange(len(a)), proba.argmax(axis=1)] -= 1
    V = pool_rows(X, rows)
    norms = (a * a).sum(axis=1)
    d2 = None  # squared distance to the nearest pick, once there is one
    while not batch.full:
        weights = norms.copy() if d2 is None else d2
        weights[batch.taken[rows]] = 0
        total = float(weights.sum())
        if total <= 0:
            break  # the rest by _fill
        j = int(np.argmax(weights)) if d2 is None else int(rng.choice(len(rows), p=weights / total))
        if not batch.allowed(rows[j]):
            norms[j] = 0
            if d2 is not None:
                d2[j] = 0
            continue
        batch.take(rows[j], "uncertain, and unlike the images already picked (gradient embedding)", float(norms[j]))
        dist = norms + norms[j] - 2 * (a @ a[j]) * (V @ V[j])
        d2 = np.maximum(dist, 0) if d2 is None else np.minimum(d2, np.maximum(dist, 0))
