"""``cv``'s and ``train``'s options as values: each field says once its default, its help and how a command-line value
is read (``embedder.options.option``); ``cross_validate(cache, options, **overrides)`` and ``train`` take one, and
its fields by name as overrides. Light to import: the command line builds them before anything heavy."""

from __future__ import annotations

from dataclasses import dataclass

from embedder.options import option, same_as

# The unlabeled rows' switch-off rule and self-training (classifiers.semi), read by cv's budget too (budget.semi_estimate)
SEMI_ROUNDS = 2  # of self-training: the last round's rows are fit on by ``fit``
SEMI_INNER_FOLDS = 3
SEMI_INNER_REPEATS = 2
SUSPICIOUS = 20  # images the cv report lists as suspicious (cv --suspicious), and outliers
TOP = 3  # classes listed per image by predict (predict --top)
# --labels given twice: refused with this (click would keep the last CSV and drop the first one's labels, silently)
LABELS_ONCE = "it takes one CSV: keep every label in it (add the reviewed rows' path,label to it)"


@dataclass(frozen=True, kw_only=True)
class CVOptions:
    """``cv``'s options: ``classifiers.crossval.cross_validate(caches, options, **overrides)``."""

    classifiers: tuple[str, ...] | None = option(
        None,
        "Zoo spec(s), repeated or comma-separated (featurebank classifiers). [default: all]",
        short="-c",
        flag="--classifier",
        multiple=True,
        check="classifiers.zoo:split_specs",
    )
    layers: tuple[str, ...] | None = option(
        None,
        "Layer(s) of the cache, repeated or comma-separated; a+b is both side by side. [default: all of the cache's]",
        short="-l",
        flag="--layer",
        multiple=True,
        check="embedder.kernel.settings:split_layers",
    )
    folds: int = option(5, low=2)
    repeats: int = option(1, "Repeat the k folds with other shuffles.", low=1)
    seed: int = option(0, "Seed of the folds and of random classifiers.")
    groups: bool | None = option(
        None,
        "Keep each group's images in one fold; an image without a group is a group "
        "of its own (default: when the cache has groups).",
        flag="--groups/--no-groups",
    )
    search: bool = option(False, "Tune C, gamma, k... by inner cross-validation in each fold (nested).")
    inner_folds: int = option(3, "Folds of --search.", low=2)
    n_jobs: int | None = option(
        None,
        "Folds fitted side by side, the cores shared out among them (default: as many as the cores and the folds, "
        "fewer where the memory bound needs; 1: one at a time, BLAS on every core; -1: every core, -2: every core but one).",
        short="-j",
    )
    # seconds of estimated work: every (cache, layer, classifier, fold) and the report's extras; 12 minutes of
    # estimates leave room for reading the layer, imports and writing the report within about 15
    budget: str = option(
        "12m",
        "Without -c: run the entries whose estimated time (cost model, calibrated on this machine at the start) "
        "fits in this after the report's own neighbour search and map, in the zoo's order, approximate stand-ins "
        "(rbf-svm~nystroem) for exact ones that do not; says in one line what it left out. 90s, 15m, 2h, none "
        "(a bare number is minutes). "
        "With -c: a warning only.",
        check="classifiers.cost:check_budget",
        metavar="DURATION",
    )
    scheduler: str | None = option(
        None,
        "Run every fit on this Dask scheduler (tcp://host:8786) through joblib's "
        'Dask backend; needs pip install -e ".[dask]". Same report as a local run.',
        metavar="ADDRESS",
    )

    labels: str | None = option(
        None,
        "A path,label CSV laid over the cache's own labels (paths as the cache names them, or the files' own paths; an empty label leaves "
        "an image unlabeled).",
        path={"exists": True, "dir_okay": False},
        metavar="LABELLED.csv",
        once=LABELS_ONCE,
    )
    unlabeled: bool = option(
        False,
        "Score each classifier again with the cache's unlabeled rows joining every training fold (pseudo-labels, "
        "used in a fold unless inner folds of its labelled rows show that they hurt), side by side, on the "
        "same labelled held-out rows.",
    )
    # spread: the better of the two in benchmarks/semi_supervised.py (flowers; hymenoptera to check)
    unlabeled_mode: str = option(
        "spread",
        "How unlabeled rows get labels: label spreading on the kNN graph, or self-training.",
        choices=("spread", "self-train"),
    )
    unlabeled_rule: str = option(
        "inner-folds",
        "When the unlabeled rows join: unless inner folds of the labelled rows show that they hurt (a tie uses "
        "them), or always (when you have seen they help, or the inner folds are too few to tell).",
        choices=("inner-folds", "always"),
    )
    shots: str | None = option(
        None,
        "A learning curve: k labelled images per class drawn from each training fold, e.g. 1,2,5,10,all "
        "(all: the full run), scored on the held-out fold rows; report.json learning_curve.",
        check="classifiers.shots:parse_shots",
        metavar="K,K,...",
    )
    draws: int = option(5, "Seeded draws per number of --shots.", low=1)


@dataclass(frozen=True, kw_only=True)
class TrainOptions:
    """``train``'s options: ``classifiers.bundle.train(cache, options, **overrides)``."""

    classifier: str = option(
        "logreg", "A zoo spec (featurebank classifiers).", short="-c", check="classifiers.zoo:check_spec"
    )
    layer: str | None = option(None, "Layer of the cache. [default: its first]", short="-l")
    out: str | None = option(
        None,
        "Model file to write (.fbmodel: JSON and skops, loading it runs no code).",
        short="-o",
        path={"dir_okay": False},
        required=True,
    )
    search: bool = option(
        False, "Choose the hyperparameters by cross-validation first (StratifiedGroupKFold when the cache has groups)."
    )
    groups: bool | None = option(
        None,
        "With --search: keep each group's images in one inner fold (default: when the cache has groups).",
        flag="--groups/--no-groups",
    )
    seed: int = option(0)
    labels: str | None = option(
        None,
        "A path,label CSV laid over the cache's own labels (its sha256 goes in the model file).",
        path={"exists": True, "dir_okay": False},
        metavar="LABELLED.csv",
        once=LABELS_ONCE,
    )
    unlabeled: bool = option(
        False,
        "The cache's unlabeled rows join with pseudo-labels unless inner folds of the labelled rows show that they "
        "hurt (a tie uses them; the model file says what was decided).",
    )
    unlabeled_mode: str = same_as(CVOptions, "unlabeled_mode")
    unlabeled_rule: str = same_as(CVOptions, "unlabeled_rule")
    inner_folds: int = same_as(CVOptions, "inner_folds", cli=False)
    calibrate: bool = option(
        True,
        "Calibrate the probabilities: a temperature that follows each row's margin, fit by log-loss on out-of-fold "
        "scores of 5 inner folds of the training rows (5 more fits; predictions unchanged). --no-calibrate: the "
        "entry's own probabilities, or a "
        "softmax of its decision scores, uncalibrated.",
        flag="--calibrate/--no-calibrate",
    )
