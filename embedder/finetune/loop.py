"""The training loop: epochs of augmented batches, validation after each, the epoch (and early stopping) chosen
on validation only, checkpoints that ``--resume`` continues from exactly, and the evaluation of images with the
weights' own preprocessing (the same function scores validation during training and the test images after it).
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..augment import POLICIES, Augmentation
from ..batches import ImageDataset, collate, default_workers
from ..decode import DEFAULT_MAX_PIXELS
from ..errors import FeaturebankError
from ..features import autocast_for
from .split import Part
from .surgery import add_head_dropout, freeze, has_training_batchnorm, param_groups, set_train_mode
from .trunk import DEFAULT_VIEWS, parse_views

NOT_COMPARED_ON_RESUME = ("patience", "workers")  # may change between a run and its --resume
AUGMENT = ("views", *POLICIES)  # views: the frozen trunk run once (cached_loop); the others: pixels every epoch


@dataclass(frozen=True, kw_only=True)
class TrainingOptions:
    """How to train, as ``finetune``'s options say: built once from them by name (no field can take another's
    value), checked on the spot, before anything is embedded."""

    unfreeze: int | str
    epochs: int
    lr: float
    backbone_lr_scale: float
    weight_decay: float
    batch_size: int
    dropout: float
    bn: str
    augment: str
    probe_init: bool
    patience: int
    seed: int
    precision: str
    workers: int | None
    views: str = DEFAULT_VIEWS  # with augment="views": the fixed views of each image (trunk.parse_views)

    def __post_init__(self):
        if (self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or not 0 <= self.dropout < 1
                or self.backbone_lr_scale < 0):
            raise FeaturebankError("--epochs and --batch-size must be at least 1, --lr positive, --dropout in [0, 1), "
                                   "--backbone-lr-scale at least 0")
        if self.augment not in AUGMENT:
            raise FeaturebankError(f"unknown augmentation {self.augment!r}: choose one of {', '.join(AUGMENT)}")
        if self.augment == "views":
            parse_views(self.views)
            if self.unfreeze == "all":
                raise FeaturebankError("--augment views needs a frozen trunk to run once: with --unfreeze all, use "
                                       "--augment pixels")


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
        return {"backbone": self.backbone, "weights": self.weights, **options,
                "classes": list(self.classes), "train_images": self.train_images, "val_images": self.val_images,
                "validation": self.validation}


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out if isinstance(out, torch.Tensor) else out[0]  # Inception/GoogLeNet in train mode: (logits, aux)


def _loader(paths, transform, batch_size, workers, max_pixels):
    return DataLoader(ImageDataset(paths, transform, max_pixels), batch_size=batch_size, shuffle=False,
                      num_workers=workers, collate_fn=collate, prefetch_factor=4 if workers else None)


@torch.no_grad()
def evaluate_images(model, part: Part, prep, device, precision, batch_size, workers, max_pixels=DEFAULT_MAX_PIXELS,
                    role: str = "validation"):
    """Scores of ``model`` on the images of ``part`` with the evaluation preprocessing, computed as everywhere else
    (``classifiers.metrics.scores``; ``loss`` is the log-loss of the softmax). Files that fail are left out and
    returned."""
    from classifiers.metrics import scores

    model.eval()
    logits, targets, failed = [], [], []
    for batch in _loader(part.paths, prep, batch_size, workers, max_pixels):
        failed += [(part.paths[i], r) for i, r, _ in batch.failures]
        if batch.indices:
            with autocast_for(device, precision):
                logits.append(_forward(model, prep.normalize(torch.as_tensor(batch.images).to(device))).float().cpu())
            targets.append(part.y[batch.indices])
    if not logits:
        raise FeaturebankError(f"none of the {len(part)} {role} images could be read now "
                               f"(first: {failed[0][0]}: {failed[0][1]})")
    logits, y = torch.cat(logits), np.concatenate(targets)
    proba = torch.softmax(logits.double(), 1).numpy()
    s = scores(y, logits.argmax(1).numpy(), proba, logits.shape[1])
    return {"loss": s.pop("log_loss"), **s}, failed


def _save(obj, path: str) -> None:
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def export_weights(model: nn.Module, path: str, classes: list[str], prep, meta: dict) -> str:
    """A checkpoint ``extract --weights`` and ``predict --head`` accept: the state dict plus class names and the
    preprocessing it was trained with."""
    _save({"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "classes": list(classes),
           "preprocessing": prep.to_dict(), "featurebank": meta}, path)
    return path


def better(val: dict, best: dict | None) -> bool:
    """The selection rule: higher validation accuracy, then lower validation loss."""
    return best is None or (val["accuracy"], -val["loss"]) > (best["accuracy"], -best["loss"])


def _resume(out: str, config: TrainingConfig, model, optimizer, scheduler, scaler) -> dict:
    saved = torch.load(os.path.join(out, "last.pt"), map_location="cpu", weights_only=True)
    wanted = config.to_dict()
    differ = [k for k in wanted if k not in NOT_COMPARED_ON_RESUME and saved["config"].get(k) != wanted[k]]
    if differ:
        key = differ[0]
        raise FeaturebankError(f"--resume: {out} was started with {key}={saved['config'].get(key)!r}, not "
                               f"{wanted[key]!r}; use the same options, or another --out")
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    scaler.load_state_dict(saved["scaler"])
    return saved["state"]


def train_loop(model: nn.Module, blocks: list[str], train: Part, val: Part, classes: list[str], prep, out: str,
               config: TrainingConfig, *, device, resume: bool, progress: bool, on_epoch_end=None,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> dict:
    """Train ``model`` (head and ``blocks``) on ``train`` for ``config.options.epochs``, early stopping on ``val`` accuracy.
    Epoch 0 is the untrained start: ``best.pth`` stays the start when no epoch beats it. Everything random is
    seeded from (seed, epoch), so a resumed run follows the uninterrupted trajectory. Only ``train`` and ``val``
    are seen here: whatever is chosen, is chosen on ``val``."""
    os.makedirs(out, exist_ok=True)
    c = config.options
    freeze(model, blocks, c.bn)
    hook = add_head_dropout(model, c.dropout)
    model.to(device)
    optimizer = torch.optim.AdamW(param_groups(model, c.lr, c.backbone_lr_scale, c.weight_decay))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=c.epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=c.precision == "fp16" and device.type == "cuda")
    augmentation = Augmentation(prep, c.augment)
    workers = default_workers(device.type) if c.workers is None else c.workers
    last, best_path = os.path.join(out, "last.pt"), os.path.join(out, "best.pth")
    meta = config.to_dict()
    state = {"epoch": 0, "history": [], "best_epoch": 0, "best": None, "seconds": 0.0, "failed": {}}
    if os.path.exists(last):
        if not resume:
            raise FeaturebankError(f"{out} holds a run already: add --resume to continue it, or choose another --out")
        state = _resume(out, config, model, optimizer, scheduler, scaler)

    def validate():
        scores, failed = evaluate_images(model, val, prep, device, c.precision, c.batch_size, workers, max_pixels)
        state["failed"].update(dict(failed))
        return scores

    y_train = torch.as_tensor(train.y)
    one_image_batches_fail = has_training_batchnorm(model, blocks, c.bn)
    if not state["history"]:  # epoch 0: the starting point (the probe's head); training must beat it to count
        started = time.perf_counter()
        scores = validate()
        state["seconds"] += time.perf_counter() - started
        state["history"].append({"epoch": 0, "train_loss": None, "train_accuracy": None,
                                 **{f"val_{k}": v for k, v in scores.items()},
                                 **{f"lr_{g['name']}": 0.0 for g in optimizer.param_groups},
                                 "seconds": round(state["seconds"], 2)})
        state["best"], state["best_epoch"] = scores, 0
        export_weights(model, best_path, classes, prep, {**meta, "epoch": 0, "val": scores})
    first = c.epochs + 1 if state.get("stopped_early") else state["epoch"] + 1
    for epoch in range(first, c.epochs + 1):
        started = time.perf_counter()
        torch.manual_seed(c.seed * 100_003 + epoch)  # augmentation and dropout of this epoch
        order = np.random.default_rng([c.seed, epoch]).permutation(len(train))
        set_train_mode(model, blocks, c.bn)
        total_loss = correct = seen = 0
        loader = _loader([train.paths[i] for i in order], augmentation, c.batch_size, workers, max_pixels)
        with tqdm(total=len(order), unit="img", disable=not progress, file=sys.stderr, dynamic_ncols=True,
                  desc=f"{os.path.basename(out)} epoch {epoch}/{c.epochs}") as bar:
            for batch in loader:
                for i, reason, _ in batch.failures:
                    state["failed"][train.paths[order[i]]] = reason
                bar.update(len(batch.indices) + len(batch.failures))
                if not batch.indices or (one_image_batches_fail and len(batch.indices) < 2):
                    continue  # BatchNorm cannot train on a single image
                x = prep.normalize(torch.as_tensor(batch.images).to(device))
                target = y_train[order[batch.indices]].to(device)
                with autocast_for(device, c.precision):
                    logits = _forward(model, x)
                    loss = F.cross_entropy(logits.float(), target)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                total_loss += float(loss.detach()) * len(target)
                correct += int((logits.argmax(1) == target).sum())
                seen += len(target)
        rates = {g["name"]: g["lr"] for g in optimizer.param_groups}
        scheduler.step()
        scores = validate()
        state["seconds"] += time.perf_counter() - started
        row = {"epoch": epoch, "train_loss": total_loss / max(seen, 1), "train_accuracy": correct / max(seen, 1),
               **{f"val_{k}": v for k, v in scores.items()}, **{f"lr_{k}": v for k, v in rates.items()},
               "seconds": round(state["seconds"], 2)}
        state["history"].append(row)
        if better(scores, state["best"]):
            state["best"], state["best_epoch"] = scores, epoch
            export_weights(model, best_path, classes, prep, {**meta, "epoch": epoch, "val": scores})
        state["epoch"] = epoch
        stopped = epoch - state["best_epoch"] >= c.patience
        state["stopped_early"] = stopped and epoch < c.epochs
        _save({"config": meta, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
               "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "state": state}, last)
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)
        if stopped:
            break
    if hook is not None:
        hook.remove()
    return state


def load_best(model: nn.Module, out: str) -> nn.Module:
    """``model`` with the weights of ``out/best.pth`` (the epoch chosen on validation)."""
    saved = torch.load(os.path.join(out, "best.pth"), map_location="cpu", weights_only=True)
    model.load_state_dict(saved["state_dict"])
    return model
