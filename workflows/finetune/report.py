"""What a run says: the comparison rows (validation numbers, selection included, and test numbers that nothing was
selected on), the per-epoch log, the curves, the split actually used, report.json and report.md."""
from __future__ import annotations

import csv
import json
import os

METRICS = ("accuracy", "balanced_accuracy", "f1_macro", "log_loss")
NOTES = {
    "test": "Numbers on the --test images: nothing was trained or selected on them (the epoch and early stopping "
            "were chosen on the validation images, whose numbers are in val_*).",
    "validation": "Validation numbers, selection included: the fine-tuned epoch (and early stopping) was chosen on "
                  "these same images by accuracy, and epoch 0 is the probe, so the fine-tuned row cannot have a "
                  "lower accuracy than the probe here. Give --test DATA for numbers nothing was selected on.",
}


def comparison_row(model: str, trained: str, val: dict, test: dict | None, seconds: float) -> dict:
    """One model of the comparison: ``val_*`` and ``test_*`` (None without ``--test``) metrics, same keys always."""
    def metrics(prefix, scores):
        scores = {("log_loss" if k == "loss" else k): v for k, v in (scores or {}).items()}
        return {f"{prefix}_{k}": scores.get(k) for k in METRICS}

    return {"model": model, "trained": trained, **metrics("val", val), **metrics("test", test),
            "seconds": round(seconds, 2)}


def trained_text(state: dict) -> str:
    epochs, best_epoch = len(state["history"]) - 1, state["best_epoch"]
    return (f"{epochs} epoch(s), best on validation at epoch {best_epoch}" if best_epoch else
            f"{epochs} epoch(s), none better on validation than the start: epoch 0 kept, so this row is the "
            f"probe's head run as a network")


def write_log(history: list[dict], folder: str) -> None:
    """log.csv, log.json and curves.png of one training run."""
    from classifiers.plots import training_curves_png

    with open(os.path.join(folder, "log.csv"), "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    with open(os.path.join(folder, "log.json"), "w", encoding="utf-8") as fh:
        json.dump(history, fh, indent=1)
    training_curves_png(history, os.path.join(folder, "curves.png"))


def write_split(parts: dict, classes: list[str], path: str) -> None:
    """split.csv: every image of the run with its side (train, val, test), label and group."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "part", "label", "group"])
        for name, part in parts.items():
            for p, y, g in zip(part.paths, part.y, part.groups):
                writer.writerow([p, name, classes[int(y)], g])


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def write_run_report(result, prep, versions: dict) -> dict[str, str]:
    """report.json and report.md (and the logs and curves) in the run folder; returns the files by role."""
    out = result.out
    files = {"log_csv": os.path.join(out, "log.csv"), "log_json": os.path.join(out, "log.json"),
             "report_json": os.path.join(out, "report.json"), "report_md": os.path.join(out, "report.md"),
             "curves_png": os.path.join(out, "curves.png"), "split_csv": os.path.join(out, "split.csv"),
             "checkpoint": result.checkpoint}
    write_log(result.history, out)
    if result.scratch_history:
        write_log(result.scratch_history, os.path.join(out, "scratch"))
    with open(files["report_json"], "w", encoding="utf-8") as fh:
        json.dump({**result.to_dict(), "files": files, "preprocessing": prep.to_dict(), "versions": versions}, fh,
                  indent=1)
    c, on = result.config, result.reported_on
    short = "test" if on == "test" else "val"
    images = (f"{c['train_images']} training, {c['val_images']} validation"
              + (f" and {result.test_images} test" if on == "test" else "") + " images")
    lines = [f"# Fine-tuning {c['backbone']} ({c['weights']})", "",
             f"{images}, {len(result.classes)} classes; validation: {c['validation']}; unfrozen: "
             f"{', '.join(result.blocks) or 'head only'} ({result.trainable_parameters:,} trainable parameters); "
             f"BatchNorm {c['bn']}.", "", result.note, "",
             f"| model | trained | {short} accuracy % | {short} balanced acc. % | {short} macro-F1 % "
             + ("| val accuracy % (selection) " if on == "test" else "") + "| seconds |",
             "|---|---|--:|--:|--:|" + ("--:|" if on == "test" else "") + "--:|"]
    for r in result.comparison:
        cells = [_pct(r[f"{short}_{k}"]) for k in ("accuracy", "balanced_accuracy", "f1_macro")]
        if on == "test":
            cells.append(_pct(r["val_accuracy"]))
        lines.append(f"| {r['model']} | {r['trained']} | " + " | ".join(cells) + f" | {r['seconds']:.1f} |")
    lines += ["", "| epoch | train loss | train acc. % | val loss | val acc. % |", "|--:|--:|--:|--:|--:|"]
    lines += [f"| {h['epoch']} | " + (f"{h['train_loss']:.4f} | {100 * h['train_accuracy']:.1f}" if h["epoch"] else "– | –")
              + f" | {h['val_loss']:.4f} | {100 * h['val_accuracy']:.1f} |" for h in result.history]
    if result.skipped:
        lines += ["", "Skipped files:", ""] + [f"- `{s['path']}`: {s['reason']}" for s in result.skipped[:50]]
    with open(files["report_md"], "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return files
