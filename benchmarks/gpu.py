"""GPU extraction and fine-tuning, measured on one GPU machine by one command: is it correct, saturated, robust?

Run it on a machine with an NVIDIA GPU (torch must see it: ``python -c "import torch; print(torch.cuda.is_available())"``),
in a checkout of featurebank with its test extra installed (``pip install -e ".[test]"``).

  1. Optional, for real photos and weights (else it draws its images and fine-tunes a random network):
         python benchmarks/gpu.py --prepare
     copies 40 ants-and-bees photos, 800 flowers training photos (160 a class), the flowers val photos and the
     MobileNetV2 ImageNet checkpoint from the sample (--samples DIR, default samples/: docs/offline.md fetches it)
     into benchmarks/gpu_assets/ (git-ignored, about 35 MB).
  2. The run (at most about 8 minutes: --budget bounds it, default 450 s):
         python benchmarks/gpu.py --out runs/gpu
     It synthesizes 20,000 ImageNet-size JPEGs and 512 12-megapixel photos from the assets' photos (repeated,
     rescaled, re-encoded), runs every section in its own forked process with its own time box (one failing or
     hanging section records its error and the rest still runs), and stops starting sections when the budget is
     spent. After each section it writes gpu_results.json, gpu_results.md and gpu_log.txt into --out (default: the
     OUT environment variable, if set); at the end it writes its section (the GPU's name, the date, the table,
     the verdict) at the end of benchmarks/RESULTS.md, replacing an earlier one (--results FILE: elsewhere).
  3. Sections that failed: fix, then rerun only them and merge both runs' results into benchmarks/RESULTS.md (a
     rerun section replaces the first run's):
         python benchmarks/gpu.py --only vectors,oom --budget 200 --out runs/gpu-rerun
         python benchmarks/gpu.py --record runs/gpu/gpu_results.json runs/gpu-rerun/gpu_results.json
  A dry run on a CPU, writing nothing tracked (about 50 CPU-seconds):
         OMP_NUM_THREADS=1 python benchmarks/gpu.py --tiny --results runs/gpu-tiny.md

What it measures (sections, in this order): env (device, versions, TF32 defaults); synth (the images); vectors
(fp32 on the device against the CPU with TF32 off and on, bf16 and fp16 cosines to fp32, their caches apart);
model (the engine alone at batch 256 in bf16: data already on the GPU, from pinned and from pageable memory);
decode (Pillow decoding alone on all cores: the default workers, threads, the old cap of 8); nvjpeg
(``torchvision.io.decode_jpeg`` on the GPU, batched, with resize and crop); extract (``featurebank extract``
end to end, a whole process, on 20,000 images and on the 12 MP photos); oom (a memory cap forces out-of-memory:
the batch halves and every row is kept); devices (``--device cuda:0``, ``auto``, a missing GPU); finetune (CPU
fp32 against GPU bf16 on the flowers subset); tests (a device-independent subset of the suite); compile
(``torch.compile``, its compile time counted); probe (the tuned linear probe's sweep with its products on the GPU
against numpy on the CPU: the same C and objective, the seconds). Then the verdict: which of model and decoding is the limit, and
whether end to end reaches 0.8 x the model alone (or 0.9 x decoding when decoding is the limit).

``--tiny`` runs the same code on a CPU in about 50 CPU-seconds (one math thread): 48 small images, resnet18 and
MobileNetV2 at 32 px, fp32 (bf16, emulated, where a section compares precisions); CUDA-only sections are
reported as skipped with the reason. tests/test_gpu_script.py runs it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import pathlib
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SAMPLES = ROOT / "samples"  # as docs/offline.md makes it
SHARED = ROOT.parent / "shared"  # the same photos, laid out as data/ and weights/
ASSETS = ROOT / "benchmarks" / "gpu_assets"
CHECKPOINT = "mobilenet_v2-imagenet.pth"
MARK = "gpu.py"  # the section of RESULTS.md: <!-- gpu.py: begin --> ... <!-- gpu.py: end -->
FP32_TOLERANCE = 1e-4  # max |device - cpu| / max |cpu| per row, as the ONNX engine's agreement with torch
COSINE_TARGET = 0.999


# --------------------------------------------------------------------------------------------------------------
# what a run does, full or tiny
@dataclass(frozen=True)
class Plan:
    tiny: bool
    images: int  # the ImageNet-size set
    variants: int  # distinct JPEGs among them (the others repeat their bytes under other names)
    size: tuple[int, int]  # their size before a random rescale of 0.7 to 1.3
    big: int  # large photos
    big_batch: int  # their batch (one DataLoader worker decodes a whole batch: 256 of them would be one worker's)
    big_variants: int
    big_size: tuple[int, int]
    models: tuple[str, ...]
    resize: int | None
    crop: int | None
    batch: int
    precision: str
    vector_images: int
    vector_models: tuple[str, ...]  # the first uses the MobileNetV2 checkpoint when the assets have it
    oom_images: int
    oom_batch: int
    oom_limit_gib: float
    finetune_train: int  # a class
    finetune_test: int  # a class
    epochs: int
    finetune_batch: int
    budget: float  # seconds for the whole run
    seconds: float  # each timed loop
    test_files: tuple[str, ...]


FULL = Plan(
    tiny=False,
    images=20_000,
    variants=400,
    size=(500, 375),
    big=512,
    big_batch=32,
    big_variants=8,
    big_size=(4000, 3000),
    models=("resnet50", "vit_b_16"),
    resize=None,
    crop=None,
    batch=256,
    precision="bf16",
    vector_images=256,
    vector_models=("mobilenet_v2", "resnet50"),
    oom_images=2048,
    oom_batch=1024,
    oom_limit_gib=3.0,
    finetune_train=160,
    finetune_test=1000,
    epochs=2,
    finetune_batch=32,
    budget=450,
    seconds=4.0,
    test_files=(
        "tests/test_decode.py",
        "tests/test_guard.py",
        "tests/test_extract.py",
        "tests/test_engines.py",
        "tests/test_sources.py",
    ),
)
TINY = Plan(
    tiny=True,
    images=48,
    variants=12,
    size=(160, 120),
    big=4,
    big_batch=2,
    big_variants=1,
    big_size=(1600, 1200),
    models=("resnet18",),
    resize=40,
    crop=32,
    batch=16,
    precision="fp32",
    vector_images=16,
    vector_models=("mobilenet_v2",),
    oom_images=64,
    oom_batch=32,
    oom_limit_gib=0.5,
    finetune_train=6,
    finetune_test=3,
    epochs=1,
    finetune_batch=8,
    budget=75,
    seconds=0.5,
    test_files=(),
)

# name, time box (full, tiny) in seconds, needs CUDA, needs the synthesized images
SECTIONS = [
    ("env", (30, 20), False, False),
    ("synth", (60, 20), False, False),
    ("vectors", (60, 25), False, True),
    ("model", (45, 15), False, False),
    ("decode", (45, 15), False, True),
    ("nvjpeg", (30, 10), False, True),
    ("extract", (100, 30), False, True),
    ("oom", (40, 10), True, True),
    ("devices", (40, 20), False, True),
    ("finetune", (110, 40), False, False),
    ("tests", (75, 10), False, False),
    ("compile", (120, 20), False, False),
    ("probe", (45, 15), False, False),  # last: the newest, never at the cost of the sections before it
]
MIN_START = 8  # seconds: a section is not started with less left


@dataclass
class Ctx:
    plan: Plan
    work: pathlib.Path
    assets: pathlib.Path
    cuda: bool = False
    deadline: float = float("inf")  # time.monotonic() by which the running section should be done
    found: dict = field(default_factory=dict)  # rows of earlier sections, by key

    @property
    def device(self) -> str:
        return "cuda" if self.cuda else "cpu"

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def images(self, name: str) -> list[str]:
        listed = self.work / f"{name}.txt"
        return listed.read_text().split("\n") if listed.exists() else []

    def checkpoint(self) -> str | None:
        path = self.assets / CHECKPOINT
        return str(path) if path.exists() else None

    def size_args(self) -> dict:
        return {"resize": self.plan.resize, "crop": self.plan.crop}


class Rows:
    """A section's measurements, written to its file after each one (a section killed at its time box keeps
    what it measured)."""

    def __init__(self, path: pathlib.Path):
        self.path, self.rows = path, []

    def add(self, key: str, value, unit: str = "", note: str = "", check: bool | None = None) -> None:
        if isinstance(value, (np.floating, np.integer, np.bool_)):
            value = value.item()
        if isinstance(value, float):
            value = float(f"{value:.6g}")
        self.rows.append(
            {"key": key, "value": value, "unit": unit, "note": note, "check": None if check is None else bool(check)}
        )
        print(f"  {key}: {value} {unit} {'' if check is None else ('(ok)' if check else '(MISSED)')}", flush=True)
        self.path.write_text(json.dumps(self.rows))


def say(text: str) -> None:
    print(f"[gpu.py {time.strftime('%H:%M:%S')}] {text}", flush=True)


# --------------------------------------------------------------------------------------------------------------
# helpers shared by sections
def cores() -> int:
    from embedder.engines.engine import cpu_cores

    return cpu_cores()


def sync(device) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def rate(step, per_call: int, seconds: float, device="cpu", warmup: int = 2, deadline: float = float("inf")) -> float:
    """Images per second of ``step()`` (``per_call`` images), after ``warmup`` calls, over ``seconds`` or at least
    three calls, whichever is longer (stopping early at ``deadline``)."""
    for _ in range(warmup):
        step()
    sync(device)
    calls, started = 0, time.perf_counter()
    while calls < 3 or (time.perf_counter() - started < seconds and time.monotonic() < deadline):
        step()
        calls += 1
    sync(device)
    return per_call * calls / (time.perf_counter() - started)


def resolved(ctx: Ctx, backbone: str, weights: str | None, precision: str):
    """Settings and dims exactly as ``extract`` resolves them (resize/crop of the plan)."""
    from embedder.resolve import Request, resolve

    return resolve(Request(backbone=backbone, weights=weights or "none", precision=precision, **ctx.size_args()))


def torch_engine(ctx: Ctx, backbone: str, precision: str, device, **kw):
    from embedder.backbones.registry import load_backbone
    from embedder.engines.engine import TorchEngine

    r = resolved(ctx, backbone, "none", precision)
    model = load_backbone(backbone, "none", 0, **ctx.size_args()).model
    return TorchEngine(model, r.settings, device, **kw)


def cli_here(args: list[str]) -> tuple[int, dict | None, str]:
    """``featurebank ARGS`` in this process (click's test runner): (exit code, its --json output, stderr)."""
    from click.testing import CliRunner

    import cli as featurebank

    result = CliRunner().invoke(featurebank.main, args)
    try:
        err = result.stderr
    except ValueError:  # an older click mixes stderr into the output
        err = result.output
    text = result.stdout
    parsed = None
    if result.exit_code == 0 and "{" in text:
        with contextlib.suppress(json.JSONDecodeError):
            parsed = json.loads(text[text.index("{") :])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        err += f"\n{type(result.exception).__name__}: {result.exception}"
    return result.exit_code, parsed, err


def cli(args: list[str], timeout: float) -> tuple[int, dict | None, str, float]:
    """``featurebank ARGS`` as a user runs it, a whole process: (exit code, its --json output, stderr, seconds)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "cli", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=max(1.0, timeout),
            check=False,
        )
    except subprocess.TimeoutExpired:
        return -9, None, f"stopped at its time box ({timeout:.0f} s)", time.perf_counter() - started
    seconds = time.perf_counter() - started
    parsed = None
    if done.returncode == 0:
        try:
            parsed = json.loads(done.stdout)
        except json.JSONDecodeError:
            parsed = None
    return done.returncode, parsed, done.stderr, seconds


def compare(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """(max |a-b|, max over rows of max|a-b| / max|a|, min cosine)."""
    diff = np.abs(a.astype(np.float64) - b)
    rel = diff.max(1) / np.maximum(np.abs(a).max(1), 1e-12)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    return float(diff.max()), float(rel.max()), float(cos.min())


def rows_by_path(cache: str) -> dict[str, np.ndarray]:
    from embedder.cache.hdf5 import CacheReader

    reader = CacheReader(cache)
    features = reader.features()
    return {p: features[i] for i, p in enumerate(reader.paths)}


def paired(a: dict, b: dict) -> tuple[np.ndarray, np.ndarray]:
    keys = sorted(set(a) & set(b))
    return np.stack([a[k] for k in keys]), np.stack([b[k] for k in keys])


# --------------------------------------------------------------------------------------------------------------
# sections: each fills its Rows; an exception fails the section only
def section_env(ctx: Ctx, out: Rows) -> None:
    import torch
    import torchvision

    from embedder.engines.engine import cpu_name

    out.add("cuda", bool(torch.cuda.is_available()), note="torch.cuda.is_available()")
    out.add(
        "device",
        torch.cuda.get_device_name(0) if torch.cuda.is_available() else cpu_name(),
        note="torch.cuda.get_device_name() (the CPU's name without a GPU)",
    )
    out.add("cpu", cpu_name())
    out.add("cores", cores())
    out.add("torch", torch.__version__)
    out.add("torchvision", torchvision.__version__)
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out.add("gpus", torch.cuda.device_count())
        out.add("gpu_memory", round(props.total_memory / 2**30, 1), "GiB")
        out.add("capability", f"{props.major}.{props.minor}")
        out.add("cuda_version", str(torch.version.cuda))
        out.add("cudnn", str(torch.backends.cudnn.version()))
    conv = getattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision", None)
    out.add(
        "tf32_default",
        str(conv) if conv is not None else str(torch.backends.cudnn.allow_tf32),
        note="cuDNN fp32 convolutions by default (tf32: TF32); extraction turns it off for fp32 (tf32_off)",
    )
    try:
        with open("/proc/meminfo") as fh:
            out.add("ram", round(int(fh.readline().split()[1]) / 2**20, 1), "GiB")
    except OSError:
        pass


def _sources(ctx: Ctx) -> list:
    """PIL images to synthesize from: the assets' photos, or drawn ones (CI has no assets)."""
    from PIL import Image

    folder = ctx.assets / "photos"
    files = sorted(folder.glob("*.jpg")) if folder.is_dir() else []
    if files:
        return [Image.open(f).convert("RGB") for f in files[:40]]
    rng = np.random.default_rng(0)
    out = []
    for i in range(8):
        h, w = 375, 500
        yy, xx = np.mgrid[0:h, 0:w]
        arr = np.stack([(xx * (c + 1 + i) + yy * (3 - c) + rng.integers(0, 255)) % 256 for c in range(3)], -1)
        arr = (arr + rng.integers(0, 60, arr.shape)).clip(0, 255).astype(np.uint8)
        out.append(Image.fromarray(arr, "RGB"))
    return out


def _variant(image, size, seed: int, noise: bool) -> bytes:
    """One JPEG: ``image`` rescaled (0.7 to 1.3 of ``size``), cropped, maybe mirrored, at a quality of 80 to 95."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.7, 1.3) if not noise else 1.0
    w, h = max(16, int(size[0] * scale)), max(16, int(size[1] * scale))
    im = image.resize((int(w * 1.1), int(h * 1.1)), Image.BILINEAR)
    left, top = int(rng.integers(0, im.width - w + 1)), int(rng.integers(0, im.height - h + 1))
    im = im.crop((left, top, left + w, top + h))
    if rng.random() < 0.5:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    if noise:  # an upscaled photo is smooth; camera noise makes it decode (and weigh) like a real one
        arr = np.asarray(im, dtype=np.int16) + rng.integers(-6, 7, (h, w, 3), dtype=np.int16)
        im = Image.fromarray(arr.clip(0, 255).astype(np.uint8), "RGB")
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=int(rng.integers(80, 91 if noise else 96)))
    return buf.getvalue()


def section_synth(ctx: Ctx, out: Rows) -> None:
    from concurrent.futures import ThreadPoolExecutor

    p = ctx.plan
    sources = _sources(ctx)
    from_assets = (ctx.assets / "photos").is_dir()
    with ThreadPoolExecutor(cores()) as pool:
        for name, count, variants, size, noise, classes in (
            ("imagenet", p.images, p.variants, p.size, False, 10),
            ("big", p.big, p.big_variants, p.big_size, True, 1),
        ):
            started = time.perf_counter()
            blobs = list(pool.map(lambda i: _variant(sources[i % len(sources)], size, i, noise), range(variants)))
            folder = ctx.work / name
            paths = []
            for i in range(count):
                path = folder / f"c{i % classes:02d}" / f"{i:05d}.jpg"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(blobs[i % variants])
                paths.append(str(path))
            (ctx.work / f"{name}.txt").write_text("\n".join(paths))
            mb = sum(len(blobs[i % variants]) for i in range(count)) / 1e6
            origin = f"from {len(sources)} hymenoptera photos" if from_assets else "drawn patterns"
            out.add(
                f"synth.{name}.images",
                count,
                "files",
                f"{variants} distinct JPEGs of about {size[0]}x{size[1]} ({origin}), {mb / count * 1000:.0f} KB a "
                f"file on average, {time.perf_counter() - started:.1f} s to make; in the page cache when read",
            )
    first = ctx.images("imagenet")[: p.vector_images]
    (ctx.work / "vec.txt").write_text("\n".join(first))
    (ctx.work / "oom.txt").write_text("\n".join(ctx.images("imagenet")[: p.oom_images]))


def section_vectors(ctx: Ctx, out: Rows) -> None:
    """fp32 on the device against the CPU (TF32 off, as extraction runs, and on, to show why), bf16 and fp16
    against fp32 on the device, and that each precision has its own cache file (rows of their own)."""
    import torch

    from embedder.job import extract

    p = ctx.plan
    listing = str(ctx.work / "vec.txt")
    dev = ctx.device
    for i, backbone in enumerate(p.vector_models):
        weights = ctx.checkpoint() if i == 0 and ctx.checkpoint() else "none"
        what = f"{backbone} ({'ImageNet checkpoint' if weights != 'none' else 'random weights'})"
        folder = ctx.work / f"vectors-{backbone}"

        def run(device, precision, tag):  # a cache folder each: equal settings would otherwise reuse the rows
            s = extract(
                listing,
                cache_dir=str(folder / tag),
                backbone=backbone,
                weights=weights,
                precision=precision,
                device=device,
                engine="torch",
                batch_size=32,
                workers=0,
                **ctx.size_args(),
            )
            return s, rows_by_path(s.cache)

        cpu_summary, cpu_rows = run("cpu", "fp32", "cpu")
        # the reference on the CPU; "the device" is the GPU, or the CPU again in --tiny (then the rows are equal)
        dev_summary, dev_rows = run(dev, "fp32", "dev") if dev != "cpu" else run("cpu", "fp32", "cpu-again")
        a, b = paired(cpu_rows, dev_rows)
        mx, rel, cos = compare(a, b)
        out.add(f"vectors.{backbone}.fp32.rows", len(a), "rows", f"{what}: rows compared, {dev} fp32 vs cpu fp32")
        out.add(f"vectors.{backbone}.fp32.max_abs", mx, "", f"{what}: max |{dev} - cpu|, fp32, TF32 off")
        out.add(
            f"vectors.{backbone}.fp32.max_rel",
            rel,
            "",
            f"{what}: max over rows of max|{dev} - cpu| / max|cpu| (tolerance {FP32_TOLERANCE:g})",
            check=rel <= FP32_TOLERANCE,
        )
        if dev != "cpu":
            engine_info = dev_summary.engine
            out.add(
                f"vectors.{backbone}.fp32.tf32_recorded",
                str(engine_info.get("tf32")),
                "",
                "the engine's description in the cache records tf32",
            )
            from embedder.backbones.registry import load_backbone
            from embedder.engines.engine import TorchEngine
            from embedder.inputs.batches import ImageDataset, batches

            r = resolved(ctx, backbone, weights, "fp32")
            model = load_backbone(backbone, weights, 0, **ctx.size_args()).model
            on = TorchEngine(model, r.settings, torch.device(dev), tf32=True)
            keys = sorted(cpu_rows)
            full = ctx.images("vec")
            data = ImageDataset(full, r.settings.preprocessing)
            got = np.concatenate([on(bt.images)[r.settings.layers[0]] for bt in batches(data, 32, 0)])
            names = {os.path.basename(f): j for j, f in enumerate(full)}
            order = [names[os.path.basename(k)] for k in keys]
            _, rel_on, _ = compare(np.stack([cpu_rows[k] for k in keys]), got[order])
            out.add(
                f"vectors.{backbone}.fp32_tf32.max_rel",
                rel_on,
                "",
                f"{what}: the same with TF32 on (cuDNN's default): why fp32 extraction turns it off",
            )
        same = os.path.basename(dev_summary.cache) == os.path.basename(cpu_summary.cache)
        out.add(
            f"vectors.{backbone}.fp32.same_cache_name",
            same,
            "",
            f"fp32 on {dev} and on the CPU: the same settings, hence the same cache file name (interchangeable rows)",
            check=same,
        )
        paths = {"fp32": os.path.basename(dev_summary.cache)}
        for precision in ("bf16", "fp16"):
            if precision == "fp16" and dev == "cpu":
                out.add(f"vectors.{backbone}.fp16.cosine_min", "skipped", "", "fp16 needs a GPU")
                continue
            s, low = run(dev, precision, precision)
            paths[precision] = os.path.basename(s.cache)
            a, b = paired(dev_rows, low)
            _, rel, cos = compare(a, b)
            out.add(
                f"vectors.{backbone}.{precision}.cosine_min",
                cos,
                "",
                f"{what}: min cosine of {dev} {precision} to {dev} fp32 over {len(a)} rows (target {COSINE_TARGET})",
                check=cos >= COSINE_TARGET,
            )
        out.add(
            f"vectors.{backbone}.own_caches",
            len(set(paths.values())) == len(paths),
            "",
            f"{', '.join(paths)}: each precision has a cache file name of its own (its settings differ: "
            f"{', '.join(paths.values())})",
            check=len(set(paths.values())) == len(paths),
        )


def section_model(ctx: Ctx, out: Rows) -> None:
    """The engine alone at the plan's batch and precision: uint8 already on the device (normalize + forward +
    features back), then from pinned host memory and from ordinary memory (the copy included)."""
    import torch

    from embedder.backbones.features import embed_uint8

    p = ctx.plan
    dev = torch.device(ctx.device)
    for backbone in p.models:
        if ctx.left() < 5:
            out.add(f"model.{backbone}", "skipped", "", "out of the section's time")
            continue
        engine = torch_engine(ctx, backbone, p.precision, dev)
        prep = engine.settings.preprocessing
        host = np.random.default_rng(0).integers(0, 256, (p.batch, 3, prep.crop, prep.crop), dtype=np.uint8)
        on_dev = torch.from_numpy(host).to(dev)
        what = f"{backbone}, random weights, {p.precision}, batch {p.batch}, channels_last"

        def alone():
            embed_uint8(engine.extractor, on_dev, prep, dev, p.precision, channels_last=True)

        out.add(
            f"model.{backbone}",
            rate(alone, p.batch, p.seconds, dev, deadline=ctx.deadline),
            "images/s",
            f"{what}: uint8 batch already on {dev}",
        )
        if dev.type == "cuda":
            pinned = torch.from_numpy(host).pin_memory()
            out.add(
                f"model.{backbone}.pinned",
                rate(lambda: engine(pinned), p.batch, p.seconds, dev, deadline=ctx.deadline),
                "images/s",
                f"{what}: the engine called on a pinned host batch (copy included)",
            )
            out.add(
                f"model.{backbone}.pageable",
                rate(lambda: engine(host), p.batch, p.seconds, dev, deadline=ctx.deadline),
                "images/s",
                f"{what}: the engine called on a numpy batch (it pins a copy first)",
            )
            out.add(f"model.{backbone}.peak_memory", round(torch.cuda.max_memory_allocated() / 2**30, 2), "GiB")
            if backbone == p.models[0]:
                torch.backends.cudnn.benchmark = True
                out.add(
                    f"model.{backbone}.cudnn_benchmark",
                    rate(alone, p.batch, p.seconds, dev, deadline=ctx.deadline),
                    "images/s",
                    f"{what}: with torch.backends.cudnn.benchmark = True (not set by the engine)",
                )
                torch.backends.cudnn.benchmark = False
        engine = on_dev = None  # freed before the next model
        if dev.type == "cuda":
            torch.cuda.empty_cache()


def _decode_rate(files, prep, batch, workers, pin, device_type, seconds, deadline) -> tuple[float, int]:
    """Images/s of the project's decoding stream (``batches``) for ``seconds``: from its first batch on (the
    steady rate) when there are more than 4 batches, else from its start (workers' start included)."""
    from embedder.inputs.batches import ImageDataset, batches

    started = time.perf_counter()
    stream = batches(ImageDataset(files, prep), batch, workers, pin_memory=pin, device_type=device_type)
    n = 0
    try:
        if len(files) > 4 * batch:
            next(stream)
            started = time.perf_counter()
        for b in stream:
            n += len(b.indices) + len(b.failures)
            if time.perf_counter() - started > seconds or time.monotonic() > deadline:
                break
        return n / (time.perf_counter() - started), n
    finally:
        getattr(stream, "close", lambda: None)()


def section_decode(ctx: Ctx, out: Rows) -> None:
    from embedder.inputs.batches import default_workers

    p = ctx.plan
    r = resolved(ctx, p.models[0], "none", p.precision)
    prep = r.settings.preprocessing
    others = [m for m in p.models[1:] if resolved(ctx, m, "none", p.precision).settings.preprocessing != prep]
    device_type = "cuda" if ctx.cuda else "cpu"
    default = default_workers(device_type)
    n = cores()
    ways = [
        (
            "default",
            default,
            f"the default on {device_type}: " + (f"{default} worker processes" if default else f"{n} decoding threads"),
        )
    ]
    if default:
        ways.append(("threads", 0, f"{n} decoding threads in one process (--workers 0)"))
        if default > 8:
            ways.append(("cap8", 8, "8 worker processes (the old cap)"))
    else:
        ways.append(("processes", n, f"{n} worker processes"))
    for name in ("imagenet", "big"):
        files = ctx.images(name)
        for tag, workers, what in ways:
            if ctx.left() < 3:
                break
            seconds = p.seconds * (1.5 if name == "imagenet" else 1.0)
            batch = p.batch if name == "imagenet" else p.big_batch
            got, counted = _decode_rate(
                files, prep, batch, workers, ctx.cuda and workers > 0, device_type, seconds, ctx.deadline - 1
            )
            out.add(
                f"decode.{name}.{tag}",
                got,
                "images/s",
                f"{what}; {counted} {name} images in batches of "
                f"{batch}, decode + resize {prep.resize} + crop {prep.crop} (Pillow, draft on)",
            )
    if others:
        out.add("decode.note", f"{', '.join(others)} preprocess otherwise; decoding measured with {p.models[0]}'s")


def section_nvjpeg(ctx: Ctx, out: Rows) -> None:
    """``torchvision.io.decode_jpeg`` on the device, batched, then resize and center crop there: what GPU
    decoding would give. Bytes are read into memory first (reading is not timed). Pixels differ from Pillow's."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms.v2 import functional as TF

    from embedder.inputs.batches import ImageDataset

    p = ctx.plan
    dev = torch.device(ctx.device)
    prep = resolved(ctx, p.models[0], "none", p.precision).settings.preprocessing
    for name, chunk in (("imagenet", p.batch), ("big", 16 if not p.tiny else 2)):
        files = ctx.images(name)[: max(chunk * 8, 64)]
        datas = [torch.frombuffer(bytearray(pathlib.Path(f).read_bytes()), dtype=torch.uint8) for f in files]
        chunks = [datas[i : i + chunk] for i in range(0, len(datas), chunk) if len(datas[i : i + chunk]) == chunk]
        state = {"i": 0}

        def decode_only():
            decode_jpeg(chunks[state["i"] % len(chunks)], device=dev, mode=ImageReadMode.RGB)
            state["i"] += 1

        def decode_resize(batch=None):
            images = decode_jpeg(batch or chunks[state["i"] % len(chunks)], device=dev, mode=ImageReadMode.RGB)
            state["i"] += 1
            return torch.stack(
                [TF.center_crop(TF.resize(im, [prep.resize], antialias=True), [prep.crop]) for im in images]
            )

        what = f"batches of {chunk} {name} JPEGs on {dev}"
        out.add(
            f"nvjpeg.{name}.decode",
            rate(decode_only, chunk, p.seconds / 2, dev, deadline=ctx.deadline),
            "images/s",
            f"decode_jpeg, {what}",
        )
        out.add(
            f"nvjpeg.{name}.decode_resize",
            rate(decode_resize, chunk, p.seconds / 2, dev, deadline=ctx.deadline),
            "images/s",
            f"decode_jpeg + resize {prep.resize} + crop {prep.crop}, {what}",
        )
        if name == "imagenet":
            gpu = decode_resize(datas[:16]).cpu().numpy().astype(np.int16)
            pil = np.stack([ImageDataset(files[:16], prep)[i][1] for i in range(16)]).astype(np.int16)
            out.add(
                "nvjpeg.pixels_vs_pillow",
                float(np.abs(gpu - pil).mean()),
                "levels",
                "mean |GPU-decoded - Pillow| pixel difference over 16 images (0..255): GPU decoding would make "
                "rows of its own (other settings), not the same rows faster",
            )


def section_extract(ctx: Ctx, out: Rows) -> None:
    """``featurebank extract`` end to end, a whole process each, as a user runs it."""
    p = ctx.plan
    size = [a for k, v in ctx.size_args().items() if v is not None for a in (f"--{k}", str(v))]
    for backbone in p.models:
        for name in ("imagenet", "big"):
            if ctx.left() < 10 or (p.tiny and name == "big"):
                out.add(
                    f"extract.{backbone}.{name}",
                    "skipped",
                    "",
                    "--tiny: one whole process is enough here; the large photos are decoded in the decode section"
                    if p.tiny
                    else "out of the section's time",
                )
                continue
            cache = ctx.work / f"extract-{backbone}-{name}.h5"
            files = ctx.images(name)
            batch = p.batch if name == "imagenet" else p.big_batch
            code, summary, err, seconds = cli(
                [
                    "extract",
                    str(ctx.work / name),
                    "--cache",
                    str(cache),
                    "-b",
                    backbone,
                    "-w",
                    "none",
                    "--precision",
                    p.precision,
                    "--device",
                    ctx.device,
                    "--engine",
                    "torch",
                    "--batch-size",
                    str(batch),
                    "--json",
                    "-q",
                    *size,
                ],
                ctx.left() - 2,
            )
            what = f"{backbone} {p.precision} batch {batch} on {ctx.device}, {len(files)} {name} images, random weights"
            if code != 0 or summary is None:
                out.add(
                    f"extract.{backbone}.{name}",
                    "failed",
                    "",
                    f"{what}: exit {code}: {(err.strip().splitlines() or ['-'])[-1][:300]}",
                    check=False,
                )
                continue
            out.add(
                f"extract.{backbone}.{name}",
                summary["images_per_second"],
                "images/s",
                f"{what}: the run's own rate (first decode to last batch handed to the writer)",
            )
            out.add(
                f"extract.{backbone}.{name}.process",
                round(len(files) / seconds, 2),
                "images/s",
                f"{what}: the whole process ({seconds:.1f} s, imports and model loading included)",
            )
            out.add(
                f"extract.{backbone}.{name}.rows",
                summary["rows"],
                "rows",
                f"{what}: rows in the cache, {len(summary['failed'])} failed (every image should have a row)",
                check=summary["rows"] == len(files) and not summary["failed"],
            )
            if backbone == p.models[0] and name == "imagenet":
                out.add(
                    "extract.engine",
                    json.dumps(summary.get("engine", {}), sort_keys=True),
                    "",
                    "the engine as the cache records it",
                )
            cache.unlink(missing_ok=True)


def section_oom(ctx: Ctx, out: Rows) -> None:
    """A memory cap (``set_per_process_memory_fraction``) makes a big batch run out of GPU memory: the batch is
    halved until it fits, and every row is kept and equals a run that never ran out."""
    import torch

    from embedder.job import extract

    p = ctx.plan
    listing = str(ctx.work / "oom.txt")
    common = dict(
        backbone=p.models[0], weights="none", precision="fp32", device="cuda", engine="torch", **ctx.size_args()
    )
    ref = extract(listing, str(ctx.work / "oom-ref.h5"), batch_size=64, **common)
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(p.oom_limit_gib * 2**30 / total)
    said = io.StringIO()
    with contextlib.redirect_stderr(said):
        capped = extract(listing, str(ctx.work / "oom.h5"), batch_size=p.oom_batch, **common)
    torch.cuda.set_per_process_memory_fraction(1.0)
    halvings = said.getvalue().count("out of memory on a batch")
    messages = [ln for ln in said.getvalue().splitlines() if "out of memory" in ln]
    out.add(
        "oom.halvings",
        halvings,
        "",
        f"batch {p.oom_batch} under a {p.oom_limit_gib:g} GiB cap: "
        + (messages[-1][:200] if messages else "never ran out (raise the batch or lower the cap)"),
        check=halvings > 0,
    )
    out.add(
        "oom.rows",
        capped.rows,
        "rows",
        f"of {p.oom_images} images, {len(capped.failed)} failed",
        check=capped.rows == p.oom_images and not capped.failed,
    )
    a, b = paired(rows_by_path(ref.cache), rows_by_path(capped.cache))
    _, rel, _ = compare(a, b)
    out.add(
        "oom.max_rel",
        rel,
        "",
        f"rows after halving vs a run at batch 64 (fp32, tolerance {FP32_TOLERANCE:g})",
        check=rel <= FP32_TOLERANCE and len(a) == p.oom_images,
    )


def section_devices(ctx: Ctx, out: Rows) -> None:
    """``extract --device cuda:0`` and ``auto`` (the CLI, in this process) run where they say; a GPU that is not
    there is one clear line."""
    size = [a for k, v in ctx.size_args().items() if v is not None for a in (f"--{k}", str(v))]
    listing = str(ctx.work / "vec.txt")
    n = ctx.plan.vector_images
    good = ["cuda:0", "auto"] if ctx.cuda else ["cpu", "auto"]
    expected = {"cuda:0": "cuda:0", "auto": "cuda" if ctx.cuda else "cpu", "cpu": "cpu"}
    count = int(ctx.found.get("gpus", 0)) if ctx.cuda else 0
    for device in good:
        code, summary, err = cli_here(
            [
                "extract",
                listing,
                "--cache",
                str(ctx.work / f"dev-{device}.h5"),
                "-b",
                ctx.plan.models[0],
                "-w",
                "none",
                "--device",
                device,
                "--engine",
                "torch",
                "--batch-size",
                "8",
                "--json",
                "-q",
                *size,
            ]
        )
        ok = (
            code == 0
            and summary is not None
            and summary["rows"] == n
            and summary["device"].startswith(expected[device])
        )
        out.add(
            f"devices.{device}",
            summary["device"] if summary else f"exit {code}",
            "",
            f"--device {device}: {summary['rows'] if summary else 0} rows of {n}; "
            + (f"ran on {summary['device']}" if summary else (err.strip().splitlines() or ["-"])[-1][:200]),
            check=ok,
        )
    missing = f"cuda:{count}"
    code, _, err = cli_here(
        [
            "extract",
            listing,
            "--cache",
            str(ctx.work / "dev-missing.h5"),
            "-b",
            ctx.plan.models[0],
            "-w",
            "none",
            "--device",
            missing,
            "--json",
            "-q",
            *size,
        ]
    )
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    out.add(
        f"devices.{missing}",
        f"exit {code}",
        "",
        f"--device {missing} (not there): {lines[-1][:200] if lines else '-'}",
        check=code != 0 and len(lines) == 1,
    )


def _finetune_data(ctx: Ctx) -> tuple[pathlib.Path, pathlib.Path, str]:
    """Flowers from the assets (train: up to ``finetune_train`` a class; test: up to ``finetune_test`` a class), or
    drawn three-class images when there are none (CI)."""
    p = ctx.plan
    base = ctx.work / "flowers"
    shutil.rmtree(base, ignore_errors=True)
    flowers = ctx.assets / "flowers"
    if (flowers / "train").is_dir():
        for part, limit in (("train", p.finetune_train), ("test", p.finetune_test)):
            for cls in sorted(d for d in (flowers / part).iterdir() if d.is_dir()):
                (base / part / cls.name).mkdir(parents=True)
                for f in sorted(cls.iterdir())[:limit]:
                    os.symlink(f, base / part / cls.name / f.name)
        return base / "train", base / "test", "flowers (the sample's, via the assets)"
    from PIL import Image

    rng = np.random.default_rng(1)
    for part, limit in (("train", p.finetune_train), ("test", p.finetune_test)):
        for c in range(3):
            (base / part / f"class{c}").mkdir(parents=True)
            for i in range(limit):
                arr = rng.integers(0, 60, (80, 96, 3)) + np.array([[[200, 30, 30], [30, 200, 30], [30, 30, 200]][c]])
                Image.fromarray(arr.clip(0, 255).astype(np.uint8), "RGB").save(base / part / f"class{c}" / f"{i}.jpg")
    return base / "train", base / "test", "drawn images, 3 colour classes (no assets)"


def section_finetune(ctx: Ctx, out: Rows) -> None:
    """Fine-tuning MobileNetV2 (last block + head) on the CPU in fp32 and on the device in bf16, same data and
    seed: the test accuracies should be within a point."""
    from workflows.finetune import finetune

    p = ctx.plan
    train, test, what = _finetune_data(ctx)
    weights = ctx.checkpoint() or "none"
    runs = [(ctx.device, "bf16"), ("cpu", "fp32")]  # the device's first: a CPU run cut by the time box keeps it
    got = {}
    for device, precision in runs:
        tag = f"{device}.{precision}"
        started = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):
            result = finetune(
                str(train),
                str(ctx.work / f"ft-{device}-{precision}"),
                val_split=0.2,
                test=str(test),
                drop_test_copies=True,
                backbone="mobilenet_v2",
                weights=weights,
                unfreeze=1,
                epochs=p.epochs,
                batch_size=p.finetune_batch,
                seed=0,
                device=device,
                precision=precision,
                augment="pixels",  # what this section has always measured (the default, auto, may take views)
                cache_dir=str(ctx.work / f"ft-cache-{device}"),
                **ctx.size_args(),
            )
        seconds = time.perf_counter() - started
        tuned = result.comparison[1]
        got[tag] = tuned["test_accuracy"]
        out.add(
            f"finetune.{tag}.accuracy",
            round(100 * tuned["test_accuracy"], 2),
            "%",
            f"{what}; mobilenet_v2 {'checkpoint' if weights != 'none' else 'random weights'}, last block + "
            f"head, {p.epochs} epoch(s), {result.test_images} test images, best epoch {result.best_epoch}; "
            f"{seconds:.0f} s whole (probe {100 * result.comparison[0]['test_accuracy']:.2f} %)",
        )
    cpu, dev = got["cpu.fp32"], got[f"{ctx.device}.bf16"]
    diff = 100 * (dev - cpu)
    out.add(
        "finetune.difference",
        round(diff, 2),
        "points",
        f"{ctx.device} bf16 - cpu fp32 test accuracy (target: within 1 point)",
        check=abs(diff) <= 1.0,
    )


def section_probe(ctx: Ctx, out: Rows) -> None:
    """The tuned linear probe (``logreg``: its sweep of C on inner folds, then the refit) with its row products on
    the device (``classifiers.solver``'s torch path) against numpy on the CPU's cores, on the same synthetic rows
    (cv_scale.py's: class means plus unit noise, 10 classes): the same C, coefficients within float32 rounding, the
    seconds of each whole fit. --tiny: torch on the CPU against numpy, small rows."""
    from classifiers import solver
    from classifiers.linear import TunedLogisticRegression

    rows, dims, classes = (2_000, 64, 10) if ctx.plan.tiny else (100_000, 1_280, 10)
    rng = np.random.default_rng(0)
    y = rng.integers(0, classes, rows)
    means = (0.06 * rng.standard_normal((classes, dims))).astype(np.float32)
    X = rng.standard_normal((rows, dims), dtype=np.float32) + means[y]
    what = f"{rows:,} x {dims} float32 rows, {classes} classes"
    fitted, seconds = {}, {}
    saved = os.environ.get(solver.SOLVER_DEVICE)
    try:
        for name in ("numpy", ctx.device):
            if ctx.left() < 3:
                out.add(f"probe.{name}.seconds", "skipped", "", "out of the section's time")
                return
            os.environ[solver.SOLVER_DEVICE] = name
            start = time.perf_counter()
            fitted[name] = TunedLogisticRegression().fit(X, y)
            seconds[name] = time.perf_counter() - start
            where = "numpy, every core" if name == "numpy" else f"torch on {name}"
            out.add(f"probe.{name}.seconds", seconds[name], "s", f"{what}: the whole fit, {where}")
    finally:
        if saved is None:
            os.environ.pop(solver.SOLVER_DEVICE, None)
        else:
            os.environ[solver.SOLVER_DEVICE] = saved
    a, b = fitted["numpy"], fitted[ctx.device]
    out.add("probe.same_C", a.C_ == b.C_, "", f"C: numpy {a.C_:g}, {ctx.device} {b.C_:g}", check=a.C_ == b.C_)
    if a.C_ == b.C_:  # the objective at the refit: TF32 products (10-bit) would move it by about 1e-3
        objective = {}
        for name, model in (("numpy", a), (ctx.device, b)):
            p = model.predict_proba(X)[np.arange(rows), np.searchsorted(model.classes_, y)]
            penalty = float((model.coef_.astype(np.float64) ** 2).sum()) / (2 * model.C_ * rows)
            objective[name] = float(-np.log(np.maximum(p, 1e-300)).mean()) + penalty
        gap = abs(objective[ctx.device] - objective["numpy"]) / objective["numpy"]
        out.add(
            "probe.objective_rel",
            gap,
            "",
            f"the refit's objective (mean log-loss + penalty): numpy {objective['numpy']:.6f}",
            check=gap < 1e-5,
        )
        coef_gap = float(np.abs(a.coef_ - b.coef_).max() / np.abs(a.coef_).max())
        out.add("probe.coef_max_rel", coef_gap, "", "max |difference| / max |coefficient|")
    out.add("probe.speedup", seconds["numpy"] / seconds[ctx.device], "x", f"numpy's seconds over {ctx.device}'s")


def section_tests(ctx: Ctx, out: Rows) -> None:
    """The device-independent tests, one file after another while time is left (sized to the time): with a GPU
    there, every test that says ``device="auto"`` runs on it."""
    p = ctx.plan
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    all_passed = True
    for test_file in p.test_files:
        if ctx.left() < 8:
            out.add(f"tests.{pathlib.Path(test_file).stem}", "not run", "", "out of the section's time")
            all_passed = False
            continue
        started = time.perf_counter()
        try:
            done = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf", test_file],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=max(5.0, ctx.left() - 3),
                check=False,
            )
            text, code = done.stdout + done.stderr, done.returncode
        except subprocess.TimeoutExpired as exc:
            text = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            code = -9
        tail = [ln for ln in text.strip().splitlines() if ln.strip()]
        summary = next(
            (ln for ln in reversed(tail) if re.search(r"\d+ (passed|failed)", ln)),
            "stopped at the time box" if code == -9 else (tail[-1] if tail else "-"),
        )
        all_passed &= code == 0
        out.add(
            f"tests.{pathlib.Path(test_file).stem}",
            summary.strip("= ")[:200],
            "",
            f"{test_file} (its fast tier), {time.perf_counter() - started:.0f} s (without real photos there: the "
            f"tests of the real photos skip)",
            check=code == 0,
        )
        for ln in [ln for ln in tail if ln.startswith("FAILED")][:5]:
            out.add("tests.failed", ln[:250])


def section_compile(ctx: Ctx, out: Rows) -> None:
    """``torch.compile`` of the engine's model: the first call's time (compiling) and the steady rate against
    eager; the images after which compiling pays for itself."""
    import torch

    from embedder.backbones.features import embed_uint8

    p = ctx.plan
    dev = torch.device(ctx.device)
    backend = "inductor" if ctx.cuda else "eager"  # inductor on a CPU compiles C++ for minutes: --tiny traces only
    for backbone in p.models:
        if backbone != p.models[0] and ctx.left() < 70:
            out.add(f"compile.{backbone}", "skipped", "", "too little time left in the section for a second compile")
            continue
        engine = torch_engine(ctx, backbone, p.precision, dev)
        prep = engine.settings.preprocessing
        x = torch.from_numpy(
            np.random.default_rng(0).integers(0, 256, (p.batch, 3, prep.crop, prep.crop), dtype=np.uint8)
        ).to(dev)
        what = f"{backbone} {p.precision} batch {p.batch}, backend {backend}"
        eager = rate(
            lambda: embed_uint8(engine.extractor, x, prep, dev, p.precision, channels_last=True),
            p.batch,
            p.seconds,
            dev,
            deadline=ctx.deadline,
        )
        compiled = torch.compile(engine.extractor, backend=backend)
        started = time.perf_counter()
        embed_uint8(compiled, x, prep, dev, p.precision, channels_last=True)
        sync(dev)
        first = time.perf_counter() - started
        fast = rate(
            lambda: embed_uint8(compiled, x, prep, dev, p.precision, channels_last=True),
            p.batch,
            p.seconds,
            dev,
            deadline=ctx.deadline,
        )
        out.add(f"compile.{backbone}.eager", eager, "images/s", what)
        out.add(f"compile.{backbone}.compiled", fast, "images/s", f"{what}: after compiling")
        out.add(f"compile.{backbone}.first_call", round(first, 1), "s", f"{what}: the first call, compiling included")
        gain = 1 / eager - 1 / fast
        out.add(
            f"compile.{backbone}.pays_after",
            round(first / gain) if gain > 0 else "never",
            "images",
            f"{what}: compile time / time saved per image (worth it only for runs longer than this)",
        )
        compiled = engine = None
        torch._dynamo.reset()


FUNCTIONS = {name: globals()[f"section_{name}"] for name, *_ in SECTIONS}


# --------------------------------------------------------------------------------------------------------------
# running sections, each in its own forked process with a time box
def run_section(name: str, ctx: Ctx, box: float, isolate: bool, log: pathlib.Path) -> dict:
    rows_file = ctx.work / "sections" / f"{name}.json"
    rows_file.parent.mkdir(parents=True, exist_ok=True)
    rows_file.unlink(missing_ok=True)
    err_file = rows_file.with_suffix(".error")
    err_file.unlink(missing_ok=True)
    section_log = ctx.work / "sections" / f"{name}.log"
    started = time.monotonic()
    cpu_before = _cpu_seconds()
    ctx.deadline = started + box
    status, error = "ok", ""

    def body():
        rows = Rows(rows_file)
        try:
            FUNCTIONS[name](ctx, rows)
            return 0
        except BaseException as exc:
            err_file.write_text(f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:400]}")
            traceback.print_exc()
            return 1

    if not isolate:
        with open(section_log, "w") as fh, contextlib.redirect_stdout(fh):
            code = body()
        status = "ok" if code == 0 else "failed"
    else:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the section: its own process group, so that a time-out ends its workers and children too
            code = 1
            try:
                os.setpgid(0, 0)
                fd = os.open(section_log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                code = body()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        while True:
            done, wait_status = os.waitpid(pid, os.WNOHANG)
            if done:
                with contextlib.suppress(ProcessLookupError, PermissionError):  # workers it left behind
                    os.killpg(pid, signal.SIGKILL)
                code = os.waitstatus_to_exitcode(wait_status)
                status = "ok" if code == 0 else "failed"
                if code < 0 and not err_file.exists():
                    error = f"killed by signal {-code}"
                break
            if time.monotonic() > ctx.deadline + 3:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                status, error = "timed out", f"stopped at its time box of {box:.0f} s"
                break
            time.sleep(0.1)
    if err_file.exists():
        error = err_file.read_text()
    rows = json.loads(rows_file.read_text()) if rows_file.exists() else []
    text = section_log.read_text(errors="replace") if section_log.exists() else ""
    with open(log, "a") as fh:
        fh.write(f"\n===== {name}: {status} {error}\n{text}")
    if status != "ok":
        for line in text.strip().splitlines()[-15:]:
            print(f"    | {line}", flush=True)
    return {
        "name": name,
        "status": status,
        "seconds": round(time.monotonic() - started, 1),
        "cpu_seconds": round(_cpu_seconds() - cpu_before, 1),
        "error": error,
        "rows": rows,
    }


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (a forked section and whatever it started)."""
    import resource

    return sum(
        getattr(resource.getrusage(who), f)
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        for f in ("ru_utime", "ru_stime")
    )


# --------------------------------------------------------------------------------------------------------------
# the verdict, the table, RESULTS.md
def values(sections: list[dict]) -> dict:
    return {r["key"]: r["value"] for s in sections for r in s["rows"]}


def number(v):
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def verdict(result: dict) -> list[dict]:
    """Which of the model and decoding is the limit, and whether end to end reaches its target, per model."""
    v = values(result["sections"])
    models = result.get("models", [])
    rows = []
    for m in models:
        model, decode, e2e = (
            number(v.get(k)) for k in (f"model.{m}", "decode.imagenet.default", f"extract.{m}.imagenet")
        )
        if None in (model, decode, e2e):
            rows.append({"what": f"{m}: limit and target", "value": "not measured", "target": "", "met": None})
            continue
        limit = "model" if model <= decode else "decoding"
        rows.append(
            {
                "what": f"{m}: the limit (model alone {model:,.0f} vs decoding alone {decode:,.0f} images/s)",
                "value": limit,
                "target": "",
                "met": None,
            }
        )
        if limit == "model":
            ratio = e2e / model
            rows.append(
                {
                    "what": f"{m}: end to end / model alone ({e2e:,.0f} / {model:,.0f})",
                    "value": round(ratio, 3),
                    "target": ">= 0.8",
                    "met": ratio >= 0.8,
                }
            )
        else:
            ratio = e2e / decode
            rows.append(
                {
                    "what": f"{m}: end to end / decoding alone ({e2e:,.0f} / {decode:,.0f})",
                    "value": round(ratio, 3),
                    "target": ">= 0.9 (decoding is the limit)",
                    "met": ratio >= 0.9,
                }
            )
        big, big_decode = number(v.get(f"extract.{m}.big")), number(v.get("decode.big.default"))
        if big is not None and big_decode is not None:
            rows.append(
                {
                    "what": f"{m}: 12 MP photos end to end / decoding alone ({big:,.1f} / {big_decode:,.1f})",
                    "value": round(big / big_decode, 3),
                    "target": "",
                    "met": None,
                }
            )
    gpu_decode, decode = number(v.get("nvjpeg.imagenet.decode_resize")), number(v.get("decode.imagenet.default"))
    if gpu_decode is not None and decode is not None:
        rows.append(
            {
                "what": f"GPU decoding (decode_jpeg + resize) / Pillow on all cores ({gpu_decode:,.0f} / "
                f"{decode:,.0f})",
                "value": round(gpu_decode / decode, 2),
                "target": "",
                "met": None,
            }
        )
    checks = [r for s in result["sections"] for r in s["rows"] if r["check"] is not None]
    rows.append(
        {
            "what": "checks met (correctness, rows kept, devices, tests)",
            "value": f"{sum(r['check'] for r in checks)} of {len(checks)}",
            "target": "all",
            "met": all(r["check"] for r in checks) if checks else None,
        }
    )
    return rows


def fmt(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "/")


def markdown(result: dict) -> str:
    mode = " --tiny" if result["mode"] == "tiny" else ""
    lines = [
        f"<!-- {MARK}{mode}: begin -->",
        f"## GPU extraction and fine-tuning (`python benchmarks/gpu.py{mode}`)",
        "",
        f"Machine: **{result['machine']}** ({result['host']}); {result['date']}; one run of "
        f"{result['seconds']:.0f} s (budget {result['budget']:.0f} s). {result['data']} Images/s are of one run; "
        f"the images were in the page cache.",
        "",
        "| verdict | value | target | met |",
        "|---|--:|---|---|",
    ]
    for r in result["verdict"]:
        lines.append(
            f"| {r['what']} | {fmt(r['value'])} | {r['target']} | "
            f"{'' if r['met'] is None else ('yes' if r['met'] else '**no**')} |"
        )
    lines += ["", "| section | status | seconds | CPU seconds | error |", "|---|---|--:|--:|---|"]
    for s in result["sections"]:
        lines.append(
            f"| {s['name']} | {s['status']} | {s['seconds']} | {s.get('cpu_seconds', '')} | "
            f"{s['error'].replace('|', '/')} |"
        )
    lines += ["", "| measurement | value | unit | what | check |", "|---|--:|---|---|---|"]
    for s in result["sections"]:
        for r in s["rows"]:
            check = "" if r["check"] is None else ("ok" if r["check"] else "**missed**")
            lines.append(f"| {r['key']} | {fmt(r['value'])} | {r['unit']} | {r['note'].replace('|', '/')} | {check} |")
    lines += [f"<!-- {MARK}{mode}: end -->", ""]
    return "\n".join(lines)


def write_results(path: pathlib.Path, text: str, mode: str) -> None:
    """Replace this script's section of ``path`` (or append it at the end)."""
    tag = f"{MARK}{' --tiny' if mode == 'tiny' else ''}"
    old = path.read_text() if path.exists() else ""
    pattern = re.compile(rf"<!-- {re.escape(tag)}: begin -->.*?<!-- {re.escape(tag)}: end -->\n?", re.DOTALL)
    new = pattern.sub(lambda _: text, old) if pattern.search(old) else old.rstrip("\n") + ("\n\n" if old else "") + text
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)


def save(result: dict, out_dir: str | None, results_path: pathlib.Path | None) -> None:
    result["verdict"] = verdict(result)
    text = markdown(result)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        pathlib.Path(out_dir, "gpu_results.json").write_text(json.dumps(result, indent=1))
        pathlib.Path(out_dir, "gpu_results.md").write_text(text)
    if results_path is not None:
        write_results(results_path, text, result["mode"])


def record(files: list[str], results_path: pathlib.Path) -> dict:
    """Merge results JSON files (a later file's sections replace an earlier one's, unless skipped there) and write
    the section into ``results_path``."""
    merged = None
    for f in files:
        data = json.loads(pathlib.Path(f).read_text())
        if merged is None:
            merged = data
            continue
        by_name = {s["name"]: s for s in merged["sections"]}
        for s in data["sections"]:
            if s["status"] != "skipped" or s["name"] not in by_name:
                by_name[s["name"]] = s
        order = [name for name, *_ in SECTIONS]
        merged["sections"] = sorted(
            by_name.values(), key=lambda s: order.index(s["name"]) if s["name"] in order else 99
        )
        merged["date"] += f"; sections rerun {data['date']}: " + ", ".join(
            s["name"] for s in data["sections"] if s["status"] != "skipped"
        )
        merged["seconds"] += data["seconds"]
    save(merged, None, results_path)
    return merged


# --------------------------------------------------------------------------------------------------------------
def prepare(assets: pathlib.Path, samples: pathlib.Path | None = None) -> dict:
    """Copy a small part of the sample (``samples``: hymenoptera/, flowers/ and the MobileNetV2 checkpoint, as
    docs/offline.md makes them, or the same under data/ and weights/) into ``assets`` (git-ignored)."""
    if samples is None:
        samples = SAMPLES if SAMPLES.is_dir() or not SHARED.is_dir() else SHARED
    data = samples / "data" if (samples / "data").is_dir() else samples
    weights = samples / "weights" if (samples / "weights").is_dir() else samples
    hymenoptera, flowers, checkpoint = data / "hymenoptera", data / "flowers", weights / CHECKPOINT
    for needed in (hymenoptera, flowers, checkpoint):
        if not needed.exists():
            raise SystemExit(f"gpu.py --prepare: {needed} is absent (docs/offline.md fetches the sample)")
    shutil.rmtree(assets, ignore_errors=True)
    (assets / "photos").mkdir(parents=True)
    photos = sorted(p for p in hymenoptera.glob("*/*/*.jpg") if 150_000 > p.stat().st_size > 20_000)[:40]
    for i, p in enumerate(photos):
        shutil.copyfile(p, assets / "photos" / f"{i:02d}-{p.name}")
    for part, source, limit in (("train", flowers / "train", FULL.finetune_train), ("test", flowers / "val", None)):
        for cls in sorted(d for d in source.iterdir() if d.is_dir()):
            (assets / "flowers" / part / cls.name).mkdir(parents=True)
            for f in sorted(cls.iterdir())[:limit]:
                shutil.copyfile(f, assets / "flowers" / part / cls.name / f.name)
    shutil.copyfile(checkpoint, assets / CHECKPOINT)
    size = sum(f.stat().st_size for f in assets.rglob("*") if f.is_file())
    manifest = {
        "photos": len(photos),
        "flowers_train": len(list((assets / "flowers" / "train").glob("*/*"))),
        "flowers_test": len(list((assets / "flowers" / "test").glob("*/*"))),
        "checkpoint": CHECKPOINT,
        "megabytes": round(size / 1e6, 1),
    }
    (assets / "MANIFEST.json").write_text(json.dumps(manifest, indent=1))
    if size > 48 * 2**20:
        raise SystemExit(f"gpu.py --prepare: {size / 2**20:.0f} MiB copied; more than the 48 MiB expected")
    return manifest


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--prepare", action="store_true", help="copy a small part of the sample into --assets (once, before the run)"
    )
    ap.add_argument(
        "--samples",
        type=pathlib.Path,
        help="the sample --prepare copies from (default: samples/, as docs/offline.md makes it)",
    )
    ap.add_argument("--record", nargs="+", metavar="JSON", help="write these results (merged) into --results")
    ap.add_argument("--tiny", action="store_true", help="the same code on a CPU, tiny (about 50 CPU-seconds)")
    ap.add_argument(
        "--assets", type=pathlib.Path, default=ASSETS, help="photos and checkpoint (default: benchmarks/gpu_assets)"
    )
    ap.add_argument("--work", type=pathlib.Path, help="scratch folder (default: a new temporary one)")
    ap.add_argument(
        "--results",
        type=pathlib.Path,
        help="the Markdown file to write the section into (default: benchmarks/RESULTS.md; with --tiny "
        "none unless given)",
    )
    ap.add_argument(
        "--out",
        default=os.environ.get("OUT"),
        help="folder for gpu_results.json/.md and gpu_log.txt (default: $OUT if set)",
    )
    ap.add_argument("--budget", type=float, help="seconds for the whole run (default: 450; --tiny 75)")
    ap.add_argument("--only", help="comma-separated sections (env and synth always run)")
    ap.add_argument("--no-isolate", action="store_true", help="run sections in this process (no time boxes)")
    args = ap.parse_args(argv)
    if args.only:
        unknown = set(args.only.split(",")) - set(FUNCTIONS)
        if unknown:
            ap.error(f"unknown section(s) {', '.join(sorted(unknown))}: choose from {', '.join(FUNCTIONS)}")
    return args


def main(argv=None) -> int:
    args = parse(argv)
    if args.prepare:
        manifest = prepare(args.assets, args.samples)
        print(
            f"{args.assets}: {json.dumps(manifest)}\nnext, on the GPU machine: python benchmarks/gpu.py --out runs/gpu "
            f"(about 8 minutes; python benchmarks/gpu.py --help says more)"
        )
        return 0
    results_path = args.results if args.results or args.tiny else ROOT / "benchmarks" / "RESULTS.md"
    if args.record:
        merged = record(args.record, results_path)
        print(f"wrote the {merged['machine']} section into {results_path}")
        return 0
    plan = TINY if args.tiny else FULL
    budget = args.budget or plan.budget
    work = args.work or pathlib.Path(tempfile.mkdtemp(prefix="featurebank-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(plan=plan, work=work, assets=args.assets)
    log = pathlib.Path(args.out or work, "gpu_log.txt")
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    isolate = not args.no_isolate and hasattr(os, "fork")
    if isolate:  # imported once here, before any fork, so that each section starts at once (CUDA is not touched)
        import torch  # noqa: F401
        import torchvision  # noqa: F401

        import cli  # noqa: F401
        import embedder.backbones.features  # noqa: F401
        import embedder.job  # noqa: F401
        import workflows.finetune  # noqa: F401
    wanted = set(args.only.split(",")) | {"env", "synth"} if args.only else set(FUNCTIONS)
    result = {
        "script": "benchmarks/gpu.py",
        "mode": "tiny" if plan.tiny else "full",
        "machine": "?",
        "host": f"{platform.node() or '-'}",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "budget": budget,
        "seconds": 0.0,
        "argv": sys.argv[1:],
        "models": list(plan.models),
        "data": "",
        "sections": [],
    }
    started = time.monotonic()
    say(f"{result['mode']} run, budget {budget:.0f} s, work {work}, results {results_path}, out {args.out or '-'}")
    stretch = max(1.0, budget / plan.budget)  # a larger budget (a loaded CPU) gives every section more time
    for name, boxes, needs_cuda, needs_images in SECTIONS:
        left = budget - (time.monotonic() - started)
        box = min((boxes[1] if plan.tiny else boxes[0]) * stretch, left)
        reason = ""
        if name not in wanted:
            reason = "not asked for (--only)"
        elif needs_cuda and not ctx.cuda:
            reason = "needs CUDA (torch sees no GPU here)" + (
                "; the CPU path of out-of-memory halving is tested in tests/test_guard.py" if name == "oom" else ""
            )
        elif name == "tests" and plan.tiny:
            reason = "--tiny: the suite runs in CI itself; on the GPU machine a device-independent subset runs"
        elif needs_images and not ctx.images("imagenet"):
            reason = "no images (the synth section failed)"
        elif box < MIN_START:
            reason = f"out of the time budget ({left:.0f} s left of {budget:.0f})"
        if reason:
            section = {"name": name, "status": "skipped", "seconds": 0.0, "error": reason, "rows": []}
        else:
            say(f"{name} (time box {box:.0f} s)")
            section = run_section(name, ctx, box, isolate, log)
        say(f"{name}: {section['status']} in {section['seconds']} s {section['error']}")
        result["sections"].append(section)
        if name == "env":
            found = values([section])
            ctx.cuda = bool(found.get("cuda"))
            result["machine"] = str(found.get("device", "?"))
            result["host"] = (
                f"{found.get('cores', '?')} cores: {found.get('cpu', '?')}; torch {found.get('torch', '?')}"
            )
            ctx.found.update(found)
        if name == "synth":
            v = values([section])
            result["data"] = (
                f"Images: {v.get('synth.imagenet.images', 0):,} synthesized ImageNet-size JPEGs and "
                f"{v.get('synth.big.images', 0):,} large photos ({plan.big_size[0]}x{plan.big_size[1]}), "
                f"made on the machine from the assets' photos (repeated, rescaled, re-encoded)."
            )
        result["seconds"] = round(time.monotonic() - started, 1)
        save(result, args.out, None)
    save(result, args.out, results_path)
    say(
        f"done in {result['seconds']:.0f} s; " + "; ".join(f"{r['what']}: {fmt(r['value'])}" for r in result["verdict"])
    )
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
