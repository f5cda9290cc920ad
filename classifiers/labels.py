"""The labels overlay: a ``path,label`` CSV laid over a cache, so that images extracted without labels (a flat
folder) can be labelled later without extracting them again.

The CSV names images as the cache does (its ``paths``: as given to ``extract``, relative to the input's root);
an empty label leaves the image unlabeled. ``labels_of`` is what every command that takes ``--labels`` reads:
the cache's own labels with the CSV's on top, one class name per cache row ("" for unlabeled).
"""

from __future__ import annotations

import csv
import io
import posixpath

import numpy as np

from embedder.cache.hdf5 import CacheReader
from embedder.inputs.sources import read_text
from embedder.kernel.errors import FileProblem, IncompatibleSettings, InvalidValue

from .data import open_cache


def path_key(path: str) -> str:
    """A path as the cache writes it: forward slashes, no ``./`` or doubled slash."""
    path = path.strip().replace("\\", "/")
    return posixpath.normpath(path) if path else path


def read_labels(csv_path: str, paths) -> np.ndarray:
    """One class name per entry of ``paths`` (a cache's ``paths``, in its row order) from the ``path,label`` CSV at
    ``csv_path``; "" where the CSV leaves a row unlabeled or does not name it. The first line must name the
    columns (``path`` and ``label``, any order, other columns ignored). A path not in ``paths``, a path listed
    twice or a row that is not ``path,label`` is one line naming the file and line."""
    paths = [str(p) for p in paths]
    where: dict[str, int] = {}
    for i, p in enumerate(paths):
        where.setdefault(p, i)
        where.setdefault(path_key(p), i)
    out = np.full(len(paths), "", dtype=object)
    reader = csv.reader(io.StringIO(read_text(csv_path), newline=""))
    try:
        header = next(reader, None)
        names = [h.strip().lower() for h in header or []]
        if "path" not in names or "label" not in names:
            raise InvalidValue(
                f"{csv_path} line 1: the first line must name the columns 'path' and 'label' "
                f"(found {','.join(header or []) or 'nothing'})"
            )
        at_path, at_label = names.index("path"), names.index("label")
        seen: dict[int, int] = {}
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue  # a blank line
            if len(row) != len(names):
                raise InvalidValue(
                    f"{csv_path} line {line}: {len(row)} field(s) where the header names {len(names)} "
                    f"(a path or label with a comma must be quoted)"
                )
            path, label = row[at_path].strip(), row[at_label].strip()
            if not path:
                raise InvalidValue(f"{csv_path} line {line}: no path")
            row_at = where.get(path, where.get(path_key(path)))
            if row_at is None:
                raise InvalidValue(
                    f"{csv_path} line {line}: {path} is not in the cache (name images as the cache does, "
                    f"e.g. {paths[0] if paths else 'its paths'}; featurebank info lists where they came from)"
                )
            if row_at in seen:
                raise InvalidValue(f"{csv_path} line {line}: {path} is listed twice (first on line {seen[row_at]})")
            seen[row_at] = line
            out[row_at] = label
    except csv.Error as exc:
        raise FileProblem(f"{csv_path} line {reader.line_num}: not valid CSV ({exc})") from None
    return out


def labels_of(reader: str | CacheReader, labels_csv: str | None = None) -> np.ndarray:
    """The class name of each row of the cache ("" for unlabeled): its own labels, with those of ``labels_csv``
    (``read_labels``) on top. A CSV label that contradicts the cache's own label is one line naming both."""
    reader = open_cache(reader)
    own = reader.labels
    labels = np.full(len(reader), "", dtype=object) if own is None else np.asarray(own, dtype=object).copy()
    if labels_csv is None:
        return labels
    given = read_labels(labels_csv, reader.paths)
    differ = np.flatnonzero((given != "") & (labels != "") & (given != labels))
    if len(differ):
        i = differ[0]
        raise IncompatibleSettings(
            f"{labels_csv} labels {len(differ)} image(s) otherwise than {reader.path} does "
            f"(e.g. {reader.paths[i]}: {given[i]} in the CSV, {labels[i]} in the cache)"
        )
    labels[given != ""] = given[given != ""]
    return labels


__all__ = ["labels_of", "path_key", "read_labels"]
