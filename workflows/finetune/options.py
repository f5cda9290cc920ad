"""What a fine-tuning run is asked, as two values: ``TrainingOptions`` (how to train: what the trajectory depends
on, recorded in the checkpoints) inside ``FinetuneOptions`` (also which data, which backbone and where to run).
Checked when built, before anything is embedded; needs no torch, so that the command line can build them."""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from embedder.decode import DEFAULT_MAX_PIXELS
from embedder.errors import FeaturebankError
from embedder.settings import AUGMENTATIONS

BN_POLICIES = ("frozen", "train")


def parse_unfreeze(value) -> int | str:
    """``--unfreeze``: a number of blocks (0: the head only) or ``all``."""
    if value == "all":
        return value
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise FeaturebankError("give 0 (head only), a number of blocks, or all")
    return n


@dataclass(frozen=True, kw_only=True)
class TrainingOptions:
    """How to train, as ``finetune``'s options say: built once from them by name (no field can take another's
    value), checked on the spot, before anything is embedded."""

    unfreeze: int | str = 1  # the last N blocks, or "all"
    epochs: int = 10
    lr: float = 1e-3
    backbone_lr_scale: float = 0.1
    weight_decay: float = 1e-4
    batch_size: int = 32
    dropout: float = 0.2
    bn: str = "frozen"
    augment: str = "flip"
    probe_init: bool = True
    patience: int = 3
    seed: int = 0
    precision: str = "fp32"
    workers: int | None = None

    def __post_init__(self):
        if (self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or not 0 <= self.dropout < 1
                or self.backbone_lr_scale < 0):
            raise FeaturebankError("--epochs and --batch-size must be at least 1, --lr positive, --dropout in [0, 1), "
                                   "--backbone-lr-scale at least 0")
        if self.augment not in AUGMENTATIONS:
            raise FeaturebankError(f"unknown augmentation {self.augment!r}: choose one of {', '.join(AUGMENTATIONS)}")


@dataclass(frozen=True, kw_only=True)
class FinetuneOptions:
    """A whole run's options besides its training images and run folder."""

    val: str | None = None  # validation images; None: a stratified ``val_split`` of the training images
    val_split: float = 0.2
    test: str | None = None  # test images, embedded and scored only after training
    drop_test_copies: bool = False  # leave out test files whose bytes equal a training or validation image
    backbone: str = "resnet50"
    weights: str | None = "DEFAULT"
    resize: int | None = None
    crop: int | None = None
    draft: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS
    device: str = "auto"
    resume: bool = False
    from_scratch: bool = False  # also train the same architecture from random weights
    cache_dir: str | None = None
    training: TrainingOptions = field(default_factory=TrainingOptions)

    @classmethod
    def of(cls, **options) -> "FinetuneOptions":
        """From flat keywords (``epochs=5, backbone="resnet18"``), as ``finetune()`` and the command line take them;
        a keyword that is no option is a TypeError, as for any function."""
        names = {f.name for f in fields(TrainingOptions)}
        training = TrainingOptions(**{k: options.pop(k) for k in list(options) if k in names})
        return cls(**options, training=training)
