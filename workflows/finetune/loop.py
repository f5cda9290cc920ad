"""The training loop: epochs of augmented batches, validation after each, the epoch (and early stopping) chosen
on validation only, checkpoints that ``--resume`` continues from exactly, and the evaluation of images with the
weights' own preprocessing (the same function scores validation during training and the test images after it).
"""

from __future__ import annotations

import io
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from classifiers.metrics import scores
from embedder.backbones.augment import Augmentation
from embedder.backbones.features import autocast_for
from embedder.inputs.batches import ImageDataset, collate, default_workers
from embedder.inputs.decode import DEFAULT_MAX_PIXELS
from embedder.kernel.atomic import atomic_path
from embedder.kernel.errors import FeaturebankError, FileProblem, IncompatibleSettings, InvalidValue, Note, first_line

from .options import TrainingOptions
from .split import Part
from .surgery import add_head_dropout, freeze, has_training_batchnorm, param_groups, set_train_mode

NOT_COMPARED_ON_RESUME = ("patience", "workers")  # may change between a run and its --resume


@dataclass(frozen=True, kw_only=True)
class TrainingConfig:
    """Everything a training trajectory depends on (recorded in last.pt, which ``--resume`` must match, and in
    best.pth), plus what the run was about (backbone, classes, sizes), for its checkpoints to say."""

    backbone: str
    weights: str  # the weights' identity
    options: TrainingOptions
    classes: tuple[str, ...]
    train_images: int
    val_images: int
    validation: str  # how validation was chosen (--val DATA, or the --val-split and whether it kept groups apart)

    def to_dict(self) -> dict:
        """The recorded form: one flat dict, keys in this order (as last.pt and best.pth have always had them)."""
        options = asdict(self.options)
        if self.options.augment != "views":
            options.pop("views")  # not part of a pixel trajectory: its config stays as older runs wrote it
        return {
            "backbone": self.backbone,
            "weights": self.weights,
            **options,
            "classes": list(self.classes),
            "train_images": self.train_images,
            "val_images": self.val_images,
            "validation": self.validation,
        }


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out if isinstance(out, torch.Tensor) else out[0]  # Inception/GoogLeNet in train mode: (logits, aux)


def _loader(paths, transform, batch_size, workers, max_pixels):
    return DataLoader(
        ImageDataset(paths, transform, max_pixels),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate,
        prefetch_factor=4 if workers else None,
    )


def evaluate_images(
    model,
    part: Part,
    prep,
    device,
    precision,
    batch_size,
    workers,
    max_pixels=DEFAULT_MAX_PIXELS,
    role: str = "validation",
):
    """Scores of ``model`` on the images of ``part`` with the evaluation preprocessing, computed as everywhere else
    (``classifiers.metrics.scores``; ``loss`` is the log-loss of the softmax). Files that fail are left out and
    returned."""
    scores, _, failed = answer_images(model, part, prep, device, precision, batch_size, workers, max_pixels, role)
    return scores, failed


def finite_scores(logits: torch.Tensor, y: np.ndarray, role: str) -> dict:
    """``classifiers.metrics.scores`` of ``logits`` (``loss``: the log-loss of the softmax); NaN or inf among them
    (a learning rate the weights diverged at) is one line, not scikit-learn's traceback on the log-loss."""
    if not bool(torch.isfinite(logits).all()):
        raise FeaturebankError(
            f"training diverged: the network's outputs on the {role} images are NaN or inf; lower --lr (or "
            f"--backbone-lr-scale) and run again"
        )
    proba = torch.softmax(logits.double(), 1).numpy()
    s = scores(y, logits.argmax(1).numpy(), proba, logits.shape[1])
    return {"loss": s.pop("log_loss"), **s}


@torch.no_grad()
def answer_images(
    model, part: Part, prep, device, precision, batch_size, workers, max_pixels=DEFAULT_MAX_PIXELS, role="test"
) -> tuple[dict, np.ndarray, list]:
    """``evaluate_images`` with the class answered for each row of ``part`` (-1 for a file that failed): what the
    paired comparison of two models on the same test images needs."""
    model.eval()
    logits, rows, failed = [], [], []
    for batch in _loader(part.paths, prep, batch_size, workers, max_pixels):
        failed += [(part.paths[i], r) for i, r, _ in batch.failures]
        if batch.indices:
            with autocast_for(device, precision):
                logits.append(_forward(model, prep.normalize(torch.as_tensor(batch.images).to(device))).float().cpu())
            rows += list(batch.indices)
    if not logits:
        raise FeaturebankError(
            f"none of the {len(part)} {role} images could be read now (first: {failed[0][0]}: {failed[0][1]})"
        )
    logits = torch.cat(logits)
    s = finite_scores(logits, part.y[rows], role)
    answered = np.full(len(part), -1, dtype=np.int64)
    answered[rows] = logits.argmax(1).numpy()
    return s, answered, failed


def _save(obj, path: str) -> None:
    """Written whole (a temporary file renamed over it), and the same bytes for the same content: torch names the
    archive inside after the file it writes, so it writes to memory, not to the randomly named temporary file."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(buffer.getvalue())


def export_weights(model: nn.Module, path: str, classes: list[str], prep, meta: dict) -> str:
    """A checkpoint ``extract --weights`` and ``predict --head`` accept: the state dict plus class names and the
    preprocessing it was trained with."""
    _save(
        {
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "classes": list(classes),
            "preprocessing": prep.to_dict(),
            "featurebank": meta,
        },
        path,
    )
    return path


def better(val: dict, best: dict | None) -> bool:
    """The selection rule: higher validation accuracy, then lower validation loss."""
    return best is None or (val["accuracy"], -val["loss"]) > (best["accuracy"], -best["loss"])


@dataclass
class TrainingState:
    """Where a training trajectory is; saved in last.pt after every epoch, for ``--resume`` to continue from."""

    epoch: int = 0  # the last finished epoch
    history: list[dict] = field(default_factory=list)  # one row per epoch; epoch 0 is the untrained start
    best_epoch: int = 0  # the epoch chosen on validation
    best: dict | None = None  # its validation scores
    seconds: float = 0.0  # training and validation, over every run of this trajectory
    failed: dict[str, str] = field(default_factory=dict)  # files that could not be read, with the reason
    stopped_early: bool = False


def _resume(out: str, config: TrainingConfig, model, optimizer, scheduler, scaler) -> TrainingState:
    path = os.path.join(out, "last.pt")

    def damaged(why: str) -> FileProblem:
        return FileProblem(
            f"--resume: {path} cannot be used ({why}): start over with another --out, or delete {out} and run "
            f"without --resume"
        )

    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a cut-short zip, a tampered pickle: torch's many errors, one line
        raise damaged(f"damaged: {first_line(exc, 120)}") from None
    if not isinstance(saved, dict) or not {"config", "model", "optimizer", "scheduler", "scaler", "state"} <= set(
        saved
    ):
        raise damaged("not a checkpoint of an epoch: it lacks what --resume reads")
    if not all(isinstance(saved[k], dict) for k in ("config", "state", "model")):
        raise damaged("its config or state is not what finetune writes")
    try:
        state = TrainingState(**saved["state"])
    except TypeError as exc:
        raise damaged(f"its state is not what finetune writes: {first_line(exc, 120)}") from None
    if not isinstance(state.epoch, int) or isinstance(state.epoch, bool) or state.epoch < 0:
        raise damaged(f"its epoch is {state.epoch!r}")
    bad = [
        k
        for k, v in saved["model"].items()
        if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]
    if bad:
        raise damaged(f"its weights hold NaN or inf ({bad[0]})")
    wanted = config.to_dict()
    differ = [k for k in wanted if k not in NOT_COMPARED_ON_RESUME and saved["config"].get(k) != wanted[k]]
    if differ:
        key = differ[0]
        raise IncompatibleSettings(
            f"--resume: {out} was started with {key}={saved['config'].get(key)!r}, not "
            f"{wanted[key]!r}; use the same options, or another --out"
        )
    try:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise damaged(f"its weights or optimizer state do not fit this run: {first_line(exc, 120)}") from None
    return state


def train_loop(
    model: nn.Module,
    blocks: list[str],
    train: Part,
    val: Part,
    classes: list[str],
    prep,
    out: str,
    config: TrainingConfig,
    *,
    device,
    resume: bool,
    progress: bool,
    on_epoch_end=None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    epochs_of: Callable[..., Epochs] | None = None,
) -> TrainingState:
    """Train ``model`` (head and ``blocks``) on ``train`` for ``config.options.epochs``, early stopping on ``val``
    (``better``: accuracy, then loss; ``patience`` epochs without a better one).
    Epoch 0 is the untrained start: ``best.pth`` stays the start when no epoch beats it. Everything random is
    seeded from (seed, epoch), so a resumed run follows the uninterrupted trajectory. Only ``train`` and ``val``
    are seen here: whatever is chosen, is chosen on ``val``. ``epochs_of(trainer, train, val, prep, failed)``
    makes the epochs (``PixelEpochs.of`` by default: decoded, augmented images through the whole network;
    ``cached_loop.ViewEpochs.of``: the frozen trunk's cached output through the unfrozen layers)."""
    os.makedirs(out, exist_ok=True)
    c = config.options
    freeze(model, blocks, c.bn)
    hook = add_head_dropout(model, c.dropout)
    model.to(device)
    optimizer = torch.optim.AdamW(param_groups(model, c.lr, c.backbone_lr_scale, c.weight_decay))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=c.epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=c.precision == "fp16" and device.type == "cuda")
    workers = default_workers(device.type) if c.workers is None else c.workers
    last, best_path = os.path.join(out, "last.pt"), os.path.join(out, "best.pth")
    meta = config.to_dict()
    state = TrainingState()
    if os.path.exists(last):
        if not resume:
            raise InvalidValue(f"{out} holds a run already: add --resume to continue it, or choose another --out")
        state = _resume(out, config, model, optimizer, scheduler, scaler)
    elif resume:  # a typo in --out, or a run stopped before its first epoch: said, then trained from the start
        warnings.warn(f"--resume: {out} holds no saved epoch ({last}): training starts at epoch 1", Note, stacklevel=2)

    trainer = Trainer(model, blocks, c, device, workers, max_pixels, optimizer, scaler)
    epochs = (epochs_of or PixelEpochs.of)(trainer, train, val, prep, state.failed)  # the views pass, if any
    if not state.history:
        state.seconds += epochs.seconds_before  # what the one-time pass cost is part of this training

    def validate():
        return epochs.validate(state.failed)

    if not state.history:  # epoch 0: the starting point (the probe's head); training must beat it to count
        started = time.perf_counter()
        scores = validate()
        state.seconds += time.perf_counter() - started
        state.history.append(
            {
                "epoch": 0,
                "train_loss": None,
                "train_accuracy": None,
                **{f"val_{k}": v for k, v in scores.items()},
                **{f"lr_{g['name']}": 0.0 for g in optimizer.param_groups},
                "seconds": round(state.seconds, 2),
            }
        )
        state.best, state.best_epoch = scores, 0
        export_weights(model, best_path, classes, prep, {**meta, "epoch": 0, "val": scores})
    first = c.epochs + 1 if state.stopped_early else state.epoch + 1
    for epoch in range(first, c.epochs + 1):
        started = time.perf_counter()
        with tqdm(
            total=len(train),
            unit="img",
            disable=not progress,
            file=sys.stderr,
            dynamic_ncols=True,
            desc=f"{os.path.basename(out)} epoch {epoch}/{c.epochs}",
        ) as bar:
            train_loss, train_accuracy = epochs.run(epoch, state.failed, bar)
        rates = {g["name"]: g["lr"] for g in optimizer.param_groups}
        scheduler.step()
        scores = validate()
        took = time.perf_counter() - started  # this epoch's training and validation
        state.seconds += took
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_accuracy": train_accuracy,
            **{f"val_{k}": v for k, v in scores.items()},
            **{f"lr_{k}": v for k, v in rates.items()},
            "seconds": round(state.seconds, 2),
        }
        state.history.append(row)
        if better(scores, state.best):
            state.best, state.best_epoch = scores, epoch
            export_weights(model, best_path, classes, prep, {**meta, "epoch": epoch, "val": scores})
        state.epoch = epoch
        stopped = epoch - state.best_epoch >= c.patience
        state.stopped_early = stopped and epoch < c.epochs
        _save(
            {
                "config": meta,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "state": asdict(state),
            },
            last,
        )
        if on_epoch_end is not None:  # this epoch's own time beside the run's total ("seconds")
            on_epoch_end(epoch, {**row, "epoch_seconds": round(took, 2)})
        if stopped:
            break
    if hook is not None:
        hook.remove()
    return state


class Epochs(Protocol):
    """What ``train_loop`` runs: the epochs of one path and its validation."""

    seconds_before: float  # spent once before the first epoch (the views pass)

    def run(self, epoch: int, failed: dict[str, str], bar) -> tuple[float, float]: ...

    def validate(self, failed: dict[str, str]) -> dict: ...


@dataclass
class Trainer:
    """The model being trained and its optimizer: one training step, the same on both paths."""

    model: nn.Module
    blocks: list[str]
    options: TrainingOptions
    device: torch.device
    workers: int
    max_pixels: int
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler

    def step(self, forward, x: torch.Tensor, target: torch.Tensor) -> tuple[float, int]:
        """One optimizer step on ``forward(x)``; returns the summed loss and the number right."""
        with autocast_for(self.device, self.options.precision):
            logits = forward(x)
            loss = F.cross_entropy(logits.float(), target)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach()) * len(target), int((logits.argmax(1) == target).sum())


@dataclass
class PixelEpochs:
    """``--augment pixels`` (and ``trivial``, ``none``): every epoch decodes and augments the images again and runs
    the whole network; validation decodes the validation images with the weights' preprocessing."""

    trainer: Trainer
    train: Part
    val: Part
    prep: object
    augmentation: Augmentation
    one_image_batches_fail: bool  # BatchNorm in training mode cannot train on a single image
    seconds_before: float = 0.0

    @classmethod
    def of(cls, trainer: Trainer, train: Part, val: Part, prep, failed: dict[str, str]) -> PixelEpochs:
        c = trainer.options
        return cls(
            trainer,
            train,
            val,
            prep,
            Augmentation(prep, c.augment),
            has_training_batchnorm(trainer.model, trainer.blocks, c.bn),
        )

    def validate(self, failed: dict[str, str]) -> dict:
        t = self.trainer
        c = t.options
        scores, bad = evaluate_images(
            t.model, self.val, self.prep, t.device, c.precision, c.batch_size, t.workers, t.max_pixels
        )
        failed.update(dict(bad))
        return scores

    def run(self, epoch: int, failed: dict[str, str], bar) -> tuple[float, float]:
        """Epoch ``epoch`` (its shuffle, augmentation and dropout seeded from it); returns the mean training loss
        and accuracy. Files that cannot be read go into ``failed``."""
        t = self.trainer
        c, model = t.options, t.model
        torch.manual_seed(c.seed * 100_003 + epoch)  # augmentation and dropout of this epoch
        order = np.random.default_rng([c.seed, epoch]).permutation(len(self.train))
        y_train = torch.as_tensor(self.train.y)
        set_train_mode(model, t.blocks, c.bn)
        total_loss, correct, seen = 0.0, 0, 0
        for batch in _loader(
            [self.train.paths[i] for i in order], self.augmentation, c.batch_size, t.workers, t.max_pixels
        ):
            for i, reason, _ in batch.failures:
                failed[self.train.paths[order[i]]] = reason
            bar.update(len(batch.indices) + len(batch.failures))
            if not batch.indices or (self.one_image_batches_fail and len(batch.indices) < 2):
                continue
            x = self.augmentation.preprocessing.normalize(torch.as_tensor(batch.images).to(t.device))
            target = y_train[order[batch.indices]].to(t.device)
            loss, right = t.step(lambda x: _forward(model, x), x, target)
            total_loss, correct, seen = total_loss + loss, correct + right, seen + len(target)
        return total_loss / max(seen, 1), correct / max(seen, 1)


def load_best(model: nn.Module, out: str) -> nn.Module:
    """``model`` with the weights of ``out/best.pth`` (the epoch chosen on validation)."""
    saved = torch.load(os.path.join(out, "best.pth"), map_location="cpu", weights_only=True)
    model.load_state_dict(saved["state_dict"])
    return model
