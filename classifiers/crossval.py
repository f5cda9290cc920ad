"""Cross-validation of many classifiers × many layers on the same folds, with out-of-fold predictions.

The folds are made once from the labels (and groups) and shared by every classifier and layer, so their
scores are paired and comparable. Each fold fits a fresh clone of the whole Pipeline on the training rows
only; with ``search`` the Pipeline is wrapped in a GridSearchCV over the training rows (nested
cross-validation), so the reported score never saw the rows that chose the hyperparameters.

Several caches of the same images (other backbones, weights, pooling) are ranked together: their rows are
aligned by path to the first cache, whose labels and groups make the folds, so every (cache, layer, classifier)
is scored on the same folds, and each row of the leaderboard carries a corrected t-test against the best.
"""

from __future__ import annotations

import csv
import sys
import time
from dataclasses import dataclass, field

import numpy as np
from joblib import Parallel, delayed
from sklearn.base import clone
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
from sklearn.model_selection import GridSearchCV, RepeatedStratifiedKFold, StratifiedGroupKFold
from sklearn.pipeline import Pipeline
from tqdm import tqdm

from embedder.kernel.errors import FeaturebankError, InvalidValue, first_line
from embedder.kernel.store import sha256_of
from embedder.options import with_overrides

from .budget import Extra, Plan, estimate, extras_estimate, plan
from .calibration import DECISION, PROBABILITY, apply_temperature, cross_fitted, placed, raw_scores
from .cluster import layer_tasks, on_cluster
from .cost import Shape, machine_speed, parse_budget
from .data import Labeled, aligned, backbone_names, check_layers, labeled, open_cache
from .ensemble import ZooEnsemble
from .extras import kept, neighbours_of
from .folds import fallbacks, fit_grouped, inner_splitter
from .labels import labels_of
from .metrics import METRICS, chance_ece, confusion, ece, full_proba, mean_std, per_class, reliability, scores
from .neighbours import NEIGHBOURS, REFERENCE, CosineKNeighbors
from .options import SUSPICIOUS, CVOptions
from .parallel import fold_jobs, side_by_side
from .rows import PREDICT_BLOCK, by_index, fit_by_index
from .semi import MODES, UNLABELED, WITH_UNLABELED, SemiSupervised, nothing_unlabeled, switch_of
from .shots import ALL, curve_rows, learning_curve, parse_shots, usable_shots
from .significance import ALPHA, Comparison, compare_to_best
from .zoo import describe, make_classifier, parse_spec, search_grid

RANK_BY = "balanced_accuracy"
POOLED = ("balanced_accuracy", "accuracy")  # the metrics a leaderboard ranks on the whole out-of-fold predictions
RANK_RULE = (
    "balanced accuracy (mean over folds); rows next to each other within half of one image of the largest class, "
    "in fold means and over the whole out-of-fold predictions, tie, and the lower log-loss of their calibrated "
    "probabilities goes first"
)


@dataclass(frozen=True)
class Split:
    repeat: int
    fold: int
    train: np.ndarray
    test: np.ndarray


def make_splits(
    y: np.ndarray,
    groups: np.ndarray | None = None,
    folds: int = 5,
    repeats: int = 1,
    seed: int = 0,
    classes: list[str] | None = None,
) -> list[Split]:
    """Stratified k-fold, repeated with reshuffling: scikit-learn's ``RepeatedStratifiedKFold(folds, repeats,
    random_state=seed)``. With groups, ``StratifiedGroupKFold(folds, shuffle=True, random_state=seed + r)`` for
    repeat r, so that the images of one group (one animal, one patient, one camera) never sit on both sides."""
    classes = classes or [str(i) for i in range(int(y.max()) + 1)]
    counts = np.bincount(y, minlength=len(classes))
    if folds < 2:
        raise InvalidValue("--folds must be at least 2")
    if repeats < 1:
        raise InvalidValue("--repeats must be at least 1")
    if (counts > 0).sum() < 2:
        raise InvalidValue(f"only one class ({classes[int(np.argmax(counts))]}): a classifier needs at least two")
    if groups is None:
        small = [(classes[i], int(n)) for i, n in enumerate(counts) if n < folds]
        if small and min(n for _, n in small) < 2:
            listed = ", ".join(f"{c!r} has {n}" for c, n in small[:5] if n < 2)
            raise InvalidValue(
                f"{listed} labelled image: cross-validation holds out images of every class, so it needs 2 per "
                f"class (with k per class, --folds k at most); train on them as they are, or see what few labels "
                f"reach with cv --shots 1,2,5 on a cache with more"
            )
        if small:
            listed = ", ".join(f"{c!r} has {n}" for c, n in small[:5])
            raise InvalidValue(
                f"{listed} image(s), fewer than --folds {folds}: add images, lower --folds, or leave the class out"
            )
        cv = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed)
        pairs = list(cv.split(np.zeros(len(y)), y))
    else:
        n_groups = len(set(groups.tolist()))
        if n_groups < folds:
            raise InvalidValue(
                f"{n_groups} groups, fewer than --folds {folds}: images of a group stay together, "
                f"so lower --folds or add groups"
            )
        pairs = []
        for r in range(repeats):
            cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed + r)
            pairs += list(cv.split(np.zeros(len(y)), y, groups))
        for i, (train, _) in enumerate(pairs):
            present = np.unique(y[train])
            if len(present) < 2:  # a fit on one class: an error deep in the fold, naming a class index
                raise InvalidValue(
                    f"with groups, fold {i % folds + 1} (repeat {i // folds + 1}) would train on one class only "
                    f"({classes[int(present[0])]}): the other classes' images all sit in the groups it holds out; "
                    f"add groups, lower --folds, or leave out --groups"
                )
    return [Split(i // folds, i % folds, train, test) for i, (train, test) in enumerate(pairs)]


@dataclass
class FoldResult:
    repeat: int
    fold: int
    scores: dict
    fit_seconds: float
    predict_seconds: float
    best_params: dict | None = None
    missing_classes: list[int] = field(default_factory=list)  # classes absent from this fold's training rows
    notes: list[str] = field(default_factory=list)  # what the fit did instead of what it was asked (folds.fallbacks)
    unlabeled: dict | None = None  # with unlabeled rows: whether they joined this fold's fit, and why


@dataclass
class CVResult:
    """One classifier on one layer: per-fold scores and the out-of-fold predictions of every repeat."""

    classifier: str
    layer: str
    pipeline: str
    folds: list[FoldResult]
    predictions: np.ndarray  # (repeats, rows) predicted class index
    proba: np.ndarray | None  # (repeats, rows, classes), or None when the classifier has no probabilities
    backbone: str = ""  # the short name of the cache it ran on (see Source)
    decisions: np.ndarray | None = None  # (repeats, rows, classes) decision scores of an entry without probabilities

    @property
    def raw(self) -> tuple[np.ndarray | None, str]:
        """The out-of-fold output that calibration starts from: the probabilities, else the decision scores."""
        return (self.proba, PROBABILITY) if self.proba is not None else (self.decisions, DECISION)

    def metric(self, name: str) -> dict:
        return mean_std([f.scores[name] for f in self.folds])

    @property
    def notes(self) -> list[str]:
        """Every fold's fallbacks, each once (one labelled image per class: a fixed C, k lowered...)."""
        return list(dict.fromkeys(note for f in self.folds for note in f.notes))

    @property
    def unlabeled(self) -> dict | None:
        """With unlabeled rows: in how many folds they joined the fit, and each fold's decision."""
        decided = [f.unlabeled for f in self.folds if f.unlabeled is not None]
        if not decided:
            return None
        return {
            "used_in_folds": sum(bool(d["used"]) for d in decided),
            "folds": len(decided),
            "pseudo_labelled": [d["pseudo"] for d in decided],
            "decisions": [d["decision"] for d in decided],
        }

    @property
    def name(self) -> str:
        return f"{self.classifier} @ {self.layer}"

    def fold_scores(self, metric: str = RANK_BY) -> np.ndarray:
        return np.array([f.scores[metric] for f in self.folds], dtype=np.float64)

    def oof(self) -> tuple[np.ndarray, np.ndarray]:
        """Per row: the predicted class and its confidence. With probabilities, the argmax of the probabilities
        averaged over repeats and that mean probability; without, the majority vote and the share of votes."""
        if self.proba is not None:
            mean = self.proba.mean(axis=0)
            pred = mean.argmax(axis=1)
            return pred, mean[np.arange(len(pred)), pred]
        n_classes = int(self.predictions.max()) + 1
        votes = np.zeros((self.predictions.shape[1], n_classes))
        for row in self.predictions:
            votes[np.arange(len(row)), row] += 1
        pred = votes.argmax(axis=1)
        return pred, votes[np.arange(len(pred)), pred] / len(self.predictions)


@dataclass(frozen=True)
class Source:
    """One cache of a run, its rows aligned to the first cache's, and its short name on the leaderboard."""

    name: str
    data: Labeled


@dataclass
class CVReport:
    data: Labeled  # the first cache's rows: labels, paths and groups of every result
    layers: list[str]
    classifiers: list[str]
    folds: int
    repeats: int
    seed: int
    search: bool
    grouped: bool
    results: list[CVResult]
    seconds: float
    splits: list[Split]  # the folds every result was scored on (from the first cache's labels and groups)
    sources: list[Source]
    plan: Plan | None = None  # what the budget let in and left out, with the estimates
    unlabeled_mode: str | None = None  # with unlabeled rows: how they got labels (semi.MODES)
    curve: list[dict] | None = None  # with shots: the learning curve (shots.learning_curve's rows)
    labels: dict | None = None  # with --labels: the CSV laid over the caches' labels, {"csv", "sha256"}
    unlabeled_rule: str | None = None  # with unlabeled rows: when they joined a fold (semi.RULES)
    _calibrations: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # ``calibration``'s
    _probabilities: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # and its rows'

    @property
    def classes(self) -> list[str]:
        return self.data.classes

    def leaderboard(self, by: str = RANK_BY) -> list[CVResult]:
        """Best first, by the mean of ``by`` over all folds and repeats (then accuracy). By balanced accuracy or
        accuracy, a run of rows in that order whose fold means and whole out-of-fold predictions (``pooled``: every
        image once a repeat) are both within half of one image of the largest class of the run's first row is a tie
        (``ties``): their differences are of which folds the errors fell in and of errors traded between classes. A tie
        keeps its place, and within it the lower log-loss of the calibrated probabilities (``calibration``: what
        ``train`` gives) goes first, a row fit with the unlabeled rows too (``+unlabeled``: more work for no more
        images right) after the others."""
        if by not in POOLED:
            return self._by_mean(by)
        out = []
        for tie in self.ties(by):
            if len(tie) > 1:  # the calibration's log-loss only where a tie needs it (it cross-fits a temperature)
                tie = sorted(tie, key=lambda r: (r.classifier.endswith(WITH_UNLABELED), self._log_loss(r)))  # stable
            out += tie
        return out

    def _by_mean(self, by: str) -> list[CVResult]:
        sign = -1 if by == "log_loss" else 1

        def key(r: CVResult):
            m = r.metric(by)["mean"]
            return (m is None, -sign * (m if m is not None else 0.0), -r.metric("accuracy")["mean"])

        return sorted(self.results, key=key)

    def ties(self, by: str = RANK_BY) -> list[list[CVResult]]:
        """The rows in order of their fold means, cut into runs: a row joins the run above it when its fold mean and
        its ``pooled`` score are both within half of what one image can move them of the run's first row
        (accuracy: 1 / rows; balanced accuracy: 1 / (classes x the largest class's rows); over the repeats).
        Anchored at the first row, so a run never spans an image; a row that does not join ends the run, so a tie
        never passes over it."""
        board = self._by_mean(by)
        y = self.data.y
        sizes = np.unique(y, return_counts=True)[1]
        step = 1 / len(y) if by == "accuracy" else 1 / (len(sizes) * sizes.max())
        repeats = max([len(r.predictions) for r in board] or [1])
        tolerance = step / repeats / 2
        runs: list[list[CVResult]] = []
        for r in board:
            if runs:
                first = runs[-1][0]
                near = first.metric(by)["mean"] - r.metric(by)["mean"] < tolerance
                if near and abs(self.pooled(first, by) - self.pooled(r, by)) < tolerance:
                    runs[-1].append(r)
                    continue
            runs.append([r])
        return runs

    def _log_loss(self, result: CVResult) -> float:
        """The log-loss of a row's calibrated out-of-fold probabilities (``calibration``)."""
        cal = self.calibration(result)
        return cal["log_loss"] if cal else np.inf

    def pooled(self, result: CVResult, by: str = RANK_BY) -> float:
        """``by`` (balanced accuracy or accuracy) of a row's out-of-fold predictions, each repeat's whole, averaged
        over repeats."""
        y = self.data.y
        right = result.predictions == y[None, :]
        if by == "accuracy":
            return float(right.mean())
        return float(np.mean([right[:, y == c].mean(axis=1) for c in np.unique(y)], axis=0).mean())

    @property
    def best(self) -> CVResult:
        return self.leaderboard()[0]

    def compared(self, alpha: float = ALPHA) -> list[tuple[CVResult, Comparison]]:
        """The leaderboard, each row with its corrected resampled t-test against the best row on the ranking
        metric (see significance.py: two-sided, alpha 0.05)."""
        board = self.leaderboard()
        return list(zip(board, compare_to_best([r.fold_scores(RANK_BY) for r in board], *self.fold_sizes(), alpha)))

    def fold_sizes(self) -> tuple[float, float]:
        """The mean training and held-out rows of a fold: the corrected t-test's variance correction."""
        return float(np.mean([len(s.train) for s in self.splits])), float(np.mean([len(s.test) for s in self.splits]))

    def result(self, classifier: str, layer: str, backbone: str | None = None) -> CVResult:
        for r in self.results:
            if r.classifier == classifier and r.layer == layer and backbone in (None, r.backbone):
                return r
        raise KeyError((classifier, layer, backbone))

    def source(self, result: CVResult) -> Labeled:
        """The rows of the cache ``result`` ran on (aligned to the first cache's)."""
        return next(s.data for s in self.sources if s.name == result.backbone)

    def calibration(self, result: CVResult) -> dict | None:
        """``_calibration``, once a row (the leaderboard's ties and the report both read it)."""
        name = (result.backbone, result.classifier, result.layer)
        if name not in self._calibrations:
            self._calibrations[name] = self._calibration(result)
        return self._calibrations[name]

    def calibrated_probabilities(self, result: CVResult) -> np.ndarray | None:
        """Each image's calibrated out-of-fold probabilities, as ``train`` makes them (``_calibration``'s cross-fit),
        the mean over repeats; None without the folds' outputs."""
        self.calibration(result)
        return self._probabilities.get((result.backbone, result.classifier, result.layer))

    def _calibration(self, result: CVResult) -> dict | None:
        """The row's out-of-fold top-label ECE (15 equal-width bins) and reliability diagram, of calibrated
        probabilities as ``train`` makes them, without a fit more: each fold's rows scaled by the temperature fit on
        the other folds' out-of-fold scores (``calibration.cross_fitted``); with probabilities of its own, the
        entry's uncalibrated ECE beside it. Means over repeats; the diagram pools them. None when a fold's output
        is missing (a run of an older version)."""
        raw, kind = result.raw
        if raw is None:
            return None
        y = self.data.y
        calibrated, uncalibrated, fits, pooled = [], [], [], []
        for r in range(raw.shape[0]):
            fold_of = np.full(len(y), -1)
            for s in self.splits:
                if s.repeat == r:
                    fold_of[s.test] = s.fold
            p, found = cross_fitted(raw[r].astype(np.float64), kind, y, fold_of)
            calibrated.append(ece(y, p))
            fits += found
            pooled.append(p)
            if kind == PROBABILITY:
                uncalibrated.append(ece(y, apply_temperature(raw[r], kind, 1.0)))
        self._probabilities[(result.backbone, result.classifier, result.layer)] = np.mean(pooled, axis=0)
        p = np.vstack(pooled)
        y_all = np.tile(y, raw.shape[0])
        rows = np.arange(len(y_all))
        return {
            "ece": round(float(np.mean(calibrated)), 4),
            "ece_uncalibrated": round(float(np.mean(uncalibrated)), 4) if uncalibrated else None,
            "log_loss": round(float(-np.log(np.clip(p[rows, y_all], 1e-15, None)).mean()), 4),
            "input": kind,
            "temperatures": [f["temperature"] for f in fits],
            "margin_powers": [f["margin_power"] for f in fits],
            "rows": int(len(y)),
            "ece_chance": {k: round(v, 4) for k, v in chance_ece(pooled[0]).items()},
            "bins": [
                {k: (round(v, 4) if isinstance(v, float) else v) for k, v in b.items()} for b in reliability(y_all, p)
            ],
        }

    def confusion(self, result: CVResult) -> np.ndarray:
        """Summed over every fold of every repeat (each image counts once per repeat)."""
        y = np.tile(self.data.y, len(result.predictions))
        return confusion(y, result.predictions.reshape(-1), len(self.classes))

    def per_class(self, result: CVResult) -> dict:
        y = np.tile(self.data.y, len(result.predictions))
        return per_class(y, result.predictions.reshape(-1), self.classes)

    def suspicious(self, limit: int = SUSPICIOUS) -> tuple[CVResult | None, list[dict]]:
        """The images most confidently put in another class than their label, out of fold: label errors, junk
        files and look-alikes, most confident first. The judge is the classifier with the best log-loss (the
        most trustworthy probabilities; LDA's or a forest's are over- or under-confident)."""
        ranked = [r for r in self.leaderboard("log_loss") if r.proba is not None]
        if not ranked:
            return None, []
        result = ranked[0]
        assert result.proba is not None
        mean = result.proba.mean(axis=0)
        pred, confidence = result.oof()
        wrong = np.flatnonzero(pred != self.data.y)
        wrong = wrong[np.argsort(-confidence[wrong], kind="stable")][:limit]
        return result, [
            {
                "path": str(self.data.paths[i]),
                "label": self.classes[self.data.y[i]],
                "predicted": self.classes[pred[i]],
                "confidence": round(float(confidence[i]), 4),
                "p_label": round(float(mean[i, self.data.y[i]]), 4),
            }
            for i in wrong
        ]

    def outliers(self, limit: int = SUSPICIOUS, reference: int = 20_000) -> tuple[str, list[dict]]:
        """The images least like any other (lowest cosine similarity to their nearest neighbour, in the best
        result's layer): placeholders, blank or broken pictures, images from another domain. Beyond
        ``neighbours.APPROXIMATE`` rows, from the approximate index (``neighbour_search`` says how, with its
        measured recall); without it, beyond ``reference`` rows, among a fixed random sample of that many rows."""
        layer, index, similarity = self.neighbours(reference=reference)
        nearest, which = similarity[:, 0], index[:, 0]
        order = np.argsort(nearest, kind="stable")[:limit]
        return layer, [
            {
                "path": str(self.data.paths[i]),
                "label": self.classes[self.data.y[i]],
                "similarity": round(float(nearest[i]), 4),
                "nearest": str(self.data.paths[which[i]]),
            }
            for i in order
        ]

    def neighbours(self, k: int = NEIGHBOURS, reference: int = REFERENCE) -> tuple[str, np.ndarray, np.ndarray]:
        """Each image's ``k`` most cosine-similar other images in the best result's layer (see
        neighbours.nearest_neighbours): the layer, their indices and similarities. Searched once per run and
        setting; the outliers and the label issues' neighbour signal share it."""
        memo = self.__dict__.setdefault("_neighbours", {})
        if (k, reference) not in memo:
            layer = self.best.layer  # searched once per cache and layer: kept beside the cache (extras.py)
            info: dict = {}
            found = neighbours_of(self.source(self.best), layer, k, reference, self.seed, info=info)
            memo[(k, reference)] = (layer, *found)
            self.__dict__.setdefault("_neighbour_search", {})[(k, reference)] = info
        return memo[(k, reference)]

    def neighbour_search(self, k: int = NEIGHBOURS, reference: int = REFERENCE) -> dict:
        """How ``neighbours(k, reference)`` were searched: ``method`` (exact, index or sample), the index's
        ``recall`` measured in the run that made them (None for an exact search) and ``text`` for reports."""
        self.neighbours(k, reference)
        return self.__dict__["_neighbour_search"][(k, reference)]

    def duplicates(self) -> list[dict]:
        """Byte-identical images in more than one row (their digests match): with different labels they are
        label noise; on both sides of a fold they inflate the scores."""
        digests = self.data.reader.rows["digest"][self.data.rows]
        by_digest: dict[str, list[int]] = {}
        for i, d in enumerate(digests):
            if d:
                by_digest.setdefault(d, []).append(i)
        out = []
        for rows in by_digest.values():
            if len(rows) > 1:
                labels = sorted({self.classes[self.data.y[i]] for i in rows})
                out.append(
                    {"paths": [str(self.data.paths[i]) for i in rows], "labels": labels, "conflicting": len(labels) > 1}
                )
        return sorted(out, key=lambda d: (not d["conflicting"], d["paths"][0]))


def _run_fold(estimator, X, y, groups, split: Split, n_classes: int, free: np.ndarray | None = None):
    """Fit a clone on the training rows, predict the test rows. Runs in a joblib worker.

    The training rows are the fold's own copy (fancy indexing), so the Pipeline's own L2 and scaling steps fit on them
    in place: the layer, the fold's rows and the classifier's own data are the memory, never a second scaled copy. An
    entry that reads rows by index (``rows.by_index``: the tuned probe, from 1 GiB of rows) takes no copy at all: the layer and the
    fold's indices. The test rows are predicted a block of indices at a time.
    ``free``: unlabeled rows that join the training side (``semi.SemiSupervised``, label ``-1``), never the test
    side: the held-out rows are labelled rows of the cache only."""
    model = _in_place(clone(estimator))
    started = time.perf_counter()
    if free is None and by_index(model, len(split.train), X.shape[1]):  # the layer and the fold's indices: no copy
        fit_by_index(model, X, y, split.train, groups)
    else:
        X_train, y_train = X[split.train], y[split.train]
        g_train = None if groups is None else groups[split.train]
        if free is not None:
            X_train = np.vstack([X_train, free])
            y_train = np.concatenate([y_train, np.full(len(free), UNLABELED, dtype=y.dtype)])
            g_train = None if g_train is None else np.concatenate([g_train, np.full(len(free), "", dtype=object)])
        fit_grouped(model, X_train, y_train, g_train)
        del X_train  # before the test rows are taken
    _in_place(model, on=False)  # the test rows are transformed twice (labels, probabilities): not in place
    fitted = time.perf_counter()
    pred, proba, decision = _predict_blocks(model, X, split.test, n_classes)
    predicted = time.perf_counter()
    best = model.best_params_ if isinstance(model, GridSearchCV) else None
    missing = sorted(set(range(n_classes)) - set(np.asarray(model.classes_).tolist()))
    semi = None
    if isinstance(model, SemiSupervised):
        semi = {"used": bool(model.used_), "decision": model.decision_, "pseudo": int(model.pseudo_)}
    return pred, proba, fitted - started, predicted - fitted, best, missing, fallbacks(model), semi, decision


def _predict_blocks(model, X, test: np.ndarray, n_classes: int, block: int | None = None):
    """The test rows' predictions, probabilities (or None) and, without probabilities, decision scores (or None),
    ``block`` rows (``PREDICT_BLOCK``) taken from the layer at a time: never a copy of all of them (every model
    predicts row by row)."""
    block = block or PREDICT_BLOCK
    probabilistic = hasattr(model, "predict_proba")
    read_off = probabilistic and predicts_by_proba(model)
    preds, probas, decisions = [], [], []
    for start in range(0, max(len(test), 1), block):
        X_test = X[test[start : start + block]]
        if read_off:  # what its predict would compute again: kNN's search, the ensemble's members, the trees
            proba = model.predict_proba(X_test)
            preds.append(np.asarray(model.classes_)[np.argmax(proba, axis=1)])
            probas.append(full_proba(proba, model.classes_, n_classes))
            continue
        if probabilistic:
            preds.append(model.predict(X_test))
            probas.append(full_proba(model.predict_proba(X_test), model.classes_, n_classes))
        elif hasattr(model, "decision_function"):  # the scores also serve the report's calibration (cross_fitted)
            # the class of the highest score, as `evaluate`, `predict` and an exported file answer (the RBF SVM's
            # own predict counts libsvm's one-vs-one votes, which differ where votes tie), in one kernel pass
            values, _ = raw_scores(model, X_test)
            preds.append(np.asarray(model.classes_)[values.argmax(axis=1)])
            decisions.append(placed(values, DECISION, model.classes_, n_classes).astype(np.float32))
        else:
            preds.append(model.predict(X_test))
    return (
        np.concatenate(preds),
        np.concatenate(probas) if probas else None,
        np.concatenate(decisions) if decisions else None,
    )


def predicts_by_proba(model) -> bool:
    """The model's labels are ``classes_[argmax(predict_proba)]`` by its own definition (the zoo's kNN and
    ensemble, scikit-learn's forests), through a pipeline or a search: read off the probabilities, not predicted
    twice."""
    while isinstance(model, (GridSearchCV, Pipeline)):
        model = model.best_estimator_ if isinstance(model, GridSearchCV) else model.steps[-1][1]
    return isinstance(model, (CosineKNeighbors, ZooEnsemble, RandomForestClassifier, ExtraTreesClassifier))


def _in_place(model, on: bool = True):
    """The top Pipeline's ``l2`` and ``scale`` steps, and a classifier that takes ``copy``, without their copy
    (``on``) or with it again (a search's inner folds are copies too; an ensemble's members, which share their rows,
    keep theirs). Fitted: the refit Pipeline."""
    if isinstance(model, SemiSupervised):  # its classifier is fit on rows it chooses: copies already
        return model
    searched = isinstance(model, GridSearchCV)
    pipe = (model.best_estimator_ if hasattr(model, "best_estimator_") else model.estimator) if searched else model
    steps = dict(pipe.steps)
    in_place = [name for name in ("l2", "scale") if steps.get(name) != "passthrough"]
    if "copy" in steps["clf"].get_params(deep=False):  # the tuned probe reorders the rows for its held-out split
        in_place.append("clf")
    pipe.set_params(**{f"{name}__copy": not on for name in in_place})
    return model


def _estimator(spec: str, seed: int, search: bool, inner_folds: int, grouped: bool, n_train: int):
    pipe = make_classifier(spec, seed=seed)
    grid = search_grid(spec, n_train) if search else {}
    if not grid:
        return pipe
    return GridSearchCV(
        pipe,
        grid,
        cv=inner_splitter(inner_folds, seed, grouped),
        scoring=RANK_BY,
        n_jobs=1,
        refit=True,
        error_score="raise",
    )


def _guarded(results, spec: str, layer: str):
    """A classifier that cannot fit these data (k neighbours > rows, say) is one clear line, not a traceback."""
    try:
        yield from results
    except FeaturebankError:  # already one line (a bad parameter is a ValueError too)
        raise
    except (ValueError, np.linalg.LinAlgError) as exc:
        first = first_line(exc)
        raise FeaturebankError(f"{spec} on {layer} failed: {first}") from None


def cross_validate(
    cache,
    options: CVOptions | None = None,
    *,
    extras: str | None = "report",
    progress: bool = False,
    say=None,
    **overrides,
) -> CVReport:
    """Score every classifier (``options.classifiers``, zoo spec strings; default: every entry that fits
    ``budget``, see ``budget.plan``) on every layer (``layers``; default: all of the cache's; ``a+b`` for two
    layers side by side) with the same stratified folds. ``options``: a ``CVOptions`` (default ``CVOptions()``),
    ``overrides`` its fields by name (``classifiers=["logreg"], folds=3``). ``cache``: one cache, or a list of
    caches of the same images (see ``sources``), all ranked on the first cache's folds. ``groups``: None uses the
    cache's groups when it has some. ``scheduler``: the address of a Dask scheduler that runs every (layer,
    classifier, fold) fit (``n_jobs`` is then the cluster's). ``budget``: seconds or a duration (``"15m"``,
    ``"none"``) of estimated work, out of which ``extras`` is charged first: ``"report"`` (the neighbour search
    that ``report_dict`` makes), ``"out"`` (and the map that ``write_report`` draws) or None, each unless kept
    beside the cache already; ``say``: called with the plan's one line before any fit (without ``classifiers``,
    or when they are over the budget).

    ``labels``: a ``path,label`` CSV laid over the caches' own labels (``labels.labels_of``). ``unlabeled``: each
    classifier is scored a second time (``"<spec> +unlabeled"``) with the cache's unlabeled rows joining the
    training side of every fold (``semi.SemiSupervised`` in ``unlabeled_mode``, with its switch-off rule), on
    the same held-out labelled rows. ``shots``: a list of labelled images per class (and ``"all"``, the run
    itself) for a learning curve (``shots.learning_curve``), ``draws`` seeded draws each."""
    o = with_overrides(CVOptions, options, overrides)
    classifiers: list[str] | None = list(o.classifiers) if o.classifiers else None
    layers, folds, repeats, seed, groups = o.layers, o.folds, o.repeats, o.seed, o.groups
    search, inner_folds, n_jobs, scheduler, budget = o.search, o.inner_folds, o.n_jobs, o.scheduler, o.budget
    labels, unlabeled, unlabeled_mode, shots, draws = o.labels, o.unlabeled, o.unlabeled_mode, o.shots, o.draws
    switch = switch_of(o.unlabeled_rule, unlabeled)
    started = time.perf_counter()
    sources = load_sources(cache, labels)
    data = sources[0].data
    per_source = source_layers(sources, layers)
    shot_list = parse_shots(shots) if shots is not None else None
    if unlabeled:
        if unlabeled_mode not in MODES:
            raise InvalidValue(f"unknown way to use unlabeled rows {unlabeled_mode!r}: choose {' or '.join(MODES)}")
        if len(sources) > 1:
            raise InvalidValue("--unlabeled takes one cache: its unlabeled rows join the training folds")
        if not data.unlabeled:
            raise nothing_unlabeled(data.reader.path)
    if shot_list is not None and search:
        raise InvalidValue("--shots runs each classifier as it is: leave out --search")
    for spec in classifiers or []:
        parse_spec(spec)
    if groups and data.groups is None:
        raise InvalidValue(f"{data.reader.path} has no groups: give a CSV manifest with a group column")
    group_ids = data.groups if groups is not False else None
    splits = make_splits(data.y, group_ids, folds, repeats, seed, data.classes)
    shot_notes: dict = {}
    full = None
    if shot_list is not None:  # k that would only repeat the full run left out, said; capped ones said
        shot_list, shot_notes, full = usable_shots(shot_list, data.y, splits, len(data.classes))
    if search:
        smallest = min(np.bincount(data.y[s.train], minlength=len(data.classes)).min() for s in splits)
        inner_folds = max(2, min(inner_folds, int(smallest)))
    k = len(data.classes)
    pairs = [(source, layer) for source, names in zip(sources, per_source) for layer in names]
    shapes = {
        (source.name, layer): [Shape(len(s.train), len(s.test), source.data.dims(layer), k) for s in splits]
        for source, layer in pairs
    }
    at_once = 1 if scheduler else fold_jobs(n_jobs, len(splits))
    the_plan = plan(
        classifiers,
        [shape for fold_shapes in shapes.values() for shape in fold_shapes],
        parse_budget(budget),
        machine_speed,
        search,
        inner_folds,
        _extras_seconds(data, max(source.data.dims(layer) for source, layer in pairs), extras),
        layer_bytes=4.0 * len(data.y) * max(source.data.dims(layer) for source, layer in pairs),  # float32 rows
        extra=Extra(
            data.unlabeled if unlabeled else 0,
            unlabeled_mode,
            tuple(k for k in shot_list or () if k != ALL),
            draws if shot_list else 0,
            switch,
        ),
        jobs=at_once,
        folds=len(splits),
        fixed_jobs=n_jobs is not None,
    )
    if say is not None and the_plan.worth_saying:
        say(the_plan.message)
    classifiers = the_plan.classifiers
    inner_train = min(len(s.train) for s in splits) * (inner_folds - 1) // inner_folds
    results = []
    weights = _task_weights(the_plan, shapes, search, inner_folds)
    curve: list[dict] = []
    with (
        on_cluster(scheduler) as cluster,
        tqdm(
            total=sum(w for ws in weights.values() for w in ws) * (2 if unlabeled else 1),
            disable=not progress,
            file=sys.stderr,
            dynamic_ncols=True,
            desc="cross-validation",
            bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}] {postfix}",
        ) as bar,
    ):
        if cluster is not None and progress:
            bar.write(f"cross-validation on the {cluster.describe()}", file=sys.stderr)
        done, tasks = 0, len(pairs) * len(classifiers) * len(splits)
        for source, layer in pairs:
            X = source.data.features(layer)
            free = source.data.free_features(layer) if unlabeled else None
            where = f"{source.name}:{layer}" if len(sources) > 1 else layer
            with layer_tasks(cluster, [X, data.y, group_ids]) as (X_, y_, groups_):  # futures on a cluster
                for spec in classifiers:
                    estimator = _estimator(spec, seed, search, inner_folds, group_ids is not None, inner_train)
                    variants: list[tuple[str, object, str, np.ndarray | None]] = [
                        (spec, estimator, describe(spec), None)
                    ]
                    if free is not None:
                        semi = SemiSupervised(estimator, mode=unlabeled_mode, switch=switch, random_state=seed)
                        rule = "switch-off rule" if switch else "always"
                        said = f"{unlabeled_mode} of {len(free):,} unlabeled rows ({rule}), then {describe(spec)}"
                        variants.append((spec + WITH_UNLABELED, semi, said, free))
                    for name, model, pipeline, rows in variants:
                        bar.set_postfix_str(f"{done}/{tasks} fits; {name} @ {where}")
                        jobs = -1 if cluster is not None else the_plan.jobs.get(spec, 1)  # -1: the cluster's threads
                        fitted = _guarded(_fit_folds(model, X_, y_, groups_, splits, k, jobs, rows), spec, where)
                        try:
                            collected = _collect(fitted, splits, data.y, k, bar, weights[(source.name, layer, spec)])
                        except FeaturebankError as exc:
                            if the_plan.explicit:  # asked for by name: its failure is the run's
                                raise
                            # an entry of the default list that cannot run on these data (knn's k above a fold's
                            # rows): left out with its reason, never the end of the run
                            why = str(exc).split(" failed: ", 1)[-1]
                            if say is not None and spec not in the_plan.skipped:  # once, not once per layer
                                say(f"cv: {spec} left out: it cannot fit these data ({where}: {why})")
                            the_plan.skipped.setdefault(spec, f"{where}: {why}")
                            break  # and its variant with the unlabeled rows
                        finally:
                            fitted.close()  # done, or failed: folds still running finish, the others never start
                        folds_, predictions_, proba_, decisions_ = collected
                        results.append(
                            CVResult(name, layer, pipeline, folds_, predictions_, proba_, source.name, decisions_)
                        )
                        if shot_list is not None:
                            bar.set_postfix_str(f"learning curve; {name} @ {where}")
                            points = learning_curve(
                                model, X, data.y, group_ids, splits, k, shot_list, draws, seed, rows, jobs=max(jobs, 1)
                            )
                            curve += curve_rows(points, results[-1], shot_list, RANK_BY, shot_notes, full)
                    done += len(splits)
            del X, X_, free, fitted  # one layer in memory at a time (the spent generators hold it too)
    if not results:  # every entry failed: the first one's reason
        raise FeaturebankError(
            f"no classifier could fit these data: {next(iter(the_plan.skipped.items()), ('', ''))[1]}"
        )
    ran = {r.classifier for r in results}
    the_plan.skipped = {c: why for c, why in the_plan.skipped.items() if c not in ran}  # left out on every layer
    classifiers = [c for c in classifiers if c in ran]
    return CVReport(
        data,
        list(dict.fromkeys(layer for layers in per_source for layer in layers)),
        classifiers,
        folds,
        repeats,
        seed,
        search,
        group_ids is not None,
        results,
        round(time.perf_counter() - started, 3),
        splits,
        sources,
        the_plan,
        unlabeled_mode if unlabeled else None,
        curve if shot_list is not None else None,
        {"csv": labels, "sha256": sha256_of(labels), "picked_by_select": picked_by_select(labels)} if labels else None,
        o.unlabeled_rule if unlabeled else None,
    )


def _extras_seconds(data, dims: int, extras: str | None) -> float:
    """The report's work after the folds (see ``cross_validate``), estimated on the widest layer."""
    if extras not in (None, "report", "out"):
        raise ValueError(f"extras must be None, 'report' or 'out', not {extras!r}")
    if extras is None:
        return 0.0
    search = not kept(data.reader, "neighbours")
    drawn = extras == "out" and not kept(data.reader, "map")
    return extras_estimate(len(data.y), dims, search, drawn, REFERENCE)


def _task_weights(the_plan: Plan, shapes: dict, search: bool, inner_folds: int) -> dict:
    """Each (cache, layer, classifier)'s folds weighed by their estimated seconds, so that the progress bar's share
    and ETA follow the work rather than the count of fits; every fit weighs 1 when an entry has no estimate."""
    out = {}
    for (name, layer), fold_shapes in shapes.items():
        for spec in the_plan.classifiers:
            out[(name, layer, spec)] = [estimate(spec, s, search, inner_folds) for s in fold_shapes]
    if any(w is None for ws in out.values() for w in ws):
        return {key: [1.0] * len(ws) for key, ws in out.items()}
    return out


def _collect(fitted, splits: list[Split], y: np.ndarray, n_classes: int, bar, weights: list[float]):
    """The folds' results of one (layer, classifier), as they arrive: per-fold scores, and every row's out-of-fold
    prediction (and probabilities) in each repeat; the bar advances by each fold's weight."""
    repeats = max(s.repeat for s in splits) + 1
    predictions = np.full((repeats, len(y)), -1, dtype=np.int64)
    proba = decisions = None
    folds = []
    for s, weight, (pred, p, fit_s, pred_s, best, missing, notes, semi, d) in zip(splits, weights, fitted):
        predictions[s.repeat, s.test] = pred
        if p is not None:
            if proba is None:
                proba = np.zeros((repeats, len(y), n_classes), dtype=np.float32)
            proba[s.repeat, s.test] = p
        if d is not None:
            if decisions is None:
                decisions = np.zeros((repeats, len(y), n_classes), dtype=np.float32)
            decisions[s.repeat, s.test] = d
        folds.append(
            FoldResult(
                s.repeat,
                s.fold,
                scores(y[s.test], pred, p, n_classes),
                round(fit_s, 4),
                round(pred_s, 4),
                best,
                missing,
                notes,
                semi,
            )
        )
        bar.update(weight)
    return folds, predictions, proba, decisions


def _fit_folds(estimator, X, y, groups, splits: list[Split], n_classes: int, jobs: int, free=None):
    """Every fold of one (layer, classifier), in the splits' order: ``jobs`` at a time (``parallel.side_by_side``),
    or -1: through joblib's backend in force (a Dask cluster's, every thread of it)."""
    tasks = (delayed(_run_fold)(estimator, X, y, groups, s, n_classes, free) for s in splits)
    if jobs == -1:
        return Parallel(n_jobs=-1, return_as="generator")(tasks)
    return side_by_side(tasks, jobs)


def picked_by_select(labels: str) -> bool:
    """Whether a labels CSV is a ``select`` manifest filled in (its ``reason`` and ``score`` columns): images picked
    for their coverage or doubt, not drawn at random, so scores on them are no estimate for the rest of a cache."""
    try:
        with open(labels, encoding="utf-8", newline="") as fh:
            header = next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return {"reason", "score"} <= {h.strip() for h in header}


def load_sources(cache, labels: str | None = None) -> list[Source]:
    """One cache, or several caches of the same images: the first one's labelled rows, the others aligned to
    them by path (refused, saying what differs, unless they hold the same labelled images and labels), each
    with a short unique name (its backbone, plus weights, pooling or precision where backbones repeat)."""
    caches = list(cache) if isinstance(cache, (list, tuple)) else [cache]
    if not caches:
        raise InvalidValue("give at least one cache")
    readers = [open_cache(c) for c in caches]
    overlay = [labels_of(r, labels) if labels else None for r in readers]  # the CSV on top of each cache's labels
    first = labeled(readers[0], overlay[0], labels)
    datas = [first] + [aligned(first, r, o) for r, o in zip(readers[1:], overlay[1:])]
    return [Source(name, d) for name, d in zip(backbone_names(readers), datas)]


def source_layers(sources: list[Source], layers) -> list[list[str]]:
    """The layers to score per cache. One cache: every layer asked for must be in it. Several: a layer asked
    for is scored in every cache that has it (backbones name their nodes differently); a layer no cache has,
    or a cache with none of the layers, is an error."""
    if len(sources) == 1 or not layers:
        return [check_layers(s.data.reader, layers) for s in sources]
    found: list[list[str]] = [[] for _ in sources]
    for layer in layers:
        hits = 0
        for i, s in enumerate(sources):
            try:
                found[i] += check_layers(s.data.reader, [layer])
                hits += 1
            except FeaturebankError:
                pass
        if not hits:
            has = "; ".join(f"{s.name} has {', '.join(s.data.reader.layers)}" for s in sources)
            raise InvalidValue(f"layer {layer!r} is in none of the caches ({has})")
    for s, got in zip(sources, found):
        if not got:
            raise InvalidValue(
                f"{s.data.reader.path} has none of the layers asked for (it has {', '.join(s.data.reader.layers)})"
            )
    return found


__all__ = ["METRICS", "CVReport", "CVResult", "FoldResult", "Source", "Split", "cross_validate", "make_splits"]
