"""Options as values whose fields say, once, their default, their help and how a command-line value is read.

A field's ``metadata`` (made by ``option``) holds ``help`` and any of: ``choices``; ``low``/``high`` with
``low_open``/``high_open`` (a range); ``path`` (keywords of a path check); ``check`` (a function ``module:name``
that reads the value or says in one line why not; imported when the option is given, so that ``--help`` waits for
no torch); ``flag`` (the option that turns a default-True field off); ``short``; ``multiple``; ``cli=False`` (not
an option). ``featurebank extract`` and ``finetune`` make their options from these fields.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from .decode import DEFAULT_MAX_PIXELS
from .engines import ENGINES
from .errors import InvalidValue
from .settings import CALIBRATIONS, INT8_SCHEMES, POOLINGS, PRECISIONS, TTAS
from .sources import LAYOUTS

BACKBONE, DEVICE = "embedder.backbones:check_backbone", "embedder.engines:check_device"


def option(default, help: str | None = None, **read):
    """A field with its command-line help and reading (see the module's docstring)."""
    return field(default=default, metadata={"help": help, **read})


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """How images are embedded with a model's own settings (``evaluate``, ``predict``): the keywords of
    ``classifiers.bundle.evaluate`` and ``predict`` besides the model and the images."""

    cache: str | None = option(
        None,
        "Cache for the embedded images (default: under cache/; reused when the images come back).",
        path={"dir_okay": False},
    )
    weights: str | None = option(
        None, "Where the model's weights file is now, if it moved (checked by sha256).", short="-w"
    )
    device: str = option("auto", check=DEVICE)
    batch_size: int = option(32, low=1)
    workers: int | None = option(None, "Decoding processes (as in extract).", low=0)

    def keywords(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class ExtractOptions:
    """``extract``'s options (``embedder.job.extract`` takes the same names as keywords, the int8 ones aside)."""

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
        check="embedder.settings:split_layers",
    )
    pooling: str = option(
        "avg",
        "How 4-D maps (and token layers) become one vector per image; cls, cls+avg: the "
        "class token (+ the mean of the patch tokens) of a timm ViT layer.",
        choices=POOLINGS,
    )
    resize: int | None = option(None, "Shorter side before cropping (default: from the weights).", low=16)
    crop: int | None = option(None, "Center crop size (default: from the weights).", low=16)
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
        "int8: how weights are quantized; auto: this CPU's first scheme whose mean cosine to fp32 on the "
        "calibration images reaches 0.97 (u8s8-reduce first without VNNI), else fp32 (said in one line).",
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
    batch_size: int = option(32, low=1)
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

    def keywords(self) -> dict:
        """The keywords of ``embedder.job.extract``, without the int8 options (``job.int8_request`` reads them)."""
        return {
            k: v
            for k, v in asdict(self).items()
            if k not in ("calibration_images", "calibration", "calibration_from", "int8_scheme")
        }


@dataclass(frozen=True)
class ShardOptions:
    """Where a sample's image, label and group are: sidecars of a tar sample (``EXT``: the text of ``KEY.EXT``;
    ``json:FIELD``: a field of ``KEY.json``; ``""``: none), columns of a Parquet file (None: ``label`` when the
    file has such a column; the image column: ``image``, else ``jpg``, ``png`` or ``webp``)."""

    image_column: str | None = option(
        None, "Parquet: the column of image bytes (default: image, else jpg, png or webp)."
    )
    label_key: str = option(
        "cls", "Tar shards: the label's sidecar, EXT (the text of KEY.EXT) or json:FIELD (a field of KEY.json)."
    )
    group_key: str = option("", "Tar shards: the group's sidecar, as --label-key.")
    label_column: str | None = option(None, "Parquet: the label column (default: label, when there is one).")
    group_column: str | None = option(None, "Parquet: the group column.")

    def __post_init__(self):
        for name, value in (("--label-key", self.label_key), ("--group-key", self.group_key)):
            if value and not re.fullmatch(r"json:[^:]+|[A-Za-z0-9_.-]+", value):
                raise InvalidValue(f"{name} {value!r}: give a sidecar extension (cls, txt) or json:FIELD")
