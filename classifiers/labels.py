"""The labels overlay: a ``path,label`` CSV laid over a cache, so that images extracted without labels (a flat
folder) can be labelled later without extracting them again.

The CSV names images as the cache does (its ``paths``: as given to ``extract``, relative to the input's root);
an empty label leaves the image unlabeled. ``labels_of`` is what every command that takes ``--labels`` reads:
the cache's own labels with the CSV's on top, one class name per cache row ("" for unlabeled).
"""

from __future__ import annotations

import os
import posixpath
import unicodedata
import warnings

import numpy as np

from embedder.cache.hdf5 import CacheReader
from embedder.inputs.sources import csv_rows
from embedder.kernel.errors import IncompatibleSettings, InvalidValue, Note

from .data import open_cache


def path_key(path: str) -> str:
    """A path as the cache writes it: forward slashes, no ``./`` or doubled slash."""
    path = path.strip().replace("\\", "/")
    return posixpath.normpath(path) if path else path


def read_labels(csv_path: str, paths, root: str | None = None) -> np.ndarray:
    """One class name per entry of ``paths`` (a cache's ``paths``, in its row order) from the ``path,label`` CSV at
    ``csv_path``; "" where the CSV leaves a row unlabeled or does not name it. The first line must name the
    columns (``path`` and ``label``, any order, other columns ignored). With ``root`` (the folder the cache's paths
    are relative to), a path may also name the image as a file: absolute, or relative to the CSV's own folder (as
    ``featurebank manifest`` writes them). A path not in ``paths``, a path listed twice or a row that is not
    ``path,label`` is one line naming the file and line."""
    paths = [str(p) for p in paths]
    where: dict[str, int] = {}
    for i, p in enumerate(paths):
        where.setdefault(p, i)
        where.setdefault(path_key(p), i)
    out = np.full(len(paths), "", dtype=object)
    rows = csv_rows(csv_path)
    header = next(rows, (1, []))[1]
    names = [h.strip().lower() for h in header]
    if "path" not in names or "label" not in names:
        raise InvalidValue(
            f"{csv_path} line 1: the first line must name the columns 'path' and 'label' "
            f"(found {','.join(header) or 'nothing'})"
        )
    at_path, at_label = names.index("path"), names.index("label")
    seen: dict[int, int] = {}
    for line, row in rows:
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
        row_at = row_named(where, path, csv_path, root, line)
        if row_at is None:
            raise InvalidValue(
                f"{csv_path} line {line}: {path!r} is not in the cache (name images as the cache does, "
                f"e.g. {paths[0] if paths else 'its paths'}, or by their files' paths; featurebank info lists where "
                "they came from)"
            )
        if row_at in seen:
            raise InvalidValue(f"{csv_path} line {line}: {path} is listed twice (first on line {seen[row_at]})")
        seen[row_at] = line
        out[row_at] = label
    return out


def row_named(where: dict[str, int], path: str, csv_path: str, root: str | None, line: int = 0) -> int | None:
    """The cache row a CSV's ``path`` names (``where``: the cache's paths and their ``path_key``s, to rows): as
    the cache names it, or (with ``root``, the folder the cache's paths are relative to) as a file, absolute or
    relative to the CSV's folder; None when neither. A path that names one image each way (a CSV in a sub-folder
    of the images, naming ``a/1.jpg``) is one line, never a guess."""
    by_name = where.get(path, where.get(path_key(path)))
    by_file = None
    if root is not None:
        as_file = _under(root, os.path.join(os.path.dirname(os.path.abspath(csv_path)), path))
        by_file = None if as_file is None else where.get(as_file, where.get(path_key(as_file)))
    if by_name is not None and by_file is not None and by_name != by_file:
        names = {i: p for p, i in where.items()}
        raise InvalidValue(
            f"{csv_path} line {line}: {path!r} names two images of the cache, {names[by_name]} (as the cache names "
            f"it) and {names[by_file]} (as a file beside the CSV): write the path as the cache names it, or absolute"
        )
    return by_name if by_name is not None else by_file


def _under(root: str, path: str) -> str | None:
    """``path`` (absolute, or as joined) as the cache names it: relative to ``root``, with forward slashes; None
    when it is not under ``root``."""
    for at, of in ((os.path.abspath(path), os.path.abspath(root)), (os.path.realpath(path), os.path.realpath(root))):
        try:
            rel = os.path.relpath(at, of)
        except ValueError:  # another drive (Windows)
            continue
        if rel != os.curdir and rel != os.pardir and not rel.startswith(os.pardir + os.sep):
            return rel.replace(os.sep, "/")
    return None


def labels_of(reader: str | CacheReader, labels_csv: str | None = None) -> np.ndarray:
    """The class name of each row of the cache ("" for unlabeled): its own labels, with those of ``labels_csv``
    (``read_labels``) on top. A CSV label that contradicts the cache's own label is one line naming both."""
    reader = open_cache(reader)
    own = reader.labels
    labels = np.full(len(reader), "", dtype=object) if own is None else np.asarray(own, dtype=object).copy()
    if labels_csv is None:
        return labels
    given = read_labels(labels_csv, reader.paths, reader.attrs.get("root"))
    differ = np.flatnonzero((given != "") & (labels != "") & (given != labels))
    if len(differ):
        i = differ[0]
        raise IncompatibleSettings(
            f"{labels_csv} labels {len(differ)} image(s) otherwise than {reader.path} does "
            f"(e.g. {reader.paths[i]}: {given[i]} in the CSV, {labels[i]} in the cache)"
        )
    labels[given != ""] = given[given != ""]
    _check_names(labels, set(given[given != ""]), labels_csv)
    return labels


def _fold(name: str) -> str:
    """A class name as a typo may hide it: Unicode's composed form, case folded."""
    return unicodedata.normalize("NFC", name).casefold()


def _check_names(labels: np.ndarray, from_csv: set, labels_csv: str) -> None:
    """A class the CSV writes as another class is written (case, Unicode form) is one line; a rare class the CSV
    names one letter from a common one is a ``Note``. Names that only the cache's own labels use are not the CSV's
    doing, and are left alone."""
    counts: dict[str, int] = {}
    for name in labels[labels != ""]:
        counts[name] = counts.get(name, 0) + 1
    by_form: dict[str, str] = {}
    for name in sorted(counts, key=lambda c: -counts[c]):
        other = by_form.setdefault(_fold(name), name)
        if other != name and (name in from_csv or other in from_csv):
            raise InvalidValue(
                f"{labels_csv} gives one class two names, {name!r} ({counts[name]} image(s)) and {other!r} "
                f"({counts[other]}, {'the CSV' if other in from_csv else 'the cache'}'s): class names are compared "
                "exactly; write them one way"
            )
    for rare, common in near_misses(counts):
        if rare in from_csv:
            warnings.warn(
                f"{labels_csv}: class {rare!r} ({counts[rare]} image(s)) is one letter from {common!r} "
                f"({counts[common]}): a misspelling? (class names are compared exactly; if they are two classes, "
                "ignore this)",
                Note,
                stacklevel=3,
            )


RARE = 2  # images at most in a class that may be a misspelling of another with at least SPELLED_OUT times as many
SPELLED_OUT = 3


def near_misses(counts: dict[str, int]) -> list[tuple[str, str]]:
    """Pairs (rare, common) of class names one edit apart (a letter changed, added, dropped or two swapped), the
    rare one with at most ``RARE`` images and the common one with ``SPELLED_OUT`` times as many or more: a typo in
    a labels CSV makes a class of its own. A rare name of 3 letters or fewer is left alone ("car" beside "cat")."""
    out = []
    for rare, n in counts.items():
        if n > RARE or len(rare) <= 3:
            continue
        for common, m in counts.items():
            if m >= SPELLED_OUT * n and common != rare and _one_edit(_fold(rare), _fold(common)):
                out.append((rare, common))
                break
    return out


def _one_edit(a: str, b: str) -> bool:
    """Whether ``a`` becomes ``b`` by one letter changed, added or dropped, or two neighbours swapped."""
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
        return len(diff) == 1 or (
            len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]]
        )
    short, long = (a, b) if len(a) < len(b) else (b, a)
    return any(long[:i] + long[i + 1 :] == short for i in range(len(long)))


__all__ = ["labels_of", "near_misses", "path_key", "read_labels"]
