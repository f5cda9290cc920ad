"""The contact sheet of ``featurebank select``: the picks, best first, with their thumbnails (made as the cv
report makes them, kept beside the cache for the next sheet), so that whoever labels them sees what they are.
Images that cannot be reached get a placeholder saying why, never a stop."""

from __future__ import annotations

import os

from classifiers.report.html import Thumbs
from embedder import __version__
from embedder.kernel.atomic import atomic_path

from .extras import thumbs_folder


def write_sheet(selection, path: str, root: str | None, manifest: str | None = None) -> int:
    """Write the sheet of ``selection`` (a ``selection.Selection``) to ``path``; thumbnails go to ``thumbs/`` beside
    it. ``root``: the folder the cache's paths are relative to. Returns how many picks have a thumbnail."""
    import jinja2

    unreachable = None
    if not root or not os.path.isdir(root):
        unreachable = (
            f"The images are not reachable from here (the cache names them under {root or 'an unknown folder'}): "
            f"no thumbnails; the paths are as the cache names them."
        )
        root = None
    folder = os.path.dirname(os.path.abspath(path))
    thumbs = Thumbs(folder, root, thumbs_folder(selection.cache) if root else None)
    picks = [
        {"rank": n, "path": p.path, "reason": p.reason, "score": p.score, "thumb": thumbs(p.path)}
        for n, p in enumerate(selection.picks, start=1)
    ]
    known = ", ".join(f"{c} {n}" for c, n in selection.classes.items()) or "none"
    lines = [
        f"{len(picks)} of the {selection.pool:,} unlabeled images of {selection.cache} (layer {selection.layer}), "
        f"picked by {selection.rule} ({selection.stage}, seed {selection.seed}); labelled so far: {known}.",
        f"Fill in the label column of {os.path.basename(manifest) if manifest else 'the manifest'} beside this page "
        "(its rows in this page's order, the most useful to label first); a label left empty keeps the image "
        "unlabeled.",
        *selection.notes,
    ]
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("classifiers", "templates"), autoescape=True, trim_blocks=True, lstrip_blocks=True
    )
    page = env.get_template("select.html.j2").render(
        version=__version__,
        title=f"To label: {len(picks)} images",
        lines=lines,
        unreachable=unreachable,
        picks=picks,
    )
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(page)
    return sum(1 for p in picks if p["thumb"]["src"])


__all__ = ["write_sheet"]
