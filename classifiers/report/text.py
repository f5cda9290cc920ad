"""How the classifiers' results read for a person: the zoo, a cv report, a saved model, an evaluation (the
commands print these lines; ``--json`` prints the data they are made from)."""

from __future__ import annotations

import json
import shlex

from classifiers.calibration import MARGIN_POWER
from classifiers.label_issues import summary_lines
from classifiers.zoo import default_classifiers, describe, get_spec, list_classifiers, search_grid

from .reading import (
    curve_table,
    difference_text,
    leaderboard_text,
    model_name,
    pm,
    selection_note,
    significance_note,
    tie_note,
    unlabeled_role,
)


def classifier_rows() -> list[dict]:
    """Every zoo entry: its pipeline, whether it gives probabilities, what ``--search`` tunes, whether ``cv`` runs it
    without ``-c``, its summary."""
    defaults = set(default_classifiers())
    return [
        {
            "name": n,
            "default": n in defaults,
            "pipeline": describe(n),
            "probabilities": get_spec(n).probabilities,
            "search": {k.removeprefix("clf__"): v for k, v in search_grid(n).items()},
            "summary": get_spec(n).summary,
        }
        for n in list_classifiers()
    ]


def classifiers_text(rows: list[dict]) -> list[str]:
    lines = []
    for r in rows:
        grid = ", ".join(f"{k} in {v}" for k, v in r["search"].items()) or "nothing to tune"
        lines += [
            f"{r['name']:14} {r['summary']}",
            f"{'':14}   {r['pipeline']}",
            f"{'':14}   probabilities: {'its own' if r['probabilities'] else 'from its decision scores'}, "
            f"calibrated by train; --search: {grid}" + ("" if r["default"] else "; run by cv only when named (-c)"),
        ]
    return lines


def cv_text(d: dict, files: dict | None = None) -> list[str]:
    """A cv report (``report_dict``): the run, the leaderboard, the images to look at, the files written."""
    cvd = d["cv"]
    lines = [
        f"{d['rows']} images"
        + (f" (labels from {d['labels']['csv']})" if d.get("labels") else "")
        + (f", {d['unlabeled_rows']} unlabeled {unlabeled_role(d)}" if d.get("unlabeled_rows") else "")
        + f", {len(d['classes'])} classes, {cvd['folds']} folds x {cvd['repeats']} "
        f"({cvd['splitter']}{', nested search' if cvd['search'] else ''}), {d['seconds']:.1f} s"
    ]
    planned = cvd.get("budget") or {}
    if planned.get("left_out") or planned.get("stand_ins") or planned.get("skipped"):
        lines.append(f"  {planned['message']}")
    if len(d["caches"]) > 1:
        lines += [f"  {c['backbone']}: {c['cache']}" for c in d["caches"]]
        lines.append(f"  folds from {cvd['folds_from']}")
    lines += leaderboard_text(d)
    lines += [selection_note(d)] + [note for note in [tie_note(d), significance_note(d)] if note]
    notes = list(dict.fromkeys(n for r in d["results"] for n in r.get("notes") or []))
    lines += [f"  note: {n}" for n in notes]
    u = d.get("unlabeled")
    if u:
        lines.append(
            f"\nWith the {u['rows']} unlabeled rows ({u['mode']}, "
            f"{'in every fold' if u.get('rule') == 'always' else 'switch-off rule per fold'}), on the same labelled "
            f"held-out rows ({u['pairs'][0]['metric'].replace('_', ' ') if u['pairs'] else ''}):"
        )
        lines += _aligned(
            [["model", "without", "with", "with - without, p", "used in folds"]]
            + [
                [
                    model_name(d, p),
                    pm(p["without"]),
                    pm(p["with"]),
                    difference_text(p),
                    f"{p['used_in_folds']} of {p['folds']}",
                ]
                for p in u["pairs"]
            ]
        )
        if u["pairs"] and u.get("held_out_rows"):
            lines.append(
                f"  on {u['held_out_rows']} labelled held-out images; p: the corrected resampled t-test on the same "
                f"folds (two-sided; with few images a gap of a few images is within chance)"
            )
    if d.get("learning_curve"):
        shots, cells = curve_table(d)
        draws = max(r["draws"] for r in d["learning_curve"])
        lines.append(
            f"\nLearning curve: {d['learning_curve'][0]['metric'].replace('_', ' ')} with k labelled images per "
            f"class per training fold (± over {draws} draws, all scored on the same {d['rows']} held-out images; all: "
            f"the leaderboard, ± over folds; projected: a power law, not measured):"
        )
        lines += _aligned([["model", *(f"k={k}" if k != "all" else "all" for k in shots)], *cells])
        curve_notes = [n for r in d["learning_curve"] for n in r.get("notes") or []]  # the fits' fallbacks too
        lines += [f"  note: {n}" for n in dict.fromkeys(curve_notes) if n not in notes]
    susp = d["suspicious"]
    if susp["images"]:
        lines.append(
            f"\nMost suspicious images (out-of-fold, judged by {model_name(d, susp)}, the row with probabilities "
            f"whose log-loss is lowest, the surest judge):"
        )
        lines += [
            f"  {i['path']}: labelled {i['label']}, predicted {i['predicted']} ({i['confidence']:.2f})"
            for i in susp["images"][:10]
        ]
    if d.get("label_issues_estimated") is not None:
        lines.append("\nLabel issues: " + "\n".join(summary_lines(d, limit=5)))
    if d["outliers"]["images"]:
        among = f", among the {d['rows']} labelled images" if d.get("unlabeled_rows") else ""
        lines.append(
            f"\nLeast like any other image (nearest-neighbour cosine similarity on {d['outliers']['layer']}{among}):"
        )
        lines += [f"  {i['path']}: {i['similarity']:.2f} (nearest {i['nearest']})" for i in d["outliers"]["images"][:5]]
    conflicting = [g for g in d["duplicates"] if g["conflicting"]]
    if d["duplicates"]:
        lines.append(f"\n{len(d['duplicates'])} groups of identical files ({len(conflicting)} with different labels)")
    lines += [f"{name:16} {path}" for name, path in (files or {}).items()]
    return lines


def _aligned(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]


def train_text(d: dict) -> list[str]:
    """A saved model (``{"model": path, **Bundle.describe()}``)."""
    lines = [
        f"saved {d['model']}: {d['classifier']} on {d['layer']} ({d['pipeline']})",
        f"  {d['trained_on']['rows']} images, classes "
        + ", ".join(f"{c} {n}" for c, n in d["trained_on"]["class_counts"].items()),
    ]
    from classifiers.bundle import CHOSEN

    chosen = dict(d["trained_on"].get("chosen") or {})
    by = chosen.pop("by", None)
    pseudo = (d["trained_on"].get("unlabeled") or {}).get("pseudo_labelled") or 0
    among = f" (its labelled and {pseudo} pseudo-labelled rows)" if pseudo else ""
    for name, value in chosen.items():
        lines.append(f"  chose {name} = {value:.3g} {CHOSEN.get(name, '')}{among}{f', by {by}' if by else ''}".rstrip())
    found = d["trained_on"].get("search")
    if found:
        lines.append(
            f"  search: {found['splitter']} ({found['folds']} folds), chose {json.dumps(found['best_params'])} "
            f"(balanced accuracy {found['best_score']:.3f} on the inner folds: the score that chose it, so optimistic; "
            f"cv --search scores the choice on folds it never saw)"
        )
    u = d["trained_on"].get("unlabeled")
    if u:
        lines.append(
            f"  unlabeled rows: {u['rows']}, {u['mode']}: {u['decision']}"
            + (f"; {u['pseudo_labelled']} fit on with their pseudo-labels" if u["used"] else "")
        )
    if d["trained_on"].get("labels"):
        lines.append(f"  labels: {d['trained_on']['labels']['csv']} over the cache's own")
    cal = d["trained_on"].get("calibration")
    if cal and cal["method"] in ("temperature", "margin-temperature"):
        oof = cal["out_of_fold"]
        q = cal.get("margin_power") or 0.0
        bound = " (the largest power allowed)" if abs(q) >= MARGIN_POWER - 1e-9 else ""
        how = f"temperature {cal['temperature']:.3g}" + (
            f" at the median margin, times (margin / median)^{-q:.2g}{bound}" if q else ""
        )
        lines.append(
            f"  probabilities: calibrated, {how} fit on {cal['folds']} inner folds "
            f"({cal['fits']} more fits, {cal['seconds']:.1f} s; out-of-fold log-loss {oof['log_loss_before']:.3f} → "
            + (
                f"{oof['log_loss_cross_fitted']:.3f}, each inner fold calibrated by a fit on the others"
                + (", on rows --search chose on: optimistic)" if d["trained_on"].get("search") else ")")
                if "log_loss_cross_fitted" in oof  # model files of 0.x before it: the figure on the rows fit on
                else f"{oof['log_loss_after']:.3f}, on the rows it was fit on)"
            )
            + "; --no-calibrate leaves it out"
        )
        if cal.get("note"):  # fewer inner folds, or fit without the pseudo-labelled rows (train --unlabeled)
            lines.append(f"  calibration: {cal['note']}")
        after = oof.get("log_loss_cross_fitted")
        if after is not None and round(after, 3) > round(oof["log_loss_before"], 3):  # as printed; few labels, mostly
            lines.append(
                "  calibration: it raised the held-out inner folds' log-loss here (the one or two numbers fit on the "
                "other folds' scores did not carry over to each fold, as happens most on few labels: "
                "docs/calibration.md); --no-calibrate keeps the classifier's own probabilities"
            )
    elif cal:
        lines.append(f"  probabilities: {cal['note']}")
    lines += [f"  note: {n}" for n in d["trained_on"].get("notes") or [] if not cal or n != cal.get("note")]
    s = d["settings"]
    lines.append(f"  embedding: {s['backbone']}, weights {s['weights']}, pooling {s['pooling']}")
    if d.get("model"):  # saved: what to do with it
        model, labels = shlex.quote(d["model"]), (d["trained_on"].get("labels") or {}).get("csv")
        rest = (
            f"; the rest of the cache labelled for review: featurebank predict {model} "
            f"{shlex.quote(d['trained_on']['cache'])} --labels {shlex.quote(labels)} -o pseudo-labels.csv"
            if labels and d["trained_on"].get("cache")
            else ""
        )
        lines.append(
            f"next: featurebank evaluate {model} HELD-OUT (labelled images nothing was fit or chosen on), "
            f"featurebank predict {model} IMAGES{rest}"
        )
    return lines


def evaluate_text(d: dict) -> list[str]:
    """An evaluation (``bundle.evaluate``): the metrics, per class, the confusion matrix, files without a row."""
    m = d["metrics"]
    seen = d.get("training_images") or {}
    interval = m.get("accuracy_interval")
    chance = m.get("ece_chance")
    lines = [
        f"{d['model']} @ {d['layer']} on {d['rows']} images of {d['source']} (cache {d['cache']})",
        f"  accuracy {100 * m['accuracy']:.1f} %"
        + (
            f" ({m['right']} of {d['rows']} right; 95 % interval {100 * interval[0]:.1f} to {100 * interval[1]:.1f})"
            if interval
            else ""
        )
        + f", balanced accuracy {100 * m['balanced_accuracy']:.1f} %, macro-F1 {100 * m['f1_macro']:.1f} %"
        + (f", log-loss {m['log_loss']:.3f}" if m["log_loss"] is not None else "")
        + (f", ECE {m['ece']:.3f} (15 bins" if m.get("ece") is not None else "")
        + (
            f"; a calibrated model shows {chance['mean']:.3f} on as many rows by chance, 95th pct {chance['p95']:.3f}"
            + ("; above it: these probabilities are not calibrated here)" if m["ece"] > chance["p95"] else ")")
            if m.get("ece") is not None and chance
            else (")" if m.get("ece") is not None else "")
        ),
    ]
    if seen.get("left_out"):
        lines.append(
            f"  {len(seen['left_out'])} image(s) the model was fit on left out (the same bytes as a training image): "
            + ", ".join(seen["left_out"][:3])
            + (" …" if len(seen["left_out"]) > 3 else "")
        )
    if seen and (not seen.get("checked") or seen.get("unchecked_rows")):
        lines.append(f"  note: {seen['note']}")
    familiar = d.get("familiarity")
    if familiar and familiar.get("unfamiliar"):
        lines.append(
            f"  {familiar['unfamiliar']} of {familiar['rows']} images unlike the training images (familiarity under "
            f"{familiar['below']:g}): {familiar['right_unfamiliar']} of them right"
            + (
                f", against {100 * familiar['accuracy_familiar']:.1f} % of the others"
                if familiar.get("accuracy_familiar") is not None
                else ""
            )
            + (f"; the least familiar: {', '.join(familiar['paths'][:3])}" if familiar.get("paths") else "")
            + (" …" if familiar["unfamiliar"] > 3 else "")
        )
    lines.append(f"  {'class':20} {'precision':>9} {'recall':>7} {'F1':>6} {'support':>7}")
    lines += [
        f"  {c:20} {100 * v['precision']:8.1f}% {100 * v['recall']:6.1f}% {100 * v['f1']:5.1f}% {v['support']:7}"
        for c, v in d["per_class"].items()
    ]
    lines.append(
        "  confusion (rows true, columns predicted): "
        + " | ".join(f"{c}: {' '.join(map(str, row))}" for c, row in zip(d["classes"], d["confusion"]))
    )
    if d["failed"]:
        lines.append(
            f"  {len(d['failed'])} files without a row: "
            + "; ".join(f"{f['path']}: {f['reason']}" for f in d["failed"][:5])
        )
    return lines
