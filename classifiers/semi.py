"""Unlabeled rows that help: a cache's rows without a label join the training rows of any zoo classifier, with
labels of their own (pseudo-labels), only where that is seen to help.

Two ways to give them labels:

- ``spread``: label spreading (Zhou et al., NIPS 2003) on the k-nearest-neighbour graph of every row, labelled and
  not, by cosine similarity (L2-normalized vectors; the exact blocked search of ``neighbours``). Each labelled row
  starts with its class; the classes flow along the symmetric normalized graph ``S`` (``F = alpha S F + (1 - alpha)
  Y``, iterated), then each class's mass is normalized (a class with more seeds does not flood the graph) and each
  unlabeled row takes its largest share as its label and that share as its confidence.
- ``self-train``: the classifier is fit on the labelled rows, labels the unlabeled rows it is most sure of, a
  share of each predicted class a round, and is fit again on both (a confidence threshold that follows the
  classifier's own scale, class by class, rather than a fixed probability that a 1-shot probe never reaches).

Either way, the classifier is then fit on the labelled rows and the pseudo-labelled ones together.

The switch-off rule. Whether the unlabeled rows help is decided on the labelled training rows only, on inner folds
of them (stratified, group-aware, ``inner_repeats`` shuffles): the classifier is fit on the inner training rows
alone and scored on the inner held-out labelled rows; against that, ``spread`` scores the pseudo-labels those
held-out rows get when only the inner training rows are seeds (they are unlabeled nodes of the graph, as the
unlabeled rows are: the pseudo-labels are worth fitting on where they are right more often than the classifier
alone), and ``self-train`` scores the classifier self-trained from the inner training rows (never fit on the
held-out rows). The unlabeled rows are used when their accuracy there is at least as high; worse, they are left
out. A tie uses them: on flowers and hymenoptera, at 2 to 40 labels per class, the 12 draws of 100 that tied gained
0 to 16 points on ``val/`` with them, 6.5 on average, and lost none (``benchmarks/RESULTS.md``; the rule was chosen
on those very draws, 12 of them: a small sample, not a held-out check). Where no inner
fold can be made (one
labelled image in a class) nothing can be checked: they are used, and the decision says so. Nothing outside the
rows given to ``fit`` (a cross-validation's held-out fold, a test set) takes part in any of it.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

from embedder.kernel.errors import InvalidValue

from .folds import fallbacks, fit_grouped, inner_fold_count, inner_splits, too_few_for_inner_folds
from .metrics import answers
from .neighbours import normalize, self_search
from .options import SEMI_INNER_FOLDS, SEMI_INNER_REPEATS, SEMI_ROUNDS, CVOptions
from .validation import checked_labels, checked_rows, classes, seed_of

WITH_UNLABELED = " +unlabeled"  # a cv result's classifier name with the unlabeled rows: "logreg +unlabeled"
UNLABELED = -1  # the class index of an unlabeled row in ``fit``'s ``y`` (scikit-learn's convention)
MODES = ("spread", "self-train")
DEFAULT_MODE = CVOptions.unlabeled_mode  # written once, with its reason, in cv's option
NEIGHBOURS = 10
ALPHA = 0.99
ITERATIONS = 60
ROUNDS = SEMI_ROUNDS  # of self-training: the last round's rows are fit on by ``fit``
INNER_FOLDS = SEMI_INNER_FOLDS
INNER_REPEATS = SEMI_INNER_REPEATS
RULES = ("inner-folds", "always")  # CVOptions.unlabeled_rule: SemiSupervised's switch on, or off


def switch_of(rule: str, unlabeled: bool) -> bool:
    """``SemiSupervised``'s ``switch`` for ``cv`` and ``train``'s ``unlabeled_rule`` (refused without
    ``unlabeled``, where it would say nothing)."""
    if rule not in RULES:
        raise InvalidValue(f"unknown rule for the unlabeled rows {rule!r}: choose {' or '.join(RULES)}")
    if rule != RULES[0] and not unlabeled:
        raise InvalidValue(f"--unlabeled-rule {rule} says when the unlabeled rows join: give --unlabeled too")
    return rule == "inner-folds"


def knn_graph(X: np.ndarray, k: int = NEIGHBOURS):
    """The symmetric normalized k-nearest-neighbour graph ``D^-1/2 W D^-1/2`` of the rows (``W``: cosine
    similarities of each row's ``k`` nearest, clipped at 0, made symmetric by the larger of both directions), as
    a scipy CSR matrix. ``X`` is not changed."""
    from scipy import sparse

    n = len(X)
    if n < 2:
        return sparse.csr_matrix((n, n))
    index, similarity = self_search(normalize(np.array(X, dtype=np.float32)), min(k, n - 1))
    weights = np.clip(similarity, 0.0, None).astype(np.float64).ravel()
    W = sparse.csr_matrix((weights, (np.repeat(np.arange(n), index.shape[1]), index.ravel())), shape=(n, n))
    W = W.maximum(W.T)
    degree = np.asarray(W.sum(axis=1)).ravel()
    scale = sparse.diags(1.0 / np.sqrt(np.where(degree > 0, degree, 1.0)))
    return (scale @ W @ scale).tocsr()


def spread(graph, seeds: np.ndarray, labels: np.ndarray, n_classes: int, alpha: float = ALPHA) -> np.ndarray:
    """Each row's class distribution after spreading ``labels`` (class indices) from the rows ``seeds`` along
    ``graph`` (``knn_graph``), each class's mass normalized, rows summing to 1 (a row no class reached: uniform)."""
    Y = np.zeros((graph.shape[0], n_classes))
    Y[seeds, labels] = 1.0
    F = Y.copy()
    for _ in range(ITERATIONS):
        F = alpha * (graph @ F) + (1.0 - alpha) * Y
    F /= np.maximum(F.sum(axis=0, keepdims=True), 1e-300)  # class mass normalization
    total = F.sum(axis=1, keepdims=True)
    return np.where(total > 0, F / np.where(total > 0, total, 1.0), 1.0 / n_classes)


def _confidences(model, X: np.ndarray, n_classes: int) -> np.ndarray:
    """(rows, classes) scores of a fitted model, larger meaning surer: probabilities, else a softmax of decision
    values."""
    from .metrics import full_proba

    if hasattr(model, "predict_proba"):
        return full_proba(model.predict_proba(X), model.classes_, n_classes)
    s = np.asarray(model.decision_function(X), dtype=np.float64)
    if s.ndim == 1:
        s = np.column_stack([-s, s])
    s = np.exp(s - s.max(axis=1, keepdims=True))
    return full_proba(s / s.sum(axis=1, keepdims=True), model.classes_, n_classes)


def balanced_top(proba: np.ndarray, share: float) -> np.ndarray:
    """The rows to keep: of the rows each class is the largest for, the ``share`` most confident (at least 1)."""
    label, confidence = proba.argmax(axis=1), proba.max(axis=1)
    keep = []
    for c in np.unique(label):
        rows = np.flatnonzero(label == c)
        take = max(1, int(round(share * len(rows))))
        keep.append(rows[np.argsort(-confidence[rows], kind="stable")[:take]])
    return np.sort(np.concatenate(keep)) if keep else np.empty(0, dtype=np.int64)


class NothingUnlabeled(InvalidValue):
    """``--unlabeled`` on a cache without an unlabeled row (cv and train alike); ``train --from`` says it its way."""


def nothing_unlabeled(cache: str) -> NothingUnlabeled:
    """The error ``--unlabeled`` raises on a cache without an unlabeled row."""
    return NothingUnlabeled(
        f"{cache} has no unlabeled rows for --unlabeled: extract the images as unlabeled, into a cache of their "
        f"own (a flat folder, or --layout flat for class folders), and give --labels for the labelled ones (a "
        f"--labels CSV labels rows, it never unlabels one)"
    )


def semi_labels(X, y) -> np.ndarray:
    """``y`` checked: one label per row, -1 (``UNLABELED``) for the unlabeled ones. Text labels in a numpy string
    array cannot hold that mark (numpy turns -1 into the class '-1'), and an empty label is no class: both one
    line."""
    y = checked_labels(X, y, "SemiSupervised", least=0)
    if y.dtype.kind in "US" and (y == str(UNLABELED)).any():
        raise InvalidValue(
            f"SemiSupervised: the labels are text and some are '{UNLABELED}': numpy made the unlabeled mark a "
            f"class name; give y as an object array (np.where(labelled, labels, {UNLABELED}) on labels of "
            f"dtype=object) so that {UNLABELED} stays a number"
        )
    if y.dtype.kind in "USO" and any(v is None or (isinstance(v, str) and not v) for v in y):
        raise InvalidValue(f"SemiSupervised: a label is empty or None: mark the unlabeled rows with {UNLABELED}")
    if y.dtype.kind in "biuf":  # numbers: classes, not continuous values (0.13, 0.64, …)
        classes(y[y != UNLABELED], "SemiSupervised")
    return y


class SemiSupervised(ClassifierMixin, BaseEstimator):
    """``estimator`` (a zoo Pipeline) fit on the labelled rows and, where it helps, the unlabeled ones with
    pseudo-labels (``mode``: ``spread`` or ``self-train``; see the module). ``fit(X, y, groups)``: rows with
    ``y == -1`` are unlabeled (their groups, if any, are ignored: each is a group of its own). ``switch``: decide on inner folds of the labelled rows (the default), or False to
    always use them.

    Fitted: ``model_`` (the estimator as fit: a plain zoo Pipeline, what a model file keeps), ``used_`` (whether
    the unlabeled rows joined), ``decision_`` (why, in words), ``inner_`` (the inner folds' mean accuracy without
    and with them, or None), ``pseudo_`` (how many unlabeled rows were fit on), ``classes_``."""

    def __init__(
        self,
        estimator=None,
        mode=DEFAULT_MODE,
        switch=True,
        neighbours=NEIGHBOURS,
        alpha=ALPHA,
        share=1.0,
        inner_repeats=INNER_REPEATS,
        random_state=0,
    ):
        self.estimator = estimator
        self.mode = mode
        self.switch = switch
        self.neighbours = neighbours
        self.alpha = alpha
        self.share = share
        self.inner_repeats = inner_repeats
        self.random_state = random_state

    def check_params(self) -> None:
        if self.mode not in MODES:
            raise InvalidValue(f"unknown way to use unlabeled rows {self.mode!r}: choose {' or '.join(MODES)}")
        if not 0.0 < float(self.share) <= 1.0:
            raise InvalidValue(f"share={self.share!r}: give a fraction above 0, at most 1")

    def _base(self):
        if self.estimator is None:
            from .zoo import make_classifier

            return make_classifier("logreg", seed=getattr(self, "_seed", 0))
        return self.estimator

    def fit(self, X, y, groups=None):
        self.check_params()
        X, y = checked_rows(X, "semi-supervised", self), semi_labels(X, y)
        self._seed = seed_of(self.random_state)  # None or a RandomState: one seed drawn for this fit
        known = y != UNLABELED
        if not known.any():
            raise InvalidValue("no labelled rows: label at least one image per class")
        self.classes_ = np.unique(y[known])
        free = np.flatnonzero(~known)
        labelled = np.flatnonzero(known)
        if groups is not None:  # an unlabeled row is a group of its own (not one group of them all)
            groups = np.asarray(groups, dtype=object).copy()
            groups[free] = [f"\0unlabeled:{i}" for i in free]
        g = None if groups is None else groups[labelled]
        self._graph = knn_graph(X, self.neighbours) if self.mode == "spread" and len(free) else None
        self.used_, self.decision_, self.inner_ = self._decide(X, y, labelled, free, g)
        rows, labels = labelled, y[labelled]
        if self.used_:
            extra, extra_labels = self._pseudo(X, labelled, y[labelled], free, g)
            rows, labels = np.concatenate([labelled, extra]), np.concatenate([labels, extra_labels])
        self.pseudo_ = len(rows) - len(labelled)
        self.model_ = fit_grouped(clone(self._base()), X[rows], labels, None if groups is None else groups[rows])
        self.fallback_ = None
        self._graph = None  # not kept: nothing predicts from it
        self.n_features_in_ = X.shape[1]
        return self

    def decide(self, X, y, groups=None) -> tuple[bool, str, dict | None]:
        """What ``fit`` would decide on these rows, without its final fit: whether the unlabeled rows join, why,
        and the inner folds' accuracies (None where not checked)."""
        self.check_params()
        X, y = checked_rows(X, "semi-supervised"), semi_labels(X, y)
        self._seed = seed_of(self.random_state)
        known = y != UNLABELED
        fitted = self.__dict__.get("classes_")  # a fitted model's classes stay its own
        self.classes_ = np.unique(y[known])
        labelled, free = np.flatnonzero(known), np.flatnonzero(~known)
        g = None if groups is None else np.asarray(groups)[labelled]
        self._graph = knn_graph(X, self.neighbours) if self.mode == "spread" and len(free) else None
        try:
            return self._decide(X, y, labelled, free, g)
        finally:
            self._graph = None
            if fitted is None:
                del self.classes_
            else:
                self.classes_ = fitted

    def _decide(self, X, y, labelled, free, groups) -> tuple[bool, str, dict | None]:
        if not len(free):
            return False, "no unlabeled rows", None
        if not self.switch:
            return True, "used, always (--unlabeled-rule always: the inner folds were not asked)", None
        why = too_few_for_inner_folds(y[labelled], groups)
        if why:
            return True, f"used, not checked: {why}", None
        inner = self._inner_scores(X, y, labelled, free, groups)
        used = inner["with"] >= inner["without"]
        joined = "label spreading's pseudo-labels" if self.mode == "spread" else "the classifier with them"
        return (
            used,
            f"{'used' if used else 'left out'}: on inner folds of the {len(labelled)} labelled rows, the classifier "
            f"alone right {inner['right_without']} times of {inner['rows']}, {joined} {inner['right_with']} times "
            + ("(a tie uses them; " if inner["right_with"] == inner["right_without"] else "(")
            + "the held-out predictions that decided: not an estimate of the model)"
            + ("" if used else "; --unlabeled-rule always fits on them whatever the inner folds say"),
            inner,
        )

    def _pseudo(self, X, seeds, labels, free, groups) -> tuple[np.ndarray, np.ndarray]:
        """The unlabeled rows ``free`` to fit on and their pseudo-labels, from the labelled rows ``seeds`` alone."""
        index = np.searchsorted(self.classes_, labels)
        n_classes = len(self.classes_)
        if self.mode == "spread":
            proba = spread(self._graph, seeds, index, n_classes, self.alpha)[free]
            keep = balanced_top(proba, float(self.share))
            return free[keep], self.classes_[proba[keep].argmax(axis=1)]
        model = fit_grouped(clone(self._base()), X[seeds], labels, groups)
        for r in range(ROUNDS):
            proba = _confidences(model, X[free], n_classes)
            taken = balanced_top(proba, float(self.share) * (r + 1) / ROUNDS)
            pseudo = self.classes_[proba[taken].argmax(axis=1)]
            if r < ROUNDS - 1:  # the last round's rows are fit on by the caller
                rows = np.concatenate([seeds, free[taken]])
                model = fit_grouped(clone(self._base()), X[rows], np.concatenate([labels, pseudo]), None)
        return free[taken], pseudo

    def _inner_scores(self, X, y, labelled, free, groups) -> dict:
        """Mean accuracy on inner held-out labelled rows, fit without and with the unlabeled rows."""
        yl = y[labelled]
        hits: dict[str, list[np.ndarray]] = {"without": [], "with": []}
        for repeat in range(int(self.inner_repeats)):
            folds = inner_fold_count(yl, INNER_FOLDS, groups)
            for train, test in inner_splits(X[labelled], yl, groups, folds, self._seed + repeat):
                g = None if groups is None else groups[train]
                seeds = labelled[train]
                held = labelled[test]
                alone = fit_grouped(clone(self._base()), X[seeds], yl[train], g)
                hits["without"].append(answers(alone, X[held]) == yl[test])
                if self.mode == "spread":  # the pseudo-labels the held-out rows get, as unlabeled rows of the graph
                    proba = spread(
                        self._graph, seeds, np.searchsorted(self.classes_, yl[train]), len(self.classes_), self.alpha
                    )
                    hits["with"].append(self.classes_[proba[held].argmax(axis=1)] == yl[test])
                    continue
                extra, extra_labels = self._pseudo(X, seeds, yl[train], free, g)
                rows = np.concatenate([seeds, extra])
                both = fit_grouped(clone(self._base()), X[rows], np.concatenate([yl[train], extra_labels]), None)
                hits["with"].append(answers(both, X[held]) == yl[test])
        right = {k: int(np.concatenate(v).sum()) for k, v in hits.items()}
        held_out = int(sum(len(h) for h in hits["with"]))
        return {
            "without": right["without"] / held_out,
            "with": right["with"] / held_out,
            "rows": held_out,
            "right_without": right["without"],
            "right_with": right["with"],
        }

    def notes(self) -> list[str]:
        """The fitted classifier's own fallbacks (``folds.fallbacks``)."""
        return fallbacks(self.model_)

    @available_if(lambda self: hasattr(self._base(), "predict_proba"))
    def predict_proba(self, X):
        return self.model_.predict_proba(self._rows(X))

    @available_if(lambda self: hasattr(self._base(), "decision_function"))
    def decision_function(self, X):
        return self.model_.decision_function(self._rows(X))

    def predict(self, X):
        return answers(self.model_, self._rows(X))

    def _rows(self, X):
        """Rows to predict, checked against the fit's (their number of features, a DataFrame's names)."""
        check_is_fitted(self, "model_")
        return checked_rows(X, "semi-supervised", self, reset=False)


__all__ = [
    "DEFAULT_MODE",
    "MODES",
    "UNLABELED",
    "WITH_UNLABELED",
    "SemiSupervised",
    "balanced_top",
    "knn_graph",
    "spread",
]
