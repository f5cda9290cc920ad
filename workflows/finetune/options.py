"""What a fine-tuning run is asked, as two values: ``TrainingOptions`` (how to train: what the trajectory depends
on, recorded in the checkpoints) inside ``FinetuneOptions`` (also which data, which backbone and where to run).
Checked when built, before anything is embedded; needs no torch, so that the command line can build them.

Each field says once its default, its help and how a command-line value is read (``embedder.options.option``);
``featurebank finetune``'s options are made from them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from embedder.kernel.errors import InvalidValue
from embedder.kernel.settings import AUGMENTATIONS, TORCH_PRECISIONS
from embedder.options import BACKBONE, DEVICE, ExtractOptions, option, same_as, with_overrides

from .fixed_views import DEFAULT_VIEWS, parse_views

RUN_FOLDER = "runs/finetune"  # where a run goes when no folder is given (finetune's out, the command's --out)
BN_POLICIES = ("frozen", "train")
# auto: views where the network splits and its trunk fits float16, else pixels (run.finetune decides, with a note);
# views: the frozen trunk run once (cached_loop); the others: pixels
AUGMENT = ("auto", "views", "pixels", *AUGMENTATIONS)


def parse_unfreeze(value) -> int | str:
    """``--unfreeze``: a number of blocks (0: the head only) or ``all``."""
    if value == "all":
        return value
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise InvalidValue("give 0 (head only), a number of blocks, or all")
    return n


@dataclass(frozen=True, kw_only=True)
class TrainingOptions:
    """How to train, as ``finetune``'s options say: built once from them by name (no field can take another's
    value), checked on the spot, before anything is embedded."""

    unfreeze: int | str = option(
        1,
        "Train the last N blocks (0: the head only; all: everything). The report names them.",
        check="workflows.finetune.options:parse_unfreeze",
    )
    epochs: int = option(10, low=1)
    lr: float = option(1e-3, "AdamW learning rate of the head (cosine decay).", low=0, low_open=True)
    backbone_lr_scale: float = option(0.1, "The unfrozen pretrained layers learn at lr x this.", low=0)
    weight_decay: float = option(1e-4, low=0)
    batch_size: int = same_as(ExtractOptions, "batch_size", "Images per training step.")
    dropout: float = option(0.2, "On the head's input.", low=0, high=1, high_open=True)
    bn: str = option(
        "frozen", "frozen: BatchNorm parameters and running statistics stay as they were.", choices=BN_POLICIES
    )
    augment: str = option(
        "auto",
        "auto: views where the network splits into blocks (torch.fx) and its frozen trunk's output fits float16, "
        "else pixels, with a note saying why; views: the frozen layers run once over --views of each image and each "
        "epoch draws one (fast, docs/fine-tuning-speed.md); pixels (= flip): a new random resized crop and flip "
        "every epoch, through the whole network; trivial: and TrivialAugment; none.",
        choices=AUGMENT,
    )
    views: str = option(
        DEFAULT_VIEWS,
        "With --augment views: center (the weights' preprocessing), flip (its mirror), crops:N (N fixed crops of "
        "25-100 % of the image, every other one mirrored).",
        check="workflows.finetune.fixed_views:views_option",
    )
    probe_init: bool = option(
        True, "Start the head at random (drawn from --seed), not from the linear probe.", flag="--no-probe-init"
    )
    patience: int = option(
        3,
        "Stop after this many epochs without a better one on validation: a higher accuracy, or the same accuracy "
        "with a lower loss (the rule that chooses best.pth).",
        low=1,
    )
    seed: int = option(0)
    precision: str = option("fp32", "Mixed precision (fp16/bf16) on a GPU.", choices=TORCH_PRECISIONS)
    workers: int | None = option(None, "Decoding processes (as in extract).", low=0)

    def __post_init__(self):
        for name in ("lr", "backbone_lr_scale", "weight_decay", "dropout", "val_split"):
            value = getattr(self, name, None)
            if isinstance(value, float) and not math.isfinite(value):
                raise InvalidValue(f"--{name.replace('_', '-')} {value}: give a finite number")
        if (
            self.epochs < 1
            or self.batch_size < 1
            or self.lr <= 0
            or not 0 <= self.dropout < 1
            or self.backbone_lr_scale < 0
        ):
            raise InvalidValue(
                "--epochs and --batch-size must be at least 1, --lr positive, --dropout in [0, 1), "
                "--backbone-lr-scale at least 0"
            )
        if self.augment not in AUGMENT:
            raise InvalidValue(f"unknown augmentation {self.augment!r}: choose one of {', '.join(AUGMENT)}")
        if self.augment == "pixels":  # flip's other name: recorded as flip, so that older runs resume
            object.__setattr__(self, "augment", "flip")
        parse_views(self.views)
        if self.augment == "views" and self.unfreeze == "all":
            raise InvalidValue(
                "--augment views needs a frozen trunk to run once: with --unfreeze all, use --augment pixels"
            )


@dataclass(frozen=True, kw_only=True)
class FinetuneOptions:
    """A whole run's options besides its training images and run folder."""

    val: str | None = option(None, "Validation images (class folders or manifest). [default: --val-split]", path={})
    val_split: float = option(
        0.2,
        "Stratified share of DATA held out for validation when there is no --val; with "
        "groups (a manifest's third column), whole groups: one fold of round(1/share).",
        low=0,
        high=1,
        low_open=True,
        high_open=True,
    )
    test: str | None = option(
        None,
        "Test images, apart from DATA and validation: embedded and scored only after "
        "training; the comparison is reported on them. [default: validation numbers, "
        "selection included]",
        path={"exists": True},
    )
    drop_test_copies: bool = option(
        False,
        "Leave out --test files whose bytes equal a training or validation image "
        "(the report lists them). [default: refuse them before training]",
    )
    backbone: str = same_as(ExtractOptions, "backbone", "A torchvision model name, or timm:NAME[.TAG].", check=BACKBONE)
    weights: str | None = same_as(ExtractOptions, "weights", "As in extract: a weights name, a .pth file, none.")
    resize: int | None = same_as(ExtractOptions, "resize", "Shorter side for evaluation (default: from the weights).")
    crop: int | None = same_as(ExtractOptions, "crop", "Crop size (default: from the weights).")
    draft: bool = same_as(ExtractOptions, "draft", "Decode big JPEGs at full size (as in extract).")
    max_pixels: int = same_as(ExtractOptions, "max_pixels")
    device: str = same_as(ExtractOptions, "device", check=DEVICE)
    resume: bool = option(False, "Continue the interrupted run in --out.")
    from_scratch: bool = option(False, "Also train the same architecture from random weights, for comparison.")
    compare: str | None = option(
        None,
        "A cv --out folder of the same backbone, weights and penultimate layer: its best row (classifier spec) is "
        "fit on the same frozen features as the probe and compared too.",
        path={"exists": True, "file_okay": False},
    )
    cache: str | None = option(
        None,
        "The cache of DATA (an extract --cache file: reused when made with the same settings; else made there). "
        "Pixel path only. [default: under cache/]",
        path={"dir_okay": False},
    )
    cache_dir: str | None = option(None, cli=False)  # where the embedded images' caches go (default: cache/)
    training: TrainingOptions = field(default_factory=TrainingOptions)

    @classmethod
    def of(cls, **options) -> FinetuneOptions:
        """From flat keywords (``epochs=5, backbone="resnet18"``), as ``finetune()`` and the command line take them;
        a keyword that is no option is a TypeError, as for any function."""
        return with_overrides(cls, None, options)
