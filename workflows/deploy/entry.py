"""Deployment's entry points: a model file of ``train`` or a checkpoint of ``finetune`` as one ONNX file.

``export`` tells the two apart by the file's name (a checkpoint's suffix, as ``--weights`` does); the ONNX graph
itself is built by ``workflows.deploy``.
"""

from __future__ import annotations

import os

from classifiers.bundle import Bundle, extract_options, load_bundle
from classifiers.familiarity import ordinal
from classifiers.modelfile import input_dimensions
from classifiers.zoo import describe, list_classifiers, make_classifier
from embedder.backbones.registry import check_backbone, is_checkpoint, load_backbone
from embedder.cache.hdf5 import CacheReader
from embedder.inputs.sources import list_inputs
from embedder.kernel.errors import InvalidValue, UnknownBackbone
from embedder.kernel.settings import ExtractionSettings
from embedder.kernel.store import EngineStore, engine_dir_for
from embedder.options import with_overrides

from .head import Head, NotExportable, refusal
from .options import ExportOptions
from .run import Exported, cache_listing, export_checkpoint, labelled_images, onnx_destination
from .run import export as write_onnx


def export(model: str, options: ExportOptions | None = None, **overrides) -> Exported:
    """``model`` as one ONNX file ``options.out``: a checkpoint (``.pth``...: its own head, ``options.backbone`` when
    it does not say) or a model file of ``train`` (its backbone, layer and classifier; ``options.weights``: where its
    weights file is now). ``overrides``: fields of ``ExportOptions`` by name (``out="model.onnx"``)."""
    o = with_overrides(ExportOptions, options, overrides)
    if not o.out:
        raise InvalidValue("export needs out: the ONNX file to write")
    if is_checkpoint(model):
        exported = export_checkpoint(
            model, o.out, backbone=o.backbone, precision=o.precision or "fp32", images=o.images, int8=o.int8
        )
        return _measured_on(exported, fit_on=None)
    return export_model(
        model,
        o.out,
        precision=o.precision,
        weights=o.weights,
        images=o.images,
        int8=o.int8,
        trust_pickle=o.trust_pickle,
    )


def export_model(
    model,
    out: str,
    *,
    precision: str | None = None,
    weights: str | None = None,
    images=None,
    int8=None,
    threads: int | None = None,
    trust_pickle: bool = False,
):
    """A model file of ``train`` as one ONNX file (``workflows.deploy``): uint8 images in, its scores and class out. ``precision``
    defaults to the model's own (int8 for a model trained on int8 features). int8 calibrates on the model's
    training images (its training cache's input; ``images`` instead) and measures fp32 against int8 on them."""
    onnx_destination(out, [] if isinstance(model, Bundle) else [model])
    bundle = model if isinstance(model, Bundle) else load_bundle(model, trust_pickle=trust_pickle)
    options = extract_options(bundle, weights)
    try:
        check_backbone(options.backbone)
    except UnknownBackbone as exc:  # not the user's option: the model's
        raise exc.of_model() from None
    settings = ExtractionSettings.from_dict(bundle.settings)
    cache = bundle.trained_on.get("cache")
    cache = cache if cache and os.path.exists(cache) else None
    listing = list_inputs([images]) if images else (cache_listing(cache) if cache else None)
    reader = CacheReader(cache) if cache else None
    samples = reader.features(bundle.layer) if reader and bundle.layer in reader.dims else None  # to check the head
    if samples is not None:  # a layer of other dimensions than the classifier takes: one line, not ONNX Runtime's
        bundle.checked(samples, str(cache))

    def build_model():
        return load_backbone(
            options.backbone, options.weights, options.seed, options.resize, options.crop, options.draft
        ).model

    about = {
        "kind": "featurebank model",
        "file": None if isinstance(model, Bundle) else os.path.basename(model),
        "classifier": bundle.classifier,
        "pipeline": describe(bundle.pipeline),
        "layer": bundle.layer,
        "trained_on": {k: bundle.trained_on.get(k) for k in ("rows", "class_counts", "created")},
    }
    try:
        exported = write_onnx(
            settings,
            build_model,
            Head(
                bundle.classes,
                bundle.pipeline,
                bundle.classifier,
                samples,
                bundle.calibration,
                bundle.scores,
                bundle.familiarity,
                input_dimensions(bundle.pipeline),
            ),
            out,
            store=EngineStore(options.engine_dir or engine_dir_for(cache)),
            precision=precision or ("int8" if settings.int8 else "fp32"),
            calibration=listing,
            int8=int8,
            labelled=labelled_images(listing) if listing else None,
            extra={"model": about},
            threads=threads,
        )
        return _measured_on(exported, fit_on=not images)
    except NotExportable as exc:
        ok = [name for name in list_classifiers() if refusal(make_classifier(name)) is None]
        if refusal(make_classifier("knn:weights=uniform")) is None:  # the zoo's knn with weights it can write
            ok.append("knn:weights=uniform")
        raise InvalidValue(
            f"cannot export {bundle.classifier} ({exc.classifier}): {exc}; these export: {', '.join(ok)}"
        ) from None


def _measured_on(exported: Exported, fit_on: bool | None) -> Exported:
    """What int8's accuracy images are, for the line that reports on them: the model's training images (``fit_on``;
    None: a checkpoint's, which cannot be told), and the calibration's, which they always are."""
    if exported.accuracy:
        calibration = (exported.metadata.get("int8") or {}).get("calibration") or {}
        exported.accuracy = {**exported.accuracy, "fit_on": fit_on, "calibrated_on": calibration.get("images")}
    return exported


HEADS = {"folded": "folded into one matrix product", "skl2onnx": "through skl2onnx", "softmax": "softmax of its logits"}


def export_text(d: dict) -> list[str]:
    """What was written (``Exported.to_dict()``): precision, size, classes, input, int8 against fp32, the path."""
    m = d["metadata"]
    prep, head = m["preprocessing"], m["output"]["head"]
    lines = [
        f"{d['precision']}, {d['bytes'] / 1e6:.1f} MB, {len(m['classes'])} classes, "
        f"{'probabilities' if d['output'] == 'probability' else 'decision scores'} (head {HEADS[head]})",
        f"  input: uint8 N x {prep['crop']} x {prep['crop']} x 3 RGB after resizing the shorter side to "
        f"{prep['resize']} ({prep['interpolation']}) and a center crop",
    ]
    a = d["accuracy"]
    if a:
        of = (a.get("source") or "").split(":", 1)[-1]
        checkpoint = "fit_on" in a and a["fit_on"] is None  # a network's weights: what they saw is not recorded
        scorer = "finetune --test" if checkpoint else "evaluate"
        what = [
            *(["the images the model was fit on"] if a.get("fit_on") else []),
            *(["whether the network was trained or its epoch chosen on them is not checked"] if checkpoint else []),
            *([f"int8 calibrated on {a['calibrated_on']} of them"] if a.get("calibrated_on") else []),
        ]
        lines.append(
            f"  accuracy on {a['images']} images{' of ' + of if of else ''}{' (' + '; '.join(what) + ')' if what else ''}: "
            f"fp32 {100 * a['fp32']:.2f} %, int8 {100 * a['int8']:.2f} % ({100 * (a['int8'] - a['fp32']):+.2f} points); "
            f"the same class for {100 * a['agreement']:.1f} % of them"
            + (f"; not held out: the agreement is the figure to read, {scorer} scores held-out images" if what else "")
        )
    fam = m.get("familiarity")
    if fam:
        lines.append(
            f"  familiarity: output `familiarity`, each image placed among {fam['reference_rows']} kept training images "
            f"by its distance to the {ordinal(fam['k'])} nearest; under {fam['below']:g}: unlike them"
            + (
                ", as predict flags"
                if fam.get("exact", True)
                else " (int8: the images' vectors are int8's, the kept rows' fp32: near predict's, read it as a ranking)"
            )
            + (
                ""
                if fam["can_flag"]
                else f" (none can fall under {fam['below']:g} with so few kept: it still ranks them)"
            )
        )
    lines.append(d["path"])
    return lines
