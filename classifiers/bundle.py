"""A trained model as one file, and everything that uses one: train, evaluate, predict.

A bundle holds the fitted Pipeline, the class names, the layer, the exact embedding settings of the cache it
was trained on (backbone, weights identity, pooling, preprocessing, precision) and the library versions.
New images are embedded with those settings and nothing else, so a prediction sees the same kind of vector
the model was trained on. On disk a bundle is a model file that cannot run code (``classifiers.modelfile``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np
from sklearn.model_selection import GridSearchCV

from embedder.cache.hdf5 import CacheReader
from embedder.inputs.sources import Listing, list_inputs
from embedder.job import extract
from embedder.kernel.destination import refuse_overwrite
from embedder.kernel.errors import IncompatibleSettings, InvalidValue, MissingFile, UnknownBackbone
from embedder.kernel.settings import ExtractionSettings
from embedder.kernel.store import engine_dir_for, sha256_of, weights_digest
from embedder.kernel.versions import library_versions
from embedder.options import ExtractOptions, RunOptions, with_overrides

from .calibration import PROBABILITY, apply_calibration, calibrate, raw_scores, uncalibrated
from .crossval import RANK_BY
from .data import finite, labeled, open_cache
from .familiarity import UNFAMILIAR, Familiarity, floor_note, reference_rows, summary
from .folds import fallbacks, fit_grouped, inner_fold_count, inner_splitter, too_few_for_inner_folds
from .labels import labels_of
from .metrics import answers, chance_ece, confusion, ece, per_class, reliability, scores, wilson
from .modelfile import (
    FORMAT,
    VERSION,
    fingerprints,
    fingerprints_of,
    input_dimensions,
    model_destination,
    read_model_file,
    write_model,
)
from .options import TOP, TrainOptions
from .predictions import write_predictions
from .semi import MODES, UNLABELED, SemiSupervised, nothing_unlabeled, switch_of
from .zoo import describe, make_classifier, search_grid


@dataclass
class Bundle:
    pipeline: Any  # a fitted sklearn Pipeline; predicts class indices into ``classes``
    classes: list[str]
    classifier: str
    layer: str
    settings: dict  # the cache's embedding settings, ``layers`` being [layer]
    weights_file: str | None = None
    trained_on: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    seen: np.ndarray | None = field(default=None, repr=False, compare=False)  # modelfile.fingerprints of its images
    reference: np.ndarray | None = field(default=None, repr=False, compare=False)  # familiarity.reference_rows

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, **{k: getattr(self, k) for k in ("pipeline",) + META_FIELDS}}

    def describe(self) -> dict:
        return {k: v for k, v in self.to_dict().items() if k != "pipeline"} | {"pipeline": describe(self.pipeline)}

    @property
    def calibration(self) -> dict | None:
        """How ``train`` calibrated the probabilities (``classifiers.calibration``); None in a model file written
        before calibration."""
        return self.trained_on.get("calibration")

    def scores(self, X: np.ndarray) -> tuple[np.ndarray, str]:
        """Per row and class: the calibrated probabilities (``probability``). A model file written before
        calibration: the classifier's own probabilities, or its decision scores (``decision``) when it has none."""
        return self.calibrated(*raw_scores(self.pipeline, X))

    def calibrated(self, values: np.ndarray, kind: str) -> tuple[np.ndarray, str]:
        """``scores`` from the classifier's own output (``calibration.raw_scores``)."""
        cal = self.calibration
        if cal is None or cal["input"] is None:
            return values, kind
        return apply_calibration(values, cal["input"], cal), PROBABILITY

    @cached_property
    def familiarity(self) -> Familiarity | None:
        """How far new rows lie from its training images (``classifiers.familiarity``); None in a model file
        written before it kept training rows."""
        return None if self.reference is None else Familiarity(self.reference)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The class of each row's highest score, as ``evaluate``, ``featurebank predict`` and the ONNX file answer:
        its index into ``classes`` (the pipeline is fit on indices)."""
        return answers(self.pipeline, X)

    def checked(self, X: np.ndarray, where: str) -> np.ndarray:
        """``X`` when it has the features the classifier takes; else one line, before the classifier sees a row."""
        takes = input_dimensions(self.pipeline)
        if takes is not None and X.ndim == 2 and X.shape[1] != takes:
            raise IncompatibleSettings(
                f"{where}'s {self.layer} has {X.shape[1]} dimensions; the model's classifier takes {takes}: "
                f"the model file's layer is not the one it was trained on"
            )
        return X


UNSEEN = 2000  # unlabeled rows the calibration is checked on (calibration.scale_mismatch), at most


META_FIELDS = ("classes", "classifier", "layer", "settings", "weights_file", "trained_on", "versions")


def save_bundle(bundle: Bundle, path: str) -> str:
    """Write the bundle as a model file (``classifiers.modelfile``: JSON and skops, nothing that runs code)."""
    return write_model(
        path, {k: getattr(bundle, k) for k in META_FIELDS}, bundle.pipeline, bundle.seen, bundle.reference
    )


def load_bundle(path: str, *, trust_pickle: bool = False) -> Bundle:
    """Read a model file; anything else (a pickle unless ``trust_pickle``, a damaged or crafted file, a missing
    key) is a one-line error, and nothing in it was run."""
    meta, pipeline, seen, reference = read_model_file(os.fspath(path), trust_pickle=trust_pickle)
    return Bundle(pipeline=pipeline, **{k: meta[k] for k in META_FIELDS}, seen=seen, reference=reference)


def _bundle(model, trust_pickle: bool) -> Bundle:
    return model if isinstance(model, Bundle) else load_bundle(model, trust_pickle=trust_pickle)


def train(cache, options: TrainOptions | None = None, **overrides) -> Bundle:
    """Fit ``classifier`` on every labelled row of ``cache`` with ``options`` (a ``TrainOptions``, default
    ``TrainOptions()``; ``overrides``: its fields by name, ``classifier="knn", out="m.fbmodel"``) and save the
    bundle to ``out`` when given. ``search``: hyperparameters by cross-validation first, group-aware when the cache
    has groups and ``groups`` is not False. ``labels``: a ``path,label`` CSV over the cache's own labels (its
    sha256 is recorded). ``unlabeled``: the cache's unlabeled rows join with pseudo-labels where the switch-off
    rule finds that they help (``semi.SemiSupervised`` in ``unlabeled_mode``); the model file keeps the classifier
    as fit, and what was decided."""
    o = with_overrides(TrainOptions, options, overrides)
    classifier, layer, out, seed, search, inner_folds = o.classifier, o.layer, o.out, o.seed, o.search, o.inner_folds
    groups, labels, unlabeled, unlabeled_mode = o.groups, o.labels, o.unlabeled, o.unlabeled_mode
    reader = open_cache(cache)
    data = labeled(reader, labels_of(reader, labels) if labels else None, labels)
    layer = reader.layer(layer)
    make_classifier(classifier, seed=seed)  # a bad spec is one line before anything is fit
    if out:
        model_destination(out, [reader.path])
    if len(data.classes) < 2:
        raise InvalidValue(f"only one class ({data.classes[0]}): a classifier needs at least two")
    if groups and data.groups is None:
        raise InvalidValue(f"{reader.path} has no groups: give a CSV manifest with a group column")
    if unlabeled and unlabeled_mode not in MODES:
        raise InvalidValue(f"unknown way to use unlabeled rows {unlabeled_mode!r}: choose {' or '.join(MODES)}")
    switch = switch_of(o.unlabeled_rule, unlabeled)
    if unlabeled and not data.unlabeled:
        raise nothing_unlabeled(reader.path)
    pipeline = make_classifier(classifier, seed=seed)
    X = data.features(layer)
    reference = reference_rows(X, seed)  # before any fit: the probe may reorder its rows in place
    found = None
    group_ids = data.groups if groups is not False else None
    notes = []
    why = too_few_for_inner_folds(data.y, group_ids) if search else None
    if why:
        search = False
        notes.append(f"--search: not run, the spec's own values are used ({why})")
    folds, splitter = search_folds(data, inner_folds, groups, seed) if search else (0, None)
    grid = search_grid(classifier, len(data.y) * (folds - 1) // folds) if search else {}
    semi_info = None
    if unlabeled:
        if grid:
            pipeline = GridSearchCV(pipeline, grid, cv=splitter, scoring=RANK_BY)
        semi = SemiSupervised(pipeline, mode=unlabeled_mode, switch=switch, random_state=seed)
        free = data.free_features(layer)
        y_all = np.concatenate([data.y, np.full(len(free), UNLABELED, dtype=data.y.dtype)])
        g_all = None if group_ids is None else np.concatenate([group_ids, np.full(len(free), "", dtype=object)])
        fit_grouped(semi, np.vstack([X, free]), y_all, g_all)
        del free
        pipeline = semi.model_
        semi_info = {
            "rows": int(len(y_all) - len(data.y)),
            "mode": unlabeled_mode,
            "rule": o.unlabeled_rule,
            "used": bool(semi.used_),
            "decision": semi.decision_,
            "inner": semi.inner_,
            "pseudo_labelled": int(semi.pseudo_),
        }
        if isinstance(pipeline, GridSearchCV):
            found = _found(pipeline, splitter, folds)
            pipeline = pipeline.best_estimator_
    elif grid:
        searched = fit_grouped(GridSearchCV(pipeline, grid, cv=splitter, scoring=RANK_BY), X, data.y, group_ids)
        pipeline = searched.best_estimator_
        found = _found(searched, splitter, folds)
    else:
        fit_grouped(pipeline, X, data.y, group_ids)
    notes += fallbacks(pipeline)
    if said := floor_note(reference):
        notes.append(said)
    unseen = data.free_features(layer, UNSEEN) if o.calibrate and not unlabeled and data.unlabeled else None
    calibration = _calibration(o, pipeline, X, data.y, group_ids, bool(unlabeled), unseen)
    if found and "cross_fitted" in calibration.get("out_of_fold", {}):  # its folds' rows chose the hyperparameters
        calibration["out_of_fold"]["cross_fitted"] += SEARCHED_TOO
    if calibration["method"] == "none" and o.calibrate:
        notes.append(calibration["note"])
    bundle = Bundle(
        pipeline,
        data.classes,
        classifier,
        layer,
        {**reader.settings, "layers": [layer]},
        reader.info.get("weights_file"),
        {
            "cache": reader.path,
            "source": reader.attrs["source"],
            "rows": len(data.y),
            "layers": list(reader.layers),
            "dimensions": {name: int(reader.dims[name]) for name in reader.layers},  # checked when the file is read
            "class_counts": data.counts,
            "params": pipeline.named_steps["clf"].get_params(deep=False),
            **({"chosen": chosen} if (chosen := _chosen(pipeline.named_steps["clf"])) else {}),
            **({"search": found} if found else {}),
            **({"labels": {"csv": labels, "sha256": sha256_of(labels)}} if labels else {}),
            **({"unlabeled": semi_info} if semi_info else {}),
            "calibration": calibration,
            **(
                {"familiarity": {"reference_rows": len(reference), "k": Familiarity(reference).k}}
                if reference is not None
                else {}
            ),
            **({"notes": notes} if notes else {}),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
        library_versions(),
        fingerprints(_fit_on(reader, data, semi_info)),
        reference,
    )
    if out:
        save_bundle(bundle, out)
    return bundle


CHOSEN = {"C": "on held-out training rows", "alpha": "by leave-one-out on the training rows"}


def _chosen(clf) -> dict:
    """What a tuned classifier chose when it was fit (the probe's ``C_``, the ridges' ``alpha_``), where its own
    parameter left the choice to it: not ``logreg:C=…``, which fixes it, nor the probe's fixed fallback where inner
    folds could not be made (its note says so). ``by``: the probe's inner scoring."""
    if getattr(clf, "fallback_", None):
        return {}
    out: dict = {}
    for name in CHOSEN:
        value = getattr(clf, f"{name}_", None)
        if isinstance(value, (int, float, np.floating)) and clf.get_params(deep=False).get(name, 0) is None:
            out[name] = float(value)
    if "C" in out and isinstance(getattr(clf, "scoring", None), str):
        out["by"] = str(clf.scoring).replace("_", "-")
    return out


def _fit_on(reader: CacheReader, data, semi_info: dict | None) -> list[str]:
    """The content digests of the images the model was fit on: its labelled rows, and the unlabeled ones when they
    joined with pseudo-labels (``evaluate`` leaves them all out of a held-out score)."""
    digests = np.asarray(reader.rows["digest"], dtype=object)
    rows = [data.rows] + ([data.free] if semi_info and semi_info["used"] and data.free is not None else [])
    return [str(d) for d in digests[np.concatenate(rows)]]


def _calibration(o: TrainOptions, pipeline, X, y, groups, unlabeled: bool, unseen) -> dict:
    """The calibration of the fitted ``pipeline`` (``calibration.calibrate``: clones fit on inner folds of the
    labelled rows; ``unseen``: some of the cache's unlabeled rows, to check that it carries over), or why there
    is none."""
    kind = PROBABILITY if hasattr(pipeline, "predict_proba") else "decision"
    if not o.calibrate:
        return uncalibrated(kind, "asked for: --no-calibrate, calibrate=False")
    found = calibrate(pipeline, X, y, groups, seed=o.seed, unseen=None if unlabeled else unseen)
    if unlabeled and found["method"] != "none":
        found["note"] = "; ".join(
            filter(
                None,
                [
                    found.get("note"),
                    "fit on inner folds of the labelled rows alone, without the pseudo-labelled ones, so its figures are of a model fit without them",
                ],
            )
        )
    return found


SEARCHED_TOO = "; --search chose the hyperparameters on all of these rows, so the figures are optimistic"


def _found(searched, splitter, folds: int) -> dict:
    """What ``train --search`` chose, for the model file."""
    return {
        "splitter": type(splitter).__name__,
        "folds": folds,
        "scoring": RANK_BY,
        "best_params": searched.best_params_,
        "best_score": round(float(searched.best_score_), 4),
        "measured_on": "the inner folds that chose best_params (optimistic)",
    }


def search_folds(data, inner_folds: int, groups: bool | None, seed: int) -> tuple[int, object]:
    """How many folds ``train --search`` can have, and its splitter: ``StratifiedGroupKFold`` when the cache has
    groups (a row without one is its own group), so that near-copies of one patient or camera never sit on both
    sides of a fold; else ``StratifiedKFold``. Both shuffled with ``seed``."""
    group_ids = None if data.groups is None or groups is False else data.groups
    folds = inner_fold_count(data.y, inner_folds, group_ids)
    return folds, inner_splitter(folds, seed, group_ids is not None)


def settings_differ(cache_settings: dict, bundle: Bundle) -> list[str]:
    """What makes a cache's vectors unlike the ones the model was trained on (empty: compatible): every setting
    but the list of layers, which only has to include the model's."""
    cache, model = ExtractionSettings.from_dict(cache_settings), ExtractionSettings.from_dict(bundle.settings)
    a, b = cache.without_layers().to_dict(), model.without_layers().to_dict()
    differ = [f"{k}: cache {a.get(k)!r}, model {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if bundle.layer not in cache.layers:
        differ.append(f"layer {bundle.layer} missing")
    elif model.int8 is not None and list(cache.layers) != int8_layers(bundle):
        # an int8 graph is quantized as a whole: its vectors of one layer depend on which others it returns
        differ.append(f"layers: cache {list(cache.layers)}, int8 model trained on {int8_layers(bundle)}")
    return differ


def int8_layers(bundle: Bundle) -> list[str]:
    return list(bundle.trained_on.get("layers") or [bundle.layer])


def check_cache(reader: CacheReader, bundle: Bundle, option: bool = False) -> None:
    """A cache whose vectors are not the model's is one line: given as the data (``MODEL CACHE.h5``), or as
    ``--cache`` for images to embed into (``option``)."""
    differ = settings_differ(reader.settings, bundle)
    if differ:
        advice = (
            "give another --cache, or none: the images are then embedded with the model's settings"
            if option
            else "give the images instead and they are embedded with the model's settings"
        )
        raise IncompatibleSettings(
            f"{reader.path} was not made with the model's embedding settings ({differ[0]}); {advice}"
        )


def extract_options(bundle: Bundle, weights: str | None = None) -> ExtractOptions:
    """The ``ExtractOptions`` that reproduce the bundle's embedding settings. A local weights file is found where
    it was at training time, or at ``weights``; its sha256 must match."""
    s = bundle.settings
    identity = s["weights"]
    seed = ExtractOptions.seed
    if identity.startswith("sha256:"):
        path = weights or bundle.weights_file
        if weights and not os.path.lexists(weights):
            raise MissingFile(
                f"--weights {weights}: no such file (the model was trained on features of the weights file "
                f"{bundle.weights_file}, {identity[:19]}...)"
            )
        if not path or not os.path.lexists(path):
            raise MissingFile(
                f"the model was trained on features of the weights file {bundle.weights_file} "
                f"({identity[:19]}...), which is not there: pass --weights PATH to that file"
            )
        found = f"sha256:{weights_digest(path)}"
        if found != identity:
            raise IncompatibleSettings(
                f"{path} is not the weights file the model was trained with ({found[:19]}... is not {identity[:19]}...)"
            )
        weights = path
    elif identity.startswith("none:seed="):
        weights, seed = "none", int(identity.split("=", 1)[1])
    else:
        weights = identity
    settings = ExtractionSettings.from_dict(s)
    prep = settings.preprocessing
    options = ExtractOptions(
        backbone=settings.backbone,
        weights=weights,
        seed=seed,
        layers=(bundle.layer,),
        pooling=settings.pooling,
        resize=prep.resize,
        crop=prep.crop,
        draft=prep.draft,
        precision=settings.precision,
        tta=settings.tta,
    )
    if settings.int8 is not None:  # that exact int8 engine (all its layers), from the training cache's folder
        cache = bundle.trained_on.get("cache")
        options = replace(
            options,
            int8=settings.int8,
            layers=tuple(int8_layers(bundle)),
            engine_dir=engine_dir_for(cache) if cache else None,
        )
    return options


def embedded(
    bundle: Bundle, inputs, run: RunOptions, *, out: str | None = None, progress: bool = False
) -> tuple[CacheReader, list, int]:
    """The images of ``inputs`` embedded with the bundle's settings (into ``run.cache``, reused and brought up to
    date), run as ``run`` says: the cache reader, the listing's items in input order, and how many images were
    embedded now. ``out``: a file the caller will write, refused before any work when it is one of the images."""
    listing = _listing(inputs, run.layout, out)
    options = replace(extract_options(bundle, run.weights), **run.extract_overrides())
    if run.cache and os.path.exists(run.cache):
        existing = CacheReader(run.cache)
        check_cache(existing, bundle, option=True)
        options = replace(options, layers=tuple(existing.layers))  # keep the cache's other layers: its settings
    try:
        summary = extract(listing, run.cache, options, progress=progress)
    except UnknownBackbone as exc:  # not the user's option: the model's
        raise exc.of_model() from None
    reader = CacheReader(summary.cache)
    check_cache(reader, bundle)
    return reader, listing.items, summary.embedded


def _listing(inputs, layout: str, out: str | None):
    if isinstance(inputs, Listing):
        listing = inputs
    else:
        listing = list_inputs(inputs if isinstance(inputs, (list, tuple)) else [inputs], layout)
    if out:
        refuse_overwrite(out, [listing.full_path(i) for i in listing.items], "the output")
    return listing


def prediction_outcome(result: dict) -> tuple[str | None, bool]:
    """What ``predict`` says about images it could not classify, and whether that was every one of them (a
    failed run: exit 1, not 0)."""
    rows = result["rows"]
    failed = [r for r in rows if "error" in r]
    if not failed:
        return None, False
    listed = "; ".join(f"{r['path']}: {r['error']}" for r in failed[:5])
    if len(failed) == len(rows):
        return f"none of the {len(rows)} images could be classified: {listed}", True
    return f"{len(failed)} of {len(rows)} images could not be classified: {listed}", False


def _cache_or_images(bundle: Bundle, data, run: RunOptions, progress: bool) -> CacheReader:
    if isinstance(data, CacheReader) or (
        isinstance(data, (str, os.PathLike)) and str(data).endswith(".h5") and os.path.isfile(data)
    ):
        reader = open_cache(data)
        check_cache(reader, bundle)
        return reader
    listing = _listing(data, run.layout, None)
    if not listing.labeled:  # said before a single image is embedded, not after all of them
        shown = os.fspath(data) if isinstance(data, (str, os.PathLike)) else "the images given"
        parent = (
            f" (give {os.path.dirname(os.path.abspath(shown))} if {os.path.basename(shown)} is one class of it)"
            if os.path.isdir(shown)
            else ""
        )
        raise InvalidValue(
            f"{shown} has no labels (a {listing.kind} input): evaluate needs labelled images, a folder of class "
            f"folders{parent} or a CSV manifest with a label column; to classify unlabeled images, use predict"
        )
    _known_classes(bundle, {i.label for i in listing.items if i.label})  # before any image is embedded
    reader, items, _ = embedded(bundle, listing, run, progress=progress)
    if not len(reader):  # else "has no labels", of a cache that holds no row
        reasons = dict(zip(reader.failures["path"], reader.failures["reason"]))
        listed = "; ".join(f"{i.path}: {i.error or reasons.get(i.path, 'not embedded')}" for i in items[:3])
        raise InvalidValue(f"none of the {len(items)} images could be read, nothing to score: {listed}")
    return reader


def _known_classes(bundle: Bundle, classes: set[str]) -> None:
    """Labels the model was not trained on: one line (evaluate scores only the classes it knows)."""
    unknown = sorted(classes - set(bundle.classes))
    if unknown:
        raise InvalidValue(
            f"classes the model was not trained on: {', '.join(unknown[:10])} (it knows {', '.join(bundle.classes)})"
        )


def evaluate(model, data, options: RunOptions | None = None, *, progress: bool = False, **overrides) -> dict:
    """Score a model on held-out labelled images (a folder, manifest, or a cache made with the model's settings),
    embedded as ``options`` (a ``RunOptions``) and ``overrides`` (its fields by name) say."""
    run = with_overrides(RunOptions, options, overrides)
    bundle = _bundle(model, run.trust_pickle)
    reader = _cache_or_images(bundle, data, run, progress)
    if reader.labels is None:  # not labeled()'s "give --labels", an option evaluate does not have
        raise InvalidValue(
            f"{reader.path} has no labels: evaluate scores labelled images; give them as a folder of class folders "
            f"or a CSV manifest with a label column (featurebank manifest writes one), or a cache extracted from "
            f"one; to classify unlabeled images, use predict"
        )
    test = labeled(reader)
    _known_classes(bundle, set(test.classes))
    index = {c: i for i, c in enumerate(bundle.classes)}
    y = np.array([index[test.classes[i]] for i in test.y], dtype=np.int64)
    seen, unchecked = _training_images(bundle, reader, test)
    keep = ~seen
    paths = np.asarray(test.paths)[keep]
    X = bundle.checked(test.features(bundle.layer), reader.path)[keep]
    y = y[keep]
    started = time.perf_counter()
    raw, raw_kind = raw_scores(bundle.pipeline, X)
    # the class of the highest score, as `predict` and an exported file answer (the RBF SVM's own predict counts
    # libsvm's one-vs-one votes, which differ where votes tie: 2 of flowers' 548 val/ images)
    pred = np.asarray(bundle.pipeline.classes_)[raw.argmax(axis=1)]
    values, kind = bundle.calibrated(raw, raw_kind)
    seconds = time.perf_counter() - started
    k = len(bundle.classes)
    probability = kind == PROBABILITY
    metrics: dict[str, Any] = dict(scores(y, pred, values if probability else None, k))
    metrics["ece"] = ece(y, values) if probability else None
    metrics["ece_chance"] = chance_ece(values) if probability else None  # a calibrated model's ECE on these rows
    right = int((pred == y).sum())
    metrics["right"], metrics["accuracy_interval"] = right, list(wilson(right, len(y)))
    familiar, p = None, None
    if bundle.familiarity is not None and len(y):
        p, d = bundle.familiarity.scored(X)
        low = p < UNFAMILIAR
        familiar = summary(p, bundle.familiarity, paths, distances=d) | {
            "right_unfamiliar": int((pred == y)[low].sum()),
            "accuracy_unfamiliar": float((pred == y)[low].mean()) if low.any() else None,
            "accuracy_familiar": float((pred == y)[~low].mean()) if (~low).any() else None,
        }
    return {
        "model": bundle.classifier,
        "layer": bundle.layer,
        "cache": reader.path,
        "source": reader.attrs["source"],
        "rows": int(len(y)),
        "classes": bundle.classes,
        "metrics": metrics,
        "calibration": {
            "method": (bundle.calibration or {}).get("method", "none (a model file written before calibration)"),
            "ece": "top-label expected calibration error of the model's probabilities on these rows, 15 "
            "equal-width bins; log_loss: of the same probabilities",
            "reliability": reliability(y, values) if probability else None,
        },
        "per_class": per_class(y, pred, bundle.classes),
        "confusion": confusion(y, pred, k).tolist(),
        "failed": [{"path": p, "reason": r} for p, r in zip(reader.failures["path"], reader.failures["reason"])],
        "training_images": {
            "checked": bundle.seen is not None and len(bundle.seen) > 0,
            "left_out": [str(p) for p in np.asarray(test.paths)[seen]],
            "unchecked_rows": unchecked,
            "note": "; ".join(
                [TRAINING_IMAGES_NOTE if bundle.seen is not None and len(bundle.seen) else UNCHECKED_NOTE]
                + ([f"{unchecked} {UNDIGESTED_NOTE}"] if unchecked and bundle.seen is not None else [])
            ),
        },
        "predictions": [
            {
                "path": str(path),
                "label": bundle.classes[t],
                "predicted": bundle.classes[q],
                **({"p": float(values[i, q]), "p_label": float(values[i, t])} if probability else {}),
                **({} if p is None else {"familiarity": float(p[i])}),
            }
            for i, (path, t, q) in enumerate(zip(paths, y, pred))
        ],
        "predict_seconds": round(seconds, 4),
        **({"familiarity": familiar} if familiar else {}),
    }


TRAINING_IMAGES_NOTE = (
    "images the model was fit on (the same bytes as a training image, by the model file's fingerprints) are left "
    "out: every figure is on the others"
)
UNCHECKED_NOTE = (
    "the model does not list its training images (an older or converted model file, or one built without them): "
    "whether these images are held out was not checked"
)
UNDIGESTED_NOTE = "row(s) without a content digest in this cache could not be checked"


def _training_images(bundle: Bundle, reader: CacheReader, test) -> tuple[np.ndarray, int]:
    """Which of ``test``'s rows are images the model was fit on (their content digest among its fingerprints), and
    how many rows had no digest to check; every row one of them: a one-line error, since a score on them says
    nothing about new images."""
    if bundle.seen is None or not len(bundle.seen) or not len(test.rows):
        return np.zeros(len(test.rows), dtype=bool), 0
    found, known = _fit_on_rows(bundle.seen, reader, test.rows)
    if found.all():
        raise InvalidValue(
            f"every one of the {len(found)} labelled images of {reader.path} is an image the model was fit on: "
            f"evaluate scores a model on images it never saw (a cv report scores every row out of fold)"
        )
    return found, int((~known).sum())


def top_k(values: np.ndarray, classes: list[str], k: int) -> list[list[tuple[str, float]]]:
    k = min(k, values.shape[1])
    order = np.argsort(-values, axis=1, kind="stable")[:, :k]
    return [[(classes[j], float(row[j])) for j in idx] for row, idx in zip(values, order)]


def _rows(
    reader: CacheReader,
    items,
    values: np.ndarray,
    classes: list[str],
    k: int,
    familiar: np.ndarray | None = None,
    fit_on: np.ndarray | None = None,
) -> list[dict]:
    """One output row per input image, in input order; an image without a row in the cache gets its reason.
    ``familiar``: each cache row's familiarity (``classifiers.familiarity``); ``fit_on``: whether each cache row is
    an image the model was fit on (marked ``fit_on``: its scores are in-sample)."""
    index = {p: i for i, p in enumerate(reader.paths)}
    reasons = dict(zip(reader.failures["path"], reader.failures["reason"]))
    best = top_k(values, classes, k)
    out = []
    for item in items:
        row = {"path": item.path}
        if item.label:
            row["label"] = item.label
        i = index.get(item.path)
        if i is None:
            row["error"] = item.error or reasons.get(item.path, "not embedded")
        else:
            row["predicted"], row["score"] = best[i][0]
            row["top"] = [{"class": c, "score": round(v, 6)} for c, v in best[i]]
            if familiar is not None:
                row["familiarity"] = float(familiar[i])
            if fit_on is not None and fit_on[i]:
                row["fit_on"] = True
        out.append(row)
    return out


def predict(
    model,
    images,
    options: RunOptions | None = None,
    *,
    top: int = TOP,
    out: str | None = None,
    fmt: str | None = None,
    progress: bool = False,
    **overrides,
) -> dict:
    """Classify images with a bundle: embedded with its settings as ``options`` (a ``RunOptions``; ``overrides``:
    its fields by name) say, then its pipeline; ``top`` classes per image. Bad images get a row with an ``error``
    and no prediction. ``out``: a file the predictions are written to as well (``fmt``: csv or json; default by
    its suffix), refused before any work when it is the model or one of the images."""
    run = with_overrides(RunOptions, options, overrides)
    if out and not isinstance(model, Bundle):
        refuse_overwrite(out, [model], "the output")
    bundle = _bundle(model, run.trust_pickle)
    reader, items, count = embedded(bundle, images, run, out=out, progress=progress)
    X = bundle.checked(reader.features(bundle.layer), reader.path) if len(reader) else None
    values, kind = bundle.scores(X) if X is not None else (np.empty((0, len(bundle.classes))), "")
    fam = bundle.familiarity
    familiar, far = _asked_familiarity(fam, X, reader, items) if X is not None and fam is not None else (None, None)
    fit_on = _fit_on_rows(bundle.seen, reader, np.arange(len(reader)))[0] if bundle.seen is not None else None
    rows = _rows(reader, items, values, bundle.classes, top, familiar, fit_on)
    return _written(
        {
            "model": bundle.classifier,
            "layer": bundle.layer,
            "cache": reader.path,
            "embedded": count,
            "score": kind or "probability",
            "calibrated": _is_calibrated(bundle),
            **(
                {"familiarity": _familiarity_of(fam, reader, familiar, far)}
                if fam is not None and familiar is not None and far is not None
                else {}
            ),
            "rows": rows,
        },
        out,
        fmt,
    )


def _asked_familiarity(fam: Familiarity, X: np.ndarray, reader: CacheReader, items) -> tuple[np.ndarray, np.ndarray]:
    """The familiarity and distance of the cache rows of ``items`` (NaN for the cache's other rows: images of earlier
    calls)."""
    index = {p: i for i, p in enumerate(reader.paths)}
    asked = np.unique([index[item.path] for item in items if item.path in index]).astype(np.int64)
    p, d = np.full(len(X), np.nan), np.full(len(X), np.nan)
    if len(asked):
        p[asked], d[asked] = fam.scored(X[asked])
    return p, d


def _familiarity_of(fam: Familiarity, reader: CacheReader, familiar: np.ndarray, far: np.ndarray) -> dict:
    """``familiarity.summary`` of the cache rows of the images asked for (the others are NaN)."""
    asked = np.flatnonzero(~np.isnan(familiar))
    return summary(familiar[asked], fam, [str(p) for p in reader.paths[asked]], distances=far[asked])


def _written(result: dict, out: str | None, fmt: str | None) -> dict:
    """``result``, written to ``out`` first where given (csv, or json when ``fmt`` or the suffix says so)."""
    if out:
        write_predictions(result, out, fmt or ("json" if str(out).lower().endswith(".json") else "csv"))
    return result


SORTS = ("confidence", "path")


def is_cache_file(path) -> bool:
    """Whether ``predict``'s input is a cache (an existing ``.h5`` file) rather than images."""
    return isinstance(path, (str, os.PathLike)) and str(path).endswith(".h5") and os.path.isfile(path)


def pseudo_labels(
    model, cache, *, sort: str = "confidence", trust_pickle: bool = False, labels: str | None = None
) -> dict:
    """The model's label and confidence for every unlabeled row of a cache made with its embedding settings (a
    whole cache when it has no labels; ``labels``: a ``path,label`` CSV whose labelled rows are skipped too, as
    ``--labels`` lays it over the cache): pseudo-labels to review, least confident first (``sort="confidence"``)
    or by path. The confidence is the predicted class's calibrated probability (``train`` calibrates every entry,
    ``classifiers.calibration``); from a model file written before calibration, the classifier's own probability,
    or its decision score for a classifier without probabilities (``"score"`` says which). ``notes``: when the
    model was fit on these very rows with their pseudo-labels (``train --unlabeled``), their confidences are not
    out-of-sample, and it says so."""
    if sort not in SORTS:
        raise InvalidValue(f"--sort {sort!r}: choose {' or '.join(SORTS)}")
    bundle = _bundle(model, trust_pickle)
    reader = open_cache(cache)
    check_cache(reader, bundle)
    known_labels = labels_of(reader, labels) if labels else reader.labels
    rows = np.arange(len(reader)) if known_labels is None else np.flatnonzero(np.asarray(known_labels) == "")
    if not len(rows):
        raise InvalidValue(
            f"every row of {reader.path} is labelled{f' (with {labels})' if labels else ''}: there is nothing to "
            f"pseudo-label (featurebank evaluate scores a model on labelled images it was not trained on)"
        )
    X = finite(reader.features(bundle.layer)[rows], reader, rows, bundle.layer)
    values, kind = bundle.scores(X)
    fam = bundle.familiarity
    familiar, far = (None, None) if fam is None else fam.scored(X)
    best = values.argmax(axis=1)
    known = np.asarray(getattr(bundle.pipeline, "classes_", np.arange(values.shape[1])))
    names = [bundle.classes[int(c)] for c in known[best]]
    confidence = values[np.arange(len(best)), best]
    paths = reader.paths[rows]
    order = np.lexsort((paths, confidence)) if sort == "confidence" else np.argsort(paths, kind="stable")
    fit_on = None if bundle.seen is None else _fit_on_rows(bundle.seen, reader, rows)[0]
    notes = []
    if fit_on is not None and fit_on.any():
        notes.append(
            f"the model was fit on {int(fit_on.sum())} of these {len(rows)} images (fit_on = 1: the same bytes as one "
            f"of its labelled images{', or of the unlabeled rows it pseudo-labelled (train --unlabeled)' if _semi_used(bundle) else ''}): "
            f"their confidences are in-sample scores (it was fit on these images), not held-out probabilities, and "
            f"rank them poorly; "
            + (
                "to review pseudo-labels, predict with a model not fit on them (trained without --unlabeled)"
                if _semi_used(bundle)
                else "they are its labelled images: --labels with the CSV it was trained with skips them"
                + (f" ({bundle.trained_on['labels']['csv']})" if bundle.trained_on.get("labels") else "")
            )
        )
    elif fit_on is None and _semi_used(bundle) and bundle.trained_on.get("source") == reader.attrs.get("source"):
        notes.append(  # a model file without the fingerprints of its images: by the cache's source
            f"the model was fit on {bundle.trained_on['unlabeled']['pseudo_labelled']} unlabeled rows of this data "
            f"with their pseudo-labels (train --unlabeled): on those rows its confidences are in-sample (it was fit on "
            f"them), not held-out probabilities, and rank them poorly; to review pseudo-labels, predict with a model trained without --unlabeled"
        )
    return {
        "model": bundle.classifier,
        "layer": bundle.layer,
        "cache": reader.path,
        "score": kind,
        "calibrated": _is_calibrated(bundle),
        "pseudo": True,
        "labelled_rows_skipped": int(len(reader) - len(rows)),
        **({"labels": labels} if labels else {}),
        "sort": "least confident first" if sort == "confidence" else "by path",
        **({"notes": notes} if notes else {}),
        **({} if fam is None or familiar is None else {"familiarity": summary(familiar, fam, paths, distances=far)}),
        "rows": [
            {
                "path": str(paths[i]),
                "label": names[i],
                "confidence": float(confidence[i]),
                **({} if fit_on is None else {"fit_on": bool(fit_on[i])}),
                **({} if familiar is None else {"familiarity": float(familiar[i])}),
            }
            for i in order
        ],
    }


def _semi_used(bundle: Bundle) -> bool:
    semi = bundle.trained_on.get("unlabeled") or {}
    return bool(semi.get("used") and semi.get("pseudo_labelled"))


def _is_calibrated(bundle: Bundle) -> bool:
    """Whether the bundle's scores are calibrated probabilities (``train`` without ``--no-calibrate``)."""
    return (bundle.calibration or {}).get("method", "none") != "none"


def _fit_on_rows(seen: np.ndarray, reader: CacheReader, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which of the cache's ``rows`` are images a model was fit on (their digest among its fingerprints, ``seen``:
    ``Bundle.seen``), and which had a digest to check at all."""
    values, known = fingerprints_of(np.asarray(reader.rows["digest"], dtype=object)[rows])
    return known & np.isin(values, seen), known


def predict_imagenet(
    images,
    options: ExtractOptions | None = None,
    *,
    top: int = 5,
    cache: str | None = None,
    out: str | None = None,
    fmt: str | None = None,
    progress: bool = False,
    **overrides,
) -> dict:
    """Classify with the backbone's own head (ImageNet, or a fine-tuned checkpoint's classes): the logits are cached
    (``cache``) like any layer, with ``options`` (an ``ExtractOptions``, its layers aside; ``overrides``: its fields
    by name), then softmaxed. ``out`` and ``fmt``: as ``predict``'s."""
    from embedder.backbones.registry import head_classes, output_node

    o = with_overrides(ExtractOptions, options, overrides)
    backbone = o.backbone
    classes = head_classes(backbone, o.weights, o.seed)
    listing = _listing(images, o.layout, out)
    summary = extract(listing, cache, replace(o, layers=(output_node(backbone),)), progress=progress)
    reader = CacheReader(summary.cache)
    logits = reader.features(reader.layers[0]).astype(np.float64) if len(reader) else np.empty((0, len(classes)))
    if logits.shape[1] != len(classes):
        raise InvalidValue(
            f"the {backbone} head has {logits.shape[1]} outputs, not the {len(classes)} ImageNet classes"
        )
    proba = np.exp(logits - logits.max(axis=1, keepdims=True))
    proba /= proba.sum(axis=1, keepdims=True)
    return _written(
        {
            "model": f"{backbone} head",
            "layer": reader.layers[0],
            "cache": reader.path,
            "embedded": summary.embedded,
            "score": "probability",
            "rows": _rows(reader, listing.items, proba, classes, top),
        },
        out,
        fmt,
    )
