"""A cv report as it reads: the words and cells that report.md, the terminal and report.html share, computed from
the report's dict (``report_dict``, or ``report.json`` read back), so that each is written once."""

from __future__ import annotations

import re

FORMAT = "featurebank-cv-report"  # report.json's "format"


def several_caches(d: dict) -> bool:
    return len(d.get("caches") or []) > 1


def model_name(d: dict, row: dict) -> str:
    """``classifier @ layer``, with the backbone in front when the run ranked several caches."""
    return (f"{row['backbone']}: " if several_caches(d) else "") + f"{row['classifier']} @ {row['layer']}"


def find_result(d: dict, row: dict) -> dict:
    """The entry of ``d["results"]`` that a leaderboard row, ``best`` or the judge names."""
    return next(
        r
        for r in d["results"]
        if r["classifier"] == row["classifier"]
        and r["layer"] == row["layer"]
        and r.get("backbone") == row.get("backbone")
    )


def p_text(row: dict) -> str:
    """The leaderboard's last cell: ``best``, or the p-value against the best, ``≈`` when not worse."""
    if row.get("p_value") is None:
        return "best" if row.get("not_worse") else "–"
    p = row["p_value"]
    return ("<0.001" if p < 0.001 else f"{p:.3g}") + (" ≈" if row["not_worse"] else "")


def significance_note(d: dict) -> str:
    """How "p vs #1" was computed; empty with one row (nothing to compare with)."""
    sig = d["cv"].get("significance")
    if not sig or len(d["leaderboard"]) < 2:
        return ""
    return (
        f"p vs #1: {sig['test']} on {sig['metric'].replace('_', ' ')} ({d['cv']['folds']} folds × "
        f"{d['cv']['repeats']} repeat(s), df {sig['df']}); ≈ marks rows not significantly worse than the best "
        f"(p ≥ {sig['alpha']}), with no correction for the number of rows compared nor for #1 being picked as the "
        f"best on these same folds: more rows are called worse than truly are."
    )


def tie_note(d: dict) -> str:
    """Which ranks tie (``CVReport.ties``: within half of one image of the largest class) and the calibrated
    log-loss that ordered them; empty without a tie."""
    ties: dict[int, list[dict]] = {}
    for row in d["leaderboard"]:
        if row.get("tie") is not None:
            ties.setdefault(row["tie"], []).append(row)
    said = []
    for rows in ties.values():
        ranks = ", ".join(str(r["rank"]) for r in rows)
        losses = ", ".join("–" if r["tie_log_loss"] is None else f"{r['tie_log_loss']:.3f}" for r in rows)
        said.append(f"ranks {ranks} (log-loss {losses})")
    if not said:
        return ""
    return (
        f"Ties: {'; '.join(said)} are within half of one image of the largest class of each other in balanced "
        f"accuracy, both in fold means and over the whole out-of-fold predictions; each tie is ordered by the "
        f"log-loss of its rows' calibrated probabilities, as train gives them (not the table's log-loss, of the "
        f"entries' own probabilities)."
    )


def selection_note(d: dict) -> str:
    """What every leaderboard figure was measured on, and why #1's is optimistic: it was picked on them."""
    cv = d["cv"]
    n = len(d["leaderboard"])
    said = (
        f"Every figure: out of fold on the {d['rows']} labelled images of this run, mean ± std over "
        f"{cv['folds']} folds × {cv['repeats']} repeat(s); log-loss of the entry's own probabilities, ECE cal. of "
        f"them calibrated as train does (cross-fitted)."
    )
    if (d.get("labels") or {}).get("picked_by_select"):
        said += (
            f" The labels come from select's picks ({d['labels']['csv']}), chosen for coverage or doubt, not drawn "
            f"at random: no estimate for the rest of the cache."
        )
    if n < 2:
        return said
    return (
        f"{said} #1 is the best of {n} rows on these same folds, so its figure is optimistic for new images: "
        f"score a model on images this run never saw (featurebank evaluate MODEL HELD_OUT) before quoting one."
    )


def pm(m: dict | None, percent: bool = True) -> str:
    """A leaderboard cell: mean ± std over folds, in percent (or as it is, for the log-loss); ``–`` when none."""
    if not m or m.get("mean") is None:
        return "–"
    if percent:
        return f"{100 * m['mean']:.1f} ± {100 * m['std']:.1f}"
    return f"{m['mean']:.3f} ± {m['std']:.3f}"


def leaderboard_rows(d: dict, limit: int | None = None) -> list[list[str]]:
    """The leaderboard's cells, the header first; a backbone column when the run ranked several caches."""
    several = several_caches(d)
    rows = [
        [
            "#",
            *(["backbone"] if several else []),
            "classifier",
            "layer",
            "dims",
            "accuracy %",
            "balanced acc. %",
            "macro-F1 %",
            "log-loss",
            "ECE cal.",
            "fit s/fold",
            "p vs #1",
        ]
    ]
    for row in d["leaderboard"][:limit]:
        rows.append(
            [
                str(row["rank"]),
                *([row["backbone"]] if several else []),
                row["classifier"],
                row["layer"],
                str(row["features"]),
                pm(row["accuracy"]),
                pm(row["balanced_accuracy"]),
                pm(row["f1_macro"]),
                pm(row["log_loss"], percent=False),
                "–" if row.get("ece") is None else f"{row['ece']:.3f}",
                f"{row['fit_seconds']:.2f}",
                p_text(row),
            ]
        )
    return rows


def leaderboard_lines(d: dict, limit: int | None = None) -> list[str]:
    """The leaderboard as a Markdown table."""
    header, *rows = leaderboard_rows(d, limit)
    rule = "|--:|" + ("---|" if several_caches(d) else "") + "---|---|--:|--:|--:|--:|--:|--:|--:|--:|"
    return ["| " + " | ".join(header) + " |", rule] + ["| " + " | ".join(r) + " |" for r in rows]


def leaderboard_text(d: dict, limit: int | None = None) -> list[str]:
    """The leaderboard as the terminal shows it: the same cells in aligned columns."""
    rows = leaderboard_rows(d, limit)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_")


def predictions_name(classifier: str, layer: str, backbone: str | None = None) -> str:
    """The file name of a result's out-of-fold predictions in ``predictions/`` (``backbone``: given when the run
    ranked several caches)."""
    return (f"{_slug(backbone)}--" if backbone else "") + f"{_slug(classifier)}@{_slug(layer)}.csv"


def unlabeled_role(d: dict) -> str:
    """What the run did with the cache's unlabeled rows."""
    return "joined the training folds of the +unlabeled rows" if d.get("unlabeled") else "left out"


def unlabeled_lines(d: dict) -> list[str]:
    """Each classifier without and with the unlabeled rows, side by side (Markdown)."""
    u = d.get("unlabeled")
    if not u:
        return []
    out = [
        "",
        "## With and without the unlabeled rows",
        "",
        f"{u['rows']} unlabeled rows joined the training side of every fold by {u['mode']}, "
        + (
            "in every fold (--unlabeled-rule always)"
            if u.get("rule") == "always"
            else "where the switch-off rule (inner folds of that fold's labelled training rows) found that they help"
        )
        + f"; both columns are scored on {u['scored_on']}.",
        "",
        "| classifier | layer | without, mean ± std % | with, mean ± std % | with - without, p | used in folds |",
        "|---|---|--:|--:|--:|--:|",
    ]
    out += [
        f"| {p['classifier']} | {p['layer']} | {pm(p['without'])} | {pm(p['with'])} | {difference_text(p)} | "
        f"{p['used_in_folds']} of {p['folds']} |"
        for p in u["pairs"]
    ]
    if u["pairs"] and u.get("held_out_rows"):
        out += [
            "",
            f"{u['pairs'][0]['metric'].replace('_', ' ').capitalize()} on {u['held_out_rows']} labelled held-out "
            f"images; p: the corrected resampled t-test of the difference on the same folds (two-sided).",
        ]
    return out


def difference_text(p: dict) -> str:
    """A with/without pair's difference in points, and its p-value (``–`` where none: a report of before)."""
    if p.get("difference") is None:
        return "–"
    said = f"{100 * p['difference']:+.1f}"
    return said + (f", p {p['p_value']:.2g}" if p.get("p_value") is not None else "")


def curve_text(row: dict) -> str:
    """A learning-curve point: ``62.1 ± 4.0 %``, a projection marked as one."""
    if row.get("projection"):
        return f"{100 * row['mean']:.1f} % (projected)"
    return f"{100 * row['mean']:.1f} ± {100 * (row['std'] or 0):.1f} %"


def curve_table(d: dict) -> tuple[list, list[list[str]]]:
    """The learning curve as a table: its shots (the columns, ``all`` and a projection's 2k included), and one row
    of cells per (classifier, layer, backbone)."""
    rows = d.get("learning_curve") or []
    shots = sorted({r["shots"] for r in rows if r["shots"] != "all"}) + (
        ["all"] if any(r["shots"] == "all" for r in rows) else []
    )
    table: dict[tuple, dict] = {}
    for r in rows:
        table.setdefault((r["classifier"], r["layer"], r.get("backbone")), {})[r["shots"]] = r
    cells = [
        [model_name(d, {"classifier": c, "layer": layer, "backbone": b})]
        + [curve_text(points[k]) if k in points else "" for k in shots]
        for (c, layer, b), points in table.items()
    ]
    return shots, cells


def curve_lines(d: dict) -> list[str]:
    """The learning curve (Markdown): a row per classifier, a column per number of labels per class."""
    if not d.get("learning_curve"):
        return []
    shots, cells = curve_table(d)
    metric = d["learning_curve"][0]["metric"].replace("_", " ")
    draws = max(r["draws"] for r in d["learning_curve"])
    return [
        "",
        "## Learning curve",
        "",
        f"{metric.capitalize()} with k labelled images per class drawn from each fold's training rows ({draws} seeded "
        f"draws, mean ± std over draws), scored on the held-out rows ({d['rows']} labelled images, each once a "
        f"repeat: the draws share them, so the ± leaves out how much these images vary); all: the leaderboard (std "
        f"over folds). (projected): a power law fitted through the curve, where it still rises; not measured.",
        "",
        "| model | " + " | ".join(str(k) for k in shots) + " |",
        "|---|" + "--:|" * len(shots),
        *["| " + " | ".join(row) + " |" for row in cells],
    ]
