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
    sig = d["cv"].get("significance")
    if not sig:
        return ""
    return (
        f"p vs #1: {sig['test']} on {sig['metric'].replace('_', ' ')} ({d['cv']['folds']} folds × "
        f"{d['cv']['repeats']} repeat(s), df {sig['df']}); ≈ marks rows not significantly worse than the best "
        f"(p ≥ {sig['alpha']}), with no correction for the number of rows compared."
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
                f"{row['fit_seconds']:.2f}",
                p_text(row),
            ]
        )
    return rows


def leaderboard_lines(d: dict, limit: int | None = None) -> list[str]:
    """The leaderboard as a Markdown table."""
    header, *rows = leaderboard_rows(d, limit)
    rule = "|--:|" + ("---|" if several_caches(d) else "") + "---|---|--:|--:|--:|--:|--:|--:|--:|"
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
