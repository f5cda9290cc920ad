"""Fine-tuning's two paths on real photos: the frozen trunk run once over a fixed set of views (``--augment
views``) against fresh random pixel augmentation every epoch (``--augment pixels``), same split, same seed, same
epochs.

    python benchmarks/finetune_speed.py                        # every run, in the order below; prints the table
    python benchmarks/finetune_speed.py --only flowers-last2    # the target's two runs
    python benchmarks/finetune_speed.py --table                # the table of the runs that finished

MobileNetV2 (the ImageNet checkpoint in ../shared/weights), the last 1 or 2 blocks unfrozen, 10 epochs (patience
10: no early stop, so both paths run every epoch). Each data set: ``--val-split 0.2`` of train/, ``--test val/
--drop-test-copies``. The epoch is chosen on validation; the test images are scored after training by the full
network in float32 on the weights' preprocessing: nothing was selected on them. Each run is one subprocess with a
fresh, empty cache folder (the extraction, the probe and the views pass are in its total), and its peak memory is
that process's maximum resident set. Results are kept in --work (a finished run is not run again), so the command
can be stopped and started again; ``--parallel`` runs a pair (pixels, views) at the same time, so that both see
the same machine load (the ratios are read within a pair).
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

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
WEIGHTS = SHARED / "weights" / "mobilenet_v2-imagenet.pth"
DATA = {"flowers": SHARED / "data" / "flowers", "hymenoptera": SHARED / "data" / "hymenoptera"}
EPOCHS = 10
PAIRS = [("flowers", 2), ("hymenoptera", 2), ("hymenoptera", 1), ("flowers", 1)]  # the target first
RUNS = [(d, n, path) for d, n in PAIRS for path in ("pixels", "views")]


def name_of(dataset: str, unfreeze: int, path: str) -> str:
    return f"{dataset}-last{unfreeze}-{path}"


def run_one(dataset: str, unfreeze: int, path: str, work: pathlib.Path, code: str) -> dict:
    """In this process: one ``finetune`` run; returns what the table needs."""
    sys.path.insert(0, code)
    from workflows.finetune import finetune

    folder = work / name_of(dataset, unfreeze, path)
    cpu = [time.process_time()]  # this process's CPU seconds at the start and after each epoch
    load = [os.getloadavg()[0]]
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
        augment="flip" if path == "pixels" else "views",  # pixels is flip's other name (older code knows only flip)
        cache_dir=str(folder / "cache"),
        on_epoch_end=lambda epoch, row: (cpu.append(time.process_time()), load.append(os.getloadavg()[0])),
    )
    total = time.perf_counter() - started
    cpu.append(time.process_time())
    views = folder / "run" / "views.json"
    views = json.loads(views.read_text()) if views.exists() else {}
    rows = {r["model"].split(" (")[0]: r for r in result.comparison}
    tuned, probe = rows["fine-tuned"], rows["frozen linear probe"]
    # history "seconds" is cumulative (training and validation, the views pass included in epoch 0's)
    per_epoch = [b["seconds"] - a["seconds"] for a, b in zip(result.history, result.history[1:])]
    return {
        "dataset": dataset,
        "unfreeze": unfreeze,
        "path": path,
        "code": code,
        "total_seconds": total,
        "training_seconds": tuned["seconds"],  # epochs + validation (+ the views pass on the views path)
        "epochs": len(per_epoch),
        "seconds_per_epoch": sum(per_epoch) / max(len(per_epoch), 1),
        "views_seconds": views.get("seconds"),
        "views": views.get("views"),
        "probe_from": views.get("probe_from"),
        "cpu_total_seconds": cpu[-1] - cpu[0],
        "load_average": [min(load), max(load)],
        "probe_seconds": probe["seconds"],
        "test_accuracy": tuned["test_accuracy"],
        "probe_test_accuracy": probe["test_accuracy"],
        "val_accuracy": tuned["val_accuracy"],
        "best_epoch": result.best_epoch,
        "test_images": result.test_images,
        "train_images": result.config["train_images"],
        "val_images": result.config["val_images"],
    }


def launch(dataset: str, unfreeze: int, path: str, work: pathlib.Path, code: str) -> subprocess.Popen:
    folder = work / name_of(dataset, unfreeze, path)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": code}
    args = [sys.executable, __file__, "--child", dataset, str(unfreeze), path, "--work", str(work), "--code", code]
    return subprocess.Popen(args, env=env, cwd=code)


def finish(proc: subprocess.Popen, name: str, work: pathlib.Path) -> dict:
    """Waits for one run; its peak memory is ``wait4``'s maximum resident set of that process."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = status
    if status != 0:
        raise SystemExit(f"{name} failed (status {status})")
    out = work / name / "result.json"
    row = json.loads(out.read_text())
    row["peak_rss_gb"] = usage.ru_maxrss / 1e6  # kilobytes on Linux
    row["cpu_seconds"] = usage.ru_utime + usage.ru_stime  # its reaped decoding workers included
    out.write_text(json.dumps(row, indent=1))
    return row


def partial(folder: pathlib.Path) -> dict | None:
    """A run that has not finished (still going, or stopped): its epochs so far, from ``last.pt``."""
    last = folder / "run" / "last.pt"
    if not last.exists():
        return None
    import torch

    history = torch.load(last, map_location="cpu", weights_only=True)["state"]["history"]
    per_epoch = [b["seconds"] - a["seconds"] for a, b in zip(history, history[1:])]
    return {"epochs": len(per_epoch), "seconds_per_epoch": sum(per_epoch) / len(per_epoch), "start": history[0]}


def in_training(folder: pathlib.Path) -> float:
    """Seconds of the views pass counted in the fine-tuned row's training time: the phase of the extra views (the
    centre pass is the probe's, the extraction's stand-in); older runs counted the whole pass there."""
    f = folder / "run" / "views.json"
    if not f.exists():
        return 0.0
    views = json.loads(f.read_text())
    phases = views.get("phases")
    return phases["views"]["seconds"] if phases else views.get("seconds", 0.0)


def table(work: pathlib.Path) -> str:
    """One row per run; ``epochs s`` is the training epochs with their validation (the views pass apart), the
    ratios are the pixel run's over the views run's of the same pair."""
    done, unfinished = {}, {}
    for d, n, path in RUNS:
        folder = work / name_of(d, n, path)
        f = folder / "result.json"
        row = json.loads(f.read_text()) if f.exists() else {}
        if "peak_rss_gb" in row:
            row["epochs_seconds"] = row["training_seconds"] - in_training(folder)
            done[(d, n, path)] = row
        elif (p := partial(folder)) is not None:
            unfinished[(d, n, path)] = p
    lines = [
        "| data | unfrozen | path | views pass s | s / epoch | epochs s | whole command s | CPU s | peak memory GB "
        "| test acc. % | probe test acc. % | epochs × less | command × faster | test Δ points | load avg |",
        "|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for (d, n, path), r in done.items():
        base = done.get((d, n, "pixels"))

        def ratio(k, base=base, r=r, path=path):
            return f"{base[k] / r[k]:.1f}" if base and path == "views" else "–"

        delta = f"{100 * (r['test_accuracy'] - base['test_accuracy']):+.2f}" if base and path == "views" else "–"
        vs = f"{r['views_seconds']:.0f}" if r.get("views_seconds") is not None else "–"
        lo, hi = r["load_average"]
        lines.append(
            f"| {d} | {n} | {path} | {vs} | {r['seconds_per_epoch']:.1f} | {r['epochs_seconds']:.0f} "
            f"| {r['total_seconds']:.0f} | {r['cpu_seconds']:.0f} | {r['peak_rss_gb']:.2f} | {100 * r['test_accuracy']:.2f} "
            f"| {100 * r['probe_test_accuracy']:.2f} | {ratio('epochs_seconds')} | {ratio('total_seconds')} "
            f"| {delta} | {lo:.1f}-{hi:.1f} |"
        )
    for (d, n, path), p in unfinished.items():
        lines.append(
            f"| {d} | {n} | {path} (unfinished: {p['epochs']} of {EPOCHS} epochs) | – | {p['seconds_per_epoch']:.1f} "
            f"| ~{EPOCHS * p['seconds_per_epoch']:.0f} projected | – | – | – | – | – | – | – | – | – |"
        )
    missing = [name_of(*k) for k in RUNS if k not in done and k not in unfinished]
    if missing:
        lines += ["", "Not run: " + ", ".join(missing)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="runs/finetune-speed", help="run folders and results")
    parser.add_argument("--only", action="append", help="runs whose name starts with this (repeatable)")
    parser.add_argument("--table", action="store_true", help="print the table of the finished runs only")
    parser.add_argument("--again", action="store_true", help="run finished runs again")
    parser.add_argument("--parallel", action="store_true", help="run the two paths of a pair at the same time")
    parser.add_argument("--code", default=str(ROOT), help="the featurebank tree to run (default: this one)")
    parser.add_argument("--child", nargs=3, metavar=("DATA", "UNFREEZE", "PATH"), help=argparse.SUPPRESS)
    opts = parser.parse_args()
    work = pathlib.Path(opts.work).resolve()
    if opts.child:
        d, n, path = opts.child
        row = run_one(d, int(n), path, work, opts.code)
        (work / name_of(d, int(n), path) / "result.json").write_text(json.dumps(row, indent=1))
        return 0
    if not opts.table:
        if not WEIGHTS.exists() or not all(p.exists() for p in DATA.values()):
            raise SystemExit(f"needs {WEIGHTS} and {', '.join(map(str, DATA.values()))}")
        todo = [
            (d, n, path)
            for d, n, path in RUNS
            if (not opts.only or any(name_of(d, n, path).startswith(o) for o in opts.only))
            and (opts.again or not (work / name_of(d, n, path) / "result.json").exists())
        ]
        waves = [todo[i : i + 2] for i in range(0, len(todo), 2)] if opts.parallel else [[r] for r in todo]
        for wave in waves:
            procs = [(name_of(*r), launch(*r, work, opts.code)) for r in wave]
            for name, proc in procs:
                row = finish(proc, name, work)
                print(f"{name}: {row['total_seconds']:.0f} s, test accuracy {100 * row['test_accuracy']:.2f} %")
    print(table(work))
    return 0


if __name__ == "__main__":
    sys.exit(main())
