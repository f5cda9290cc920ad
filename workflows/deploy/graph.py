"""The whole file: layout (NHWC → NCHW, one Transpose), the backbone's engine graph and the head joined as one
ONNX model, its ``metadata_props`` (what a program needs to feed it and read it), written atomically."""

from __future__ import annotations

import json
import os

import onnx
from onnx import TensorProto, compose, helper

from classifiers.familiarity import UNFAMILIAR
from embedder import __version__
from embedder.kernel.atomic import atomic_path
from embedder.kernel.settings import ExtractionSettings

from .head import FAMILIARITY, INPUT, LABEL, SCORES, Graph, Head, used_opsets


# -- the layout -------------------------------------------------------------------------------------------------
def _layout(crop: int, opset: int, ir_version: int) -> onnx.ModelProto:
    g = Graph("layout/")
    g.op("Transpose", [INPUT], "layout/nchw", perm=[0, 3, 1, 2])
    return g.model(
        [helper.make_tensor_value_info(INPUT, TensorProto.UINT8, ["batch", crop, crop, 3])],
        [helper.make_tensor_value_info("layout/nchw", TensorProto.UINT8, ["batch", 3, crop, crop])],
        opset,
        ir_version,
    )


def default_opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def backbone_width(backbone: onnx.ModelProto, layer: str, head: Head) -> int:
    """Length of the backbone's vector: from the graph, else what the head was fitted on."""
    out = next(o for o in backbone.graph.output if o.name == layer)
    dims = out.type.tensor_type.shape.dim
    if len(dims) == 2 and dims[1].dim_value:
        return int(dims[1].dim_value)
    return int(getattr(head.pipeline, "n_features_in_", 0) or len(head.classes))


def assemble(backbone: onnx.ModelProto, layer: str, head_onnx: onnx.ModelProto, crop: int) -> onnx.ModelProto:
    """layout → backbone → head, as one model (the backbone's names prefixed with ``backbone/``)."""
    opset, ir = default_opset(backbone), backbone.ir_version
    body = compose.add_prefix(used_opsets(backbone), "backbone/")
    model = compose.merge_models(
        _layout(crop, opset, ir), body, io_map=[("layout/nchw", f"backbone/{INPUT}")], outputs=[f"backbone/{layer}"]
    )
    outputs = [o.name for o in head_onnx.graph.output if o.name in (SCORES, LABEL, FAMILIARITY)]
    model = compose.merge_models(model, head_onnx, io_map=[(f"backbone/{layer}", "features")], outputs=outputs)
    model.producer_name, model.producer_version = "featurebank", __version__
    return used_opsets(model)


def metadata(settings: ExtractionSettings, head: Head, precision: str, how: str, extra: dict) -> dict:
    """The file's ``metadata_props`` (values are JSON): what a program needs to feed it and read it."""
    prep = settings.preprocessing
    return {
        "classes": list(head.classes),
        "preprocessing": {
            "resize": prep.resize,
            "crop": prep.crop,
            "interpolation": prep.interpolation,
            "draft": prep.draft,
            "mean": list(prep.mean),
            "std": list(prep.std),
            "note": "shorter side to resize, center crop; mean/std are applied inside the graph",
        },
        "input": {
            "name": INPUT,
            "layout": "NHWC",
            "dtype": "uint8",
            "shape": ["batch", prep.crop, prep.crop, 3],
            "channels": "RGB",
        },
        "output": {
            SCORES: head.output,
            LABEL: "index into classes",
            "head": how,
            **({FAMILIARITY: FAMILIARITY_MEANING} if head.familiarity is not None else {}),
        },
        **({FAMILIARITY: _familiarity_meta(head.familiarity, precision)} if head.familiarity is not None else {}),
        "precision": precision,
        "settings": settings.to_dict(),
        "featurebank_version": __version__,
        **extra,
    }


FAMILIARITY_MEANING = (
    "per image, a p-value in (0, 1]: the share of the kept training images at least as far from their k-th nearest "
    f"as the image is from its own; under {UNFAMILIAR:g}: unlike the training images, its class a guess whatever its "
    "score"
)


def _familiarity_meta(fam, precision: str = "fp32") -> dict:
    """What the ``familiarity`` output was measured against, as ``predict --json``'s summary says it; ``exact``:
    whether it is ``predict``'s number (fp32), or an approximation (int8: the image's vector is the int8 backbone's,
    the kept rows' the fp32 vectors the model was trained on; measured up to 0.26 apart, the flags at 0.01 mostly
    the same: benchmarks/RESULTS.md)."""
    n = len(fam.reference)
    return {
        "exact": precision != "int8",
        "reference_rows": n,
        "k": int(fam.k),
        "below": UNFAMILIAR,
        "can_flag": 1.0 / (n + 1) < UNFAMILIAR,
        "measured_on": f"{n} of the model's training images (each against the others)",
    }


def save_model(model: onnx.ModelProto, meta: dict, out: str) -> int:
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=json.dumps(value))
    with atomic_path(out) as tmp:
        onnx.save(model, tmp)
    return os.path.getsize(out)
