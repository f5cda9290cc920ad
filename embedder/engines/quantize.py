"""int8 engines: post-training static quantization of the fp32 ONNX graph, calibrated on the user's own images.

ONNX Runtime's ``quantize_static`` in QDQ format with uint8 activations (what its x86 kernels fuse into
QLinearConv; int8 activations ran at fp32 speed here) and weights as the scheme says (``SCHEMES``). Calibration
reads activation ranges (MinMax) from a few hundred images drawn reproducibly from the input, once for every
scheme tried. Then the int8 and fp32 engines embed the calibration images and the cosine between their vectors is
recorded next to the model (``featurebank info`` shows it): int8 is not free, and the user sees what it cost.

Which scheme depends on the CPU (``ladder``): ONNX Runtime's U8S8 kernels saturate on x86-64 without VNNI, so
there the first scheme tried has 7-bit weights. ``embedder.engines.engine.prepare_int8`` tries the ladder in order and
keeps the first whose cosine to fp32 on the calibration images reaches ``COSINE_BOUND`` (mean) and ``WORST_BOUND``
(the worst image); a ladder holds only schemes that ran at least ``MIN_SPEEDUP`` times fp32's speed on that CPU.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import warnings
from typing import TypeVar

import numpy as np

from embedder.kernel.errors import FeaturebankError, InvalidValue, first_line
from embedder.kernel.settings import ExtractionSettings, Int8
from embedder.kernel.store import EngineStore

from . import cpu as host
from .cpu import CpuInfo, cpu_cores

# quantize_static's keywords of each scheme (weights: per channel or per tensor, int8 or uint8, 8 or 7 bits)
SCHEMES = {
    "u8s8": dict(per_channel=True, reduce_range=False, weights="int8"),
    "u8s8-reduce": dict(per_channel=True, reduce_range=True, weights="int8"),
    "u8s8-tensor": dict(per_channel=False, reduce_range=False, weights="int8"),
    "u8u8": dict(per_channel=True, reduce_range=False, weights="uint8"),
}
# The guard: an int8 engine is used without --force-int8 only when, on the calibration images and for every extracted
# layer, its mean cosine to fp32 reaches COSINE_BOUND and its worst image's cosine reaches WORST_BOUND
# (benchmarks/int8_variants.py and int8_accuracy.py, MobileNetV2 with real weights: the mean bound chosen on flowers;
# the worst-image bound set after seeing hymenoptera, which is therefore no held-out check of it). On an AVX2-only CPU
# u8s8-reduce measured 0.9755 / 0.8400 (mean / worst) on flowers and 0.9843 / 0.9265 on hymenoptera, where it changed
# 3 of 153 predictions (-1.96 points); u8s8 with VNNI 0.9884 on flowers.
COSINE_BOUND = 0.98
WORST_BOUND = 0.95
# The rule for editing LADDERS (not checked at run time): a rung must have measured at least MIN_SPEEDUP x fp32's ONNX
# Runtime images/s on that kind of CPU (benchmarks/cpu_engines.py --schemes); slower, int8 costs accuracy for too
# little (u8u8 ran at 0.22x on AVX2; it is offered by name, never chosen).
MIN_SPEEDUP = 1.3
WORST_LAYERS = 8  # the convolutions kept in fp32 by the last rung of a ladder
# What each kind of CPU tries, in order, as (scheme, convolutions kept in fp32) (benchmarks/int8_accuracy.py).
LADDERS = {
    "vnni": (("u8s8", 0), ("u8s8-reduce", 0), ("u8s8-reduce", WORST_LAYERS)),
    "avx2": (("u8s8-reduce", 0), ("u8s8-reduce", WORST_LAYERS)),
}
T = TypeVar("T")  # what draw_calibration draws: a path, or an index
DEFAULT_LADDER = (("u8s8", 0), ("u8s8-reduce", 0), ("u8s8-reduce", WORST_LAYERS))


def ladder(cpu: CpuInfo | None = None) -> tuple[tuple[str, int], ...]:
    """The (scheme, fp32 layers) to try on ``cpu`` (default: this one), safest last."""
    return LADDERS.get((cpu or host.current_cpu()).int8_kind, DEFAULT_LADDER)


def mean_cosine(agreement: dict) -> float:
    """The worst layer's mean cosine of a ``feature_agreement``: what ``COSINE_BOUND`` is checked against."""
    return min(c["mean"] for c in agreement.values())


def worst_cosine(agreement: dict) -> float:
    """The lowest cosine of any image and layer of a ``feature_agreement``: what ``WORST_BOUND`` is checked against."""
    return min(c["min"] for c in agreement.values())


def holds(agreement: dict) -> bool:
    """Whether an int8 engine's agreement with fp32 on the calibration images passes the guard."""
    return mean_cosine(agreement) >= COSINE_BOUND and worst_cosine(agreement) >= WORST_BOUND


def bound_text() -> str:
    return f"mean {COSINE_BOUND}, worst {WORST_BOUND}"


def draw_calibration(paths_with_keys: list[tuple[T, str]], int8: Int8) -> list[T]:
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
    fp32_engine,
    settings: ExtractionSettings,
    store: EngineStore,
    name: str,
    calibration,
    open_int8,
    ranges: str | None = None,
) -> dict:
    """Quantize ``fp32_engine``'s model with ``calibration`` (a list of uint8 batches) into the store as ``name``,
    with the measured cosine to fp32 in its sidecar (returned). ``open_int8(path, settings)`` opens the quantized
    file as an engine to measure it (the engines module passes its ONNX Runtime engine: it builds on this one).
    ``ranges``: a file for the calibration's activation ranges, read when it exists (a ladder calibrates once)."""
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
        raise InvalidValue("no calibration image could be decoded: int8 needs at least one")
    methods = {"minmax": CalibrationMethod.MinMax}
    int8 = settings.int8
    if int8 is None:
        raise InvalidValue("build_int8 takes int8 settings")
    if int8.scheme not in SCHEMES:
        raise InvalidValue(f"int8 scheme {int8.scheme!r} is not a scheme to build (auto is chosen before)")
    scheme = SCHEMES[int8.scheme]

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
    plain = store.new_model_path(name + "-plain")
    own_ranges = ranges is None
    if ranges is None:  # absent: quantize_static calibrates and writes it; present: it reads it
        ranges = store.new_model_path(name + "-ranges")
        os.unlink(ranges)

    def quantize(out: str, exclude: list[str]) -> None:
        quantize_static(
            pre,
            out,
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=scheme["per_channel"],
            reduce_range=scheme["reduce_range"],
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8 if scheme["weights"] == "int8" else QuantType.QUInt8,
            calibrate_method=methods[int8.method],
            nodes_to_exclude=exclude,
            calibration_cache_path=ranges,
        )

    fp32_nodes: list[str] = []
    try:
        try:
            with _quiet():
                quant_pre_process(fp32_engine.path, pre, skip_symbolic_shape=False)
                keep = tail_nodes(pre) if int8.fp32_tail else []
                if int8.fp32_layers:  # every convolution quantized first, to see which lose most here
                    quantize(plain, keep)
                    fp32_nodes = worst_layers(pre, plain, batches, int8.fp32_layers)
                quantize(tmp, keep + fp32_nodes)
        except FeaturebankError:
            raise
        except Exception as exc:
            first = first_line(exc)
            raise FeaturebankError(f"int8 quantization failed ({type(exc).__name__}: {first})") from None
        int8_engine = open_int8(tmp, settings)
        agreement = feature_agreement(fp32_engine, int8_engine, batches)
        del int8_engine
        meta = {
            "settings": settings.to_dict(),
            "kind": "int8",
            "scheme": int8.name,
            "fp32_nodes": fp32_nodes,
            "cpu": host.current_cpu().to_dict(),
            "calibration": {
                "images": int(sum(len(b) for b in batches)),
                "method": int8.method,
                "seed": int8.seed,
                "set": int8.calibration_set,
            },
            "cosine_to_fp32": agreement,
        }
        store.save_model(name, tmp, meta)
        return meta
    finally:  # a failure or Ctrl-C leaves no temporary file of tens of MB behind
        for p in (pre, tmp, plain) + ((ranges,) if own_ranges else ()):
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


LOSSY = {"Conv", "Gemm", "MatMul"}  # what worst_layers ranks
PASSING = {"Relu", "Clip"}  # folded into the convolution before them by the quantizer


def worst_layers(fp32_path: str, int8_path: str, batches, n: int, images: int = 64) -> list[str]:
    """The ``n`` convolutions (or matrix products) that lose most in ``int8_path``, on up to ``images`` of the
    calibration images, run by ONNX Runtime on this CPU (its kernels, saturation included). Each quantized
    activation of the int8 graph is compared with the same tensor of the fp32 graph (cosine per image, averaged);
    a node's loss is the cosine of its input minus that of its output: what it adds, not what it inherits."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    q = onnx.load(int8_path)
    init = {i.name: i for i in q.graph.initializer}
    quants = [n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in init]
    floats = [n.input[0] for n in quants]
    scale = {n.input[0]: numpy_helper.to_array(init[n.input[1]]).astype(np.float32) for n in quants}
    zero = {n.input[0]: numpy_helper.to_array(init[n.input[2]]).astype(np.float32) for n in quants}
    f = onnx.load(fp32_path)
    for model, names, kind in ((q, [n.output[0] for n in quants], TensorProto.UINT8), (f, floats, TensorProto.FLOAT)):
        del model.graph.output[:]
        model.graph.output.extend(helper.make_tensor_value_info(t, kind, None) for t in names)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.log_severity_level = cpu_cores(), 3
    run_q = ort.InferenceSession(q.SerializeToString(), options, providers=["CPUExecutionProvider"])
    run_f = ort.InferenceSession(f.SerializeToString(), options, providers=["CPUExecutionProvider"])
    sums = dict.fromkeys(floats, 0.0)
    seen = 0
    for batch in batches:
        for i in range(0, len(batch), 8):
            if seen >= images:
                break
            x = batch[i : min(i + 8, i + images - seen)]
            a, b = run_f.run(floats, {"images": x}), run_q.run(None, {"images": x})
            for t, fa, qb in zip(floats, a, b):
                fa = fa.reshape(len(x), -1).astype(np.float64)
                qa = ((qb.astype(np.float32) - zero[t]) * scale[t]).reshape(len(x), -1).astype(np.float64)
                d = np.linalg.norm(fa, axis=1) * np.linalg.norm(qa, axis=1)
                sums[t] += float(np.where(d > 0, (fa * qa).sum(1) / np.maximum(d, 1e-30), 1.0).sum())
            seen += len(x)
    cos = {t: v / max(seen, 1) for t, v in sums.items()}
    consumers: dict[str, list] = {}
    for node in f.graph.node:
        for t in node.input:
            consumers.setdefault(t, []).append(node)
    losses = []
    for node in f.graph.node:
        if node.op_type not in LOSSY or node.input[0] not in cos:
            continue
        out = node.output[0]
        while out not in cos and len(consumers.get(out, [])) == 1 and consumers[out][0].op_type in PASSING:
            out = consumers[out][0].output[0]
        if out in cos:
            losses.append((cos[node.input[0]] - cos[out], node.name))
    return [name for _, name in sorted(losses, reverse=True)[:n]]


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
