"""The best row of a cross-validation run, by name: ``featurebank train CACHE --from RUN_DIR`` trains it, and
``featurebank finetune --compare RUN_DIR`` compares fine-tuning with it. The row is read from the run folder's
report.json (cv --out): its classifier spec, its layer, whether cv searched its hyperparameters, whether the cache's
unlabeled rows joined it (``logreg +unlabeled``: ``train`` then takes them the same way), and the embedding settings
of its cache, which the features it is fit on must have been made with."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, replace

from classifiers.report.html import is_cv_report, read_run
from embedder.cache.hdf5 import CacheReader
from embedder.kernel.errors import FeaturebankError, FileProblem, IncompatibleSettings, InvalidValue, Note
from embedder.options import with_overrides

from .data import open_cache
from .options import TrainOptions
from .registry import check_spec
from .semi import DEFAULT_MODE, WITH_UNLABELED, NothingUnlabeled

COMPARED = ("backbone", "weights", "pooling", "precision", "preprocessing")  # what a row's vectors depend on


@dataclass(frozen=True)
class BestRow:
    """Rank 1 of a cv run's leaderboard."""

    run: str  # the run folder
    classifier: str  # its zoo spec
    layer: str
    search: bool  # cv chose its hyperparameters by nested search
    cache: str  # the cache cv read it from
    settings: dict  # that cache's extraction settings
    unlabeled: str | None = None  # the row fit the cache's unlabeled rows too ("logreg +unlabeled"): how (semi.MODES)
    source: str | None = None  # the input that cache mirrors (its images)
    unlabeled_rule: str = "inner-folds"  # with unlabeled: when they joined a fold (semi.RULES), as train does then
    labels: dict | None = None  # the --labels CSV the run laid over the cache's labels ({"csv", "sha256"}), if any

    def text(self) -> str:
        return f"{self.classifier}{WITH_UNLABELED if self.unlabeled else ''} on {self.layer}" + (
            " (searched)" if self.search else ""
        )


def best_row(run_dir: str) -> BestRow:
    """The best row of ``run_dir``'s cv report, checked; a folder that is no cv run is one line."""
    d = read_run(run_dir)
    if not is_cv_report(d):
        raise FileProblem(
            f"{run_dir} is not a cross-validation run folder (its report.json is not cv's): give a folder written "
            f"by featurebank cv --out"
        )
    best, caches, cv = d.get("best"), d.get("caches"), d.get("cv")
    try:
        assert isinstance(best, dict) and isinstance(caches, list) and isinstance(cv, dict)
        classifier, layer, name = (str(best[k]) for k in ("classifier", "layer", "backbone"))
        source = next(c for c in caches if isinstance(c, dict) and c.get("backbone") == name)
        settings, cache, images = source["settings"], str(source["cache"]), source.get("source")
        assert isinstance(settings, dict)
    except (AssertionError, KeyError, StopIteration, TypeError):
        raise FileProblem(
            f"{run_dir}/report.json lacks its best row (best, caches, cv): write it again with featurebank cv --out"
        ) from None
    unlabeled, rule = None, "inner-folds"
    if classifier.endswith(WITH_UNLABELED):  # the row with the unlabeled rows joining: train does the same
        classifier = classifier.removesuffix(WITH_UNLABELED)
        said = d.get("unlabeled")
        if said is not None and not isinstance(said, dict):
            raise FileProblem(
                f"{run_dir}/report.json's 'unlabeled' is not what cv writes (an object with the mode): write it "
                f"again with featurebank cv --out"
            )
        unlabeled = str((said or {}).get("mode") or DEFAULT_MODE)
        rule = "always" if (said or {}).get("rule") == "always" else "inner-folds"  # reports before it: the rule
    try:
        check_spec(classifier)
    except (FeaturebankError, ValueError) as exc:
        raise InvalidValue(f"{run_dir}: its best row's classifier {classifier!r} is not a zoo spec ({exc})") from None
    labels = d.get("labels") if isinstance(d.get("labels"), dict) else None
    return BestRow(run_dir, classifier, layer, bool(cv.get("search")), cache, settings, unlabeled, images, rule, labels)


def differences(row: BestRow, settings: dict) -> list[str]:
    """How the embedding ``settings`` differ from those the row was cross-validated on (the layers aside)."""
    return [
        f"{k}: {row.settings.get(k)!r} in the cv run, {settings.get(k)!r} here"
        for k in COMPARED
        if row.settings.get(k) != settings.get(k)
    ]


def matched(row: BestRow, reader: CacheReader) -> None:
    """Refuse, in one line, a cache whose vectors are not the row's: other embedding settings, or no such layer."""
    diff = differences(row, reader.settings)
    if diff:
        raise IncompatibleSettings(
            f"--from {row.run}: its best row ({row.text()}) was cross-validated on {row.cache}, made with other "
            f"settings than {reader.path} ({'; '.join(diff)}): give a cache made like it, or -c and -l"
        )
    if row.layer not in reader.layers:
        raise InvalidValue(
            f"--from {row.run}: its best row is on layer {row.layer}, which {reader.path} does not hold "
            f"({', '.join(reader.layers)}): extract that layer, or give -c and -l"
        )


def _run_labels(row: BestRow) -> str:
    """The labels CSV ``row``'s run laid over its cache, for a cache without labels of its own: used when it is
    still there with the bytes the run read (said in a note), else one line that asks for --labels."""
    from embedder.kernel.store import sha256_of

    csv, digest = str(row.labels.get("csv") or ""), row.labels.get("sha256")  # type: ignore[union-attr]
    if not csv or not os.path.isfile(csv):
        raise InvalidValue(
            f"--from {row.run}: the run's labels came from {csv or 'a CSV'}, which is not there now: give --labels"
        )
    if digest and sha256_of(csv) != digest:
        raise InvalidValue(
            f"--from {row.run}: {csv} has changed since the run read it (sha256 {str(digest)[:12]}…): give --labels "
            f"{csv} to train on it as it is now (the run chose on the labels as they were)"
        )
    warnings.warn(f"--from {row.run}: labels from {csv}, as the run laid them over the cache", Note, stacklevel=3)
    return csv


def train_best(cache, run_dir: str, options: TrainOptions | None = None, **overrides):
    """``bundle.train`` on ``cache`` with the classifier and layer of ``run_dir``'s best row (searched when cv
    searched it, or when ``search`` is asked), the rest as ``options`` and ``overrides`` say. Returns the bundle
    and the row."""
    from .bundle import train

    o = with_overrides(TrainOptions, options, overrides)
    row = best_row(run_dir)
    reader = open_cache(cache)
    matched(row, reader)
    if row.source is not None and row.source != reader.attrs.get("source"):  # a choice made on other images
        warnings.warn(
            f"--from {row.run}: its best row was chosen on {row.cache} ({row.source}), not on these images "
            f"({reader.attrs.get('source')}): cv them to choose on them",
            Note,
            stacklevel=2,
        )
    chosen = replace(o, classifier=row.classifier, layer=row.layer, search=o.search or row.search)
    if o.labels is None and reader.labels is None and row.labels:  # the run's labels, when they are the same still
        chosen = replace(chosen, labels=_run_labels(row))
    if row.unlabeled:  # the best row fit the unlabeled rows too (with its switch-off rule): so does train
        chosen = replace(chosen, unlabeled=True, unlabeled_mode=row.unlabeled, unlabeled_rule=row.unlabeled_rule)
    try:
        return train(reader, chosen), row
    except NothingUnlabeled:  # not "for --unlabeled", which the user did not give
        if row.unlabeled and not o.unlabeled:
            raise InvalidValue(
                f"--from {row.run}: its best row, {row.text()}, fit the unlabeled rows of {row.cache} too, and "
                f"{reader.path} has none: train on that cache, or cv this one to choose on it"
            ) from None
        raise


def fit_row(row: BestRow, X, y, seed: int = 0, inner_folds: int = 3):
    """The row's classifier fit on ``X, y`` (its hyperparameters searched on inner folds of these rows when cv
    searched them), as ``train`` fits it: what ``finetune --compare`` scores beside the fine-tuned network."""
    from sklearn.model_selection import GridSearchCV

    from .crossval import RANK_BY
    from .folds import inner_fold_count, inner_splitter
    from .zoo import make_classifier, search_grid

    pipeline = make_classifier(row.classifier, seed=seed)
    if row.search:
        folds = inner_fold_count(y, inner_folds)
        grid = search_grid(row.classifier, len(y) * (folds - 1) // folds)
        if grid:
            search = GridSearchCV(pipeline, grid, cv=inner_splitter(folds, seed, False), scoring=RANK_BY)
            return search.fit(X, y).best_estimator_
    return pipeline.fit(X, y)
