"""Options as values whose fields say, once, their default, their help and how a command-line value is read.

A field's ``metadata`` (made by ``option``, ``embedder/kernel/fields.py``) holds ``help`` and any of: ``choices``; ``low``/``high`` with
``low_open``/``high_open`` (a range); ``path`` (keywords of a path check); ``check`` (a function ``module:name``
that reads the value or says in one line why not; imported when the option is given, so that ``--help`` waits for
no torch); ``flag`` (the option that turns a default-True field off); ``short``; ``multiple``; ``cli=False`` (not
an option). The command line makes its options from these fields (``cli.value_options``), and every command's Python
function takes one such value and overrides by field name: ``extract(source, cache, options, **overrides)``
(``with_overrides``). Adding an option is adding a field here: the command line, the Python API and the job see it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any, TypeVar

from embedder.engines.engine import BATCH_SIZE, ENGINES
from embedder.inputs.decode import DEFAULT_MAX_PIXELS
from embedder.inputs.shards import ShardOptions as ShardOptions
from embedder.inputs.sources import LAYOUTS
from embedder.kernel.errors import InvalidValue
from embedder.kernel.fields import option as option
from embedder.kernel.fields import read_by
from embedder.kernel.fields import same_as as same_as
from embedder.kernel.preprocess import MAX_SIDE
from embedder.kernel.settings import CALIBRATIONS, INT8_SCHEMES, POOLINGS, PRECISIONS, TTAS, Int8

BACKBONE, DEVICE = "embedder.backbones.registry:check_backbone", "embedder.engines.engine:check_device"


Options = TypeVar("Options")


def field_names(cls) -> list[str]:
    """The names an options value takes as overrides: its fields, and those of a value inside it (``shards``)."""
    return [
        n
        for f in fields(cls)
        for n in ([f.name] + ([g.name for g in fields(f.default_factory)] if is_dataclass(f.default_factory) else []))
    ]


def with_overrides(cls: type[Options], options: Options | None, overrides: dict[str, Any]) -> Options:
    """``options`` (None: ``cls()``) with the fields named in ``overrides`` replaced (``dataclasses.replace``; a
    field of a value inside it, such as ``ExtractOptions.shards``, by its own name too). A name that is no field is
    one TypeError naming it and the fields there are, as for an unknown keyword of any function."""
    if options is None:
        options = cls()
    elif not isinstance(options, cls):
        raise TypeError(f"options must be a {cls.__name__}, not {type(options).__name__}")
    if not overrides:
        return listed(options)
    own = {f.name for f in fields(options)}  # type: ignore[arg-type]
    inner = {
        g.name: f.name
        for f in fields(options)  # type: ignore[arg-type]
        if is_dataclass(f.default_factory)
        for g in fields(f.default_factory)  # type: ignore[arg-type]
    }
    unknown = [k for k in overrides if k not in own and k not in inner]
    if unknown:
        raise TypeError(
            f"{cls.__name__} has no field {unknown[0]!r}; its fields are: {', '.join(sorted(field_names(cls)))}"
        )
    top = {k: v for k, v in overrides.items() if k in own}
    for name in sorted({inner[k] for k in overrides if k not in own}):
        base = top.get(name, getattr(options, name))
        top[name] = replace(base, **{k: v for k, v in overrides.items() if k not in own and inner[k] == name})
    return listed(replace(options, **top))  # type: ignore[type-var]


def listed(options: Options) -> Options:
    """``options`` with each list-valued field (``multiple``) as the command line reads it: one string is one item,
    and the field's ``check`` (``classifiers.zoo:split_specs``) splits commas and checks names, so that
    ``classifiers="logreg,knn"`` from Python is ``-c logreg,knn``, not six one-letter names."""
    changes = {}
    for f in fields(options):  # type: ignore[arg-type]
        value = getattr(options, f.name)
        if not f.metadata.get("multiple") or value is None:
            continue
        items = (value,) if isinstance(value, str) else tuple(value)
        read = (
            read_by(f.metadata["check"], items)
            if "check" in f.metadata and all(isinstance(v, str) for v in items)
            else items
        )
        if read != value:
            changes[f.name] = None if read is None else tuple(read)
    return replace(options, **changes) if changes else options  # type: ignore[type-var]


@dataclass(frozen=True, kw_only=True)
class ExtractOptions:
    """``extract``'s options: ``embedder.job.extract(source, cache, options, **overrides)``; the job's ``Request``
    (what the vectors depend on) and ``Execution`` (how they are computed) are made from it by name."""

    backbone: str = option(
        "resnet50",
        "A torchvision model name, or timm:NAME[.TAG] (featurebank backbones [--source "
        "timm]); checked when the settings are resolved.",
        short="-b",
    )
    weights: str | None = option(
        "DEFAULT",
        "A torchvision weights name (DEFAULT, IMAGENET1K_V2, ...) or a timm tag, a "
        "local .pth (or .safetensors) state dict, or none.",
        short="-w",
    )
    layers: tuple[str, ...] | None = option(
        None,
        "Node or module name(s), repeated or comma-separated (featurebank layers BACKBONE). [default: penultimate]",
        short="-l",
        flag="--layer",
        multiple=True,
        check="embedder.kernel.settings:split_layers",
    )
    pooling: str = option(
        "avg",
        "How 4-D maps (and token layers) become one vector per image; cls, cls+avg: the "
        "class token (+ the mean of the patch tokens) of a timm ViT layer.",
        choices=POOLINGS,
    )
    resize: int | None = option(
        None, "Shorter side before cropping (default: from the weights).", low=16, high=MAX_SIDE
    )
    crop: int | None = option(None, "Center crop size (default: from the weights).", low=16, high=MAX_SIDE)
    draft: bool = option(True, "Decode big JPEGs at full size (slower; no reduced-scale decode).", flag="--no-draft")
    precision: str = option(
        "fp32",
        "fp32; int8 (CPU, onnxruntime: calibrated on images of INPUT, rows of its own); fp16/bf16 autocast (GPUs).",
        choices=PRECISIONS,
    )
    engine: str = option(
        "auto",
        "auto: onnxruntime on the CPU when it measured faster for these settings (measured once), torch on GPUs.",
        choices=ENGINES,
    )
    tta: str = option(
        "none",
        "Test-time augmentation: flip = the mean of the image's and its left-right mirror's "
        "vectors (a setting: rows of its own; twice the compute).",
        choices=TTAS,
    )
    calibration_images: int = option(256, "int8: images drawn reproducibly from INPUT to calibrate on.", low=1)
    calibration: str = option(
        "minmax", "int8: how activation ranges are read from the calibration images.", choices=CALIBRATIONS
    )
    int8_scheme: str = option(
        "auto",
        "int8: how weights are quantized; auto: this CPU's first scheme whose cosine to fp32 on the calibration "
        "images reaches 0.98 on average and 0.95 on the worst image (u8s8-reduce first without VNNI), else fp32 "
        "(said in one line, recorded in the cache).",
        choices=("auto", *INT8_SCHEMES),
    )
    force_int8: bool = option(
        False,
        "int8: keep int8 (the scheme closest to fp32) even when none reaches the cosine bound on this CPU, "
        "instead of falling back to fp32.",
    )
    calibration_from: str | None = option(
        None,
        "int8: use the int8 engine of this cache (e.g. embed val/ with "
        "train/'s calibration); its calibration options replace "
        "--calibration-images, --calibration, --int8-scheme and the draw's --seed.",
        path={"dir_okay": False},
    )
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps.", check=DEVICE)
    batch_size: int = option(BATCH_SIZE, low=1)
    workers: int | None = option(
        None,
        "Decoding processes (default: on a GPU one per core but one; on a CPU none: "
        "decoding threads share the cores with the engine).",
        low=0,
    )
    seed: int = option(0, "Seed of the random init for --weights none, and of the int8 calibration draw.")
    layout: str = option("auto", "A folder: class-per-folder (labels) or flat (unlabeled).", choices=LAYOUTS)
    max_pixels: int = option(DEFAULT_MAX_PIXELS, "Larger images are skipped as decompression bombs.", low=1)
    strict: bool = option(False, "Exit non-zero if any file could not be embedded (good rows are kept).")
    confine: bool = option(
        False,
        "A manifest's (or list's) paths must stay inside its folder: refuse ../, absolute paths and links out of it.",
    )

    # not on the command line: for the Python API, a model bundle and fine-tuning
    shards: ShardOptions = field(default_factory=ShardOptions)
    cache_dir: str | None = option(
        None, "Where a cache without --cache goes (default: $FEATUREBANK_CACHE_DIR, else cache/).", cli=False
    )
    engine_dir: str | None = option(None, "The engine folder (default: the one beside the cache).", cli=False)
    threads: int | None = option(None, "Decoding threads (default: from the cores).", cli=False)
    int8: Int8 | None = option(
        None,
        "With precision int8: this exact int8 request (a model bundle's, a cache's engine), instead of the "
        "calibration options.",
        cli=False,
    )

    def __post_init__(self):
        if self.precision != "int8":  # an int8 option on an fp32 run would be ignored without a word
            given = [
                name
                for name, on in (
                    ("--calibration-from", bool(self.calibration_from)),
                    ("--force-int8", self.force_int8),
                    (f"--int8-scheme {self.int8_scheme}", self.int8_scheme != "auto"),
                )
                if on
            ]
            if given:
                raise InvalidValue(f"{' and '.join(given)} go{'es' if len(given) == 1 else ''} with --precision int8")


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """How images are embedded with a model's own settings (``evaluate``, ``predict``): the options of
    ``classifiers.bundle.evaluate`` and ``predict`` besides the model and the images."""

    cache: str | None = option(
        None,
        "Cache for the embedded images (default: under cache/; reused when the images come back).",
        path={"dir_okay": False},
    )
    weights: str | None = option(
        None,
        "Where the model's weights file is now, if it moved (checked by sha256); with predict --head, the "
        "weights whose head classifies (a finetune best.pth, or as extract's -w).",
        short="-w",
    )
    device: str = same_as(ExtractOptions, "device")
    batch_size: int = same_as(ExtractOptions, "batch_size")
    workers: int | None = same_as(ExtractOptions, "workers", "Decoding processes (as in extract).")
    trust_pickle: bool = option(
        False,
        "Also load an old model file (a joblib pickle). Unpickling runs whatever code the file names: only for "
        "files you made or trust; featurebank convert OLD NEW rewrites one once in the safe format.",
    )
    layout: str = same_as(ExtractOptions, "layout", cli=False)
    engine: str = same_as(ExtractOptions, "engine", cli=False)

    def extract_overrides(self) -> dict:
        """What ``extract`` takes of these, by name (the model gives the rest; ``weights`` here is where the model's
        weights file is now, not another choice of weights)."""
        shared = set(ExtractOptions.__dataclass_fields__) - {"weights"}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name in shared}
