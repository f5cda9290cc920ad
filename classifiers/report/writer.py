"""A cross-validation report as data (``report.json``), as reading (``report.md``), as figures (PNG) and as
out-of-fold predictions per image (``predictions/<classifier>@<layer>.csv``), the leaderboard as CSV."""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import signal
import tempfile
import threading
from contextlib import contextmanager

import numpy as np

from classifiers.crossval import RANK_BY, RANK_RULE, CVReport, CVResult
from classifiers.label_issues import report_entries as label_issue_entries
from classifiers.label_issues import summary_lines as label_issue_lines
from classifiers.label_issues import write_csv as write_label_issues
from classifiers.metrics import METRICS
from classifiers.options import SUSPICIOUS
from classifiers.semi import WITH_UNLABELED
from classifiers.significance import ALPHA, TEST, corrected_t_test
from embedder.kernel.atomic import atomic_path
from embedder.kernel.errors import FileProblem
from embedder.kernel.versions import library_versions

from .embedmap import write_map
from .html import is_cv_report, write_html
from .plots import confusion_png, leaderboard_png
from .reading import (
    FORMAT,
    curve_lines,
    find_result,
    leaderboard_lines,
    model_name,
    predictions_name,
    selection_note,
    several_caches,
    significance_note,
    tie_note,
    unlabeled_lines,
    unlabeled_role,
)

SELECTED_ON = (
    "the out-of-fold scores it is reported with, so they are optimistic for new images; evaluate a model on "
    "held-out images for a figure to quote"
)
CALIBRATION_NOTE = {
    "ece": "top-label expected calibration error, 15 equal-width bins of the predicted class's probability, "
    "out of fold (every labelled row once per repeat, mean over repeats)",
    "of": "calibrated probabilities, as train makes them (a temperature on the logits that follows each row's "
    "margin), cross-fitted: each fold's calibration fit by log-loss on the other folds' out-of-fold scores and "
    "labels, applied to this fold's rows; no fit more. ece_uncalibrated: the entry's own probabilities, for the "
    "entries that have them",
    "log_loss": "calibration.log_loss: of those calibrated probabilities (metrics.log_loss: the entry's own)",
}


def _round(value, digits=4):
    return None if value is None else round(float(value), digits)


def _metric(result: CVResult, name: str) -> dict:
    m = result.metric(name)
    return {"mean": _round(m["mean"]), "std": _round(m["std"]), "folds": [_round(f.scores[name]) for f in result.folds]}


def report_dict(report: CVReport, suspicious: int = SUSPICIOUS) -> dict:
    """Everything in the report, JSON-ready. Two runs with the same seed differ only in the timings."""
    reader = report.data.reader
    several = len(report.sources) > 1
    path_of = {s.name: s.data.reader.path for s in report.sources}
    compared = report.compared()
    board = [r for r, _ in compared]
    susp_from, susp = report.suspicious(suspicious)
    results = []
    calibration = {id(r): report.calibration(r) for r in report.results}
    tied = {  # the rows of a tie (crossval.RANK_RULE): which, and the log-loss that ordered them
        id(r): {"tie": k, "tie_log_loss": _round((calibration[id(r)] or {}).get("log_loss"))}
        for k, run in enumerate(t for t in report.ties() if len(t) > 1)
        for r in run
    }
    for r in report.results:
        cal = calibration[id(r)]
        results.append(
            {
                "backbone": r.backbone,
                "cache": path_of[r.backbone],
                "classifier": r.classifier,
                "layer": r.layer,
                "pipeline": r.pipeline,
                "features": report.source(r).dims(r.layer),
                "metrics": {m: _metric(r, m) for m in METRICS},
                "ece": cal["ece"] if cal else None,
                **({"calibration": cal} if cal else {}),
                "per_class": {
                    c: {k: _round(v) if k != "support" else v for k, v in d.items()}
                    for c, d in report.per_class(r).items()
                },
                "confusion": report.confusion(r).tolist(),
                "fit_seconds": [f.fit_seconds for f in r.folds],
                "predict_seconds": [f.predict_seconds for f in r.folds],
                "best_params": [f.best_params for f in r.folds] if report.search else None,
                "missing_classes": sorted({report.classes[c] for f in r.folds for c in f.missing_classes}),
                "notes": r.notes,
                **({"unlabeled": r.unlabeled} if r.unlabeled is not None else {}),
                "predictions": "predictions/"
                + predictions_name(r.classifier, r.layer, r.backbone if several else None),
            }
        )
    splits = report.splits
    return {
        "format": FORMAT,
        "version": 1,
        "cache": reader.path,
        "source": reader.attrs["source"],
        "root": reader.attrs["root"],
        "settings": reader.settings,
        "caches": [
            {
                "backbone": s.name,
                "cache": s.data.reader.path,
                "source": s.data.reader.attrs["source"],
                "settings": s.data.reader.settings,
                "unlabeled_rows": s.data.unlabeled,
            }
            for s in report.sources
        ],
        "rows": len(report.data.y),
        **({"labels": report.labels} if report.labels else {}),  # the --labels CSV the labelled rows come from
        "unlabeled_rows": report.data.unlabeled,
        "classes": report.classes,
        "class_counts": report.data.counts,
        "cv": {
            "folds": report.folds,
            "repeats": report.repeats,
            "seed": report.seed,
            "splitter": "StratifiedGroupKFold" if report.grouped else "RepeatedStratifiedKFold",
            "grouped": report.grouped,
            "search": report.search,
            "budget": report.plan.to_dict() if report.plan is not None else None,  # what ran, what was left out
            "rank_by": RANK_BY,
            "rank_rule": RANK_RULE,
            "confusion": "summed over all folds of all repeats",
            "std": "population std over folds",
            "folds_from": reader.path
            + (" (the first cache; every cache's rows aligned to it by path)" if several else ""),
            "significance": {
                "test": TEST,
                "metric": RANK_BY,
                "alpha": ALPHA,
                "sided": 2,
                "against": "the best row (rank 1), which has no p-value",
                "df": len(splits) - 1,
                "n_test/n_train": _round(
                    np.mean([len(s.test) for s in splits]) / np.mean([len(s.train) for s in splits]), 6
                ),
                "not_worse": "p >= alpha, or t <= 0 (above the best on fold means, behind it in a tie): not "
                "significantly worse than the best (no correction for the number of rows compared)",
            },
            "calibration": CALIBRATION_NOTE,
        },
        "leaderboard": [
            {
                "rank": i + 1,
                "backbone": r.backbone,
                "cache": path_of[r.backbone],
                "classifier": r.classifier,
                "layer": r.layer,
                "features": report.source(r).dims(r.layer),
                **{m: {"mean": _round(r.metric(m)["mean"]), "std": _round(r.metric(m)["std"])} for m in METRICS},
                "ece": (calibration[id(r)] or {}).get("ece"),
                "fit_seconds": _round(np.mean([f.fit_seconds for f in r.folds]), 3),
                "predict_seconds": _round(np.mean([f.predict_seconds for f in r.folds]), 3),
                "t": _round(c.t, 4) if c.t is None or np.isfinite(c.t) else str(c.t),
                "p_value": None if c.p_value is None else float(f"{c.p_value:.4g}"),
                "not_worse": c.not_worse,
                **tied.get(id(r), {}),
            }
            for i, (r, c) in enumerate(compared)
        ],
        "best": {
            "backbone": board[0].backbone,
            "classifier": board[0].classifier,
            "layer": board[0].layer,
            "selected_on": SELECTED_ON if len(board) > 1 else "the only row: its out-of-fold scores chose nothing",
        },
        "unlabeled": unlabeled_entry(report),
        **({"learning_curve": report.curve} if report.curve is not None else {}),
        "results": results,
        "suspicious": {
            "backbone": susp_from.backbone if susp_from else None,
            "classifier": susp_from.classifier if susp_from else None,
            "layer": susp_from.layer if susp_from else None,
            "images": susp,
        },
        "outliers": {
            "backbone": report.best.backbone,
            **dict(zip(("layer", "images"), report.outliers(suspicious))),
            **_search_entry(report),
        },
        "duplicates": report.duplicates(),
        **label_issue_entries(report),
        "failed": [{"path": p, "reason": r} for p, r in zip(reader.failures["path"], reader.failures["reason"])],
        "seconds": report.seconds,
        "versions": library_versions(("scikit-learn", "numpy")),
        "extraction_versions": reader.info.get("versions", {}),
    }


def _search_entry(report: CVReport) -> dict:
    """How the outliers' and label issues' neighbours were searched: ``search`` (the sentence), ``search_method``
    (exact, index or sample) and, from the approximate index, ``search_recall`` (its recall@k against the exact
    search, measured in the run that made the neighbours) on ``search_recall_queries`` images."""
    found = report.neighbour_search()
    return {
        "search": found["text"],
        "search_method": found["method"],
        "search_recall": None if found.get("recall") is None else round(float(found["recall"]), 4),
        "search_recall_queries": found.get("recall_queries", 0),
    }


def unlabeled_entry(report: CVReport) -> dict | None:
    """With unlabeled rows: how they joined, and each classifier's scores without and with them, side by side
    (both on the same held-out labelled rows of the same folds)."""
    if report.unlabeled_mode is None:
        return None
    pairs = []
    n_train, n_test = report.fold_sizes()
    for r in report.results:
        if not r.classifier.endswith(WITH_UNLABELED):
            continue
        plain = report.result(r.classifier.removesuffix(WITH_UNLABELED), r.layer, r.backbone)
        used = r.unlabeled or {}
        alone, joined = np.asarray(plain.fold_scores(RANK_BY)), np.asarray(r.fold_scores(RANK_BY))
        p = corrected_t_test(joined, alone, n_train, n_test)[1] if len(alone) > 1 else None
        pairs.append(
            {
                "classifier": plain.classifier,
                "layer": r.layer,
                "backbone": r.backbone,
                "metric": RANK_BY,
                "without": {k: _round(v) for k, v in plain.metric(RANK_BY).items()},
                "with": {k: _round(v) for k, v in r.metric(RANK_BY).items()},
                "used_in_folds": used.get("used_in_folds"),
                "folds": used.get("folds"),
                "difference": _round(float(np.mean(joined - alone))),  # with minus without, paired by fold
                "p_value": None if p is None else float(f"{p:.4g}"),  # TEST, two-sided, on the same folds
            }
        )
    return {
        "mode": report.unlabeled_mode,
        "rule": report.unlabeled_rule or "inner-folds",
        "rows": int(report.data.unlabeled),
        "scored_on": "the labelled held-out rows of each fold (no unlabeled row is ever scored or held out)",
        "held_out_rows": int(len(report.data.y)),
        "test": f"difference: with minus without, mean over the same folds; p_value: {TEST}",
        "pairs": pairs,
    }


def markdown(d: dict) -> str:
    cv = d["cv"]
    best = find_result(d, d["best"])
    s = d["settings"]
    embedding = [f"{s['backbone']}, weights `{s['weights']}`, pooling {s['pooling']}, precision {s['precision']}"]
    if several_caches(d):
        embedding = [
            f"{c['backbone']} = `{c['cache']}`: {c['settings']['backbone']}, weights "
            f"`{c['settings']['weights']}`, pooling {c['settings']['pooling']}, precision "
            f"{c['settings']['precision']}"
            for c in d["caches"]
        ]
    out = [
        "# Cross-validation report",
        "",
        f"- cache: `{d['cache']}` ({d['rows']} labelled rows, {len(d['classes'])} classes"
        + (f", {d['unlabeled_rows']} unlabeled rows {unlabeled_role(d)}" if d["unlabeled_rows"] else "")
        + ")",
        f"- input: `{d['source']}`",
        *(
            [f"- labels: `{d['labels']['csv']}` (sha256 {d['labels']['sha256']}) over the cache's own"]
            if d.get("labels")
            else []
        ),
        *[f"- embedding: {e}" for e in embedding],
        f"- folds: {cv['splitter']}, {cv['folds']} folds × {cv['repeats']} repeat(s), seed {cv['seed']}"
        + (", hyperparameters chosen by nested inner cross-validation" if cv["search"] else "")
        + f"; ranked by {cv.get('rank_rule') or cv['rank_by'].replace('_', ' ')}; scores are mean ± std over folds"
        + (f"; folds from {cv['folds_from']}" if several_caches(d) else ""),
        "- classes: " + ", ".join(f"{c} {n}" for c, n in d["class_counts"].items()),
        "",
        "## Leaderboard",
        "",
        *leaderboard_lines(d),
        "",
        selection_note(d),
        "",
        *([tie_note(d), ""] if tie_note(d) else []),
        significance_note(d),
        "",
        f"## Best: {model_name(d, best).replace(' @ ', ' on ')}",
        "",
        *(
            [f"#1 of the leaderboard, picked on the folds that score it: {SELECTED_ON}.", ""]
            if len(d["leaderboard"]) > 1
            else []
        ),
        f"Pipeline: `{best['pipeline']}`",
        "",
    ]
    if best["best_params"]:
        out += ["Hyperparameters chosen per fold: " + "; ".join(json.dumps(p) for p in best["best_params"]), ""]
    out += ["| class | precision % | recall % | F1 % | support |", "|---|--:|--:|--:|--:|"]
    for c, v in best["per_class"].items():
        out.append(
            f"| {c} | {100 * v['precision']:.1f} | {100 * v['recall']:.1f} | {100 * v['f1']:.1f} | {v['support']} |"
        )
    out += [
        "",
        f"Confusion matrix ({cv['confusion']}; rows true, columns predicted):",
        "",
        "| true \\ predicted | " + " | ".join(d["classes"]) + " |",
        "|---|" + "--:|" * len(d["classes"]),
    ]
    for c, row in zip(d["classes"], best["confusion"]):
        out.append(f"| {c} | " + " | ".join(str(v) for v in row) + " |")
    susp = d["suspicious"]
    out += ["", "## Suspicious images", ""]
    if susp["images"]:
        judge = model_name(d, susp).replace(" @ ", " on ")
        out += [
            f"Images that {judge} (of the rows with probabilities, the lowest log-loss: the surest judge) puts in "
            f"another class than their label with the "
            f"highest confidence (out-of-fold, so no model saw the image it judges): likely label errors, junk "
            f"files or look-alikes.",
            "",
            "| image | label | predicted | confidence | p(label) |",
            "|---|---|---|--:|--:|",
        ]
        out += [
            f"| `{i['path']}` | {i['label']} | {i['predicted']} | {i['confidence']:.3f} | {i['p_label']:.3f} |"
            for i in susp["images"]
        ]
    else:
        out.append("None listed (no misclassified image, or no classifier with probabilities).")
    if d.get("label_issues_estimated") is not None:
        out += [
            "",
            "## Label issues",
            "",
            f"Confident learning on the {d['label_issues_method']['signals']}: "
            f"{'; '.join(line.strip() for line in label_issue_lines(d, limit=0))}. The whole ranked list: label_issues.csv.",
        ]
        if d["label_issues_pairs"]:  # no empty table where nothing is estimated
            out += ["", "| given label | probably | images |", "|---|---|--:|"]
            out += [f"| {p['label']} | {p['suggested']} | {p['count']} |" for p in d["label_issues_pairs"]]
        if d["label_issues"]:
            out += ["", "| # | image | label | suggested | score |", "|--:|---|---|---|--:|"]
            out += [
                f"| {n} | `{i['path']}` | {i['label']} | {i['suggested']} | {i['score']:.3f} |"
                for n, i in enumerate(d["label_issues"][:20], 1)
            ]
    if d["outliers"]["images"]:
        out += [
            "",
            "## Outliers",
            "",
            f"Images least like any other image (cosine similarity to their nearest neighbour "
            f"on {d['outliers']['layer']}, lowest first; {d['outliers'].get('search', 'exact')}): placeholders, blank "
            f"or broken pictures, other domains.",
            "",
            "| image | label | similarity | nearest image |",
            "|---|---|--:|---|",
        ]
        out += [
            f"| `{i['path']}` | {i['label']} | {i['similarity']:.3f} | `{i['nearest']}` |"
            for i in d["outliers"]["images"]
        ]
    if d["duplicates"]:
        out += [
            "",
            "## Duplicate files",
            "",
            "Byte-identical images in several rows"
            " (different labels: label noise; same label: they can sit on both sides of a fold):",
            "",
        ]
        out += [
            f"- {'**conflicting labels** ' if g['conflicting'] else ''}{', '.join(f'`{p}`' for p in g['paths'])}"
            f" ({', '.join(g['labels'])})"
            for g in d["duplicates"][:50]
        ]
    out += unlabeled_lines(d) + curve_lines(d)
    if d["failed"]:
        out += ["", "## Files without a row", ""] + [f"- `{f['path']}`: {f['reason']}" for f in d["failed"][:50]]
    out += [
        "",
        f"Computed in {d['seconds']:.1f} s with " + ", ".join(f"{k} {v}" for k, v in d["versions"].items()) + ".",
        "",
    ]
    return "\n".join(out)


def write_predictions(report: CVReport, result: CVResult, path: str) -> str:
    """One row per image: label, out-of-fold prediction, confidence and class probabilities: the entry's own (the
    mean over repeats), or for an entry without probabilities (the SVMs, ridge: decision scores) the calibrated
    ones ``train`` would give, cross-fitted (``CVReport.calibrated_probabilities``): a share of votes over
    one repeat is always 1. A run of an older version without the folds' outputs: the share of votes."""
    pred, confidence = result.oof()
    classes = report.classes
    mean = result.proba.mean(axis=0) if result.proba is not None else report.calibrated_probabilities(result)
    if result.proba is None and mean is not None:
        confidence = mean[np.arange(len(pred)), pred]
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(
            ["path", "label", "predicted", "correct", "confidence"] + [f"p_{c}" for c in classes] * (mean is not None)
        )
        for i, p in enumerate(report.data.paths):
            row = [
                p,
                classes[report.data.y[i]],
                classes[pred[i]],
                int(pred[i] == report.data.y[i]),
                f"{confidence[i]:.4f}",
            ]
            if mean is not None:
                row += [f"{v:.4f}" for v in mean[i]]
            w.writerow(row)
    return path


def write_leaderboard_csv(d: dict, path: str) -> str:
    """The leaderboard as CSV: one row per (cache, layer, classifier), best first, with its p-value against the
    best (empty for the best) and whether it is not significantly worse, its tie and the calibrated log-loss that
    ordered the tie (empty outside a tie: ``crossval.RANK_RULE``); and, in every row, what the figures were
    measured on (rows, folds, repeats, seed: the file travels alone)."""
    cv = d["cv"]
    picked = "; #1 picked on these folds" if len(d["leaderboard"]) > 1 else ""
    measured = [d["rows"], cv["folds"], cv["repeats"], cv["seed"], f"out of fold{picked}"]
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(
            [
                "rank",
                "backbone",
                "cache",
                "classifier",
                "layer",
                "features",
                *[f"{m}_{k}" for m in METRICS for k in ("mean", "std")],
                "ece",
                "fit_seconds",
                "p_value",
                "not_worse",
                "tie",
                "tie_log_loss",
                "rows",
                "folds",
                "repeats",
                "seed",
                "measured_on",
            ]
        )
        for row in d["leaderboard"]:
            w.writerow(
                [
                    row["rank"],
                    row["backbone"],
                    row["cache"],
                    row["classifier"],
                    row["layer"],
                    row["features"],
                    *["" if row[m][k] is None else row[m][k] for m in METRICS for k in ("mean", "std")],
                    "" if row.get("ece") is None else row["ece"],
                    row["fit_seconds"],
                    "" if row["p_value"] is None else row["p_value"],
                    int(row["not_worse"]),
                    "" if row.get("tie") is None else row["tie"],
                    "" if row.get("tie_log_loss") is None else row["tie_log_loss"],
                    *measured,
                ]
            )
    return path


STAGE = ".featurebank-writing"  # the folders inside a run folder where reports are written before they take its place
RUN_FILES = (  # what a run folder holds of a run: replaced when another is written there
    "report.json", "report.md", "report.html", "leaderboard.png", "leaderboard.csv", "confusion.png",
    "label_issues.csv", "map.json", "map.png",
)  # fmt: skip


def write_report(report: CVReport, out_dir: str, suspicious: int = SUSPICIOUS, d: dict | None = None) -> dict[str, str]:
    """Write report.json, report.md, leaderboard.png, leaderboard.csv, confusion.png, predictions/*.csv, the
    embedding map (map.json, map.png) and the page that shows it all with the images (report.html, thumbs/) into
    ``out_dir`` (``d``: the report's ``report_dict``, when the caller has it already).

    The files are written into a folder of this run's own inside ``out_dir`` (``STAGE-…``) first. Only when they
    are all there, and every place they go to can take a file, does the run take the folder's place of a cv run
    written there before (its report.json read): that run's files of ``RUN_FILES`` and the predictions it names are
    removed, report.json first, and the new ones moved in, report.json last, with Ctrl-C and SIGTERM held off for
    those few renames. The thumbnails stay (they are of the same images), and anything else in the folder. A stop
    while the files are written (Ctrl-C, a full disk) leaves the former run as it was; then the page is written,
    and an interrupt there says that it alone is missing. A move that fails halfway (a disk error) keeps the rest
    of the new run in its stage folder and says where."""
    os.makedirs(out_dir, exist_ok=True)
    stage = tempfile.mkdtemp(prefix=f"{STAGE}-", dir=out_dir)  # made here: never a link planted beforehand
    placing: list[str] = []  # "started" once the former run's files begin to go, "done" when the new run is in
    try:
        return _write_report(report, out_dir, stage, suspicious, d, placing)
    except KeyboardInterrupt as exc:
        if not placing:  # stopped before the new run took its place
            exc.kept = (  # type: ignore[attr-defined]
                f"nothing written: the report of this run was not whole, and what {out_dir} held is as it was; "
                f"run the same command again"
            )
        elif placing[-1] == "done":  # only the page was left to write
            exc.kept = (  # type: ignore[attr-defined]
                f"the report in {out_dir} was written but not its page: featurebank report {out_dir} renders it"
            )
        raise
    except OSError as exc:
        if placing and placing[-1] != "done":
            raise FileProblem(
                f"the report was moved into {out_dir} in part ({exc.strerror or exc}); the rest of it is in {stage}: "
                f"run the same command again"
            ) from None
        if placing:  # only the page was left to write (its thumbnails: a full disk, most often)
            raise FileProblem(
                f"the report in {out_dir} was written but not its page ({exc.strerror or exc}): once that is "
                f"remedied, featurebank report {out_dir} renders it"
            ) from None
        raise
    finally:
        if not placing or placing[-1] == "done":
            shutil.rmtree(stage, ignore_errors=True)


def _former_files(out_dir: str) -> list[str]:
    """The files of a cv run already in ``out_dir`` (its report.json read: ``RUN_FILES`` and the predictions it
    names), report.json first; none when there is no such run (a folder of other things keeps them all)."""
    try:
        with open(os.path.join(out_dir, "report.json"), encoding="utf-8") as fh:
            former = json.load(fh)
    except (OSError, ValueError, RecursionError):
        return []
    if not is_cv_report(former):
        return []
    named = [r.get("predictions") for r in former.get("results") or [] if isinstance(r, dict)]
    inside = [
        p for p in named if isinstance(p, str) and p.startswith("predictions/") and ".." not in p.split("/")
    ]  # only files of its own folder
    if os.path.islink(os.path.join(out_dir, "predictions")):
        inside = []  # never through a link out of the folder
    return [os.path.join(out_dir, name) for name in (*RUN_FILES, *inside)]


PLACING = ".featurebank-cv-placing"  # in a run folder while a run's files are moved in: they are a run's, whole or not


def check_report_folder(out_dir: str, names=RUN_FILES) -> None:
    """Refuse ``out_dir`` when it holds a file of ``names`` that no cv run wrote there (a user's report.md, a
    report.json of something else): the report replaces its own earlier run's files only. Called before the folds,
    and again before the new run takes its place. A folder where a run's placing was cut off (``PLACING`` there:
    a kill or a disk error between the first unlink and report.json) holds a run's files, report.json or not."""
    if os.path.exists(os.path.join(out_dir, PLACING)):
        return
    ours = set(_former_files(out_dir))
    for name in names:
        there = os.path.join(out_dir, name)
        if os.path.isfile(there) and there not in ours:
            raise FileProblem(
                f"{out_dir} holds {name}, which no featurebank cv run wrote there: move it, or write the report "
                f"elsewhere (nothing was replaced)"
            )


def _write_report(
    report: CVReport, final: str, out_dir: str, suspicious: int, d: dict | None, placing: list[str]
) -> dict[str, str]:
    predictions = os.path.join(out_dir, "predictions")
    os.makedirs(predictions, exist_ok=True)
    d = d or report_dict(report, suspicious)
    files = {"json": os.path.join(out_dir, "report.json"), "markdown": os.path.join(out_dir, "report.md")}
    with atomic_path(files["markdown"]) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(markdown(d))
    board = d["leaderboard"]
    files["leaderboard_png"] = leaderboard_png(
        [model_name(d, r) for r in board],
        [r[RANK_BY]["mean"] for r in board],
        [r[RANK_BY]["std"] for r in board],
        RANK_BY,
        os.path.join(out_dir, "leaderboard.png"),
        f"out of fold on {d['rows']} images of {os.path.basename(d['cache'])}, {d['cv']['folds']} folds x "
        f"{d['cv']['repeats']}" + ("; #1 picked on these folds" if len(board) > 1 else ""),
    )
    best = report.best
    files["confusion_png"] = confusion_png(
        report.confusion(best),
        report.classes,
        f"{model_name(d, d['best'])} (out of fold" + ("; #1, picked on these folds)" if len(board) > 1 else ")"),
        os.path.join(out_dir, "confusion.png"),
    )
    files["leaderboard_csv"] = write_leaderboard_csv(d, os.path.join(out_dir, "leaderboard.csv"))
    files["label_issues_csv"] = write_label_issues(d, os.path.join(out_dir, "label_issues.csv"))
    for r, entry in zip(report.results, d["results"]):
        write_predictions(report, r, os.path.join(out_dir, entry["predictions"]))
    files["predictions"] = predictions
    files.update(write_map(report, out_dir))
    with atomic_path(files["json"]) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(d, fh, indent=1)
    with interrupts_held():
        _take_place(out_dir, final, [e["predictions"] for e in d["results"]], placing)
    files = {k: v.replace(out_dir, final, 1) for k, v in files.items()}
    files["html"] = write_html(final)
    return files


def _take_place(stage: str, out_dir: str, predictions: list[str], placing: list[str]) -> None:
    """The staged run in ``out_dir``'s place: first checked that every file can go where it goes (a folder named
    like one of them is one line, the former run untouched), then the former run's files out (report.json first),
    the new ones in (report.json last). ``placing`` records how far it got."""
    names = [n for n in RUN_FILES if n != "report.json" and os.path.exists(os.path.join(stage, n))]
    moves = [*names, *predictions, "report.json"]
    folder = os.path.join(out_dir, "predictions")
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise FileProblem(f"{folder} is not a folder: move it, or write the report elsewhere (nothing was replaced)")
    for name in moves:
        there = os.path.join(out_dir, name)
        if os.path.isdir(there):
            raise FileProblem(f"{there} is a folder where the report puts a file: move it (nothing was replaced)")
    check_report_folder(out_dir, moves)
    marker = os.path.join(out_dir, PLACING)
    with open(marker, "w", encoding="utf-8") as fh:  # until report.json is in: a cut-off placing is still a run's
        fh.write("a featurebank cv run is being moved into this folder; if no run is going, its files are a run's\n")
    placing.append("started")
    former = _former_files(out_dir)
    if not former:  # a placing cut off before: its files (report.json gone) are the run's to replace
        former = [os.path.join(out_dir, n) for n in RUN_FILES if n != PLACING]
    for path in former:
        if os.path.lexists(path) and not os.path.isdir(path):
            os.unlink(path)
    os.makedirs(folder, exist_ok=True)
    for name in moves:
        _move(os.path.join(stage, name), os.path.join(out_dir, name))
    os.unlink(marker)
    placing.append("done")


def _move(source: str, target: str) -> None:
    """A rename, or where ``target``'s folder is on another file system (``predictions/`` a link to another disk),
    a copy beside the target renamed over it, then the source removed."""
    try:
        os.replace(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
        os.unlink(source)


HELD = ("SIGINT", "SIGTERM")  # the interrupts the command line turns into KeyboardInterrupt (SIGTERM: Terminated)


@contextmanager
def interrupts_held():
    """Ctrl-C and SIGTERM held off until the block ends, in the main thread (a few renames that must all happen),
    then sent again to the handler that was there before: raised, ignored, or the caller's own, as it would have
    been. A handler installed outside Python (``getsignal`` None) cannot be put back, so that signal is not held."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    former = {}
    for name in HELD:
        number = getattr(signal, name)
        handler = signal.getsignal(number)
        if handler is not None:
            former[number] = signal.signal(number, lambda n, frame: caught.append(n))
    try:
        yield
    finally:
        for number, handler in former.items():
            signal.signal(number, handler)
    for number in dict.fromkeys(caught):
        signal.raise_signal(number)
