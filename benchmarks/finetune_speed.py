"""Fine-tuning's two paths on real photos: the frozen trunk run once over a fixed set of views (``--augment
views``, the default) against fresh random pixel augmentation every epoch (``--augment pixels``), same split,
same seed, same epochs.

    python benchmarks/finetune_speed.py                       # every run, in the order below; prints the table
    python benchmarks/finetune_speed.py --only flowers-last2   # the target's two runs
    python benchmarks/finetune_speed.py --table               # the table of the runs that finished

MobileNetV2 (the ImageNet checkpoint in ../shared/weights), the last 1 or 2 blocks unfrozen, 10 epochs (patience
10: no early stop, so both paths run every epoch). flowers: ``--val-split 0.2`` of train/, ``--test val/
--drop-test-copies``; hymenoptera: the same with its own train/ and val/. The epoch is chosen on validation, the
test images are scored after training by the full network in float32 on the weights' preprocessing: nothing was
selected on them. Each run is one subprocess with a fresh, empty cache folder (the extraction, the probe and the
views pass are in its total), and its peak memory is that process's maximum resident set. Results are kept in
--work (a run that finished is not run again), so the command can be stopped and started again.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
from dataclasses import replace

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
WEIGHTS = SHARED / "weights" / "mobilenet_v2-imagenet.pth"
DATA = {"flowers": SHARED / "data" / "flowers", "hymenoptera": SHARED / "data" / "hymenoptera"}
EPOCHS = 10
# the target first (flowers, last 2 blocks), then as time allows
RUNS = [
    (d, n, path)
    for d, n in (("flowers", 2), ("hymenoptera", 2), ("hymenoptera", 1), ("flowers", 1))
    for path in ("pixels", "views")
]


def name_of(dataset: str, unfreeze: int, path: str) -> str:
    return f"{dataset}-last{unfreeze}-{path}"


def run_one(dataset: str, unfreeze: int, path: str, work: pathlib.Path) -> dict:
    """In this process: one ``finetune`` run; returns what the table needs."""
    sys.path.insert(0, str(ROOT))
    from embedder.finetune import finetune

    folder = work / name_of(dataset, unfreeze, path)
    cpu = [time.process_time()]  # this process's CPU seconds at the start and after each epoch (robust to load)
    started = time.perf_counter()
    result = finetune(
        str(DATA[dataset] / "train"),
        str(folder / "run"),
        val_split=0.2,
        test=str(DATA[dataset] / "val"),
        drop_test_copies=True,
        backbone="mobilenet_v2",
        weights=str(WEIGHTS),
        unfreeze=unfreeze,
        epochs=EPOCHS,
        patience=EPOCHS,
        seed=0,
        augment=path,
        cache_dir=str(folder / "cache"),
        on_epoch_end=lambda epoch, row: cpu.append(time.process_time()),
    )
    total = time.perf_counter() - started
    cpu.append(time.process_time())
    views = folder / "run" / "views.json"
    views = json.loads(views.read_text()) if views.exists() else {}
    rows = {r["model"].split(" (")[0]: r for r in result.comparison}
    tuned = rows["fine-tuned"]
    epochs = [h for h in result.history if h["epoch"]]
    # history "seconds" is cumulative and includes validation; per epoch: the differences
    per_epoch = [b["seconds"] - a["seconds"] for a, b in zip(result.history, result.history[1:])]
    return {
        "dataset": dataset,
        "unfreeze": unfreeze,
        "path": path,
        "total_seconds": total,
        "training_seconds": tuned["seconds"],
        "epochs": len(epochs),
        "seconds_per_epoch": sum(per_epoch) / max(len(per_epoch), 1),
        "views_seconds": views.get("seconds"),
        "views": views.get("views"),
        "cpu_total_seconds": cpu[-1] - cpu[0],
        "cpu_seconds_per_epoch": (cpu[-2] - cpu[2]) / max(len(cpu) - 4, 1) if len(cpu) > 4 else None,
        "probe_seconds": rows["frozen linear probe"]["seconds"],
        "test_accuracy": tuned["test_accuracy"],
        "probe_test_accuracy": rows["frozen linear probe"]["test_accuracy"],
        "val_accuracy": tuned["val_accuracy"],
        "best_epoch": result.best_epoch,
        "test_images": result.test_images,
        "train_images": result.config["train_images"],
        "val_images": result.config["val_images"],
    }


def components(dataset: str, unfreeze: int, n: int, views: str) -> dict:
    """CPU seconds per image of each part of both paths, measured on the same ``n`` training images in this one
    process, one after the other (CPU time, not wall time: the shared machine's load changes the wall clock far more
    than the work). Returns the per-image costs and what they make for the whole data set and EPOCHS epochs."""
    import tempfile

    import numpy as np
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(ROOT))
    from embedder.augment import Augmentation
    from embedder.backbones import load_backbone
    from embedder.finetune.cached_loop import evaluate_cached, trunk_store
    from embedder.finetune.loop import TrainingConfig, TrainingOptions, _loader, evaluate_images
    from embedder.finetune.split import Part
    from embedder.finetune.surgery import (
        add_head_dropout,
        freeze,
        param_groups,
        replace_head,
        set_train_mode,
        unfrozen_blocks,
    )
    from embedder.finetune.trunk import fill, parse_views
    from embedder.sources import list_images

    listing = list_images(str(DATA[dataset] / "train"))
    items = [it for it in listing.items if it.error is None]
    classes = sorted({it.label for it in items})
    picked = [items[i] for i in np.random.default_rng(0).choice(len(items), n, replace=False)]
    paths = [listing.full_path(it) for it in picked]
    y = np.array([classes.index(it.label) for it in picked])
    from embedder.decode import file_digest

    part = Part(paths, y, np.zeros((n, 1)), [""] * n, [file_digest(p) for p in paths])
    loaded = load_backbone("mobilenet_v2", str(WEIGHTS))
    prep, model = loaded.preprocessing, loaded.model
    replace_head(model, len(classes))
    blocks = unfrozen_blocks(model, unfreeze)
    freeze(model, blocks, "frozen")
    add_head_dropout(model, 0.2)
    options = TrainingOptions(
        unfreeze=unfreeze,
        epochs=EPOCHS,
        lr=1e-3,
        backbone_lr_scale=0.1,
        weight_decay=1e-4,
        batch_size=32,
        dropout=0.2,
        bn="frozen",
        augment="views",
        probe_init=True,
        patience=EPOCHS,
        seed=0,
        precision="fp32",
        workers=0,
        views=views,
    )
    config = TrainingConfig(
        backbone="mobilenet_v2",
        weights="bench",
        options=options,
        classes=tuple(classes),
        train_images=n,
        val_images=n,
        validation="bench",
    )
    optimizer = torch.optim.AdamW(param_groups(model, 1e-3, 0.1, 1e-4))
    dev = torch.device("cpu")
    cost = {}

    def timed(name, fn):
        start = time.process_time()
        fn()
        cost[name] = (time.process_time() - start) / n

    def step(logits, target):
        loss = F.cross_entropy(logits, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def pixel_epoch():
        set_train_mode(model, blocks, "frozen")
        for batch in _loader(paths, Augmentation(prep, "pixels"), 32, 0, 89_478_485):
            step(model(prep.normalize(torch.as_tensor(batch.images))), torch.as_tensor(y[batch.indices]))

    timed("pixels: train, per image and epoch", pixel_epoch)
    timed("pixels: validate, per image and epoch", lambda: evaluate_images(model, part, prep, dev, "fp32", 32, 0))
    with tempfile.TemporaryDirectory() as tmp:
        trunk, rest, store = trunk_store(model, blocks, config, prep, tmp)
        model.eval()
        names = parse_views(views)
        run = dict(
            device=dev, autocast=torch.autocast("cpu", enabled=False), batch_size=32, workers=0, max_pixels=89_478_485
        )
        timed(
            f"views: the one-time pass, per training image ({len(names)} views)",
            lambda: fill(store, trunk, paths, part.digests, names, prep, **run),
        )
        store2 = trunk_store(model, blocks, replace(config, backbone="bench2"), prep, tmp)[2]
        timed(
            "views: the one-time pass, per validation image (center)",
            lambda: fill(store2, trunk, paths, part.digests, ("center",), prep, **run),
        )
        where = np.stack([store.locate([(d, v) for v in names]) for d in part.digests])
        drawn = np.random.default_rng(0).integers(0, len(names), n)

        def cached_epoch():
            set_train_mode(model, blocks, "frozen")
            for start in range(0, n, 32):
                index = np.arange(start, min(n, start + 32))
                x = torch.from_numpy(store.gather(where[index, drawn[index]])).float()
                step(rest(x), torch.as_tensor(y[index]))

        timed("views: train, per image and epoch", cached_epoch)
        center = store.locate([(d, "center") for d in part.digests])
        timed(
            "views: validate, per image and epoch",
            lambda: evaluate_cached(model, rest, store, center, y, dev, "fp32", 32),
        )
    return cost


def project(cost: dict, train: int, val: int, test: int, images: int) -> dict:
    """The per-image costs made into a run: ``images`` embedded first (extraction: about a validation pass),
    ``train`` and ``val`` images for EPOCHS epochs, ``test`` images embedded and scored after."""
    c = list(cost.values())
    pix_train, pix_val, pass_train, pass_val, views_train, views_val = c
    common = images * pix_val + test * 2 * pix_val  # extraction; the test images: embedded, then scored
    pixel_epoch, views_epoch = train * pix_train + val * pix_val, train * views_train + val * views_val
    once = train * pass_train + val * pass_val
    return {
        "pixels_epoch": pixel_epoch,
        "views_epoch": views_epoch,
        "views_pass": once,
        "pixels_training": EPOCHS * pixel_epoch,
        "views_training": EPOCHS * views_epoch,
        "pixels_command": common + EPOCHS * pixel_epoch,
        "views_command": common + once + EPOCHS * views_epoch,
        "common": common,
    }


def launch(dataset: str, unfreeze: int, path: str, work: pathlib.Path) -> dict:
    """One run in a subprocess: its own peak memory (``wait4``'s maximum resident set)."""
    folder = work / name_of(dataset, unfreeze, path)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    out = folder / "result.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", dataset, str(unfreeze), path, "--work", str(work)], env=env, cwd=ROOT
    )
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{name_of(dataset, unfreeze, path)} failed (status {status})")
    row = json.loads(out.read_text())
    row["peak_rss_gb"] = usage.ru_maxrss / 1e6  # kilobytes on Linux
    out.write_text(json.dumps(row, indent=1))
    return row


def table(work: pathlib.Path) -> str:
    done = {}
    for d, n, path in RUNS:
        f = work / name_of(d, n, path) / "result.json"
        if f.exists():
            row = json.loads(f.read_text())
            if "peak_rss_gb" in row:
                done[(d, n, path)] = row
    lines = [
        "| data | unfrozen | path | views pass s | s / epoch | training s | whole command s | peak memory GB "
        "| test acc. % (fine-tuned) | test acc. % (probe) | training × faster | command × faster "
        "| test Δ points |",
        "|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for (d, n, path), r in done.items():
        base = done.get((d, n, "pixels"))

        def ratio(k, base=base, r=r, path=path):
            return f"{base[k] / r[k]:.1f}" if base and path == "views" else "–"

        delta = f"{100 * (r['test_accuracy'] - base['test_accuracy']):+.2f}" if base and path == "views" else "–"
        vs = f"{r['views_seconds']:.0f}" if r.get("views_seconds") is not None else "–"
        lines.append(
            f"| {d} | {n} | {path} | {vs} | {r['seconds_per_epoch']:.1f} | {r['training_seconds']:.0f} "
            f"| {r['total_seconds']:.0f} | {r['peak_rss_gb']:.2f} | {100 * r['test_accuracy']:.2f} "
            f"| {100 * r['probe_test_accuracy']:.2f} | {ratio('training_seconds')} | "
            f"{ratio('total_seconds')} | {delta} |"
        )
    missing = [name_of(*k) for k in RUNS if k not in done]
    if missing:
        lines += ["", "Not run: " + ", ".join(missing)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/fb-finetune-speed", help="run folders and results")
    parser.add_argument("--only", action="append", help="runs whose name starts with this (repeatable)")
    parser.add_argument("--table", action="store_true", help="print the table of the finished runs only")
    parser.add_argument("--again", action="store_true", help="run finished runs again")
    parser.add_argument(
        "--components",
        type=int,
        metavar="N",
        help="CPU seconds per image of each part of both paths on N training images, made into "
        "flowers-sized runs (for a machine too loaded for the whole runs)",
    )
    parser.add_argument("--unfreeze", type=int, default=2, help="with --components")
    parser.add_argument("--views", default="center,flip,crops:2", help="with --components")
    parser.add_argument("--child", nargs=3, metavar=("DATA", "UNFREEZE", "PATH"), help=argparse.SUPPRESS)
    opts = parser.parse_args()
    work = pathlib.Path(opts.work)
    if opts.components:
        cost = components("flowers", opts.unfreeze, opts.components, opts.views)
        print(
            f"flowers train/, {opts.components} images, MobileNetV2, last {opts.unfreeze} block(s), views "
            f"{opts.views}: CPU seconds per image (one process, this machine's load as it was)"
        )
        for k, v in cost.items():
            print(f"| {k} | {v:.4f} |")
        p = project(cost, train=2055, val=514, test=548, images=2569)
        print(json.dumps({k: round(v, 1) for k, v in p.items()}))
        print(
            f"training x {p['pixels_training'] / p['views_training']:.1f} less, whole command x "
            f"{p['pixels_command'] / p['views_command']:.1f} faster (projected for flowers, {EPOCHS} epochs)"
        )
        return 0
    if opts.child:
        d, n, path = opts.child
        row = run_one(d, int(n), path, work)
        (work / name_of(d, int(n), path) / "result.json").write_text(json.dumps(row, indent=1))
        return 0
    if not opts.table:
        if not WEIGHTS.exists() or not all(p.exists() for p in DATA.values()):
            raise SystemExit(f"needs {WEIGHTS} and {', '.join(map(str, DATA.values()))}")
        for d, n, path in RUNS:
            name = name_of(d, n, path)
            if opts.only and not any(name.startswith(o) for o in opts.only):
                continue
            if (work / name / "result.json").exists() and not opts.again:
                continue
            row = launch(d, n, path, work)
            print(f"{name}: {row['total_seconds']:.0f} s, test accuracy {100 * row['test_accuracy']:.2f} %", flush=True)
    print(table(work))
    return 0


if __name__ == "__main__":
    sys.exit(main())
