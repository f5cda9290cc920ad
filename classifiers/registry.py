"""The zoo's registry and its built-in entries: names → scikit-learn Pipelines whose preprocessing is part of the
model, the spec strings that name them, and what ``--search`` tunes. ``classifiers.zoo`` adds the ensemble (built
on these) and is the module to import."""

from __future__ import annotations

import ast
import difflib
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.svm import SVC, LinearSVC
from sklearn.utils.validation import check_is_fitted

from embedder.kernel.errors import InvalidValue

from . import cost
from .cost import Shape
from .linear import TunedLogisticRegression
from .neighbours import CosineKNeighbors
from .ridge import NystroemRidge, TunedRidge
from .scaling import ShrunkScaler
from .validation import checked_fit, checked_rows

STEPS = ("l2", "scale", "pca")


class ReducedPCA(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """PCA to ``n_components`` dimensions, or fewer when a fold has fewer rows or features than that
    (a plain ``PCA(256)`` fails on a small dataset or a 64-dimensional layer). Its outputs are named
    ``reducedpca0``, … (``get_feature_names_out``), as scikit-learn's PCA names its own."""

    def __init__(self, n_components=256, whiten=False, random_state=0):
        self.n_components = n_components
        self.whiten = whiten
        self.random_state = random_state

    def fit(self, X, y=None):
        X = checked_rows(X, "pca", self)
        k = max(1, min(int(self.n_components), X.shape[0], X.shape[1]))
        self.pca_ = PCA(k, whiten=self.whiten, random_state=self.random_state).fit(X)
        return self

    @property
    def _n_features_out(self) -> int:  # what get_feature_names_out counts (a model file of before has pca_ only)
        return self.pca_.n_components_

    def transform(self, X):
        check_is_fitted(self, "pca_")
        return self.pca_.transform(checked_rows(X, "pca", self, reset=False))


class BlockedScaler(ShrunkScaler):
    """The scale step before ``ShrunkScaler``: its blocked float64 sums without the shrinkage, the plain
    per-feature variances of ``StandardScaler`` (model files written with it load, and predict, as before)."""

    shrink = False  # a class value, so that the instances pickled before it existed read it too

    def __init__(self, *, copy=True, with_mean=True, with_std=True):
        StandardScaler.__init__(self, copy=copy, with_mean=with_mean, with_std=with_std)


LDA_FROM = 5  # rows per class on average from which LDA estimates a within-class spread; below, the nearest mean
# (benchmarks/lda_few.py: scored on the rows of train/ no draw took, 8 draws: at 2 a class, LDA's Ledoit-Wolf covariance broke down, flowers
# 18.9 % against 55.5 % for the nearest mean, hymenoptera 52.4 against 82.3; at 3 and 4 the mean was level or better,
# at 5 level, at 8 LDA 1.2 points better on flowers)


class FewShotLDA(LinearDiscriminantAnalysis):
    """scikit-learn's LDA; with fewer than ``LDA_FROM`` rows per class on average there is too little within-class
    spread to estimate (with one, its fit refuses): then the nearest class mean, LDA with an identity covariance
    (the limit of full shrinkage), and ``fallback_`` says so."""

    def fit(self, X, y):
        rows, y = checked_fit(X, y, "lda", self)  # records a DataFrame's names for the fallback below
        classes, index = np.unique(y, return_inverse=True)
        self.fallback_ = None
        for name in self.FITTED:  # a former fit's, which this one may not set
            self.__dict__.pop(name, None)
        if len(y) >= LDA_FROM * len(classes):
            with warnings.catch_warnings():  # a class of one row adds no spread, as meant: no warning per class
                warnings.filterwarnings("ignore", "Only one sample available", UserWarning)
                return super().fit(X if hasattr(X, "columns") else np.asarray(rows, dtype=np.float64), y)
        X = np.asarray(rows, dtype=np.float64)
        means = np.zeros((len(classes), X.shape[1]))
        np.add.at(means, index, X)
        means /= np.bincount(index, minlength=len(classes))[:, None]
        priors = np.full(len(classes), 1.0 / len(classes))
        if self.priors is not None:  # as scikit-learn's: the given priors, normalized
            priors = np.asarray(self.priors, dtype=np.float64)
            if priors.shape != (len(classes),) or (priors < 0).any() or not priors.sum() > 0:
                raise InvalidValue(f"lda: priors must be {len(classes)} non-negative numbers, one per class")
            priors = priors / priors.sum()
        coef = means
        with np.errstate(divide="ignore"):
            intercept = -0.5 * (means * means).sum(axis=1) + np.log(priors)
        if len(classes) == 2:  # one column for two classes, as scikit-learn's
            coef, intercept = coef[1:] - coef[:1], intercept[1:] - intercept[:1]
        self.classes_, self.means_, self.priors_ = classes, means, priors
        self.coef_, self.intercept_ = coef, intercept
        self.fallback_ = (
            "lda: one labelled image per class, no within-class spread: the nearest class mean"
            if len(y) == len(classes)
            else f"lda: {len(y) / len(classes):.1f} labelled images per class, too few for a within-class spread "
            f"(LDA from {LDA_FROM}): the nearest class mean"
        )
        return self

    FITTED = ("xbar_", "scalings_", "explained_variance_ratio_", "covariance_", "means_", "priors_", "coef_")

    def transform(self, X):
        if getattr(self, "fallback_", None):
            raise NotImplementedError(f"{self.fallback_}: there is no discriminant projection to transform with")
        return super().transform(X)


@dataclass(frozen=True)
class ClassifierSpec:
    """A named classifier: how to build it, its default steps, and what ``--search`` tunes."""

    name: str
    summary: str
    build: Callable[[int], ClassifierMixin]  # seed → the bare classifier with its defaults
    steps: dict = field(default_factory=dict)  # default preprocessing: {"l2": bool, "scale": bool, "pca": int|None}
    grid: dict = field(default_factory=dict)  # classifier parameter → values for nested search
    probabilities: bool = False  # has predict_proba (log-loss and confidence)
    cost: Callable[[Shape, dict], float] | None = None  # (fold's shape, spec's params) → seconds (cost.py)
    memory: Callable[[Shape, dict], float] | None = None  # → bytes beyond the layer and the fold's rows
    # → bytes beyond the layer of a fold fitted by index (rows.by_index: the fold's rows never copied); None: the
    # entry's Pipeline cannot be (its classifier has no fit_rows)
    memory_by_index: Callable[[Shape, dict], float] | None = None
    stands_in_for: str | None = None  # an approximation of this entry: never in the default list, only in its place
    default: bool = True  # in what ``cv`` runs without ``-c`` (an entry left out is run only when named)
    # the share of its fold's time in BLAS products, which a fold's BLAS threads share: True (all of it), False (it
    # runs on one thread whatever BLAS has: no threads' gain in its estimate, cost.machine_speed), or a function of
    # the fold's shape and the spec's parameters (the ensemble: its members' estimates weigh their own)
    threads: bool | Callable[[Shape, dict], float] = True


_REGISTRY: dict[str, ClassifierSpec] = {}


def register_classifier(spec: ClassifierSpec, *, replace: bool = False) -> ClassifierSpec:
    """Add a classifier to the zoo (the built-in ones below; a user or a test can add its own). A name already taken
    is refused unless ``replace=True``, so that a plug-in cannot silently shadow a built-in entry or another's."""
    taken = _REGISTRY.get(spec.name)
    if taken is not None and not replace:
        raise InvalidValue(
            f"classifier {spec.name!r} is already registered ({taken.summary}): choose another name, or pass "
            "replace=True to register_classifier to replace it"
        )
    _REGISTRY[spec.name] = spec
    return spec


def unregister_classifier(name: str) -> None:
    _REGISTRY.pop(name, None)


def list_classifiers() -> list[str]:
    return list(_REGISTRY)


def default_classifiers() -> list[str]:
    """What ``cv`` runs without ``-c``: every entry but the approximate ones (which only stand in for theirs) and
    those registered with ``default=False``."""
    return [name for name, spec in _REGISTRY.items() if spec.stands_in_for is None and spec.default]


def get_spec(name: str) -> ClassifierSpec:
    if name in _REGISTRY:
        return _REGISTRY[name]
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise InvalidValue(
        f"unknown classifier {name!r}{hint}; `featurebank classifiers` lists them: {', '.join(_REGISTRY)}"
    )


def parse_spec(text: str) -> tuple[str, dict]:
    """``"rbf-svm:pca=128,C=10"`` → ``("rbf-svm", {"pca": 128, "C": 10})``; values are Python literals or words.
    Checked whole: the steps' values, and the classifier's parameters by building it (scikit-learn's own checks),
    so that a bad value is one line before anything is fit."""
    name, params = _parse(text)
    _build(name, params, 0, text)
    return name, params


def _parse(text: str) -> tuple[str, dict]:
    name, _, rest = text.strip().partition(":")
    params = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise InvalidValue(f"cannot read {item!r} in classifier {text!r}: write name:key=value,key=value")
        params[key.strip()] = _literal(value.strip())
        if isinstance(params[key.strip()], float) and not math.isfinite(params[key.strip()]):
            raise InvalidValue(f"{item!r} in classifier {text!r} is {params[key.strip()]}: give a finite number")
    get_spec(name)
    _check_steps(params, text)
    return name, params


def _check_steps(params: dict, text: str) -> None:
    """The steps' values, from a spec or ``make_classifier``'s keywords: ``l2`` and ``scale`` on or off (a bool),
    ``pca`` a number of dimensions, on (256) or off (a bool or None). A string such as "off" would be true."""
    for step in ("l2", "scale"):
        if step in params and not isinstance(params[step], (bool, np.bool_)):
            raise InvalidValue(f"{step}={params[step]!r} in classifier {text!r}: write {step}=on or {step}=off")
    if "pca" in params:
        pca = params["pca"]
        number = isinstance(pca, (int, np.integer)) and not isinstance(pca, (bool, np.bool_)) and pca >= 1
        if not (isinstance(pca, (bool, np.bool_)) or pca is None or number):
            raise InvalidValue(
                f"pca={pca!r} in classifier {text!r}: give a number of dimensions (1 or more), on (256) or off"
            )


def check_spec(text: str) -> str:
    """``text`` when it is a classifier spec the zoo can build, else a one-line error."""
    parse_spec(text)
    return text


def split_specs(values) -> list[str] | None:
    """Specs given repeated or comma-separated (``-c logreg,rbf-svm:pca=128,C=10``), each checked: a ``key=value``
    piece belongs to the spec before it. None when there are none."""
    specs: list[str] = []
    for value in values:
        for piece in (p.strip() for p in value.split(",")):
            if not piece:
                continue
            if specs and "=" in piece and ":" not in piece:
                specs[-1] += "," + piece
            else:
                specs.append(piece)
    for spec in specs:
        parse_spec(spec)
    if not specs and len(values):  # -c "" had run the whole default zoo
        raise InvalidValue("no classifier named: give a zoo spec (featurebank classifiers), or leave -c out")
    return specs or None


def _literal(value: str):
    lowered = value.lower()
    if lowered in ("on", "true", "yes"):
        return True
    if lowered in ("off", "false", "no", "none"):
        return None if lowered == "none" else False
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):  # a word, or nothing Python reads
        return value


def make_classifier(spec: str, seed: int = 0, **overrides) -> Pipeline:
    """The Pipeline for a spec string (``"logreg"``, ``"logreg:C=0.1"``); ``overrides`` win over the string."""
    name, params = _parse(spec)
    _check_steps(overrides, spec)
    params.update(overrides)
    return _build(name, params, seed, spec)


def _build(name: str, params: dict, seed: int, text: str) -> Pipeline:
    from sklearn.utils._param_validation import InvalidParameterError

    params = dict(params)
    zoo = get_spec(name)
    steps = dict(zoo.steps)
    for step in STEPS:
        if step in params:
            steps[step] = params.pop(step)
    clf = zoo.build(seed)
    try:
        clf.set_params(**params)
    except ValueError:
        valid = ", ".join(sorted(clf.get_params(deep=False)))
        raise InvalidValue(
            f"{name} has no parameter among {', '.join(params)}: it takes {', '.join(STEPS)} and {valid}"
        ) from None
    try:
        if hasattr(clf, "check_params"):  # featurebank's own estimators (the ensemble, the tuned probe)
            clf.check_params()
        elif hasattr(clf, "_parameter_constraints"):  # scikit-learn's, checked as its fit would
            clf._validate_params()
    except InvalidParameterError as exc:
        raise InvalidValue(f"classifier {text!r}: {str(exc).splitlines()[0]}") from None
    pca = steps.get("pca")
    if pca is True:
        pca = 256
    return Pipeline(
        [
            ("l2", Normalizer() if steps.get("l2") else "passthrough"),
            ("scale", ShrunkScaler() if steps.get("scale") else "passthrough"),
            ("pca", ReducedPCA(int(pca), random_state=seed) if pca else "passthrough"),
            ("clf", clf),
        ]
    )


def search_grid(spec: str, n_train: int | None = None) -> dict:
    """The nested-search grid of a classifier, as Pipeline parameters (``clf__C``), without the ones the spec
    fixes; with ``n_train`` (the fewest rows a candidate is fit on), without neighbour counts above it."""
    name, params = parse_spec(spec)
    grid = {f"clf__{k}": list(v) for k, v in get_spec(name).grid.items() if k not in params}
    if n_train is not None and "clf__n_neighbors" in grid:
        grid["clf__n_neighbors"] = [k for k in grid["clf__n_neighbors"] if k <= n_train] or [1]
    return grid


def describe(spec) -> str:
    """``scale → pca(256) → SVC(C=10)``: what a spec (or a zoo Pipeline, fitted or not) is, for reports."""
    pipe = make_classifier(spec) if isinstance(spec, str) else spec
    parts = []
    for name, step in pipe.steps:
        if step == "passthrough":
            continue
        if hasattr(step, "describe"):  # an ensemble says what its members are
            parts.append(step.describe())
        elif name == "pca":
            parts.append(f"pca({step.n_components})")
        elif name in ("l2", "scale"):
            parts.append(name)
        else:
            base = type(step)()
            changed = {
                k: v
                for k, v in step.get_params(deep=False).items()
                if k != "random_state" and repr(v) != repr(base.get_params(deep=False).get(k))
            }
            parts.append(f"{type(step).__name__}({', '.join(f'{k}={v!r}' for k, v in changed.items())})")
    return " → ".join(parts)


register_classifier(
    ClassifierSpec(
        "logreg",
        "multinomial logistic regression on standardized features (the linear probe); C chosen on 3 inner "
        "folds (one from 6,000 rows) over 1e-4 … 10 by log-loss, warm-started along the path (C=… fixes it)",
        lambda seed: TunedLogisticRegression(random_state=seed),
        steps={"scale": True},
        grid={"C": [0.001, 0.01, 0.1, 1.0, 10.0]},
        probabilities=True,
        cost=cost.logreg,
        memory=cost.logreg_memory,
        memory_by_index=cost.logreg_by_index_memory,
    )
)
register_classifier(
    ClassifierSpec(
        "linear-svm",
        "linear support vector machine (one-vs-rest) on standardized features",
        lambda seed: LinearSVC(C=0.001, max_iter=5000, random_state=seed),
        steps={"scale": True},
        grid={"C": [0.0001, 0.001, 0.01, 0.1, 1.0]},
        cost=cost.linear_svm,
        memory=cost.linear_svm_memory,
        threads=False,
    )
)
register_classifier(
    ClassifierSpec(
        "rbf-svm",
        "RBF-kernel SVM on L2-normalized features reduced to 256 dimensions by PCA (unit-norm rows "
        "give gamma a fixed scale)",
        lambda seed: SVC(C=10.0, kernel="rbf", gamma="scale", random_state=seed),
        steps={"l2": True, "pca": 256},
        grid={"C": [1.0, 10.0, 100.0], "gamma": ["scale", 0.5, 2.0, 8.0]},
        cost=cost.rbf_svm,
        memory=cost.rbf_svm_memory,
        threads=False,
    )
)
register_classifier(
    ClassifierSpec(
        "rbf-svm~nystroem",
        "APPROXIMATE stand-in for rbf-svm where the exact kernel would not fit the budget (rows²): the same "
        "l2 → pca(256), an RBF kernel (gamma as SVC's 'scale') through a Nystroem map on 1000 rows, then a ridge "
        "classifier on the mapped rows with alpha chosen by leave-one-out (alpha=… fixes it)",
        lambda seed: NystroemRidge(random_state=seed),
        steps={"l2": True, "pca": 256},
        grid={"gamma": ["scale", 0.5, 2.0, 8.0]},
        cost=cost.nystroem,
        memory=cost.nystroem_memory,
        stands_in_for="rbf-svm",
    )
)
register_classifier(
    ClassifierSpec(
        "knn",
        "k-nearest neighbours by cosine similarity, closer neighbours weigh more",
        lambda seed: CosineKNeighbors(n_neighbors=10, weights="distance"),
        grid={"n_neighbors": [1, 3, 5, 10, 20, 50]},
        probabilities=True,
        cost=cost.brute_neighbours,
        memory=cost.neighbours_memory,
    )
)
register_classifier(
    ClassifierSpec(
        "ridge",
        "ridge regression on one-hot targets (fast, often as good as logistic regression); alpha chosen over "
        "0.1 … 1e6 by exact leave-one-out on the training rows (RidgeClassifierCV's, in blocks; alpha=… fixes it)",
        lambda seed: TunedRidge(),
        steps={"scale": True},
        grid={},
        cost=cost.ridge,
        memory=cost.ridge_memory,
    )
)
register_classifier(
    ClassifierSpec(
        "lda",
        "linear discriminant analysis with Ledoit-Wolf shrinkage",
        lambda seed: FewShotLDA(solver="lsqr", shrinkage="auto"),
        steps={"scale": True},
        grid={},
        probabilities=True,
        cost=cost.lda,
        memory=cost.lda_memory,
    )
)
register_classifier(
    ClassifierSpec(
        "random-forest",
        "random forest of 300 trees (no scaling needed); extra-trees stands for it in cv's default run: as accurate "
        "on these vectors for less than half of its time",
        lambda seed: RandomForestClassifier(n_estimators=300, random_state=seed),
        grid={"max_features": ["sqrt", 0.05, 0.2]},
        probabilities=True,
        cost=cost.forest,
        memory=cost.forest_memory,
        threads=False,
        default=False,
    )
)
register_classifier(
    ClassifierSpec(
        "extra-trees",
        "extremely randomized trees, 300 (no scaling needed): the default run's tree ensemble",
        lambda seed: ExtraTreesClassifier(n_estimators=300, random_state=seed),
        grid={"max_features": ["sqrt", 0.05, 0.2]},
        probabilities=True,
        cost=cost.extra_trees,
        memory=cost.extra_trees_memory,
        threads=False,
    )
)
