"""Training on the frozen trunk's cached output (``--augment views``): the views pass once (``trunk.fill``), then
epochs that run only the unfrozen blocks and the head. Each epoch draws one of the image's views at random (seeded
by seed and epoch, like the pixel path's augmentation, so ``--resume`` follows the same trajectory); validation
scores the ``center`` view (the weights' preprocessing) through the same layers in evaluation mode. Checkpoints,
selection and the recorded config are the pixel path's own (``loop``), so ``best.pth`` is the same kind of file.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..backbones import head_name
from ..batches import default_workers
from ..errors import FeaturebankError
from ..features import autocast_for
from .loop import TrainingConfig, _resume, _save, better, export_weights
from .split import Part
from .surgery import add_head_dropout, block_names, freeze, has_training_batchnorm, param_groups, set_train_mode
from .trunk import TrunkStore, fill, parse_views, split_at, store_root


def cut_of(model: nn.Module, blocks: list[str]) -> str:
    """Where the trunk ends: before the first unfrozen block (before the head when only the head trains)."""
    if blocks == block_names(model):
        raise FeaturebankError("--augment views needs a frozen trunk: with --unfreeze all, use --augment pixels")
    return blocks[0] if blocks else head_name(model)


def trunk_store(model: nn.Module, blocks: list[str], config: TrainingConfig, prep, cache_dir: str | None):
    """The split model and the store of its trunk's outputs, keyed by the backbone settings and the cut."""
    cut = cut_of(model, blocks)
    trunk, rest = split_at(model, cut, [*block_names(model), head_name(model)])
    settings = {
        "backbone": config.backbone,
        "weights": config.weights,
        "preprocessing": prep.to_dict(),
        "cut": cut,
        "precision": config.options.precision,
    }
    return trunk, rest, TrunkStore(store_root(cache_dir), settings)


@torch.no_grad()
def evaluate_cached(
    model: nn.Module,
    rest: nn.Module,
    store: TrunkStore,
    where: np.ndarray,
    y: np.ndarray,
    device,
    precision: str,
    batch_size: int,
) -> dict:
    """Scores of the rows ``where`` (center views) through ``rest`` in evaluation mode, computed as
    ``loop.evaluate_images`` computes them."""
    from classifiers.metrics import scores

    model.eval()
    logits = []
    for start in range(0, len(where), batch_size):
        x = torch.from_numpy(store.gather(where[start : start + batch_size])).to(device).float()
        with autocast_for(device, precision):
            logits.append(rest(x).float().cpu())
    logits = torch.cat(logits)
    proba = torch.softmax(logits.double(), 1).numpy()
    s = scores(y, logits.argmax(1).numpy(), proba, logits.shape[1])
    return {"loss": s.pop("log_loss"), **s}


def train_on_views(
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
    max_pixels: int,
    cache_dir: str | None = None,
) -> dict:
    """``loop.train_loop``'s contract (the same state, history, last.pt and best.pth) on cached trunk outputs."""
    os.makedirs(out, exist_ok=True)
    c = config.options
    views = parse_views(c.views)
    freeze(model, blocks, c.bn)
    model.to(device)
    trunk, rest, store = trunk_store(model, blocks, config, prep, cache_dir)
    optimizer = torch.optim.AdamW(param_groups(model, c.lr, c.backbone_lr_scale, c.weight_decay))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=c.epochs)
    scaler = torch.amp.GradScaler(device.type, enabled=c.precision == "fp16" and device.type == "cuda")
    workers = default_workers(device.type) if c.workers is None else c.workers
    last, best_path = os.path.join(out, "last.pt"), os.path.join(out, "best.pth")
    meta = config.to_dict()
    state = {"epoch": 0, "history": [], "best_epoch": 0, "best": None, "seconds": 0.0, "failed": {}}
    if os.path.exists(last):
        if not resume:
            raise FeaturebankError(f"{out} holds a run already: add --resume to continue it, or choose another --out")
        state = _resume(out, config, model, optimizer, scheduler, scaler)

    # the one-time pass: every view of the training images, the center view of the validation images
    started = time.perf_counter()
    model.eval()
    pass_options = dict(
        device=device,
        autocast=autocast_for(device, c.precision),
        batch_size=c.batch_size,
        workers=workers,
        max_pixels=max_pixels,
        progress=progress,
    )
    done_train, failed = fill(store, trunk, train.paths, train.digests, views, prep, **pass_options)
    done_val, failed_val = fill(store, trunk, val.paths, val.digests, ("center",), prep, **pass_options)
    pass_seconds = time.perf_counter() - started
    failed.update(failed_val)
    state["failed"].update(failed)
    ok_train = np.array([p not in failed for p in train.paths])
    ok_val = np.array([p not in failed for p in val.paths])
    if not ok_val.any():
        raise FeaturebankError(f"none of the {len(val)} validation images could be read now")
    train_where = np.zeros((len(train), len(views), 2), dtype=np.int64)  # images x views x (part, row)
    for i in np.flatnonzero(ok_train):
        train_where[i] = store.locate([(train.digests[i], v) for v in views])
    val_where = store.locate([(d, "center") for d, ok in zip(val.digests, ok_val) if ok])
    y_val = val.y[ok_val]
    with open(os.path.join(out, "views.json"), "w", encoding="utf-8") as fh:
        json.dump(
            {
                "store": store.folder,
                "views": list(views),
                "cut": store.settings["cut"],
                "row_shape": list(store.shape),
                "dtype": "float16",
                "computed_images": done_train + done_val,
                "seconds": round(pass_seconds, 2),
                "failed": failed,
            },
            fh,
            indent=1,
        )
    if not state["history"]:
        state["seconds"] += pass_seconds  # the pass is part of what this training cost

    hook = add_head_dropout(model, c.dropout)

    def validate():
        return evaluate_cached(model, rest, store, val_where, y_val, device, c.precision, c.batch_size)

    y_train = torch.as_tensor(train.y)
    one_image_batches_fail = has_training_batchnorm(model, blocks, c.bn)
    if not state["history"]:  # epoch 0: the probe's head on the center views
        started = time.perf_counter()
        scores = validate()
        state["seconds"] += time.perf_counter() - started
        state["history"].append(
            {
                "epoch": 0,
                "train_loss": None,
                "train_accuracy": None,
                **{f"val_{k}": v for k, v in scores.items()},
                **{f"lr_{g['name']}": 0.0 for g in optimizer.param_groups},
                "seconds": round(state["seconds"], 2),
            }
        )
        state["best"], state["best_epoch"] = scores, 0
        export_weights(model, best_path, classes, prep, {**meta, "epoch": 0, "val": scores})
    first = c.epochs + 1 if state.get("stopped_early") else state["epoch"] + 1
    for epoch in range(first, c.epochs + 1):
        started = time.perf_counter()
        torch.manual_seed(c.seed * 100_003 + epoch)  # dropout of this epoch
        order = np.random.default_rng([c.seed, epoch]).permutation(len(train))
        drawn = np.random.default_rng([c.seed, epoch, 1]).integers(0, len(views), len(train))  # a view per image
        order = order[ok_train[order]]
        set_train_mode(model, blocks, c.bn)
        total_loss = correct = seen = 0
        with tqdm(
            total=len(order),
            unit="img",
            disable=not progress,
            file=sys.stderr,
            dynamic_ncols=True,
            desc=f"{os.path.basename(out)} epoch {epoch}/{c.epochs}",
        ) as bar:
            for start in range(0, len(order), c.batch_size):
                index = order[start : start + c.batch_size]
                bar.update(len(index))
                if one_image_batches_fail and len(index) < 2:
                    continue  # BatchNorm cannot train on a single image
                x = torch.from_numpy(store.gather(train_where[index, drawn[index]])).to(device).float()
                target = y_train[index].to(device)
                with autocast_for(device, c.precision):
                    logits = rest(x)
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
        row = {
            "epoch": epoch,
            "train_loss": total_loss / max(seen, 1),
            "train_accuracy": correct / max(seen, 1),
            **{f"val_{k}": v for k, v in scores.items()},
            **{f"lr_{k}": v for k, v in rates.items()},
            "seconds": round(state["seconds"], 2),
        }
        state["history"].append(row)
        if better(scores, state["best"]):
            state["best"], state["best_epoch"] = scores, epoch
            export_weights(model, best_path, classes, prep, {**meta, "epoch": epoch, "val": scores})
        state["epoch"] = epoch
        stopped = epoch - state["best_epoch"] >= c.patience
        state["stopped_early"] = stopped and epoch < c.epochs
        _save(
            {
                "config": meta,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "state": state,
            },
            last,
        )
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)
        if stopped:
            break
    if hook is not None:
        hook.remove()
    return state
