"""int8 engines: post-training static quantization of the fp32 ONNX graph, calibrated on the user's own images.

ONNX Runtime's ``quantize_static`` in QDQ format with per-channel int8 weights and uint8 activations (the
combination its x86 kernels fuse into QLinearConv; int8 activations ran at fp32 speed here). Calibration reads
activation ranges (MinMax by default) from a few hundred images drawn reproducibly from the input. Then the
int8 and fp32 engines embed the calibration images and the cosine between their vectors is recorded next to the
model (``featurebank info`` shows it): int8 is not free, and the user sees what it cost.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import warnings

import numpy as np

from .errors import FeaturebankError, first_line
from .settings import ExtractionSettings, Int8
from .store import EngineStore


def draw_calibration(paths_with_keys: list[tuple[str, str]], int8: Int8) -> list[str]:
    """The calibration sample: the inputs ordered by a seeded hash of their relative path, so the draw is
    reproducible and stable (a file added or changed alters it only if it ranks among the first ``int8.images``).
    Returns full paths in draw order; the caller takes the first ``int8.images`` and skips those that fail to
    decode."""
    ranked = sorted(
        paths_with_keys,
        key=lambda pk: hashlib.blake2b(
            f"{int8.seed}:{pk[1]}".encode("utf-8", "surrogateescape"), digest_size=8
        ).digest(),
    )
    return [p for p, _ in ranked]


def calibration_set_id(digests: list[str]) -> str:
    return hashlib.blake2b("\n".join(sorted(digests)).encode(), digest_size=12).hexdigest()


def build_int8(
    fp32_engine, settings: ExtractionSettings, store: EngineStore, name: str, calibration, open_int8
) -> None:
    """Quantize ``fp32_engine``'s model with ``calibration`` (a list of uint8 batches) into the store as ``name``,
    with the measured cosine to fp32 in its sidecar. ``open_int8(path, settings)`` opens the quantized file as an
    engine to measure it (the engines module passes its ONNX Runtime engine: it builds on this one)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batches = [b for b in calibration if len(b)]
    if not batches:
        raise FeaturebankError("no calibration image could be decoded: int8 needs at least one")
    methods = {"minmax": CalibrationMethod.MinMax}

    class Reader(CalibrationDataReader):
        """One image at a time: MinMax ranges are the same as over whole batches, but the calibration session's
        memory is one image's (a batch of 8 DINOv2 images at 518 px needed over 20 GB)."""

        def __init__(self):
            self._it = (b[i : i + 1] for b in batches for i in range(len(b)))

        def get_next(self):
            batch = next(self._it, None)
            return None if batch is None else {"images": batch}

    pre = store.new_model_path(name + "-pre")
    tmp = store.new_model_path(name)
    try:
        try:
            with _quiet():
                quant_pre_process(fp32_engine.path, pre, skip_symbolic_shape=False)
                keep = tail_nodes(pre) if settings.int8.fp32_tail else []
                quantize_static(
                    pre,
                    tmp,
                    Reader(),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=methods[settings.int8.method],
                    nodes_to_exclude=keep,
                )
        except Exception as exc:
            first = first_line(exc)
            raise FeaturebankError(f"int8 quantization failed ({type(exc).__name__}: {first})") from None
        int8_engine = open_int8(tmp, settings)
        agreement = feature_agreement(fp32_engine, int8_engine, batches)
        del int8_engine
        store.save_model(
            name,
            tmp,
            {
                "settings": settings.to_dict(),
                "kind": "int8",
                "calibration": {
                    "images": int(sum(len(b) for b in batches)),
                    "method": settings.int8.method,
                    "seed": settings.int8.seed,
                    "set": settings.int8.calibration_set,
                },
                "cosine_to_fp32": agreement,
            },
        )
    finally:  # a failure or Ctrl-C leaves no temporary file of tens of MB behind
        for p in (pre, tmp):
            if os.path.exists(p):
                os.unlink(p)


COMPUTE = {"Conv", "ConvTranspose", "Gemm", "MatMul"}
MERGES = {"Add", "Sum"}  # a residual addition: its inputs stay int8 (the whole stage otherwise)


def tail_nodes(path: str) -> list[str]:
    """The nodes between each graph output and its nearest convolution (or matrix product, included) or merge
    (a residual addition, included; what feeds it stays int8): the vector the user keeps is computed from them
    with no further layer to average their rounding out. Cheap; on the real MobileNetV2 weights it kept one more
    hymenoptera image right and changed nothing on flowers (README)."""
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    producer = {out: node for node in graph.node for out in node.output}
    keep: dict[str, None] = {}
    stack = [o.name for o in graph.output]
    seen = set()
    while stack:
        tensor = stack.pop()
        node = producer.get(tensor)
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        keep[node.name] = None
        if node.op_type not in COMPUTE | MERGES:
            stack.extend(node.input)
    return list(keep)


def feature_agreement(reference, other, batches) -> dict:
    """Per layer: mean and worst cosine similarity between two engines' vectors of the same images."""
    cosines: dict[str, list[np.ndarray]] = {}
    for batch in batches:
        a, b = reference(batch), other(batch)
        for layer in a:
            x, y = a[layer].astype(np.float64), b[layer].astype(np.float64)
            denom = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
            cos = np.where(denom > 0, (x * y).sum(1) / np.maximum(denom, 1e-30), 1.0)
            cosines.setdefault(layer, []).append(cos)
    out = {}
    for layer, parts in cosines.items():
        c = np.concatenate(parts)
        out[layer] = {"mean": round(float(c.mean()), 5), "min": round(float(c.min()), 5), "images": int(len(c))}
    return out


@contextlib.contextmanager
def _quiet():
    """ONNX Runtime's quantization tools log and print per tensor; keep the user's terminal for featurebank."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
