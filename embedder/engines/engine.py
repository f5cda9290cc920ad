"""Engines: a uint8 batch in, ``{layer: float32 N x D}`` out. One interface, two implementations.

- ``TorchEngine``: the backbone in torch (channels_last, autocast for fp16/bf16), on any device.
- ``OnnxEngine``: the same graph exported once per settings to ONNX (normalization and pooling inside) and run by
  ONNX Runtime on the CPU; fp32 agrees with torch within float rounding (tested at 1e-4 relative), so both fill
  the same cache rows. int8 is a precision of this engine only, with rows of its own.

``open_engine`` picks one. ``auto`` uses ONNX Runtime on the CPU when it measured faster there for these
settings (measured once per settings and CPU model, recorded in the engine folder), torch on GPUs. Nothing here
imports torch unless a torch model has to be built.
"""

from __future__ import annotations

import os
import platform
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from embedder.kernel.errors import FeaturebankError, FileProblem, InvalidValue, MissingFile, first_line
from embedder.kernel.settings import ExtractionSettings
from embedder.kernel.store import EngineStore
from embedder.kernel.versions import version_of

from . import cpu as host
from .cpu import CpuInfo, cpu_cores

BATCH_SIZE = 32  # images per engine call: the default of extract's --batch-size (ExtractOptions) and of all below

ENGINES = ("auto", "torch", "onnxruntime")


class Engine:
    name = "engine"
    settings: ExtractionSettings

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"name": self.name}


class TorchEngine(Engine):
    """The torch model; ``images`` may be a uint8 numpy array or torch tensor."""

    name = "torch"

    def __init__(self, model, settings: ExtractionSettings, device, channels_last: bool = True, tf32: bool = False):
        """``tf32``: let fp32 on a CUDA GPU use TF32 (faster, vectors about 1e-3 off the CPU's); off by default,
        so that fp32 rows agree across devices (``features.tf32_off``)."""
        import torch

        from embedder.backbones.features import FeatureExtractor, autocast_for

        autocast_for(device, settings.precision)  # refuse fp16 on the CPU
        self.settings, self.device, self._torch, self.tf32 = settings, device, torch, tf32
        self.extractor = FeatureExtractor(model, list(settings.layers), settings.pooling, settings.tta).to(device)
        self.channels_last = channels_last
        if channels_last:
            self.extractor = self.extractor.to(memory_format=torch.channels_last)

    def __call__(self, images) -> dict[str, np.ndarray]:
        from embedder.backbones.features import embed_uint8

        x = self._torch.as_tensor(images)
        if self.device.type == "cuda" and not x.is_pinned():  # pinned by the DataLoader's thread (Batch.pin_memory)
            x = x.pin_memory()
        return embed_uint8(
            self.extractor,
            x,
            self.settings.preprocessing,
            self.device,
            self.settings.precision,
            channels_last=self.channels_last,
            tf32=self.tf32,
        )

    def describe(self) -> dict:
        out = {
            "name": self.name,
            "device": str(self.device),
            "channels_last": self.channels_last,
            "threads": self._torch.get_num_threads(),
            "torch": self._torch.__version__,
        }
        if self.device.type == "cpu":
            out["cpu"] = host.current_cpu().to_dict()
        if self.device.type == "cuda" and self.settings.precision == "fp32":
            out["tf32"] = self.tf32
        return out


class OnnxEngine(Engine):
    name = "onnxruntime"

    def __init__(self, path: str, settings: ExtractionSettings, threads: int | None = None, meta: dict | None = None):
        ort = import_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or cpu_cores()
        options.inter_op_num_threads = 1
        # decoding threads share these cores: an idle ORT thread must sleep, not spin
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise FileProblem(f"ONNX Runtime cannot load {path}: {first_line(exc)}") from None
        self.settings, self.path, self.meta = settings, path, meta or {}
        self.threads = options.intra_op_num_threads
        self.outputs = list(settings.layers)
        self.version = ort.__version__

    def __call__(self, images) -> dict[str, np.ndarray]:
        x = np.ascontiguousarray(np.asarray(images, dtype=np.uint8))
        out = self.session.run(self.outputs, {"images": x})
        return {layer: np.asarray(o, dtype=np.float32) for layer, o in zip(self.outputs, out)}

    def describe(self) -> dict:
        return {
            "name": self.name,
            "device": "cpu",
            "threads": self.threads,
            "onnxruntime": self.version,
            "model": os.path.basename(self.path),
            "cpu": host.current_cpu().to_dict(),
        }


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as exc:
        raise FeaturebankError(
            f"onnxruntime is not installed ({exc}); pip install onnxruntime, or --engine torch"
        ) from None
    return onnxruntime


def cpu_name() -> str:
    """The CPU model (engine choices are measured per CPU: machines differ, and so does what is fastest)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} x{cpu_cores()}"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} x{cpu_cores()}"


def gpu_possible() -> bool:
    """Whether torch might see a GPU, without importing torch: an NVIDIA driver, or Apple silicon (MPS)."""
    if os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidiactl"):
        return True
    return sys.platform == "darwin" and platform.machine() == "arm64"


def check_device(name: str) -> str:
    """``name`` when it names a device (auto, cpu, mps, cuda, cuda:N), else a one-line error."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", name):
        raise InvalidValue(f"{name!r} is not one of auto, cpu, cuda, cuda:N, mps")
    return name


def resolve_device_name(device: str = "auto") -> str:
    """``auto`` → cuda/mps/cpu; imports torch only when a GPU could be there or one is asked for."""
    if device == "cpu" or (device == "auto" and not gpu_possible()):
        return "cpu"
    from embedder.backbones.features import resolve_device

    return str(resolve_device(device))


@dataclass
class Prepared:
    """What opening an engine did besides loading it: exports, calibration, measurements (one-time costs)."""

    seconds: float = 0.0
    steps: list[str] = field(default_factory=list)
    note: str | None = None  # a fallback, said once to the user
    max_batch: int | None = None  # the batch size that fitted in memory when measuring, if smaller than asked


def onnx_name(settings: ExtractionSettings) -> str:
    return f"{settings.backbone.replace(':', '_')}-{settings.key}-{settings.precision}"


def open_engine(
    settings: ExtractionSettings,
    store: EngineStore,
    build_model,
    *,
    engine: str = "auto",
    device: str = "cpu",
    batch_size: int = BATCH_SIZE,
    calibration=None,
    prepared: Prepared | None = None,
) -> Engine:
    """An engine for ``settings``. ``build_model()`` returns the torch backbone (called only when one is needed:
    for the torch engine, an export, or measuring). ``calibration()`` yields uint8 batches for int8."""
    prepared = prepared if prepared is not None else Prepared()
    if engine not in ENGINES:
        raise InvalidValue(f"unknown engine {engine!r}: choose one of {', '.join(ENGINES)}")
    int8 = settings.precision == "int8"
    if device != "cpu":
        if int8 or engine == "onnxruntime":
            raise InvalidValue(
                f"the onnxruntime engine (and int8) runs on the CPU here; use --device cpu, or "
                f"--engine torch with fp32/fp16/bf16 on {device}"
            )
        return _torch_engine(settings, build_model, device)
    if engine == "torch" or (engine == "auto" and settings.precision in ("fp16", "bf16")):
        if int8:
            raise InvalidValue("int8 runs on the onnxruntime engine: use --engine onnxruntime (or auto)")
        return _torch_engine(settings, build_model, device)
    if settings.precision in ("fp16", "bf16"):
        raise InvalidValue(f"the onnxruntime engine runs fp32 and int8, not {settings.precision}")
    if engine == "auto" and not int8 and _recorded_choice(store.sidecar(onnx_name(settings)), batch_size) == "torch":
        return _torch_engine(settings, build_model, device)  # measured slower here before: not even loaded
    store.remove_stale()
    try:
        ort_engine = _onnx_engine(settings, store, build_model, batch_size, calibration, prepared)
        if engine == "onnxruntime" or int8:
            return ort_engine
        return _measured_choice(settings, store, ort_engine, build_model, batch_size, prepared)
    except (FeaturebankError, OSError, RuntimeError, MemoryError) as exc:
        if engine == "onnxruntime" or int8:
            if isinstance(exc, FeaturebankError):
                raise
            raise FeaturebankError(f"the onnxruntime engine failed ({type(exc).__name__}: {first_line(exc)})") from None
        prepared.note = f"using the torch engine: {exc}"
        return _torch_engine(settings, build_model, device)


def _torch_engine(settings, build_model, device) -> TorchEngine:
    from embedder.backbones.features import resolve_device

    return TorchEngine(build_model(), settings, resolve_device(device))


def _onnx_engine(settings, store, build_model, batch_size, calibration, prepared) -> OnnxEngine:
    import_onnxruntime()
    name = onnx_name(settings)
    found = store.find_model(name)
    if found is None:
        if settings.precision == "int8":
            from .quantize import build_int8

            if settings.int8 is not None and settings.int8.scheme == "auto":
                raise InvalidValue("int8 scheme auto: choose it first (embedder.engines.engine.prepare_int8)")

            if calibration is None or _calibration_fixed(calibration):
                raise MissingFile(
                    f"the int8 engine {name} is not in {store.folder}: it is made when its cache is "
                    f"first extracted, from that input's images; without it, these int8 rows "
                    f"cannot be reproduced (extract into a new cache to calibrate anew)"
                )
            fp32 = _onnx_engine(settings_fp32(settings), store, build_model, batch_size, None, prepared)
            started = time.perf_counter()
            build_int8(fp32, settings, store, name, calibration(), OnnxEngine)
            prepared.steps.append(f"calibrated int8 in {time.perf_counter() - started:.1f} s")
        else:
            from .export import export_onnx

            started = time.perf_counter()
            tmp = store.new_model_path(name)
            try:
                export_onnx(build_model(), settings, tmp)
                store.save_model(name, tmp, {"settings": settings.to_dict(), "kind": "fp32", "versions": _versions()})
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            prepared.steps.append(f"exported to ONNX in {time.perf_counter() - started:.1f} s")
        prepared.seconds += time.perf_counter() - started
        found = store.find_model(name)
        if found is None:
            raise FileProblem(f"the engine file {store.model_path(name)} could not be written")
    path, meta = found
    return OnnxEngine(path, settings, meta=meta)


@dataclass(frozen=True)
class Calibration:
    """The int8 calibration images, decoded only when called (an engine found in the store never needs them).
    ``fixed``: the engine was named by a bundle or another cache, so it is found, never calibrated anew."""

    batches: Callable[[], list | None]
    fixed: bool = False

    def __call__(self) -> list | None:
        return self.batches()


def _calibration_fixed(calibration) -> bool:
    """A calibration that may not be drawn anew (a bundle's or another cache's int8 engine is wanted)."""
    return getattr(calibration, "fixed", False)


def settings_fp32(settings: ExtractionSettings) -> ExtractionSettings:
    from dataclasses import replace

    return replace(settings, precision="fp32", int8=None)


def _versions() -> dict:
    return {p: version_of(p) for p in ("torch", "torchvision", "timm", "onnx", "onnxruntime")}


def _choice_key(batch_size: int) -> dict:
    return {"cpu": cpu_name(), "batch_size": batch_size, "versions": _versions()}


def _recorded_choice(meta: dict | None, batch_size: int) -> str | None:
    known = (meta or {}).get("choice") or {}
    if not isinstance(known, dict):  # a hand-edited sidecar: no choice recorded
        return None
    return known.get("engine") if all(known.get(k) == v for k, v in _choice_key(batch_size).items()) else None


def _measure(engines: dict, n: int, crop: int, prepared: Prepared) -> tuple[int, float, dict]:
    """Both engines on ``n`` random images (warm-up and agreement), then timed three times. Out of memory (a big
    --crop) halves ``n``, as the extraction loop does, and the run's batches start at the size that fitted
    (``prepared.max_batch``). Returns the size measured, the worst disagreement and the images per second."""
    from .guard import first_line, is_out_of_memory, release_cached_memory

    while True:
        try:
            images = np.random.default_rng(0).integers(0, 256, (n, 3, crop, crop), dtype=np.uint8)
            outputs = {name: engine(images) for name, engine in engines.items()}  # also the warm-up
            ort, ref = outputs["onnxruntime"], outputs["torch"]
            worst = max(
                float((np.abs(ort[k] - ref[k]).max(1) / np.maximum(np.abs(ref[k]).max(1), 1e-12)).max()) for k in ref
            )
            del ort, ref
            del outputs
            rates = dict.fromkeys(engines, 0.0)
            for _ in range(3):
                for name, engine in engines.items():
                    t = time.perf_counter()
                    engine(images)
                    rates[name] = max(rates[name], round(n / (time.perf_counter() - t), 2))
            return n, worst, rates
        except FeaturebankError:
            raise
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            images = outputs = None
            release_cached_memory()
            if n == 1:
                raise FeaturebankError(
                    f"out of memory on a single image of {crop} x {crop} while measuring the "
                    f"engines ({first_line(exc)}): use a smaller --crop"
                ) from None
            n //= 2
            prepared.max_batch = n
            sys.stderr.write(
                f"featurebank: out of memory measuring the engines on {2 * n} images of {crop} x {crop}: "
                f"measuring on {n}, and embedding in batches of {n}\n"
            )


def _measured_choice(settings, store, ort_engine, build_model, batch_size, prepared) -> Engine:
    """The faster of ONNX Runtime and torch for these settings on this CPU, measured once (interleaved, best of
    three, at the run's batch size up to 16) and recorded for this CPU, batch size and library versions. The two
    engines' outputs are compared on the way: ONNX Runtime is used only if it agrees with torch within 1e-4."""
    known = _recorded_choice(ort_engine.meta, batch_size)
    if known == "onnxruntime":
        return ort_engine
    started = time.perf_counter()
    torch_engine = _torch_engine(settings, build_model, "cpu")
    engines = {"onnxruntime": ort_engine, "torch": torch_engine}
    n, worst, rates = _measure(engines, max(1, min(batch_size, 16)), settings.preprocessing.crop, prepared)
    chosen = max(rates, key=lambda name: rates[name]) if worst < 1e-4 else "torch"
    choice = {
        **_choice_key(batch_size),
        "images_per_second": rates,
        "agreement": worst,
        "engine": chosen,
        "measured_on": n,
    }
    store.update_meta(onnx_name(settings), choice=choice)
    ort_engine.meta["choice"] = choice
    prepared.seconds += time.perf_counter() - started
    prepared.steps.append(
        f"measured onnxruntime {rates['onnxruntime']} vs torch {rates['torch']} images/s"
        + ("" if worst < 1e-4 else f" (they disagree by {worst:.1e}: torch)")
        + f": {chosen}"
    )
    return torch_engine if chosen == "torch" else ort_engine


@dataclass
class Int8Choice:
    """What ``prepare_int8`` decided: the settings to extract with (int8 with a scheme, or fp32), each scheme tried
    with its mean cosine to fp32 on the calibration images, and the line said to the user when it fell back."""

    settings: ExtractionSettings
    tried: list[dict] = field(default_factory=list)  # {scheme, cosine}
    note: str | None = None

    @property
    def int8(self) -> bool:
        return self.settings.precision == "int8"


def prepare_int8(
    settings: ExtractionSettings,
    store: EngineStore,
    build_model,
    calibration,
    prepared: Prepared | None = None,
    *,
    batch_size: int = BATCH_SIZE,
    force: bool = False,
    cpu: CpuInfo | None = None,
) -> Int8Choice:
    """int8 ``settings`` whose scheme is ``auto`` → the scheme this CPU keeps, its engine in the store. The CPU's
    ladder (``quantize.ladder``) is tried in order, calibrating once; the first whose cosine to fp32 on the
    calibration images reaches the guard's bounds (``quantize.holds``: mean and worst image) is kept. If none does: fp32 settings, with a note saying
    that int8 would cost accuracy on this CPU; ``force`` keeps the int8 scheme of the best cosine instead. The
    decision is recorded in the store (per settings, CPU flags and ONNX Runtime version), so a rerun or another
    cache of the same input decides alike without calibrating. A scheme asked for by name is built as asked
    (a note when it misses the bound)."""
    from .quantize import COSINE_BOUND, WORST_BOUND, bound_text, build_int8, holds, ladder, mean_cosine, worst_cosine

    prepared = prepared if prepared is not None else Prepared()
    cpu = cpu or host.current_cpu()
    asked = settings.int8
    if asked is None:
        raise InvalidValue("prepare_int8 takes int8 settings")
    key = {
        "settings": settings.to_dict(),
        "cpu": cpu.to_dict()["flags"],
        "kind": cpu.int8_kind,
        "bound": [COSINE_BOUND, WORST_BOUND],
        "force": force,
        "onnxruntime": version_of("onnxruntime"),
    }
    choice = store.record(
        "int8-choice", key, lambda v: Int8Choice(ExtractionSettings.from_dict(v["settings"]), v["tried"], v.get("note"))
    )
    if choice is not None and (not choice.int8 or store.find_model(onnx_name(choice.settings)) is not None):
        if choice.note:
            prepared.note = choice.note
        return choice
    rungs = ladder(cpu) if asked.scheme == "auto" else ((asked.scheme, asked.fp32_layers),)
    schemes = [replace(asked, scheme=s, fp32_layers=n) for s, n in rungs]
    candidates = [replace(settings, int8=q) for q in schemes]
    import_onnxruntime()
    started = time.perf_counter()
    batches = None
    ranges = store.new_model_path("int8-ranges")
    os.unlink(ranges)  # quantize_static writes the activation ranges of the first calibration here
    tried: list[dict] = []
    cosines: list[float] = []
    passed: list[bool] = []
    chosen: int | None = None
    try:
        for i, (q, candidate) in enumerate(zip(schemes, candidates)):
            name = onnx_name(candidate)
            found = store.find_model(name)
            if found is not None:
                meta = found[1]
            else:
                if calibration is None or _calibration_fixed(calibration):
                    raise MissingFile(
                        f"the int8 engine {name} is not in {store.folder}: it is made when its cache is first "
                        f"extracted, from that input's images"
                    )
                if batches is None:
                    batches = list(calibration())
                fp32 = _onnx_engine(settings_fp32(settings), store, build_model, batch_size, None, prepared)
                t = time.perf_counter()
                meta = build_int8(fp32, candidate, store, name, batches, OnnxEngine, ranges)
                prepared.steps.append(
                    f"calibrated int8 {q.name} in {time.perf_counter() - t:.1f} s: cosine to fp32 mean "
                    f"{mean_cosine(meta['cosine_to_fp32']):.4f}, worst {worst_cosine(meta['cosine_to_fp32']):.4f}"
                )
            agreement = meta["cosine_to_fp32"]
            cosines.append(mean_cosine(agreement))
            passed.append(holds(agreement))
            tried.append({"scheme": q.name, "cosine": cosines[-1], "worst": worst_cosine(agreement)})
            if passed[-1]:
                chosen = i
                break
    finally:
        if os.path.exists(ranges):
            os.unlink(ranges)
    prepared.seconds += time.perf_counter() - started
    images = (store.sidecar(onnx_name(candidates[0])) or {}).get("calibration", {}).get("images", "?")
    said = ", ".join(f"{t['scheme']} {t['cosine']:.4f} / {t['worst']:.4f}" for t in tried)
    note = None
    if chosen is None:
        best = max(range(len(cosines)), key=lambda i: cosines[i])
        if force or asked.scheme != "auto":
            chosen = best
            note = (
                f"int8 {schemes[best].name} kept ({'--force-int8' if force else 'asked by name'}) although its "
                f"cosine to fp32 on the {images} calibration images (mean / worst) is {cosines[best]:.4f} / "
                f"{tried[best]['worst']:.4f}, under the bound ({bound_text()}) on this CPU ({cpu.int8_kind}): "
                f"expect a less accurate classifier"
            )
        else:
            note = (
                f"int8 would cost accuracy on this CPU ({cpu.int8_kind}): cosine to fp32 on the {images} "
                f"calibration images (mean / worst) {said}, none within the bound ({bound_text()}); using fp32 "
                f"(--force-int8 keeps int8)"
            )
    elif len(tried) > 1:
        note = (
            f"int8 fell back to {schemes[chosen].name} on this CPU ({cpu.int8_kind}): cosine to fp32 on the "
            f"{images} calibration images (mean / worst) {said} (bound: {bound_text()})"
        )
    result = settings_fp32(settings) if chosen is None else candidates[chosen]
    choice = Int8Choice(result, tried, note)
    if choice.int8:
        store.update_meta(
            onnx_name(result),
            int8_choice={"tried": tried, "bound": [COSINE_BOUND, WORST_BOUND], "cpu": cpu.to_dict()},
        )
    store.put_record("int8-choice", key, {"settings": result.to_dict(), "tried": tried, "note": note})
    if note:
        prepared.note = note
    return choice
