"""``featurebank manifest FOLDER -o FILE.csv``: the CSV manifest (``path,label``) of a class-per-folder tree, so that
the label-correction loop (``cv`` → ``relabel`` → ``extract``) works from the folder a user starts with.

The manifest lists the images ``extract`` lists, in its order, with the same labels; paths are relative to the
manifest's own folder (as every manifest's are). The cache extracted from the folder takes it as the same input
(``sources.same_files``): extracting it into that cache embeds nothing, and a corrected copy changes only labels.
"""

from __future__ import annotations

import csv
import os

from embedder.kernel.atomic import atomic_path
from embedder.kernel.destination import check_destination
from embedder.kernel.errors import FileProblem, InvalidValue

from .sources import list_folder


def write_manifest(folder: str, out: str, layout: str = "auto") -> dict:
    """Write the manifest of ``folder`` to ``out``; returns what was written: ``rows``, ``classes`` (name → count),
    and ``left_out``, the images ``extract`` would skip for a reason found while listing (a folder link that
    leaves its class, a link that loops, a name that is not UTF-8), with that reason."""
    if not os.path.isdir(folder):
        raise FileProblem(f"{folder} is not a folder: give the folder of class folders to write a manifest of")
    check_destination(out, [], "the manifest")
    listing = list_folder(folder, layout)
    base = os.path.dirname(os.path.abspath(out))
    rows: list[tuple[str, str]] = []
    left_out: list[dict[str, str]] = []
    classes: dict[str, int] = {}
    for item in listing.items:
        if item.error:
            left_out.append({"path": item.path, "reason": item.error})
            continue
        path = os.path.relpath(listing.full_path(item), base).replace(os.sep, "/")
        try:
            (path + item.label).encode("utf-8")
        except UnicodeEncodeError:
            left_out.append({"path": item.path, "reason": "its name is not UTF-8, which a manifest cannot hold"})
            continue
        rows.append((path, item.label))
        classes[item.label] = classes.get(item.label, 0) + 1
    if not rows:
        raise InvalidValue(f"no images in {folder}: nothing to write")
    try:
        with atomic_path(out, named=True) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(["path", "label"])
            w.writerows(rows)
    except OSError as exc:
        raise FileProblem(f"cannot write the manifest {out}: {exc.strerror or exc}") from None
    return {
        "manifest": out,
        "folder": listing.root,
        "layout": listing.kind,
        "rows": len(rows),
        "classes": dict(sorted(classes.items())),
        "left_out": left_out,
    }


def manifest_text(d: dict) -> list[str]:
    """``manifest``'s answer for a person."""
    named = ", ".join(f"{c or '(unlabeled)'} {n}" for c, n in d["classes"].items())
    lines = [f"wrote {d['manifest']}: {d['rows']} images of {d['folder']} ({d['layout']}), {named}"]
    if d["left_out"]:
        lines.append(
            f"  {len(d['left_out'])} left out: " + "; ".join(f"{x['path']}: {x['reason']}" for x in d["left_out"][:5])
        )
    return lines


__all__ = ["manifest_text", "write_manifest"]
