"""What a run says: the comparison rows (validation numbers, selection included, and test numbers that nothing was
selected on), the per-epoch log, the curves, the split actually used, report.json, report.md and report.html
(fine-tuning's own section of the report page, rendered from report.json alone, as ``featurebank report`` does)."""

from __future__ import annotations

import csv
import json
import math
import os

import numpy as np

from classifiers.metrics import METRICS, wilson
from classifiers.report.html import read_run, render_page
from classifiers.report.plots import training_curves_png
from embedder import __version__

NOTES = {
    "test": "Numbers on the --test images: nothing was trained or selected on them (the epoch and early stopping "
    "were chosen on the validation images, whose numbers are in val_*).",
    "validation": "Validation numbers, selection included: the fine-tuned epoch (and early stopping) was chosen on "
    "these same images by accuracy, then loss, and epoch 0 is the probe, so the fine-tuned row cannot have a "
    "lower accuracy than the probe here. Give --test DATA for numbers nothing was selected on.",
    "validation, random head": "Validation numbers, selection included: the fine-tuned epoch (and early stopping) "
    "was chosen on these same images by accuracy, then loss; the head started at random, not as the probe, so the "
    "fine-tuned row can be below the probe. Give --test DATA for numbers nothing was selected on.",
}
SECONDS = (
    "Seconds: over every run of this folder (--resume included): a network's training and validation (and the views "
    "pass); the probe's fit and the embedding of its images when a run of this folder did it (not a cache that was "
    "there already)."
)

SECONDS_SHORT = (
    "seconds: over every run of this folder (--resume included); the probe's embedding when one of them did it"
)


def numbers_note(on: str, probe_start: bool) -> str:
    """What the comparison's numbers are: on ``test``, or on validation, where the claim that the fine-tuned row
    cannot be below the probe holds only when the head started as the probe (``probe_start``)."""
    return NOTES[on if on == "test" or probe_start else "validation, random head"]


def comparison_row(
    model: str, trained: str, val: dict | None, test: dict | None, seconds: float, counts: dict | None = None
) -> dict:
    """One model of the comparison: ``val_*`` and ``test_*`` (None without ``--test``) metrics, and ``counts``
    (``counts_right``: how many test images it got right, of how many, and the 95 % interval), same keys always."""

    def metrics(prefix, scores):
        scores = {("log_loss" if k == "loss" else k): v for k, v in (scores or {}).items()}
        return {f"{prefix}_{k}": scores.get(k) for k in METRICS}

    return {
        "model": model,
        "trained": trained,
        **metrics("val", val),
        **metrics("test", test),
        **{k: (counts or {}).get(k) for k in COUNTS},
        "seconds": round(seconds, 2),
    }


COUNTS = ("test_right", "test_total", "test_accuracy_interval")


def counts_right(answered: np.ndarray, y: np.ndarray) -> dict:
    """Right answers of one model on the test images (``answered``: a class per row, -1 where the file failed), of
    how many it scored, and the 95 % Wilson interval of that accuracy (as ``evaluate`` gives it)."""
    scored = answered >= 0
    right, total = int((answered[scored] == y[scored]).sum()), int(scored.sum())
    return {"test_right": right, "test_total": total, "test_accuracy_interval": list(wilson(right, total))}


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Exact two-sided McNemar test: how likely a split of the images that only one of two models got right at
    least this uneven is, if each of those images were as likely to go to either model (binomial, p = 1/2)."""
    n = only_a + only_b
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2 * tail)


def below_probe_note(probe: np.ndarray, tuned: np.ndarray, y: np.ndarray) -> str | None:
    """One line when the fine-tuned model is below the probe on the test images (``probe``, ``tuned``: the class
    each answered per row, -1 where it could not score the file): both counts, and whether the difference is within
    noise, by an exact McNemar test on the images that only one of the two got right (both scored them)."""
    p, t = counts_right(probe, y), counts_right(tuned, y)
    if t["test_right"] * p["test_total"] >= p["test_right"] * t["test_total"]:
        return None
    both = (probe >= 0) & (tuned >= 0)
    only_probe = int((both & (probe == y) & (tuned != y)).sum())
    only_tuned = int((both & (tuned == y) & (probe != y)).sum())
    value = mcnemar_p(only_probe, only_tuned)
    verdict = "within noise (p >= 0.05)" if value >= 0.05 else "beyond noise (p < 0.05)"
    return (
        f"the fine-tuned model is below the frozen probe on the --test images: {t['test_right']} of "
        f"{t['test_total']} right against {p['test_right']} of {p['test_total']}; only the probe was right on "
        f"{only_probe} image(s), only the fine-tuned model on {only_tuned}: an exact McNemar test on these "
        f"{only_probe + only_tuned} gives p = {value:.2f}, {verdict}"
    )


def trained_text(state) -> str:
    """How a ``TrainingState`` ended, for the comparison's "trained" cell."""
    epochs, best_epoch = len(state.history) - 1, state.best_epoch
    return (
        f"{epochs} epoch(s), best on validation at epoch {best_epoch}"
        if best_epoch
        else f"{epochs} epoch(s), none better on validation than the start: epoch 0 kept, so this row is the "
        f"probe's head run as a network"
    )


def write_log(history: list[dict], folder: str) -> None:
    """log.csv, log.json and curves.png of one training run."""
    with open(os.path.join(folder, "log.csv"), "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, list(history[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(history)
    with open(os.path.join(folder, "log.json"), "w", encoding="utf-8") as fh:
        json.dump(history, fh, indent=1)
    training_curves_png(history, os.path.join(folder, "curves.png"))


def write_split(parts: dict, classes: list[str], path: str) -> None:
    """split.csv: every image of the run with its side (train, val, test), label and group."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["path", "part", "label", "group"])
        for name, part in parts.items():
            for p, y, g in zip(part.paths, part.y, part.groups):
                writer.writerow([p, name, classes[int(y)], g])


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def write_run_report(result, prep, versions: dict) -> dict[str, str]:
    """report.json, report.md and report.html (and the logs and curves) in the run folder; returns the files by
    role."""
    out = result.out
    files = {
        "log_csv": os.path.join(out, "log.csv"),
        "log_json": os.path.join(out, "log.json"),
        "report_json": os.path.join(out, "report.json"),
        "report_md": os.path.join(out, "report.md"),
        "curves_png": os.path.join(out, "curves.png"),
        "split_csv": os.path.join(out, "split.csv"),
        "checkpoint": result.checkpoint,
        "report_html": os.path.join(out, "report.html"),
    }
    write_log(result.history, out)
    if result.scratch_history:
        write_log(result.scratch_history, os.path.join(out, "scratch"))
    with open(files["report_json"], "w", encoding="utf-8") as fh:
        json.dump(
            {**result.to_dict(), "files": files, "preprocessing": prep.to_dict(), "versions": versions}, fh, indent=1
        )
    c, on = result.config, result.reported_on
    images = (
        f"{c['train_images']} training, {c['val_images']} validation"
        + (f" and {result.test_images} test" if on == "test" else "")
        + " images"
    )
    lines = [
        f"# Fine-tuning {c['backbone']} ({c['weights']})",
        "",
        f"{images}, {len(result.classes)} classes; validation: {c['validation']}; unfrozen: "
        f"{', '.join(result.blocks) or 'head only'} ({result.trainable_parameters:,} trainable parameters); "
        f"BatchNorm {c['bn']}.",
        "",
        result.note,
        "",
        *_md_comparison(result.comparison, on),
        "",
        SECONDS,
    ]
    if result.notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in result.notes]
    lines += ["", "| epoch | train loss | train acc. % | val loss | val acc. % |", "|--:|--:|--:|--:|--:|"]
    lines += [
        f"| {h['epoch']} | "
        + (f"{h['train_loss']:.4f} | {100 * h['train_accuracy']:.1f}" if h["epoch"] else "– | –")
        + f" | {h['val_loss']:.4f} | {100 * h['val_accuracy']:.1f} |"
        for h in result.history
    ]
    if result.skipped:
        lines += ["", "Skipped files:", ""] + [f"- `{s['path']}`: {s['reason']}" for s in result.skipped[:50]]
    with open(files["report_md"], "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    write_html(out)
    return files


def _interval(r: dict) -> str:
    interval = r.get("test_accuracy_interval")
    if not interval:
        return "–"
    lo, hi = interval
    return f"{100 * lo:.1f}-{100 * hi:.1f}"


def _right(r: dict) -> str:
    return "–" if r.get("test_right") is None else f"{r['test_right']}/{r['test_total']}"


def _md_comparison(rows: list[dict], on: str) -> list[str]:
    """report.md's comparison: on ``test``, each row's count right and 95 % interval, and the validation accuracy
    the epoch was selected on beside; on ``val``, the selection's own numbers."""
    tested = on == "test"
    head = (
        ["test accuracy %", "test right", "test 95 % interval", "test balanced acc. %", "test macro-F1 %"]
        + ["val accuracy % (selection)"]
        if tested
        else ["val accuracy % (selection)", "val balanced acc. %", "val macro-F1 %"]
    )
    lines = [f"| model | trained | {' | '.join(head)} | seconds |", "|---|---|" + "--:|" * (len(head) + 1)]
    for r in rows:
        short = "test" if tested else "val"
        cells = [_pct(r[f"{short}_{k}"]) for k in ("accuracy", "balanced_accuracy", "f1_macro")]
        if tested:
            cells[1:1] = [_right(r), _interval(r)]
            cells.append(_pct(r["val_accuracy"]))
        lines.append(f"| {r['model']} | {r['trained']} | " + " | ".join(cells) + f" | {r['seconds']:.1f} |")
    return lines


def _f(v, fmt: str) -> str:
    return "–" if v is None else format(v, fmt)


SHOWN = METRICS[:3]  # the comparison's columns (the log-loss is in report.json)


def _comparison_on(d: dict) -> tuple[str, list[dict]]:
    """Which images the comparison is reported on (``test``, or ``val`` with selection included), and the rows
    with ``val_*``/``test_*`` metrics (a report written before --test existed has bare validation metrics)."""
    rows = [
        r if "val_accuracy" in r else {**r, **{f"val_{k}": r.get(k) for k in SHOWN}, "test_accuracy": None}
        for r in d["comparison"]
    ]
    return ("test" if d.get("reported_on") == "test" else "val"), rows


def page_context(d: dict, run_dir: str) -> dict:
    """What report.html shows of a run, from its report.json."""
    c = d["config"]
    on, rows = _comparison_on(d)
    best_accuracy = max(r[f"{on}_accuracy"] for r in rows)
    comparison = [
        {
            **r,
            "best": r[f"{on}_accuracy"] == best_accuracy,
            "metrics": [{"v": r[f"{on}_{k}"], "text": f"{100 * r[f'{on}_{k}']:.2f}"} for k in SHOWN]
            + ([{"v": r["val_accuracy"], "text": f"{100 * r['val_accuracy']:.2f}"}] if on == "test" else []),
            "right": _right(r),
            "interval": _interval(r),
        }
        for r in rows
    ]

    def history(rows, best_epoch):
        return [
            {
                "epoch": h["epoch"],
                "best": h["epoch"] == best_epoch,
                "train_loss": _f(h["train_loss"], ".4f"),
                "train_accuracy": _f(None if h["train_accuracy"] is None else 100 * h["train_accuracy"], ".1f"),
                "val_loss": _f(h["val_loss"], ".4f"),
                "val_accuracy": f"{100 * h['val_accuracy']:.1f}",
                "val_balanced_accuracy": f"{100 * h['val_balanced_accuracy']:.1f}",
                "seconds": f"{h['seconds']:.1f}",
            }
            for h in rows
        ]

    curves = [
        {
            "name": "fine-tuned"
            + (f" (best: epoch {d['best_epoch']})" if d["best_epoch"] else " (no epoch beat the start)"),
            "png": "curves.png" if os.path.isfile(os.path.join(run_dir, "curves.png")) else None,
            "history": history(d["history"], d["best_epoch"]),
        }
    ]
    if d.get("scratch_history"):
        best_scratch = max(d["scratch_history"], key=lambda h: (h["val_accuracy"], -h["val_loss"]))["epoch"]
        curves.append(
            {
                "name": "from scratch (same architecture, random init)",
                "png": "scratch/curves.png" if os.path.isfile(os.path.join(run_dir, "scratch", "curves.png")) else None,
                "history": history(d["scratch_history"], best_scratch),
            }
        )
    p = d.get("preprocessing", {})
    facts = [
        ("backbone", f"{c['backbone']}, weights {c['weights']}"),
        (
            "unfrozen",
            f"{', '.join(d['blocks']) or 'head only'} ({d['trainable_parameters']:,} trainable parameters); "
            f"BatchNorm {c['bn']}",
        ),
        (
            "training",
            f"{c['epochs']} epochs max, lr {c['lr']:g} (backbone × {c['backbone_lr_scale']:g}), batch "
            f"{c['batch_size']}, dropout {c['dropout']:g}, augmentation {c['augment']}, patience "
            f"{c['patience']}, seed {c['seed']}, {c['precision']}",
        ),
        (
            "images",
            f"{c['train_images']} training, {c['val_images']} validation"
            + (f", {d['test_images']} test ({d['test']})" if on == "test" else "")
            + "; classes "
            + ", ".join(d["classes"]),
        ),
        ("validation", c.get("validation", "")),
        ("checkpoint", d["checkpoint"]),
    ]
    if p:
        facts.insert(1, ("preprocessing", f"resize {p.get('resize')}, crop {p.get('crop')}"))
    sections = [("comparison", "Comparison"), ("curves", "Curves")] + (
        [("failed", "Skipped files")] if d["skipped"] else []
    )
    versions = ", ".join(f"{k} {v}" for k, v in d.get("versions", {}).items())
    return {
        "kind": "finetune",
        "title": f"Fine-tuning {c['backbone']}",
        "facts": facts,
        "sections": sections,
        "summary": "The frozen linear probe (logistic regression on the cached features) is the baseline; "
        "fine-tuning starts from it"
        + ("" if c.get("probe_init", True) else " (here: from a random head)")
        + ". Every model is scored on the same images. "
        + SECONDS,
        "note": d.get("note")
        or "Validation numbers, selection included: the fine-tuned epoch was chosen on these same images.",
        "reported_on": on,
        "comparison": comparison,
        "counted": on == "test" and any(r.get("test_total") for r in rows),  # report.json of before: no counts
        "notes": d.get("notes") or [],
        "curves": curves,
        "failed": d["skipped"][:200],
        "footer": (f"With {versions}. " if versions else "") + f"Rendered by featurebank {__version__}.",
    }


def is_finetune_report(d: dict) -> bool:
    return {"comparison", "history", "config"} <= set(d)


def write_html(run_dir: str) -> str:
    """Render ``run_dir/report.html`` from the run's report.json and curves; returns its path."""
    return render_page(run_dir, page_context(read_run(run_dir), run_dir))


def epoch_text(epoch: int, row: dict) -> str:
    """One finished epoch, as the run goes: its own time (training and validation), not the run's so far; the
    from-scratch run's epochs (``row["run"]``) say so."""
    seconds = row.get("epoch_seconds", row["seconds"])
    return (
        (f"{row['run']}, " if row.get("run") else "")
        + f"epoch {epoch}: train loss {row['train_loss']:.4f} acc {100 * row['train_accuracy']:.1f} %, "
        f"val loss {row['val_loss']:.4f} acc {100 * row['val_accuracy']:.1f} % ({seconds:.1f} s)"
    )


def center_text(phase) -> str:
    """The views path's first pass (the center view of every training and validation image, the probe's
    features), on its own line."""
    d = phase.as_dict()
    return (
        f"center pass (the probe's features): {d['images']} images, {d['computed_images']} computed through the "
        f"frozen trunk, {d['images'] - d['computed_images']} reused from the trunk store, in {d['seconds']:.1f} s"
    )


def views_pass_text(train_images: int, views: int, val_images: int, computed: int, seconds: float) -> str:
    """The one-time views pass, on its own line (the epochs after it read the stored rows)."""
    return (
        f"views pass: {train_images} training images x {views} views, {val_images} validation centers: "
        f"{computed} images computed through the frozen trunk, the rest reused, in {seconds:.1f} s (once: the "
        f"epochs read the stored rows)"
    )


def kept_after_interrupt(
    out: str, epoch: int | None, trunk: str | None, scratch: dict | None = None, *, scoring: bool = False
) -> str:
    """What an interrupted run kept, in words that are true: the epoch saved in OUT/last.pt when one is, else
    what the passes before training kept (the frozen trunk's rows, or the embedded images in the cache). With
    ``scratch`` (``{"epoch": its last saved epoch or None}``: the from-scratch run was going), which run was
    interrupted and what of each is kept; ``scoring``: training had finished and the test images were scored."""
    if scoring:
        return (
            f"training had finished ({os.path.join(out, 'best.pth')} holds the chosen epoch); the --test images "
            f"were being embedded and scored: run the same command with --resume to score them without training"
        )
    if scratch is not None:
        return _kept_in_scratch(out, scratch["epoch"])
    last = os.path.join(out, "last.pt")
    if epoch is not None:
        return f"epoch {epoch} is saved ({last}); run the same command with --resume to continue"
    if os.path.exists(last):
        return f"the last finished epoch is saved ({last}); run the same command with --resume to continue"
    kept = (
        f"the frozen trunk's rows computed so far are kept in {trunk}"
        if trunk
        else "the images embedded so far are kept in the cache"
    )
    return f"no epoch had finished, so there is no {last} to resume; {kept}: run the same command again to continue from them"


def _kept_in_scratch(out: str, epoch: int | None) -> str:
    """The from-scratch run was interrupted: the fine-tuned run had finished, and the scratch run kept its last
    epoch, or nothing."""
    last = os.path.join(out, "scratch", "last.pt")
    if epoch is None and os.path.exists(last):
        scratch = f"its last finished epoch is saved ({last})"
    elif epoch is None:
        scratch = "no epoch of it had finished, so nothing of it is saved and --resume starts it again at epoch 1"
    else:
        scratch = f"its epoch {epoch} is saved ({last})"
    return (
        f"the from-scratch run (--from-scratch) was interrupted: {scratch}; the fine-tuned run had finished "
        f"({os.path.join(out, 'last.pt')}); run the same command with --resume to continue"
    )


def result_text(d: dict) -> list[str]:
    """A finished run (``FinetuneResult.to_dict()``): what was trained, the comparison, the files. On the test
    images each row has its count right and 95 % interval; the validation column is the one the epoch was
    selected on."""
    tested = d["reported_on"] == "test"
    on = "test" if tested else "val"
    selection = "val acc % (selection)"
    lines = [
        f"unfrozen: {', '.join(d['blocks']) or 'head only'} ({d['trainable_parameters']:,} trainable parameters)",
        d["note"],
        f"{'model':48} "
        + (f"{'test acc %':>10} {'right':>9} {'95 % interval':>13}" if tested else f"{selection:>21}")
        + f" {'bal. acc %':>10}"
        + (f" {selection:>21}" if tested else "")  # without a test set the first column is val's already
        + f" {'seconds':>8}",
    ]
    lines += [
        f"{r['model']:48} "
        + (
            f"{100 * r['test_accuracy']:10.2f} {_right(r):>9} {_interval(r):>13}"
            if tested
            else f"{100 * r['val_accuracy']:21.2f}"
        )
        + f" {100 * r[on + '_balanced_accuracy']:10.2f}"
        + (f" {100 * r['val_accuracy']:21.2f}" if tested else "")
        + f" {r['seconds']:8.1f}"
        for r in d["comparison"]
    ]
    lines.append(SECONDS_SHORT)
    lines += [f"skipped {s['path']}: {s['reason']}" for s in d["skipped"][:10]]
    lines += [
        f"best checkpoint  {d['checkpoint']} (epoch {d['best_epoch']})",
        f"report           {d['files']['report_html']}",
    ]
    return lines
