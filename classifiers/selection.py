"""``featurebank select``: which images of a cache to label next, written as a manifest to fill in (``path,label``
with the label empty, best first, with the reason and the rule's score) and a contact sheet of the picks.

The cache's unlabeled rows are the pool; its labels, with a ``--labels`` CSV on top (``labels.py``), are what is
known; ``--exclude`` lists images already sent out. The rules themselves are in ``select_rules.py``; their
measured comparison is ``benchmarks/few_labels.py``.
"""

from __future__ import annotations

import csv
import os
import shlex
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from embedder.inputs.sources import csv_rows, read_text
from embedder.kernel.atomic import atomic_path, special
from embedder.kernel.errors import FeaturebankError, InvalidValue
from embedder.options import with_overrides

from .data import finite, open_cache
from .labels import labels_of, path_key, row_named
from .select_options import SelectOptions


@dataclass
class Pick:
    path: str
    reason: str
    score: float


@dataclass
class Selection:
    """What ``select`` picked, and from what: the picks best first, the rule that made them and the counts of
    the cache's rows it saw."""

    cache: str
    layer: str
    rule: str
    stage: str  # "cold start" or "labelled"
    budget: int
    seed: int
    rows: int
    labelled: int
    classes: dict[str, int]  # labelled images per class
    excluded: int
    pool: int
    picks: list[Pick]
    notes: list[str] = field(default_factory=list)
    refused: dict = field(default_factory=dict)  # candidates passed over: {"group": n, "duplicate": n}
    seconds: float = 0.0
    files: dict[str, str] = field(default_factory=dict)
    thumbnails: int = 0  # picks the contact sheet shows a thumbnail of (none where the images are not reachable)
    labels: str | None = None  # the --labels CSV laid over the cache
    excluded_labelled: int = 0  # images --exclude names that are labelled already (not in the pool anyway)

    def to_dict(self) -> dict:
        return asdict(self)


def read_paths(list_path: str, paths, root: str | None = None) -> np.ndarray:
    """The rows of ``paths`` (a cache's) that a CSV with a ``path`` column, or a list of one path a line, names:
    a boolean mask; with ``root`` (the cache's folder), files' own paths too (``labels.row_named``). A path not in
    the cache is one line naming the file and line."""
    where: dict[str, int] = {}
    for i, p in enumerate(paths):
        where.setdefault(str(p), i)
        where.setdefault(path_key(str(p)), i)
    named: list[tuple[int, str]] = []
    if list_path.lower().endswith(".csv"):
        rows = csv_rows(list_path)
        header = [h.strip().lower() for h in next(rows, (1, []))[1]]
        if "path" not in header:
            raise InvalidValue(f"{list_path} line 1: the first line must name a 'path' column")
        at = header.index("path")
        for line, row in rows:
            if len(row) > at and row[at].strip():
                named.append((line, row[at].strip()))
    else:
        for n, entry in enumerate(read_text(list_path).splitlines(), start=1):
            if entry.strip() and not entry.lstrip().startswith("#"):
                named.append((n, entry.strip()))
    mask = np.zeros(len(paths), dtype=bool)
    for line, path in named:
        row_at = row_named(where, path, list_path, root, line)
        if row_at is None:
            raise InvalidValue(f"{list_path} line {line}: {path!r} is not in the cache")
        mask[row_at] = True
    return mask


def select(cache, options: SelectOptions | None = None, *, out: str | None = None, **overrides) -> Selection:
    """The ``budget`` images of ``cache`` to label next (see ``select_rules`` for the rules), as ``options`` (a
    ``SelectOptions``; ``overrides``: its fields by name, ``budget=50``) say, and with ``out`` the manifest to fill
    in there (``path,label,reason,score``) and its contact sheet beside it (``.html``)."""
    from .select_rules import choose, prepared

    o = with_overrides(SelectOptions, options, overrides)
    budget, labels, exclude, layer, strategy = o.budget, o.labels, o.exclude, o.layer, o.strategy
    seed, duplicate_cosine = o.seed, o.duplicate_cosine
    started = time.perf_counter()
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
        raise InvalidValue(f"--budget {budget}: give how many images to pick, 1 or more")
    if out:
        from embedder.kernel.destination import check_destination

        if out.lower().endswith(".html"):
            raise InvalidValue(f"-o {out}: give the manifest's .csv path; its contact sheet (.html) goes beside it")
        if special(out):
            raise InvalidValue(
                f"-o {out} is not a regular file: select writes a manifest to fill in, with its contact sheet "
                f"beside it; give a .csv path"
            )
        inputs = [open_cache(cache).path, labels, *exclude]
        check_destination(out, inputs, "-o")
        check_destination(sheet_path(out), inputs, "the contact sheet")
        filled = labels_filled_in(out)
        if filled is None:
            raise InvalidValue(
                f"{out} exists and cannot be told empty of labels (not a UTF-8 CSV with a 'label' column: a "
                f"spreadsheet may have saved it in another encoding or with semicolons): select does not write over "
                f"it; give another -o, or move it away first"
            )
        if filled:
            raise InvalidValue(
                f"{out} has {filled} label(s) filled in already: give another -o (and this one as --labels), or "
                f"move it away first"
            )
    reader = open_cache(cache)
    layer = reader.layer(layer)
    known = labels_of(reader, labels)
    unlabeled = known == ""
    if not unlabeled.any():
        raise InvalidValue(
            f"{reader.path} has no unlabeled images: every one of its {len(known):,} rows is labelled"
            + (f" (with {labels})" if labels else "")
            + "; select picks among unlabeled rows: extract the images as unlabeled, into a cache of their own "
            "(a flat folder, or --layout flat for class folders), and give the labels you have with --labels"
        )
    excluded = np.zeros(len(known), dtype=bool)
    for path in exclude:
        excluded |= read_paths(path, reader.paths, reader.attrs.get("root"))
    sent = (
        (read_paths(labels, reader.paths, reader.attrs.get("root")) & unlabeled & ~excluded)
        if labels
        else np.zeros(len(known), bool)
    )
    excluded |= sent  # named by the labels CSV with an empty label: sent for labelling and left empty
    pool = unlabeled & ~excluded
    if not pool.any():
        raise InvalidValue(
            f"no image left to pick: the {int(unlabeled.sum()):,} unlabeled images of {reader.path} are all excluded"
        )
    if budget > pool.sum():
        raise InvalidValue(
            f"--budget {budget} is more than the {int(pool.sum()):,} unlabeled images left to pick"
            + (f" ({int((unlabeled & excluded).sum()):,} excluded)" if (unlabeled & excluded).any() else "")
        )
    X = prepared(finite(reader.features(layer), reader, np.arange(len(reader)), layer))
    picked = choose(X, known, pool, int(budget), strategy, seed, reader.groups, duplicate_cosine)
    del X
    named = known[~unlabeled]
    classes = {str(c): int(n) for c, n in zip(*np.unique(named.astype(str), return_counts=True))} if len(named) else {}
    selection = Selection(
        cache=reader.path,
        layer=layer,
        rule=picked.rule,
        stage=picked.stage,
        budget=int(budget),
        seed=seed,
        rows=len(known),
        labelled=int((~unlabeled).sum()),
        classes=classes,
        excluded=int((unlabeled & excluded).sum()),
        pool=int(pool.sum()),
        picks=[
            Pick(str(reader.paths[i]), reason, round(float(score), 6))
            for i, reason, score in zip(picked.rows, picked.reasons, picked.scores)
        ],
        notes=picked.notes,
        refused=picked.refused,
        labels=labels,
        excluded_labelled=int((~unlabeled & excluded).sum()),
    )
    if sent.any():
        selection.notes.append(
            f"{int(sent.sum())} image(s) of {labels} have an empty label: left out as sent for labelling already "
            f"(label them, or delete their rows, to have them picked again)"
        )
    if out:
        selection.files = write_selection(selection, out, reader.attrs.get("root"))
    selection.seconds = round(time.perf_counter() - started, 3)
    return selection


def labels_filled_in(path: str) -> int | None:
    """How many rows of the CSV at ``path`` have a label (a manifest someone filled in): 0 when there is no such
    file or it is empty; None when it exists but cannot be told empty of labels (not UTF-8, as a spreadsheet may
    save it; another separator; no ``label`` column; not valid CSV), so that it is never written over."""
    if not os.path.lexists(path):
        return 0
    try:
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            return 0
        rows = csv_rows(path)
        names = [h.strip().lower() for h in next(rows, (1, []))[1]]
        if "label" not in names:
            return None
        at = names.index("label")
        return sum(1 for _, row in rows if len(row) > at and row[at].strip())
    except (OSError, FeaturebankError):
        return None


MANIFEST_HEADER = "path,label,reason,score"  # what write_selection writes first


def _header(path: str) -> str:
    """The first line of a CSV (its header), "" when it cannot be read."""
    try:
        with open(path, encoding="utf-8-sig") as fh:
            return fh.readline().strip()
    except (OSError, UnicodeDecodeError):
        return ""


def sheet_path(out: str) -> str:
    """The contact sheet beside the manifest: ``TO_LABEL.csv`` → ``TO_LABEL.html``."""
    stem, ext = os.path.splitext(out)
    return (stem if ext.lower() == ".csv" else out) + ".html"


def write_selection(selection: Selection, out: str, root: str | None) -> dict[str, str]:
    """The manifest (``path,label,reason,score``, "\\n" line ends, best first) and its contact sheet."""
    with atomic_path(out, named=True) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(MANIFEST_HEADER.split(","))
        for p in selection.picks:
            w.writerow([p.path, "", p.reason, f"{p.score:.6g}"])
    from .selectsheet import write_sheet

    try:
        selection.thumbnails = write_sheet(selection, sheet_path(out), root, out)
        return {"manifest": out, "sheet": sheet_path(out)}
    except KeyboardInterrupt as exc:
        exc.kept = (  # type: ignore[attr-defined]
            f"the manifest {out} was written, its contact sheet not; run the same command again for both"
        )
        raise


def select_text(d: dict) -> list[str]:
    """The lines ``featurebank select`` prints."""
    known = ", ".join(f"{c} {n}" for c, n in d["classes"].items()) or "none"
    lines = [
        f"picked {len(d['picks'])} of {d['pool']:,} unlabeled images of {d['cache']} (layer {d['layer']}) "
        f"by {d['rule']} ({d['stage']}; seed {d['seed']})",
        f"  the cache's {d['rows']:,} rows: {d['labelled']:,} labelled ({known}"
        + (f", with {d['labels']}" if d.get("labels") else "")
        + f"), {d['excluded']:,} excluded"
        + (
            f" ({d['excluded_labelled']:,} more named by --exclude are labelled already)"
            if d.get("excluded_labelled")
            else ""
        ),
    ]
    lines += [f"  {note}" for note in d["notes"]]
    refused = d.get("refused") or {}
    if any(refused.values()):
        lines.append(
            f"  passed over: {refused.get('group', 0)} candidate(s) of a group already picked, "
            f"{refused.get('duplicate', 0)} near-duplicate(s) of a picked or labelled image"
        )
    for n, p in enumerate(d["picks"][:10], start=1):
        lines.append(f"  {n:>3}. {p['path']}  ({p['reason']})")
    if len(d["picks"]) > 10:
        lines.append(f"       … {len(d['picks']) - 10} more in the manifest")
    files = d.get("files") or {}
    if files:
        shown = d.get("thumbnails", 0)
        which = (
            "the picks with thumbnails"
            if shown == len(d["picks"])
            else "the picks; no thumbnails: the sheet says why"
            if not shown
            else f"the picks, {shown} of them with a thumbnail"
        )
        lines.append(f"wrote {files['manifest']} and {files['sheet']} ({which})")
        manifest, labels = files["manifest"], d.get("labels")
        if labels:  # every label in one CSV: this round's rows join the earlier ones
            how = (
                f" (tail -n +2 {shlex.quote(manifest)} >> {shlex.quote(labels)})"
                if _header(labels) == MANIFEST_HEADER
                else " (path,label)"
            )
            lines.append(
                f"next: fill in its label column, add its rows to {labels}{how}, then featurebank select "
                f"{d['cache']} --budget N --labels {labels} -o NEXT.csv (its rows left empty are not picked again)"
            )
        else:  # the CSV that will hold every label starts as this manifest (later rounds: add their rows to it)
            every = os.path.join(os.path.dirname(manifest), "labelled.csv")
            if os.path.basename(manifest) == "labelled.csv":
                start = ""
            elif os.path.exists(every):  # one there already: this round's rows join it, it is not replaced
                start = f", add its rows to {every} (tail -n +2 {shlex.quote(manifest)} >> {shlex.quote(every)})"
            else:
                start = f", start the CSV of every label with it (cp {shlex.quote(manifest)} {shlex.quote(every)})"
            lines.append(
                f"next: fill in its label column{start}, then featurebank select {d['cache']} --budget N "
                f"--labels {every} -o NEXT.csv (its rows left empty are not picked again)"
            )
    return lines


__all__ = ["Pick", "Selection", "read_paths", "select", "select_text", "sheet_path", "write_selection"]
