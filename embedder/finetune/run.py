"""A whole fine-tuning run: embed and split the data, fit the probe, train the network (and, on request, the same
one from scratch), then, only after training, score every model on the ``--test`` images, and write the report."""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, replace

from ..batches import default_workers
from ..backbones import load_backbone, resolve_weights
from ..decode import DEFAULT_MAX_PIXELS
from ..features import autocast_for, resolve_device
from ..job import library_versions
from .cached_loop import train_on_views
from .loop import TrainingConfig, TrainingOptions, evaluate_images, load_best, train_loop
from .probe import linear_probe
from .report import NOTES, comparison_row, trained_text, write_run_report, write_split
from .split import Embedding, Part, check_test_apart, embed_test, prepare_data
from .surgery import block_names, replace_head, unfrozen_blocks
from .trunk import DEFAULT_VIEWS


@dataclass
class FinetuneResult:
    out: str
    classes: list[str]
    blocks: list[str]  # unfrozen blocks
    trainable_parameters: int
    best_epoch: int  # chosen on the validation images
    history: list[dict]
    comparison: list[dict]  # linear probe, fine-tuned, from scratch: val_* and test_* metrics of each
    reported_on: str  # "test" (nothing was selected on those numbers) or "validation" (selection included)
    note: str  # what the comparison's numbers are, in words
    checkpoint: str  # best.pth: --weights for extract, predict --head
    skipped: list[dict]
    test: str | None = None  # the --test input
    test_images: int = 0
    test_dropped: list[str] = field(default_factory=list)  # --test files left out as byte copies of train/val images
    files: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    scratch_history: list[dict] = field(default_factory=list)  # with --from-scratch

    def to_dict(self) -> dict:
        return asdict(self)


def _probe_scores(probe, part: Part, k: int) -> dict:
    from classifiers.metrics import full_proba, scores

    proba = full_proba(probe.predict_proba(part.X), probe.classes_, k)
    return scores(part.y, probe.predict(part.X), proba, k)


def finetune(train, out: str = "runs/finetune", *, val=None, val_split: float = 0.2, test=None,
             drop_test_copies: bool = False,
             backbone: str = "resnet50", weights: str | None = "DEFAULT", resize: int | None = None,
             crop: int | None = None, draft: bool = True, unfreeze: int | str = 1, epochs: int = 10, lr: float = 1e-3,
             backbone_lr_scale: float = 0.1, weight_decay: float = 1e-4, batch_size: int = 32, dropout: float = 0.2,
             bn: str = "frozen", augment: str = "views", probe_init: bool = True, patience: int = 3, seed: int = 0,
             device: str = "auto", precision: str = "fp32", workers: int | None = None, resume: bool = False,
             from_scratch: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS, cache_dir: str | None = None,
             progress: bool = False, on_epoch_end=None, views: str = DEFAULT_VIEWS) -> FinetuneResult:
    """Fine-tune ``backbone`` on the labelled images of ``train`` and write the run into ``out``. The epoch is
    chosen on ``val`` (or a ``val_split`` of ``train``); ``test`` images, when given, are embedded and scored only
    after training, and the comparison is reported on them (``drop_test_copies``: without the test files whose bytes
    equal a training or validation image; else such a file is refused before training)."""
    options = TrainingOptions(unfreeze=unfreeze, epochs=epochs, lr=lr, backbone_lr_scale=backbone_lr_scale,
                              weight_decay=weight_decay, batch_size=batch_size, dropout=dropout, bn=bn,
                              augment=augment, probe_init=probe_init, patience=patience, seed=seed,
                              precision=precision, workers=workers, views=views)  # checked here, before anything is embedded
    dev = resolve_device(device)
    autocast_for(dev, precision)
    spec = resolve_weights(backbone, weights, seed)
    embedding = Embedding(dict(backbone=backbone, weights=spec.path if spec.kind == "file" else weights, seed=seed,
                               resize=resize, crop=crop, draft=draft, layers=["penultimate"], device=device,
                               batch_size=batch_size, workers=workers, max_pixels=max_pixels, cache_dir=cache_dir,
                               progress=progress))
    data = prepare_data(train, val, val_split, seed, embedding)
    dropped = check_test_apart(test, data, drop_test_copies) if test is not None else []
    k = len(data.classes)
    config = TrainingConfig(backbone=backbone, weights=spec.identity, options=options, classes=tuple(data.classes),
                            train_images=len(data.train), val_images=len(data.val), validation=data.how)
    os.makedirs(out, exist_ok=True)
    write_split({"train": data.train, "val": data.val}, data.classes, os.path.join(out, "split.csv"))

    started = time.perf_counter()
    probe, head_init = linear_probe(data.train.X, data.train.y, k, seed)
    probe_seconds = time.perf_counter() - started + data.embed_seconds  # embedding included when done now

    loaded = load_backbone(backbone, spec, resize=resize, crop=crop, draft=draft)
    prep, model = loaded.preprocessing, loaded.model
    blocks = unfrozen_blocks(model, unfreeze)
    replace_head(model, k, head_init if probe_init else None)
    run = dict(device=dev, resume=resume, progress=progress, max_pixels=max_pixels)
    if options.augment == "views":  # the frozen trunk once, then epochs of the unfrozen layers (cached_loop)
        state = train_on_views(model, blocks, data.train, data.val, data.classes, prep, out, config,
                               on_epoch_end=on_epoch_end, cache_dir=cache_dir, **run)
    else:
        state = train_loop(model, blocks, data.train, data.val, data.classes, prep, out, config,
                           on_epoch_end=on_epoch_end, **run)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    trained = {"fine-tuned": (model, out, state)}
    if from_scratch:
        scratch = load_backbone(backbone, "none", seed, resize=resize, crop=crop, draft=draft).model
        replace_head(scratch, k)
        scratch_config = replace(config, weights=f"none:seed={seed}", options=replace(
            options, unfreeze="all", bn="train", backbone_lr_scale=1.0, probe_init=False,
            augment="pixels" if options.augment == "views" else options.augment))  # no frozen trunk to cache
        scratch_out = os.path.join(out, "scratch")
        scratch_state = train_loop(scratch, block_names(scratch), data.train, data.val, data.classes, prep, scratch_out,
                                   scratch_config, **run)
        trained["from scratch"] = (scratch, scratch_out, scratch_state)

    # Training is over: only now are the test images embedded and scored, by the probe and the chosen epochs.
    tests, test_rows, failed_now = {}, 0, dict(state["failed"])
    if test is not None:
        test_data = embed_test(test, data.classes, embedding, data)
        test_rows = len(test_data)
        write_split({"train": data.train, "val": data.val, "test": test_data}, data.classes,
                    os.path.join(out, "split.csv"))
        tests["probe"] = _probe_scores(probe, test_data, k)
        eval_workers = default_workers(dev.type) if workers is None else workers
        for name, (net, folder, _) in trained.items():
            tests[name], failed = evaluate_images(load_best(net, folder), test_data, prep, dev, precision, batch_size,
                                                  eval_workers, max_pixels, role="test")
            failed_now.update(dict(failed))
    known = {s["path"] for s in embedding.skipped}
    skipped = embedding.skipped + [{"path": p, "reason": r, "part": "failed when read again"} for p, r in failed_now.items()
                                   if p not in known]
    comparison = [comparison_row("frozen linear probe", "logistic regression on the cached features (the zoo's logreg)",
                                 _probe_scores(probe, data.val, k), tests.get("probe"), probe_seconds)]
    comparison.append(comparison_row(f"fine-tuned (last {len(blocks)} block(s) + head)" if unfreeze != "all"
                                     else "fine-tuned (all layers)", trained_text(state), state["best"],
                                     tests.get("fine-tuned"), state["seconds"]))
    if from_scratch:
        comparison.append(comparison_row("from scratch (same architecture, random init)", trained_text(scratch_state),
                                         scratch_state["best"], tests.get("from scratch"), scratch_state["seconds"]))
    on = "test" if test is not None else "validation"
    note = NOTES[on] + (f" {len(dropped)} test image(s) whose bytes equal a training or validation image were left "
                        f"out (--drop-test-copies): {', '.join(dropped)}." if dropped else "")
    result = FinetuneResult(os.path.abspath(out), data.classes, blocks, trainable, state["best_epoch"],
                            state["history"], comparison, on, note,
                            os.path.abspath(os.path.join(out, "best.pth")), skipped,
                            test=os.path.abspath(test) if test is not None else None, test_images=test_rows,
                            test_dropped=dropped,
                            config=config.to_dict(),
                            scratch_history=scratch_state["history"] if from_scratch else [])
    result.files = write_run_report(result, prep, library_versions())
    return result
