"""report.html: the page a person looks at, one per run folder of ``cv --out`` or ``finetune``, with the images.

It is rendered only from what the run left in its folder (report.json, the best result's out-of-fold CSV,
map.json, the PNGs), so ``featurebank report RUN_DIR`` renders it again without the cache. The images it shows
get 160 px JPEG thumbnails in ``RUN_DIR/thumbs/``, made once from the originals and linked relatively: the
folder can be moved or sent. Nothing is fetched: the CSS and the small sorting script are inline, and the
markup comes from a Jinja2 template with autoescaping, so a path or a label is always text.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import json
import os
import pathlib
import stat

from classifiers.extras import thumbs_folder
from classifiers.label_issues import FLIPS_FOUND
from embedder import __version__
from embedder.kernel.atomic import atomic_path
from embedder.kernel.errors import FeaturebankError, FileProblem, InvalidValue, MissingFile, first_line

from .reading import (
    FORMAT,
    curve_table,
    curve_text,
    difference_text,
    find_result,
    model_name,
    p_text,
    pm,
    predictions_name,
    selection_note,
    several_caches,
    significance_note,
    tie_note,
    unlabeled_role,
)

THUMB = 160  # pixels, the longer side
CELL_THUMBS = 48  # thumbnails per confusion cell; the rest of its images are listed by path
CELL_ROWS = 1000  # paths listed per confusion cell (the out-of-fold CSV has them all)
TOTAL_CELL_THUMBS = 3000  # over all cells, so that a run of many classes stays a page, not an archive
DUPLICATE_SETS = 50
LABEL_ISSUE_THUMBS = 48  # the first page of the ranked label issues; label_issues.csv has them all


@functools.lru_cache(maxsize=1)
def _environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("classifiers", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    return env


class Thumbs:
    """Thumbnails of the images under ``root``, named by a hash of their path relative to it, made once: a
    later render finds them even when the originals are gone. An image that cannot be read gets no thumbnail
    but the reason, which the page shows in a placeholder."""

    def __init__(self, run_dir: str, root: str | None, shared: str | None = None):
        self.dir = os.path.join(run_dir, "thumbs")
        self.root = root
        self.shared = shared  # thumbnails kept beside the cache for the next run folder (extras.thumbs_folder)
        self.made = 0
        self._known: dict[str, dict] = {}

    def __call__(self, path: str) -> dict:
        if path not in self._known:
            self._known[path] = self._thumb(path)
        return self._known[path]

    def _thumb(self, path: str) -> dict:
        from embedder.inputs.decode import decode_file

        name = hashlib.sha1(path.encode("utf-8")).hexdigest()[:16] + ".jpg"
        dest = os.path.join(self.dir, name)
        full = os.path.join(self.root, path) if self.root else None
        original = pathlib.Path(os.path.abspath(full)).as_uri() if full and os.path.isfile(full) else None
        kept = os.path.join(self.shared, name) if self.shared else None
        if os.path.islink(dest) or (os.path.lexists(dest) and not _is_thumbnail(dest)):
            with contextlib.suppress(OSError):  # a run folder never carries a link out of itself
                os.unlink(dest)
        if not os.path.lexists(dest) and kept and _is_thumbnail(kept):
            _copy(kept, dest)
        if not os.path.isfile(dest):
            if full is None:
                return {"src": None, "original": None, "missing": "the image folder is unknown"}
            decoded = decode_file(full, draft_size=THUMB)
            if decoded.image is None:
                return {"src": None, "original": None, "missing": decoded.reason}
            image = decoded.image
            image.thumbnail((THUMB, THUMB))
            with atomic_path(dest) as tmp:
                image.save(tmp, "JPEG", quality=85)
            self.made += 1
            if kept:
                _copy(dest, kept)
        return {"src": f"thumbs/{name}", "original": original, "missing": None}


MAX_THUMB_BYTES = 1 << 20  # a 160 px JPEG is a few kilobytes


def _is_thumbnail(path: str) -> bool:
    """A file that may be a thumbnail: a regular file (not a link, not a hard link to another file), of a
    thumbnail's size, starting like a JPEG. What is planted beside a cache (a link to a secret, a hard link to
    one) fails this and is never taken into a run folder, which can be sent to someone."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or not 0 < st.st_size <= MAX_THUMB_BYTES:
        return False
    try:
        with open(path, "rb") as fh:
            return fh.read(3) == b"\xff\xd8\xff"
    except OSError:
        return False


def _copy(source: str, dest: str) -> None:
    """A thumbnail into the other folder, as a copy of its bytes (never a link, hard or symbolic: each folder owns
    its files), best effort: a folder that cannot be written keeps nothing, and the thumbnail is made again next
    time."""
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as fh:
            data = fh.read(MAX_THUMB_BYTES + 1)
        if len(data) > MAX_THUMB_BYTES:
            return
        with atomic_path(dest) as tmp, open(tmp, "wb") as out:
            out.write(data)
    except OSError:
        pass


def read_run(run_dir: str) -> dict:
    """The run folder's report.json (of ``cv --out`` or ``finetune``), or a one-line error."""
    if not os.path.isdir(run_dir):
        raise FileProblem(f"{run_dir} is not a folder: give a run folder written by cv --out or finetune")
    path = os.path.join(run_dir, "report.json")
    if os.path.exists(path) and not os.path.isfile(path):  # a FIFO would wait for a writer: never opened
        raise FileProblem(f"{path} is not a regular file: give a run folder written by cv --out or finetune")
    if not os.path.isfile(path):
        raise MissingFile(f"{run_dir} has no report.json: give a run folder written by cv --out or finetune")
    try:
        with open(path, encoding="utf-8") as fh:
            d = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FileProblem(f"{path} is not a readable report ({type(exc).__name__}: {exc})") from None
    except RecursionError:  # [[[[… nested past Python's stack
        raise FileProblem(f"{path} is not a readable report (nested too deeply to read)") from None
    return d if isinstance(d, dict) else {}


def is_cv_report(d: dict) -> bool:
    return d.get("format") == FORMAT


def image_root(d: dict, root: str | None = None) -> str | None:
    """Where the report's relative paths start: ``root`` when given (the images moved), the report's own record,
    or (reports written before it had one) the cache's, when the cache is still there."""
    if root:
        return os.path.abspath(root)
    if d.get("root"):
        return d["root"]
    if d.get("cache") and os.path.isfile(d["cache"]):
        from embedder.cache.hdf5 import CacheReader

        try:
            return CacheReader(d["cache"]).attrs["root"]
        except (FeaturebankError, OSError, KeyError):
            return None
    return None


def read_predictions(path: str, classes: list[str] | None = None) -> list[dict] | None:
    """The out-of-fold CSV of one result: path, label, predicted and confidence per image (None when the file is
    absent). The confidence is None for a classifier without probabilities: its column there is a share of
    votes over the repeats, not a confidence. A file that is not what cv wrote (a column missing, a confidence
    that is not a number in [0, 1], a class the report does not have) is one line naming its line."""
    import math

    if not os.path.isfile(path):
        return None

    def bad(line: int, what: str):
        return InvalidValue(f"{path} line {line}: {what}; run cv --out again to write the run folder anew")

    known = set(classes) if classes is not None else None
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            fields = reader.fieldnames or []
            missing = [c for c in ("path", "label", "predicted", "confidence") if c not in fields]
            if missing:
                raise bad(1, f"no {missing[0]!r} column")
            scored = any(name.startswith("p_") for name in fields)
            rows = []
            for r in reader:
                if None in r or None in r.values():
                    raise bad(reader.line_num, "not as many fields as the header names")
                confidence = None
                if scored:
                    try:
                        confidence = float(r["confidence"])
                    except ValueError:
                        raise bad(reader.line_num, f"confidence {r['confidence'][:40]!r} is not a number") from None
                    if not (math.isfinite(confidence) and 0.0 <= confidence <= 1.0):
                        raise bad(reader.line_num, f"confidence {r['confidence'][:40]!r} is not in [0, 1]")
                for column in ("label", "predicted"):
                    if known is not None and r[column] not in known:
                        raise bad(reader.line_num, f"{column} {r[column][:80]!r} is not a class of the report")
                rows.append(
                    {"path": r["path"], "label": r["label"], "predicted": r["predicted"], "confidence": confidence}
                )
    except (UnicodeDecodeError, csv.Error) as exc:
        raise FileProblem(f"{path} cannot be read ({type(exc).__name__}: {exc})") from None
    return rows


# report.json's top-level keys that report.html reads, with their types (a tuple: any of them)
CV_KEYS: dict[str, type | tuple[type, ...]] = {
    "classes": list,
    "best": dict,
    "results": list,
    "leaderboard": list,
    "suspicious": dict,
    "settings": dict,
    "cv": dict,
    "cache": str,
    "source": str,
    "rows": int,
    "unlabeled_rows": int,
    "class_counts": dict,
    "outliers": dict,
    "duplicates": list,
    "failed": list,
    "versions": dict,
    "seconds": (int, float),
}


def check_cv_report(d: dict, path: str) -> None:
    """The keys report.html needs, of their types, else one line naming the first that is not."""
    for key, kind in CV_KEYS.items():
        if key not in d:
            raise FileProblem(f"{path} is not a complete cv report: it has no {key!r}; run cv --out again")
        if not isinstance(d[key], kind) or isinstance(d[key], bool):
            want = " or ".join(t.__name__ for t in (kind if isinstance(kind, tuple) else (kind,)))
            raise FileProblem(f"{path} is not a valid cv report: {key!r} is a {type(d[key]).__name__}, not a {want}")
    if not d["classes"] or not all(isinstance(c, str) for c in d["classes"]):
        raise FileProblem(f"{path} is not a valid cv report: 'classes' must be a list of names")


def damaged_report(run_dir: str, exc: BaseException) -> FeaturebankError:
    """The one line for a report.json whose inner structure is not what its writer wrote (a key missing deep
    inside, a value of another type): rendering stops, nothing is written. An error that names its own file (a
    predictions CSV's line, map.json) is that file's, not report.json's: it passes as it is."""
    if isinstance(exc, FeaturebankError):
        return exc
    detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return FileProblem(
        f"{os.path.join(run_dir, 'report.json')} is damaged ({type(exc).__name__}"
        + (f": {detail}" if detail else "")
        + "): report.html was not written; run the command that made the folder again"
    )


RENDER_ERRORS = (KeyError, TypeError, ValueError, IndexError, AttributeError, StopIteration)


def _cell(m: dict | None, percent: bool = True) -> dict:
    """A leaderboard cell: the value to sort by, and mean ± std as the Markdown report writes it."""
    return {"v": m["mean"] if m and m.get("mean") is not None else "", "text": pm(m, percent)}


BLUE, RED = (31, 95, 191), (200, 40, 30)
ERROR_SATURATES = 0.25  # an off-diagonal cell is fully red at this share of its true class


def _blend(colour: tuple[int, int, int], strength: float) -> str:
    """White to ``colour`` by ``strength`` in [0, 1]."""
    strength = min(max(strength, 0.0), 1.0)
    r, g, b = (int(round(255 + (t - 255) * strength)) for t in colour)
    return f"rgb({r}, {g}, {b})"


def _card(
    thumbs: Thumbs, path: str, label: str, predicted: str | None = None, confidence: float | None = None, **extra
) -> dict:
    """One image as the template's ``card`` shows it: thumbnail (or why there is none), path, label, prediction."""
    return {
        "path": path,
        "label": label,
        "predicted": predicted,
        "confidence": confidence,
        "notes": [],
        "conflict": False,
        "nearest": None,
        "compact": False,
        **extra,
        "thumb": thumbs(path),
    }


def _cells(classes: list[str], oof: list[dict], thumbs: Thumbs):
    """The confusion matrix of the out-of-fold predictions (each image once) and, per non-empty cell, its images:
    wrong cells most confident first (the surest mistakes), right cells least confident first (the closest calls)."""
    index = {c: i for i, c in enumerate(classes)}
    k = len(classes)
    groups: dict[tuple[int, int], list[dict]] = {}
    for r in oof:
        groups.setdefault((index[r["label"]], index[r["predicted"]]), []).append(r)
    counts = [[len(groups.get((i, j), [])) for j in range(k)] for i in range(k)]
    matrix = []
    for i in range(k):
        total = sum(counts[i])
        cells = []
        for j in range(k):
            n = counts[i][j]
            share = n / total if total else 0.0
            strength = share if i == j else share / ERROR_SATURATES
            cells.append(
                {
                    "count": n,
                    "id": f"cell-{i}-{j}",
                    "diagonal": i == j,
                    "bg": _blend(BLUE if i == j else RED, strength),
                    "fg": "#fff" if min(strength, 1.0) > 0.55 else "#1d2330",
                    "title": f"labelled {classes[i]}, predicted {classes[j]}: {n} "
                    f"({100 * share:.1f} % of {classes[i]})",
                }
            )
        matrix.append({"name": classes[i], "cells": cells})
    panels, budget = [], TOTAL_CELL_THUMBS
    for i in range(k):
        for j in range(k):
            rows = groups.get((i, j))
            if not rows:
                continue
            scored = rows[0]["confidence"] is not None
            if scored:
                rows = sorted(rows, key=lambda r: r["confidence"] if i == j else -r["confidence"])
            shown = min(CELL_THUMBS, budget, len(rows))
            budget -= shown
            cards = [_card(thumbs, **r, compact=True) for r in rows[:shown]]
            panels.append(
                {
                    "id": f"cell-{i}-{j}",
                    "true": classes[i],
                    "predicted": classes[j],
                    "count": len(rows),
                    "order": "In the cache's order (this classifier gives no probabilities)."
                    if not scored
                    else "Least confident first: the closest calls."
                    if i == j
                    else "Most confident first: the surest mistakes.",
                    "cards": cards,
                    "more": rows[shown:CELL_ROWS],
                    "unlisted": max(0, len(rows) - max(CELL_ROWS, shown)),
                }
            )
    return matrix, panels


def cv_context(d: dict, run_dir: str, thumbs: Thumbs) -> dict:
    def predictions_of(result: dict) -> str:  # reports before the "predictions" key named files this way
        return result.get("predictions") or os.path.join(
            "predictions", predictions_name(result["classifier"], result["layer"])
        )

    classes = d["classes"]
    best = find_result(d, d["best"])
    predictions_file = predictions_of(best)
    oof = read_predictions(os.path.join(run_dir, predictions_file), classes)
    susp = d["suspicious"]
    # the images' cards show the judge's predictions: the classifier with the best log-loss, whose confidences
    # are the most trustworthy (it chose the suspicious images too); without one, the best model's
    judge = find_result(d, susp) if susp["classifier"] else best
    cards_oof = oof if judge is best else read_predictions(os.path.join(run_dir, predictions_of(judge)), classes)
    by_path = {r["path"]: r for r in cards_oof or []}

    def item(path, label, **extra):  # an image with the judge's out-of-fold prediction
        known = by_path.get(path, {})
        return _card(thumbs, path, label, known.get("predicted"), known.get("confidence"), **extra)

    s, cv = d["settings"], d["cv"]
    facts = [
        (
            "cache",
            f"{d['cache']} ({d['rows']} labelled images"
            + (f", {d['unlabeled_rows']} unlabeled {unlabeled_role(d)}" if d["unlabeled_rows"] else "")
            + ")",
        ),
        ("input", d["source"]),
        *(
            [("labels", f"{d['labels']['csv']} (sha256 {d['labels']['sha256'][:12]}…) over the cache's own")]
            if d.get("labels")
            else []
        ),
        ("embedding", f"{s['backbone']}, weights {s['weights']}, pooling {s['pooling']}, precision {s['precision']}"),
        (
            "folds",
            f"{cv['splitter']}, {cv['folds']} folds × {cv['repeats']} repeat(s), seed {cv['seed']}"
            + (", nested hyperparameter search" if cv["search"] else ""),
        ),
        ("classes", ", ".join(f"{c} {n}" for c, n in d["class_counts"].items())),
    ]
    if several_caches(d):
        facts[[k for k, _ in facts].index("embedding")] = (
            "embedding",
            "; ".join(
                f"{c['backbone']} = {c['cache']} ({c['settings']['weights']}, pooling "
                f"{c['settings']['pooling']}, {c['settings']['precision']})"
                for c in d["caches"]
            ),
        )
        facts.append(("folds from", cv["folds_from"]))
    leaderboard = [
        {
            **r,
            "metrics": [
                _cell(r["accuracy"]),
                _cell(r["balanced_accuracy"]),
                _cell(r["f1_macro"]),
                _cell(r["log_loss"], percent=False),
            ],
            "p": {"v": r.get("p_value") if r.get("p_value") is not None else 1.0, "text": p_text(r)},
        }
        for r in d["leaderboard"]
    ]
    per_class = [
        {"name": c, **{k: f"{100 * v[k]:.1f}" for k in ("precision", "recall", "f1")}, "support": v["support"]}
        for c, v in best["per_class"].items()
    ]
    matrix, panels = _cells(classes, oof, thumbs) if oof else (None, [])
    suspicious = [
        _card(thumbs, i["path"], i["label"], i["predicted"], i["confidence"], notes=[f"p(label) {i['p_label']:.2f}"])
        for i in susp["images"]
    ]
    outliers = [
        item(i["path"], i["label"], nearest=i["nearest"], similarity=i["similarity"]) for i in d["outliers"]["images"]
    ]
    duplicates = [
        {
            **g,
            "cards": [
                item(p, label, conflict=g["conflicting"]) for p, label in zip(g["paths"], _labels_of(g, by_path))
            ],
        }
        for g in d["duplicates"][:DUPLICATE_SETS]
    ]
    issues = d.get("label_issues") or []
    label_issues = [
        _card(
            thumbs,
            i["path"],
            i["label"],
            notes=[f"suggested {i['suggested']}", f"score {i['score']:.2f}"]
            + (["within the estimate"] if i.get("within_estimate") else []),
        )
        for i in issues[:LABEL_ISSUE_THUMBS]
    ]
    sections = [("leaderboard", "Leaderboard"), ("best", "Best model"), ("suspicious", "Suspicious")]
    if d.get("label_issues_estimated") is not None:
        sections.append(("label-issues", "Label issues"))
    sections += [
        (k, name)
        for k, name, there in (("outliers", "Outliers", outliers), ("duplicates", "Duplicates", duplicates))
        if there
    ]
    unlabeled = d.get("unlabeled")
    if unlabeled:
        sections.append(("unlabeled", "Unlabeled rows"))
    chart = curve_chart(d)
    if chart:
        sections.append(("learning-curve", "Learning curve"))
    reliability = reliability_charts(d)
    if reliability:
        sections.append(("calibration", "Calibration"))
    figure = _map(run_dir)
    if figure:
        sections.append(("map", "Map"))
    if d["failed"]:
        sections.append(("failed", "Files without a row"))
    versions = ", ".join(f"{k} {v}" for k, v in d["versions"].items())
    return {
        "kind": "cv",
        "title": f"Cross-validation: {_short(d['source'])}",
        "facts": facts,
        "sections": sections,
        "rank_by": cv.get("rank_rule") or cv["rank_by"].replace("_", " "),
        "leaderboard": leaderboard,
        "several": several_caches(d),
        "significance": significance_note(d),
        "ties": tie_note(d),
        "selection": selection_note(d),
        "best": best,
        "best_name": model_name(d, best).replace(" @ ", " on "),
        "repeats": cv["repeats"],
        "per_class": per_class,
        "classes": classes,
        "matrix": matrix,
        "panels": panels,
        "predictions_file": predictions_file,
        "judge": model_name(d, susp).replace(" @ ", " on ") if susp["classifier"] else None,
        "cards_by": model_name(d, judge).replace(" @ ", " on ") if cards_oof else None,
        "suspicious": suspicious,
        "label_issues": label_issues,
        "label_issues_listed": len(issues),
        "label_issues_estimated": d.get("label_issues_estimated"),
        "label_issues_worth": FLIPS_FOUND,
        "label_issues_caveat": d.get("label_issues_caveat"),
        "label_issues_method": (d.get("label_issues_method") or {}).get("estimate"),
        "label_issues_pairs": d.get("label_issues_pairs"),
        "label_issues_signals": (d.get("label_issues_method") or {}).get("signals"),
        "outliers": outliers,
        "outlier_layer": d["outliers"].get("layer"),
        "outlier_search": d["outliers"].get("search"),
        "duplicates": duplicates,
        "duplicates_more": max(0, len(d["duplicates"]) - DUPLICATE_SETS),
        "map": figure,
        "unlabeled": unlabeled,
        "unlabeled_pairs": [
            {
                **p,
                "name": model_name(d, p),
                "without_text": pm(p["without"]),
                "with_text": pm(p["with"]),
                "difference_text": difference_text(p),
            }
            for p in (unlabeled or {}).get("pairs", [])
        ],
        "curve": chart,
        "reliability": reliability,
        "error_saturates": int(100 * ERROR_SATURATES),
        "failed": d["failed"][:200],
        "failed_count": len(d["failed"]),
        "footer": f"Computed in {d['seconds']:.1f} s with {versions}. Rendered by featurebank {__version__}.",
    }


CURVE_COLOURS = ("#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#bf3989", "#0a7b83", "#57606a")


def curve_chart(d: dict) -> dict | None:
    """The learning curve as an SVG chart's coordinates (drawn by the template): the score against labelled images
    per class on a log axis, a line per model, its projection dashed, ``all`` at the mean number of labelled
    training rows per class of a fold; and the same numbers as a table."""
    import math

    rows = d.get("learning_curve") or []
    if not rows:
        return None
    width, height, left, right, top, bottom = 640, 300, 50, 20, 14, 36
    folds = d["cv"]["folds"]
    everything = max(1.0, d["rows"] * (folds - 1) / folds / max(1, len(d["classes"])))  # "all": rows per class
    xs = [everything if r["shots"] == "all" else float(r["shots"]) for r in rows]
    lo, hi = math.log(min(xs)), math.log(max(max(xs), min(xs) * 2))
    means = [r["mean"] for r in rows if r["mean"] is not None]
    y_lo = max(0.0, math.floor(10 * min(means)) / 10 - 0.05)

    def x(v):
        return round(left + (math.log(v) - lo) / (hi - lo) * (width - left - right), 1)

    def y(v):
        return round(top + (1.0 - (v - y_lo) / (1.0 - y_lo)) * (height - top - bottom), 1)

    series: dict[tuple, dict] = {}
    for r in rows:
        key = (r["classifier"], r["layer"], r.get("backbone"))
        s = series.setdefault(key, {"name": model_name(d, r), "measured": [], "projection": None})
        at = everything if r["shots"] == "all" else float(r["shots"])
        point = {"x": x(at), "y": y(r["mean"]), "text": f"{r['shots']}: {curve_text(r)}"}
        if r.get("projection"):
            s["projection"] = point
        else:
            s["measured"].append((at, r["shots"] == "all", point))
    lines = []
    for i, s in enumerate(series.values()):
        ordered = sorted(s["measured"], key=lambda t: t[0])
        measured = [p for _, _, p in ordered]
        numeric = [p for _, is_all, p in ordered if not is_all]
        last = numeric[-1] if numeric else None
        lines.append(
            {
                "name": s["name"],
                "colour": CURVE_COLOURS[i % len(CURVE_COLOURS)],
                "points": " ".join(f"{p['x']},{p['y']}" for p in measured),
                "dots": measured,
                "projection": s["projection"],
                "from": last,
            }
        )
    ticks = sorted({r["shots"] for r in rows}, key=lambda k: everything if k == "all" else float(k))
    shots, cells = curve_table(d)
    return {
        "width": width,
        "height": height,
        "left": left,
        "bottom": height - bottom,
        "right": width - right,
        "top": top,
        "x_ticks": [{"x": x(everything if k == "all" else float(k)), "text": str(k)} for k in ticks],
        "y_ticks": [
            {"y": y(v / 100), "text": f"{v} %"} for v in range(int(100 * y_lo + 0.999), 101, 10) if v / 100 >= y_lo
        ],
        "lines": lines,
        "metric": rows[0]["metric"].replace("_", " "),
        "draws": max(r["draws"] for r in rows),
        "shots": shots,
        "cells": cells,
    }


def reliability_charts(d: dict, size: int = 180, pad: int = 26) -> list[dict]:
    """A reliability diagram per row of a run (best first), as SVG coordinates for the template: per bin of
    the calibrated out-of-fold confidence (``results[].calibration.bins``), a bar as high as the bin's accuracy
    from its left edge to its right, the diagonal of perfect calibration, and the row's ECE. Empty for a run
    written before calibration was reported."""
    by_row = {(r["backbone"], r["classifier"], r["layer"]): r for r in d.get("results", [])}
    charts = []
    inner = size - 2 * pad

    def at(v: float, vertical: bool = False) -> float:
        return round(pad + (1.0 - v) * inner, 1) if vertical else round(pad + v * inner, 1)

    for row in d["leaderboard"]:
        r = by_row.get((row["backbone"], row["classifier"], row["layer"]))
        cal = (r or {}).get("calibration")
        if not cal:
            continue
        total = max(1, sum(b["count"] for b in cal["bins"]))
        bars = [
            {
                "x": at(b["low"]),
                "y": at(b["accuracy"], True),
                "w": round(at(b["high"]) - at(b["low"]) - 1, 1),
                "h": round(at(0.0, True) - at(b["accuracy"], True), 1),
                "conf_y": at(b["confidence"], True),
                "shade": round(0.25 + 0.75 * min(1.0, 5 * b["count"] / total), 2),
                "text": f"{100 * b['low']:.0f}-{100 * b['high']:.0f} %: {b['count']} rows, accuracy "
                f"{100 * b['accuracy']:.1f} %, mean confidence {100 * b['confidence']:.1f} %",
            }
            for b in cal["bins"]
            if b["count"]
        ]
        before = cal.get("ece_uncalibrated")
        chance = cal.get("ece_chance")
        charts.append(
            {
                "name": model_name(d, row),
                "ece": f"{cal['ece']:.3f}",
                "chance": f"{chance['mean']:.3f}" if chance else None,
                "before": f"{before:.3f}" if before is not None else None,
                "log_loss": f"{cal['log_loss']:.3f}",
                "input": cal["input"],
                "bars": bars,
                "size": size,
                "lo": at(0.0),
                "hi": at(1.0),
            }
        )
    return charts


def _short(source: str) -> str:
    """``classes:/data/flowers/train`` → ``flowers/train``: what the run is about, at a glance."""
    parts = pathlib.PurePath(source.split(":", 1)[-1]).parts
    return "/".join(parts[-2:]) if len(parts) > 1 else source


def _labels_of(group: dict, by_path: dict) -> list[str]:
    """Each path's own label (a duplicate set lists the set of labels, not one per path)."""
    if len(group["labels"]) == 1:
        return group["labels"] * len(group["paths"])
    return [by_path[p]["label"] if p in by_path else "/".join(group["labels"]) for p in group["paths"]]


def _map(run_dir: str) -> dict | None:
    path, png = os.path.join(run_dir, "map.json"), os.path.join(run_dir, "map.png")
    if not (os.path.isfile(path) and os.path.isfile(png)):
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            m = json.load(fh)
        return _map_of(m)
    except (*RENDER_ERRORS, UnicodeDecodeError, RecursionError) as exc:
        detail = "nested too deeply to read" if isinstance(exc, RecursionError) else first_line(exc)[:200]
        raise FileProblem(
            f"{path} is damaged ({type(exc).__name__}: {detail}): report.html was not written; run the command "
            f"that made the folder again"
        ) from None


def _map_of(m: dict) -> dict:
    points = m["points"]
    wrong = sum(a != b for a, b in zip(points["label"], points["predicted"]))
    return {
        "png": "map.png",
        "points": len(points["path"]),
        "rows": m["rows"],
        "layer": m["layer"],
        "method": m["method"],
        "classifier": m["classifier"],
        "wrong": wrong,
    }


def render_page(run_dir: str, context: dict) -> str:
    """Write ``run_dir/report.html`` from a page's ``context`` (``kind``: ``cv``, or another workflow's own
    section of the template); returns its path."""
    page = _environment().get_template("report.html.j2").render(version=__version__, **context)
    path = os.path.join(run_dir, "report.html")
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(page)
    return path


def write_html(run_dir: str, root: str | None = None) -> str:
    """Render ``run_dir/report.html`` of a ``cv --out`` folder from its files; ``root``: where the images are now,
    if they moved. Returns the page's path."""
    d = read_run(run_dir)
    if not is_cv_report(d):
        raise FileProblem(f"{os.path.join(run_dir, 'report.json')} is not a report of featurebank cv")
    check_cv_report(d, os.path.join(run_dir, "report.json"))
    shared = thumbs_folder(d["cache"]) if os.path.isfile(d["cache"]) else None
    try:
        context = cv_context(d, run_dir, Thumbs(run_dir, image_root(d, root), shared))
    except RENDER_ERRORS as exc:
        raise damaged_report(run_dir, exc) from None
    return render_page(run_dir, context)


__all__ = [
    "RENDER_ERRORS",
    "THUMB",
    "Thumbs",
    "check_cv_report",
    "damaged_report",
    "is_cv_report",
    "read_run",
    "render_page",
    "write_html",
]
