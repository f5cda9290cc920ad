"""The order of an export: the backbone's fp32 engine (made or reused in the engine folder), the head, the file;
for int8, the calibrated engine and both files compared on labelled images. ``export_checkpoint``: a checkpoint
with its own head."""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field, replace

import numpy as np
import onnx

from embedder.backbones.registry import head_classes, load_backbone, output_node, recorded_backbone
from embedder.cache.hdf5 import CacheReader
from embedder.engines.engine import BATCH_SIZE, OnnxEngine, open_engine, prepare_int8, settings_fp32
from embedder.inputs.batches import ImageDataset, ThreadBatches
from embedder.inputs.decode import DEFAULT_MAX_PIXELS
from embedder.inputs.sources import Item, Listing, list_inputs
from embedder.job import calibration_batches, int8_settings
from embedder.kernel.destination import file_destination
from embedder.kernel.errors import IncompatibleSettings, InvalidValue, MissingFile, Note
from embedder.kernel.settings import ONNX_PRECISIONS, ExtractionSettings, Int8
from embedder.kernel.store import EngineStore, engine_dir_for
from embedder.resolve import Request, resolve

from .graph import assemble, backbone_width, default_opset, metadata, save_model
from .head import INPUT, LABEL, Head, check_head, head_model, refusal


@dataclass
class Exported:
    path: str
    bytes: int
    precision: str
    output: str  # probability or decision
    head: str  # how the head was written: folded, skl2onnx, softmax
    metadata: dict = field(default_factory=dict)
    accuracy: dict | None = None  # int8: fp32 and int8 accuracy on the labelled images, and their agreement
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def export(
    settings: ExtractionSettings,
    build_model,
    head: Head,
    out: str,
    *,
    store: EngineStore,
    precision: str = "fp32",
    calibration: Listing | None = None,
    int8: Int8 | None = None,
    labelled: list[tuple[str, str]] | None = None,
    extra: dict | None = None,
    max_pixels: int | None = None,
    threads: int | None = None,
) -> Exported:
    """Write ``head`` on the backbone of ``settings`` as one ONNX file ``out``.

    ``build_model()`` returns the torch backbone (called only when the engine folder lacks its ONNX file).
    ``precision="int8"``: the backbone is the int8 engine of ``settings`` when they are int8 already (a model
    trained on int8 features), else it is calibrated as ``extract --precision int8`` would on ``calibration``
    (the model's training images; ``int8`` says how many and the seed); then fp32 and int8 files are both run on
    ``labelled`` (path, class) images and their accuracies are returned."""

    started = time.perf_counter()
    onnx_destination(out)
    if precision not in ONNX_PRECISIONS:
        raise InvalidValue(f"an export is fp32 or int8, not {precision}")
    refused = refusal(head.pipeline) if head.pipeline is not None else None
    if refused is not None:
        raise refused
    max_pixels = max_pixels or DEFAULT_MAX_PIXELS
    layer = settings.layers[0]
    fp32_settings = settings_fp32(settings)
    crop = settings.preprocessing.crop
    fp32_engine = open_engine(fp32_settings, store, build_model, engine="onnxruntime", device="cpu")
    assert isinstance(fp32_engine, OnnxEngine)  # engine="onnxruntime" opens one
    fp32_backbone = onnx.load(fp32_engine.path)
    width = backbone_width(fp32_backbone, layer, head)
    if head.takes is not None and width != head.takes:  # not ONNX Runtime's shape error inside check_head
        if head.pipeline is None:  # a checkpoint's own head: its logits are the classes
            raise IncompatibleSettings(
                f"the {head.name} gives {width} scores and the checkpoint names {head.takes} classes: its class "
                f"list is not its head's"
            )
        raise IncompatibleSettings(
            f"the {settings.backbone} backbone's {layer} has {width} dimensions; the model's classifier takes "
            f"{head.takes}: the model file's backbone or layer is not the one it was trained on"
        )
    head_onnx, how = head_model(
        head, backbone_width(fp32_backbone, layer, head), default_opset(fp32_backbone), fp32_backbone.ir_version
    )
    checked = check_head(head_onnx, head, backbone_width(fp32_backbone, layer, head))
    fp32_model = assemble(fp32_backbone, layer, head_onnx, crop)
    info = {**(extra or {}), "head_check": checked}
    if precision == "fp32":
        meta = metadata(fp32_settings, head, "fp32", how, info)
        size = save_model(fp32_model, meta, out)
        return Exported(
            os.path.abspath(out), size, "fp32", head.output, how, meta, seconds=round(time.perf_counter() - started, 2)
        )

    q_settings, calibration_fn = _int8_plan(settings, calibration, int8, max_pixels, threads)
    _measurable(labelled or [], head.classes, calibration)  # before the note: a refusal is one line
    warnings.warn(  # the slow part, said once the inputs are checked (nothing else is said until the end)
        Note(
            "int8: calibrating the backbone on the images and comparing int8 with fp32 on them (a minute or more on a CPU)"
        ),
        stacklevel=2,
    )
    if q_settings.int8.scheme == "auto":  # int8 asked for a file: this CPU's scheme, kept (compare() says the cost)
        q_settings = prepare_int8(q_settings, store, build_model, calibration_fn, force=True).settings
    q_engine = open_engine(
        q_settings, store, build_model, engine="onnxruntime", device="cpu", calibration=calibration_fn
    )
    assert isinstance(q_engine, OnnxEngine)  # engine="onnxruntime" opens one
    q_backbone = onnx.load(q_engine.path)
    if (default_opset(q_backbone), q_backbone.ir_version) != (default_opset(fp32_backbone), fp32_backbone.ir_version):
        head_onnx, _ = head_model(
            head, backbone_width(fp32_backbone, layer, head), default_opset(q_backbone), q_backbone.ir_version
        )
    q_model = assemble(q_backbone, layer, head_onnx, crop)
    accuracy = compare(fp32_model, q_model, labelled or [], head.classes, settings.preprocessing, max_pixels, threads)
    accuracy["source"] = calibration.source if calibration is not None else None
    drawn = (q_engine.meta.get("calibration") or {}).get("images")
    accuracy["measured_on"] = (  # labelled: the same listing as the calibration's draw
        f"the calibration source's images (int8 calibrated on {drawn} of them; not held out)"
    )
    meta = metadata(
        q_settings,
        head,
        "int8",
        how,
        {
            **info,
            "int8": {
                "calibration": q_engine.meta.get("calibration"),
                "cosine_to_fp32": q_engine.meta.get("cosine_to_fp32"),
                "accuracy": accuracy,
            },
        },
    )
    size = save_model(q_model, meta, out)
    return Exported(
        os.path.abspath(out), size, "int8", head.output, how, meta, accuracy, round(time.perf_counter() - started, 2)
    )


def _int8_plan(settings: ExtractionSettings, calibration: Listing | None, int8: Int8 | None, max_pixels, threads):
    """The int8 settings and the calibration to make their engine with: a model trained on int8 features names
    its engine (found in the engine folder, never drawn again); else a draw from ``calibration`` exactly as
    ``extract --precision int8`` draws from its input."""

    if settings.precision == "int8":
        return settings, None
    if calibration is None or not calibration.items:
        raise InvalidValue(
            "int8 needs images to calibrate on: give --images DATA (labelled images, such as the training folder)"
        )
    q, files = int8_settings(replace(settings, precision="int8", int8=int8 or Int8()), calibration, None)

    def batches():
        return calibration_batches(files, q, max_pixels, threads)

    return q, batches


def _measurable(labelled: list[tuple[str, str]], classes: list[str], source: Listing | None) -> None:
    """int8 is measured against fp32 on labelled images of the model's classes: none is one line that says why
    (no labels at all, or labels of other classes), said before any calibration."""
    if any(c in classes for _, c in labelled):
        return
    of = f" of {source.source.split(':', 1)[-1]}" if source is not None and source.source else ""
    if not labelled:
        raise InvalidValue(
            f"no labelled images{of} to measure int8 against fp32 on: give --images DATA with class folders (or a "
            f"labelled manifest) of the model's classes"
        )
    found = sorted({c for _, c in labelled})
    raise InvalidValue(
        f"the images{of} are labelled {', '.join(found[:5])}{', …' if len(found) > 5 else ''}, none a class of the "
        f"model ({', '.join(classes[:5])}{', …' if len(classes) > 5 else ''}): int8 is measured against fp32 on "
        f"images of its classes; give --images DATA with those"
    )


def compare(
    fp32_model: onnx.ModelProto,
    int8_model: onnx.ModelProto,
    labelled: list[tuple[str, str]],
    classes: list[str],
    prep,
    max_pixels: int,
    threads: int | None = None,
    batch_size: int = BATCH_SIZE,
) -> dict:
    """Both files on the same decoded images: accuracy of each, and how often they name the same class."""
    import onnxruntime as ort

    index = {c: i for i, c in enumerate(classes)}
    indexed = [(p, index[c]) for p, c in labelled if c in index]
    _measurable(labelled, classes, None)
    sessions = [
        ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        for m in (fp32_model, int8_model)
    ]
    dataset = ImageDataset([p for p, _ in indexed], prep, max_pixels)
    y = np.array([c for _, c in indexed])
    preds: list[list[np.ndarray]] = [[], []]
    kept: list[int] = []
    first_failure = None
    for batch in ThreadBatches(dataset, batch_size, threads):
        if batch.failures and first_failure is None:
            i, reason, _ = batch.failures[0]
            first_failure = f"{indexed[i][0]}: {reason}"
        if not batch.indices:
            continue
        x = np.ascontiguousarray(batch.images.transpose(0, 2, 3, 1))
        for session, out in zip(sessions, preds):
            out.append(session.run([LABEL], {INPUT: x})[0])
        kept.extend(batch.indices)
    if not kept:
        raise InvalidValue(
            f"none of the {len(indexed)} labelled images could be read ({first_failure}): give --images DATA"
        )
    a, b, truth = np.concatenate(preds[0]), np.concatenate(preds[1]), y[kept]
    return {
        "images": int(len(kept)),
        "unreadable": int(len(indexed) - len(kept)),
        "fp32": round(float((a == truth).mean()), 6),
        "int8": round(float((b == truth).mean()), 6),
        "agreement": round(float((a == b).mean()), 6),
    }


# -- inputs -------------------------------------------------------------------------------------------------------
def cache_listing(cache_path: str) -> Listing:
    """The input of a cache as the cache knows it (rows with their labels, then files that failed), so that int8
    draws its calibration images exactly as ``extract --precision int8`` draws them from that input."""

    reader = CacheReader(cache_path)
    rows, fails = reader.rows, reader.failures
    items = [
        Item(str(p), str(label), str(gr), int(s), int(m))
        for p, label, gr, s, m in zip(rows["path"], rows["label"], rows["group"], rows["size"], rows["mtime_ns"])
    ]
    items += [Item(str(p), "", "", int(s), int(m)) for p, s, m in zip(fails["path"], fails["size"], fails["mtime_ns"])]
    return Listing(reader.attrs["root"], "cache", reader.attrs["source"], items)


def labelled_images(listing: Listing) -> list[tuple[str, str]]:
    return [(listing.full_path(i), i.label) for i in listing.items if i.label and not i.error]


def onnx_destination(out: str, inputs=()) -> str:
    """``out``, where the ONNX file is to be written, checked before any work (``file_destination``)."""
    return file_destination(out, inputs, "the ONNX file", writes="onnx")


def export_checkpoint(
    path: str,
    out: str,
    *,
    backbone: str | None = None,
    precision: str = "fp32",
    images=None,
    int8: Int8 | None = None,
    store: EngineStore | None = None,
    threads: int | None = None,
) -> Exported:
    """A checkpoint with its own head (``finetune``'s ``best.pth``, or an ImageNet checkpoint) as one ONNX file:
    the backbone's logits, softmaxed, as ``predict --head`` gives them. int8 calibrates on ``images``."""

    if not os.path.isfile(path):
        raise MissingFile(f"checkpoint not found: {path}")
    onnx_destination(out, [path])
    backbone = backbone or recorded_backbone(path)
    if not backbone:
        raise InvalidValue(f"{path} does not say its backbone: give -b BACKBONE")
    store = store or EngineStore(engine_dir_for())
    resolved = resolve(Request(backbone, path, layers=(output_node(backbone),)), store)
    classes = head_classes(backbone, path)
    listing = list_inputs([images] if isinstance(images, (str, os.PathLike)) else images) if images else None
    model_cache = {}

    def build_model():
        if "model" not in model_cache:
            model_cache["model"] = load_backbone(backbone, path).model
        return model_cache["model"]

    head = Head(classes, None, f"{backbone} head", takes=len(classes))
    extra = {
        "model": {
            "kind": "checkpoint",
            "file": os.path.basename(path),
            "backbone": backbone,
            "layer": resolved.settings.layers[0],
        }
    }
    return export(
        resolved.settings,
        build_model,
        head,
        out,
        store=store,
        precision=precision,
        calibration=listing,
        int8=int8,
        labelled=labelled_images(listing) if listing else None,
        extra=extra,
        threads=threads,
    )
