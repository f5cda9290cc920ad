"""A whole fine-tuning run: embed and split the data, fit the probe, train the network (and, on request, the same
one from scratch), then, only after training, score every model on the ``--test`` images, and write the report.
The pixel path embeds with ``extract``; the views path takes the probe's features from its views pass
(``center_pass``), so the frozen trunk runs once per image and view, and never a second time for the probe."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from classifiers.from_run import best_row, fit_row
from classifiers.metrics import full_proba, scores
from embedder.backbones.features import autocast_for, resolve_device
from embedder.backbones.registry import load_backbone, resolve_weights, skeleton
from embedder.inputs.batches import default_workers
from embedder.kernel.atomic import atomic_path, folder_lock
from embedder.kernel.destination import writable_folder
from embedder.kernel.errors import IncompatibleSettings, InvalidValue
from embedder.kernel.versions import library_versions
from embedder.options import ExtractOptions, with_overrides

from .cached_loop import ViewEpochs, store_settings
from .center_pass import CenterEmbedding
from .loop import TrainingConfig, answer_images, load_best, train_loop
from .options import RUN_FOLDER, FinetuneOptions
from .probe import linear_probe
from .report import (
    below_probe_note,
    center_text,
    comparison_row,
    counts_right,
    kept_after_interrupt,
    numbers_note,
    trained_text,
    write_run_report,
    write_split,
)
from .split import Embedding, Part, check_test_apart, embed_test, prepare_data
from .surgery import block_names, replace_head, starts_from_probe, unfrozen_blocks
from .trunk import ViewsUnavailable


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
    notes: list[str] = field(default_factory=list)  # what the run decided on its own (views or pixels), and why

    def to_dict(self) -> dict:
        return asdict(self)


def _probe_scores(probe, part: Part, k: int) -> dict:
    proba = full_proba(probe.predict_proba(part.X), probe.classes_, k) if hasattr(probe, "predict_proba") else None
    return scores(part.y, probe.predict(part.X), proba, k)


def _compared_row(o: FinetuneOptions, spec):
    """``--compare RUN_DIR``: the best row of that cv run, checked before anything is embedded to have been
    cross-validated on the features fine-tuning starts from (the same backbone, weights and penultimate layer)."""
    if o.compare is None:
        return None
    from embedder.backbones.registry import resolve_layers, skeleton

    row = best_row(o.compare)
    # fine-tuning fits no unlabeled rows: a "+unlabeled" best row is compared as its classifier on the labels alone
    row = replace(row, unlabeled=None)
    here = {"backbone": o.backbone, "weights": spec.identity, "layer": resolve_layers(skeleton(o.backbone))[0]}
    there = {"backbone": row.settings.get("backbone"), "weights": row.settings.get("weights"), "layer": row.layer}
    differ = [f"{k} {there[k]!r} there, {here[k]!r} here" for k in here if there[k] != here[k]]
    if differ:
        raise IncompatibleSettings(
            f"--compare {o.compare}: its best row ({row.text()}) was not cross-validated on the frozen features "
            f"fine-tuning starts from ({'; '.join(differ)}): give a cv run of a cache of this backbone and weights "
            f"at its penultimate layer"
        )
    return row


def cv_digests(compared) -> set[str] | None:
    """The content digests of the rows ``--compare``'s cv run cross-validated on (its best row was chosen on
    them); None when that run's cache is gone (not checked). Read once per run."""
    from embedder.cache.hdf5 import CacheReader
    from embedder.kernel.errors import FeaturebankError

    try:
        return {d for d in CacheReader(compared.cache).rows["digest"] if d}
    except (OSError, FeaturebankError):
        return None


def held(seen: set[str], part: Part) -> int:
    """How many images of ``part`` (by content digest) are among ``seen``."""
    return sum(1 for d in part.digests if d in seen)


def chosen_text(cache: str, seen: set[str] | None, parts: list[tuple[str, Part]]) -> str:
    """For the compared row's "trained" cell: whether cv chose it on images it is scored on here."""
    if seen is None:
        return f"; whether {cache}'s rows include these images is not checked (the cache is gone)"
    said = [f"{n} of the {len(part)} {name}" for name, part in parts if (n := held(seen, part))]
    return f"; cv chose it on folds holding {' and '.join(said)} images" if said else ""


def finetune(
    train,
    out: str = RUN_FOLDER,
    options: FinetuneOptions | None = None,
    *,
    progress: bool = False,
    on_epoch_end=None,
    say=None,
    **keywords,
) -> FinetuneResult:
    """Fine-tune a backbone on the labelled images of ``train`` and write the run into ``out``: ``options`` (a
    ``FinetuneOptions``) with ``keywords`` overriding its fields and those of its ``training`` by name (``epochs=5,
    backbone="resnet18"``). The epoch is chosen on ``val`` (or
    a ``val_split`` of ``train``); ``test`` images, when given, are embedded and scored only after training, and the
    comparison is reported on them (``drop_test_copies``: without the test files whose bytes equal a training or
    validation image; else such a file is refused before training).

    ``augment="auto"`` (the default) is ``views`` where the network splits before its first unfrozen block and
    the frozen trunk's output fits float16, else ``pixels``, with a note saying why; ``--resume`` keeps what the run
    was started with. ``say(line)`` receives the run's notes and the one-time passes' lines (``on_epoch_end(epoch,
    row)`` each finished epoch, ``row["epoch_seconds"]`` that epoch's own time, ``row["run"]`` "from scratch" for
    the ``from_scratch`` run's). A Ctrl-C (``KeyboardInterrupt``) goes through with a ``kept`` attribute: which run
    was interrupted and what was kept, in words."""
    o = with_overrides(FinetuneOptions, options, keywords)
    # what a Ctrl-C leaves: the last epoch, the store, the scratch run's last epoch once it runs; epochs trained now
    saved: dict = {"epoch": None, "trunk": None, "scratch": None, "trained": 0, "notes": []}

    def said(line: str) -> None:
        if line.startswith("note: "):  # kept in the result (report.json) too
            saved["notes"].append(line[len("note: ") :])
        if say is not None:
            say(line)

    def epoch_done(epoch, row):
        if row.get("run"):
            saved["scratch"]["epoch"] = epoch
        else:
            saved["epoch"] = epoch
        saved["trained"] += 1
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)

    try:
        writable_folder(out, "the run", create=False)  # said before the folder is made for its lock
        _refuse_a_run_there(out, o.resume)
        with folder_lock(out):
            return _finetune(train, out, o, progress, epoch_done, said, saved)
    except KeyboardInterrupt as exc:
        exc.kept = kept_after_interrupt(  # type: ignore[attr-defined]
            out, saved["epoch"], saved["trunk"], saved["scratch"], scoring=saved.get("scoring", False)
        )
        raise


def _say_rejected(store, say) -> None:
    if store.rejected:
        first = store.rejected[0]
        say(
            f"note: {len(store.rejected)} part(s) of the trunk store {store.parts} could not be used and were set "
            f"aside as .json.rejected (first: {first['part']}: {first['reason']}); their images are computed again"
        )


def _recorded_augment(out: str) -> dict | None:
    """The augmentation (and views) a run in ``out`` was started with, from its last.pt; None without one."""
    import torch

    try:
        config = torch.load(os.path.join(out, "last.pt"), map_location="cpu", weights_only=True)["config"]
        return {"augment": str(config["augment"]), **({"views": str(config["views"])} if "views" in config else {})}
    except Exception:  # noqa: BLE001 - no readable last.pt: resuming is train_loop's to refuse, in its words
        return None


def _views_embedding(o: FinetuneOptions, spec, dev, progress: bool):
    """The views path's start: the backbone, its unfrozen blocks, and the center pass that embeds for the probe
    (``ViewsUnavailable`` when the network does not split there)."""
    t = o.training
    prep, model = _load(o, spec)
    model.to(dev)
    blocks = unfrozen_blocks(model, t.unfreeze)
    center = CenterEmbedding(
        model,  # before its head is replaced: the probe's features are the loaded network's
        blocks,
        store_settings(o.backbone, spec.identity, t.precision),
        prep,
        cache_dir=o.cache_dir,
        device=dev,
        precision=t.precision,
        batch_size=t.batch_size,
        workers=default_workers(dev.type) if t.workers is None else t.workers,
        max_pixels=o.max_pixels,
        progress=progress,
    )
    return prep, model, blocks, center


def _pixel_embedding(o: FinetuneOptions, spec, progress: bool) -> Embedding:
    t = o.training
    return Embedding(
        ExtractOptions(
            backbone=o.backbone,
            weights=spec.path if spec.kind == "file" else o.weights,
            seed=t.seed,
            resize=o.resize,
            crop=o.crop,
            draft=o.draft,
            layers=("penultimate",),
            device=o.device,
            batch_size=t.batch_size,
            workers=t.workers,
            max_pixels=o.max_pixels,
            cache_dir=o.cache_dir,
        ),
        progress,
        cache=o.cache,
    )


def _finetune(train, out: str, o: FinetuneOptions, progress: bool, on_epoch_end, say, saved: dict) -> FinetuneResult:
    t = o.training  # checked when built, before anything is embedded
    writable_folder(out, "the run", create=False)  # a run folder that cannot be written: said before any embedding
    _refuse_a_run_there(out, o.resume)
    dev = resolve_device(o.device)
    autocast_for(dev, t.precision)
    spec = resolve_weights(o.backbone, o.weights, t.seed)
    compared = _compared_row(o, spec)
    _say_all_blocks(o.backbone, t.unfreeze, say)
    if t.augment == "auto" and o.resume:
        recorded = _recorded_augment(out)
        if recorded is not None:  # a resumed run goes on as it was started
            t = replace(t, **recorded)
    embedding: Embedding | CenterEmbedding
    center: CenterEmbedding | None = None  # the views path: the probe's features come from its center pass
    data = None
    if t.augment in ("auto", "views"):
        try:
            prep, model, blocks, center = _views_embedding(o, spec, dev, progress)
            saved["trunk"] = center.store.folder
            _say_rejected(center.store, say)
            data = prepare_data(train, o.val, o.val_split, t.seed, center)
            t = replace(t, augment="views")
        except ViewsUnavailable as exc:
            if t.augment == "views":
                raise
            say(f"note: training on pixels (--augment pixels), not --augment views: {exc.reason}")
            t, center, saved["trunk"] = replace(t, augment="flip"), None, None
    o = replace(o, training=t)
    if center is not None and o.cache is not None:
        say(
            f"note: --cache {o.cache} is not read on the views path: the center pass computes the probe's features "
            f"(--augment pixels reads it)"
        )
    embedding = center if center is not None else _pixel_embedding(o, spec, progress)
    if data is None:
        data = prepare_data(train, o.val, o.val_split, t.seed, embedding)
    if center is not None:
        say(center_text(center.phase))
    dropped = check_test_apart(o.test, data, o.drop_test_copies) if o.test is not None else []
    k = len(data.classes)
    config = _config(o, spec, data.classes, len(data.train), len(data.val), data.how)
    os.makedirs(out, exist_ok=True)
    write_split({"train": data.train, "val": data.val}, data.classes, os.path.join(out, "split.csv"))

    started = time.perf_counter()
    probe, head_init = linear_probe(data.train.X, data.train.y, k, t.seed)
    probe_seconds = time.perf_counter() - started + _embedding_seconds(out, data.embed_seconds)
    if compared is not None:  # cv's best classifier, fit on the same training rows as the probe
        started = time.perf_counter()
        best_frozen = fit_row(compared, data.train.X, data.train.y, t.seed)
        compared_seconds = time.perf_counter() - started

    if center is None:
        prep, model = _load(o, spec)
        blocks = unfrozen_blocks(model, t.unfreeze)
    init = head_init if t.probe_init else None
    head = replace_head(model, k, init, seed=t.seed)  # a new module: the views path splits it anew
    run = dict(device=dev, resume=o.resume, progress=progress, max_pixels=o.max_pixels)
    views = (
        ViewEpochs.maker(config, o.cache_dir, out, progress, center=center.phase.as_dict(), say=say, store=center.store)
        if center is not None
        else None
    )
    state = train_loop(
        model,
        blocks,
        data.train,
        data.val,
        data.classes,
        prep,
        out,
        config,
        on_epoch_end=on_epoch_end,
        epochs_of=views,  # None: pixels; views: the frozen trunk once, then epochs of the unfrozen layers
        **run,
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    trained = {"fine-tuned": (model, out, state)}
    if o.from_scratch:
        saved["scratch"] = {"epoch": None}
        trained["from scratch"] = _train_from_scratch(o, config, data, prep, out, run, on_epoch_end)
        saved["scratch"] = None  # finished: a Ctrl-C from here on interrupts no training
    if o.resume and not saved["trained"] and state.epoch:
        say(f"note: --resume: {out} had finished already ({_finished_text(state, t)}): nothing was trained now")

    seen = cv_digests(compared) if compared is not None else None  # the rows cv chose --compare's row on
    # Training is over: only now are the test images embedded and scored, by the probe and the chosen epochs.
    saved["scoring"] = True  # a Ctrl-C from here on stops the scoring, not a training
    tests, counts, test_rows, failed_now = {}, {}, 0, dict(state.failed)
    if o.test is not None:
        test_data = embed_test(o.test, data.classes, embedding, data)
        test_rows = len(test_data)
        write_split(
            {"train": data.train, "val": data.val, "test": test_data}, data.classes, os.path.join(out, "split.csv")
        )
        answers = {"probe": probe.predict(test_data.X)}
        tests["probe"] = _probe_scores(probe, test_data, k)
        if compared is not None:
            answers["compared"] = best_frozen.predict(test_data.X)
            tests["compared"] = _probe_scores(best_frozen, test_data, k)
        eval_workers = default_workers(dev.type) if t.workers is None else t.workers
        for name, (net, folder, _) in trained.items():
            tests[name], answers[name], failed = answer_images(
                load_best(net, folder),
                test_data,
                prep,
                dev,
                t.precision,
                t.batch_size,
                eval_workers,
                o.max_pixels,
                role="test",
            )
            failed_now.update(dict(failed))
        counts = {name: counts_right(np.asarray(a), test_data.y) for name, a in answers.items()}
        if seen is not None and held(seen, test_data):
            say(
                f"note: --compare {o.compare}: cv chose its best row on folds holding {held(seen, test_data)} of "
                f"the {len(test_data)} --test images: that row's test figures are not free of selection"
            )
        below = below_probe_note(np.asarray(answers["probe"]), answers["fine-tuned"], test_data.y)
        if below is not None:
            say(f"note: {below}")
    known = {s["path"] for s in embedding.skipped}
    skipped = embedding.skipped + [
        {"path": p, "reason": r, "part": "failed when read again"} for p, r in failed_now.items() if p not in known
    ]
    comparison = [
        comparison_row(
            "frozen linear probe",
            "logistic regression on the cached features (the zoo's logreg)"
            if center is None
            else "logistic regression on the center view's features from the views pass (the zoo's logreg)",
            _probe_scores(probe, data.val, k),
            tests.get("probe"),
            probe_seconds,
            counts.get("probe"),
        )
    ]
    comparison.append(
        comparison_row(
            f"fine-tuned (last {len(blocks)} block(s) + head)" if t.unfreeze != "all" else "fine-tuned (all layers)",
            trained_text(state),
            state.best,
            tests.get("fine-tuned"),
            state.seconds,
            counts.get("fine-tuned"),
        )
    )
    if o.from_scratch:
        scratch_state = trained["from scratch"][2]
        comparison.append(
            comparison_row(
                "from scratch (same architecture, random init)",
                trained_text(scratch_state),
                scratch_state.best,
                tests.get("from scratch"),
                scratch_state.seconds,
                counts.get("from scratch"),
            )
        )
    if compared is not None:
        comparison.append(
            comparison_row(
                f"frozen {compared.classifier} (cv's best row)",
                f"{compared.text()}, the best row of {o.compare}, fit on the same frozen features and training "
                f"images as the probe"
                + chosen_text(
                    compared.cache,
                    seen,
                    [("validation", data.val)] + ([("test", test_data)] if o.test is not None else []),
                ),
                _probe_scores(best_frozen, data.val, k),
                tests.get("compared"),
                compared_seconds,
                counts.get("compared"),
            )
        )
    on = "test" if o.test is not None else "validation"
    note = numbers_note(on, starts_from_probe(head, init)) + (
        f" {len(dropped)} test image(s) whose bytes equal a training or validation image were left "
        f"out (--drop-test-copies): {', '.join(dropped)}."
        if dropped
        else ""
    )
    result = FinetuneResult(
        os.path.abspath(out),
        data.classes,
        blocks,
        trainable,
        state.best_epoch,
        state.history,
        comparison,
        on,
        note,
        os.path.abspath(os.path.join(out, "best.pth")),
        skipped,
        test=os.path.abspath(o.test) if o.test is not None else None,
        test_images=test_rows,
        test_dropped=dropped,
        config=config.to_dict(),
        scratch_history=trained["from scratch"][2].history if o.from_scratch else [],
        notes=list(saved["notes"]),
    )
    result.files = write_run_report(result, prep, library_versions())
    return result


def _train_from_scratch(o: FinetuneOptions, config: TrainingConfig, data, prep, out: str, run: dict, on_epoch_end):
    """The same architecture from random weights (its head too, drawn from --seed), every layer training, into
    OUT/scratch; its epochs reach ``on_epoch_end`` with ``row["run"]`` = "from scratch"."""
    t = o.training
    scratch = load_backbone(o.backbone, "none", t.seed, resize=o.resize, crop=o.crop, draft=o.draft).model
    replace_head(scratch, len(data.classes), seed=t.seed)
    scratch_config = replace(
        config,
        weights=f"none:seed={t.seed}",
        options=replace(
            t,
            unfreeze="all",
            bn="train",
            backbone_lr_scale=1.0,
            probe_init=False,
            augment="flip" if t.augment == "views" else t.augment,  # no frozen trunk to run once
        ),
    )
    scratch_out = os.path.join(out, "scratch")
    state = train_loop(
        scratch,
        block_names(scratch),
        data.train,
        data.val,
        data.classes,
        prep,
        scratch_out,
        scratch_config,
        on_epoch_end=lambda epoch, row: on_epoch_end(epoch, {**row, "run": "from scratch"}),
        **run,
    )
    return scratch, scratch_out, state


def _refuse_a_run_there(out: str, resume: bool) -> None:
    """A folder that holds a run is refused without --resume before anything is embedded (``train_loop`` checks
    again), so that a refused command leaves nothing behind and is counted nowhere; a folder without a run's
    last.pt that holds a file of a run's names, written by something else (a user's report.md), is refused too:
    a run writes over its own files only."""
    if os.path.exists(os.path.join(out, "last.pt")):
        if not resume:
            raise InvalidValue(f"{out} holds a run already: add --resume to continue it, or choose another --out")
        return
    for name in RUN_FILES:
        path = os.path.join(out, name)
        if os.path.lexists(path) and not _written_by_a_run(name, path):
            raise InvalidValue(
                f"{out} holds {name}, which no finetune run wrote there: move it, or choose another --out "
                f"(nothing was replaced)"
            )


# what a run writes into its folder; those a run killed before its first epoch leaves are told by their content
RUN_FILES = (
    "split.csv", "views.json", "seconds.json", "best.pth", "report.md", "report.html", "report.json",
    "curves.png", "log.csv", "log.json",
)  # fmt: skip


def _written_by_a_run(name: str, path: str) -> bool:
    """Whether ``path`` (``name`` in a folder without last.pt) is what a run killed before its first epoch left:
    split.csv with its header, views.json and seconds.json as finetune writes them, best.pth a checkpoint. Any
    other of ``RUN_FILES`` comes after an epoch, and so with a last.pt."""
    import json

    from embedder.kernel.destination import featurebank_kind

    try:
        if name == "split.csv":
            with open(path, encoding="utf-8") as fh:
                return fh.readline().strip() == "path,part,label,group"
        if name in ("views.json", "seconds.json"):
            with open(path, encoding="utf-8") as fh:
                d = json.load(fh)
            return isinstance(d, dict) and ("views" in d if name == "views.json" else True)
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return name == "best.pth" and featurebank_kind(path) == "checkpoint"


def _say_all_blocks(backbone: str, unfreeze, say) -> None:
    """``--unfreeze N`` past the network's blocks trains them all: said once, before any other note, as the
    notes after it call it --unfreeze all."""
    if unfreeze == "all" or not int(unfreeze):
        return
    n = len(block_names(skeleton(backbone)))
    if int(unfreeze) > n:
        say(f"note: --unfreeze {unfreeze}: the network has {n} blocks, all unfrozen")


def _finished_text(state, t) -> str:
    if state.stopped_early:
        return f"stopped early at epoch {state.epoch} of {t.epochs}, after {t.patience} without a better one"
    return f"all {state.epoch} epochs"


def _embedding_seconds(out: str, now: float) -> float:
    """The seconds this folder's runs spent embedding the probe's images, ``now`` (this run's) included: kept in
    OUT/seconds.json, so that a --resume still counts what the interrupted run embedded."""
    path = os.path.join(out, "seconds.json")
    try:
        with open(path, encoding="utf-8") as fh:
            before = float(json.load(fh)["embedding"])
    except (OSError, ValueError, KeyError, TypeError):  # none yet (or unreadable): this run's alone
        before = 0.0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump({"embedding": round(before + now, 3)}, fh)
    return before + now


def _load(o: FinetuneOptions, spec):
    """The backbone with its own head, and its preprocessing."""
    loaded = load_backbone(o.backbone, spec, resize=o.resize, crop=o.crop, draft=o.draft)
    return loaded.preprocessing, loaded.model


def _config(o: FinetuneOptions, spec, classes, train_images: int, val_images: int, how: str) -> TrainingConfig:
    return TrainingConfig(
        backbone=o.backbone,
        weights=spec.identity,
        options=o.training,
        classes=tuple(classes),
        train_images=train_images,
        val_images=val_images,
        validation=how,
    )
