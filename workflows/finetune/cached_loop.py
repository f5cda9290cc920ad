"""Training on the frozen trunk's cached output (``--augment views``): the views pass once (``trunk.fill``), then
epochs that run only the unfrozen blocks and the head. Each epoch draws one of the image's views at random (seeded
by seed and epoch, like the pixel path's augmentation, so ``--resume`` follows the same trajectory); validation
scores the ``center`` view (the weights' preprocessing) through the same layers in evaluation mode. The loop,
checkpoints, selection and recorded config are ``loop.train_loop``'s own, so ``best.pth`` is the same kind of file.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from embedder.backbones.features import autocast_for
from embedder.backbones.registry import head_name
from embedder.kernel.errors import FeaturebankError

from .fixed_views import parse_views
from .loop import Trainer, finite_scores
from .report import views_pass_text
from .split import Part
from .surgery import block_names, has_training_batchnorm, set_train_mode
from .trunk import TrunkStore, fill, split_at, store_root, unavailable


def cut_of(model: nn.Module, blocks: list[str]) -> str:
    """Where the trunk ends: before the first unfrozen block (before the head when only the head trains)."""
    if blocks == block_names(model):
        raise unavailable(
            "with --unfreeze all there is no frozen trunk",
            "--augment views needs a frozen trunk: with --unfreeze all, use --augment pixels",
        )
    return blocks[0] if blocks else head_name(model)


@torch.no_grad()
def row_shape(trunk: nn.Module, prep, device) -> tuple[int, ...]:
    """The shape of the trunk's output for one view (one forward of a blank image): what every stored row is."""
    was_training = trunk.training
    trunk.eval()
    try:
        return tuple(trunk(torch.zeros((1, 3, prep.crop, prep.crop), device=device)).shape[1:])
    finally:
        trunk.train(was_training)


def store_settings(backbone: str, weights: str, precision: str) -> dict:
    """What the trunk's rows depend on besides the preprocessing and the cut (``weights``: their identity)."""
    return {"backbone": backbone, "weights": weights, "precision": precision}


def trunk_store(
    model: nn.Module, blocks: list[str], settings: dict, prep, cache_dir: str | None, device=None, store=None
):
    """The split model and the store of its trunk's outputs, keyed by the backbone ``settings`` (backbone, weights'
    identity, precision), the preprocessing and the cut; its parts are checked against the trunk's own output
    shape when opened. ``store``: the same store, opened already (by the center pass), reused as it is."""
    cut = cut_of(model, blocks)
    trunk, rest = split_at(model, cut, [*block_names(model), head_name(model)])
    keyed = {**settings, "preprocessing": prep.to_dict(), "cut": cut}
    if store is None or store.settings != {**keyed, "views_version": store.settings.get("views_version")}:
        shape = row_shape(trunk, prep, device or next(model.parameters()).device)
        store = TrunkStore(store_root(cache_dir), keyed, shape)
    return trunk, rest, store


@torch.no_grad()
def logits_of(rest: nn.Module, store: TrunkStore, where: np.ndarray, device, precision: str, batch_size: int):
    """``rest`` on the stored rows ``where``, a batch at a time, in the model's current mode."""
    out = []
    for start in range(0, len(where), batch_size):
        x = torch.from_numpy(store.gather(where[start : start + batch_size])).to(device).float()
        with autocast_for(device, precision):
            out.append(rest(x).float().cpu())
    return torch.cat(out)


@dataclass
class ViewEpochs:
    """The epochs of ``--augment views`` (``loop.Epochs``): rows of the store, a drawn view per image per epoch."""

    trainer: Trainer
    rest: nn.Module
    store: TrunkStore
    train_where: np.ndarray  # images x views x (part, row); rows of images that failed are never read
    train_ok: np.ndarray  # images whose views exist
    y_train: np.ndarray
    val_where: np.ndarray  # (part, row) of the center view of each readable validation image
    y_val: np.ndarray
    seconds_before: float  # the one-time pass (the views the probe's center pass did not store)

    @classmethod
    def maker(
        cls,
        config,
        cache_dir: str | None,
        out: str,
        progress: bool = False,
        center: dict | None = None,
        say=None,
        store: TrunkStore | None = None,
    ):
        """``train_loop``'s ``epochs_of``: runs the one-time pass when called, then makes the epochs. ``center``:
        what the probe's pass over the center views did (``CenterEmbedding.phase.as_dict()``), for ``views.json``;
        ``say``: where the pass's own line goes; ``store``: the trunk store the center pass opened."""

        def make(trainer: Trainer, train: Part, val: Part, prep, failed: dict[str, str]) -> ViewEpochs:
            return cls.of(
                trainer,
                train,
                val,
                prep,
                failed,
                config=config,
                cache_dir=cache_dir,
                out=out,
                progress=progress,
                center=center,
                say=say,
                store=store,
            )

        return make

    @classmethod
    def of(
        cls,
        trainer: Trainer,
        train: Part,
        val: Part,
        prep,
        failed: dict[str, str],
        *,
        config,
        cache_dir,
        out: str,
        progress: bool = False,
        center: dict | None = None,
        say=None,
        store: TrunkStore | None = None,
    ) -> ViewEpochs:
        """The pass: every view of the training images, the center view of the validation images (what is in the
        store already is reused: the centers the probe's pass stored); ``OUT/views.json`` says what was done."""
        c, model = trainer.options, trainer.model
        views = parse_views(c.views)
        trunk, rest, store = trunk_store(
            model,
            trainer.blocks,
            store_settings(config.backbone, config.weights, c.precision),
            prep,
            cache_dir,
            trainer.device,
            store,
        )
        started = time.perf_counter()
        model.eval()
        run = dict(
            device=trainer.device,
            autocast=autocast_for(trainer.device, c.precision),
            batch_size=c.batch_size,
            workers=trainer.workers,
            max_pixels=trainer.max_pixels,
            progress=progress,
        )
        done_train, bad = fill(store, trunk, train.paths, train.digests, views, prep, **run)
        done_val, bad_val = fill(store, trunk, val.paths, val.digests, ("center",), prep, **run)
        seconds = time.perf_counter() - started
        if say is not None:
            say(views_pass_text(len(train), len(views), len(val), len(set(done_train + done_val)), seconds))
        extra = {"images": len(train) + len(val), "computed_images": len(set(done_train + done_val))}
        bad.update(bad_val)
        failed.update(bad)
        ok_train = np.array([p not in bad for p in train.paths], dtype=bool)
        ok_val = np.array([p not in bad for p in val.paths], dtype=bool)
        if not ok_val.any():
            raise FeaturebankError(f"none of the {len(val)} validation images could be read now")
        train_where = np.zeros((len(train), len(views), 2), dtype=np.int64)
        for i in np.flatnonzero(ok_train):
            train_where[i] = store.locate([(train.digests[i], v) for v in views])
        val_where = store.locate([(d, "center") for d, ok in zip(val.digests, ok_val) if ok])
        info = {
            "store": store.folder,
            "views": list(views),
            "cut": store.settings["cut"],
            "row_shape": list(store.shape or ()),
            "dtype": "float16",
            "computed_images": len(set(done_train + done_val) | set(center["computed"] if center else ())),
            "seconds": round(seconds + (center["seconds"] if center else 0.0), 2),
            "phases": {
                **({"center": {k: v for k, v in center.items() if k != "computed"}} if center else {}),
                "views": {**extra, "seconds": round(seconds, 2)},
            },
            **({"probe_from": "views pass"} if center else {}),
            "failed": bad,
            "rejected": store.rejected,  # parts of the store that could not be used: set aside, computed again
        }
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "views.json"), "w", encoding="utf-8") as fh:
            json.dump(info, fh, indent=1)
        return cls(trainer, rest, store, train_where, ok_train, train.y, val_where, val.y[ok_val], seconds)

    def validate(self, failed: dict[str, str]) -> dict:
        """Scores of the center views through the unfrozen layers in evaluation mode, computed as
        ``loop.evaluate_images`` computes them."""
        t = self.trainer
        t.model.eval()
        logits = logits_of(self.rest, self.store, self.val_where, t.device, t.options.precision, t.options.batch_size)
        return finite_scores(logits, self.y_val, "validation")

    def run(self, epoch: int, failed: dict[str, str], bar) -> tuple[float, float]:
        t = self.trainer
        c = t.options
        torch.manual_seed(c.seed * 100_003 + epoch)  # dropout of this epoch
        order = np.random.default_rng([c.seed, epoch]).permutation(len(self.y_train))
        views = self.train_where.shape[1]
        drawn = np.random.default_rng([c.seed, epoch, 1]).integers(0, views, len(self.y_train))  # a view per image
        order = order[self.train_ok[order]]
        one_image_batches_fail = has_training_batchnorm(t.model, t.blocks, c.bn)
        y_train = torch.as_tensor(self.y_train)
        set_train_mode(t.model, t.blocks, c.bn)
        total_loss, correct, seen = 0.0, 0, 0
        for start in range(0, len(order), c.batch_size):
            index = order[start : start + c.batch_size]
            bar.update(len(index))
            if one_image_batches_fail and len(index) < 2:
                continue  # BatchNorm cannot train on a single image
            x = torch.from_numpy(self.store.gather(self.train_where[index, drawn[index]])).to(t.device).float()
            target = y_train[index].to(t.device)
            loss, right = t.step(self.rest, x, target)
            total_loss, correct, seen = total_loss + loss, correct + right, seen + len(target)
        return total_loss / max(seen, 1), correct / max(seen, 1)
