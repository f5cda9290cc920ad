"""Labelled feature matrices read from a cache, checked once so that every later step can trust them.

Several caches of the same images (other backbones, weights or pooling) are aligned to the first one's rows by
path, so that they share its labels, groups and folds. Features are read one layer at a time and put in that
order in place: a layer is never held twice (a cache with unlabeled rows, or rows in another order, included).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from embedder.cache.hdf5 import CacheReader
from embedder.kernel.errors import IncompatibleSettings, InvalidValue

COMPOSITE = "+"  # "layer3+layer4": the horizontal concatenation of those layers of one cache


@dataclass
class Labeled:
    """The labelled rows of a cache: class indices into ``classes``, paths and groups in row order."""

    reader: CacheReader
    rows: np.ndarray  # the cache row of each labelled row, in this object's order (aligned caches: the first's)
    y: np.ndarray  # class index per row
    classes: list[str]
    paths: np.ndarray
    groups: np.ndarray | None
    unlabeled: int  # rows of the cache without a label, left out
    free: np.ndarray | None = None  # the cache rows without a label (``semi``: they may join the training rows)

    def features(self, layer: str) -> np.ndarray:
        """The rows' features of ``layer`` (``a+b``: those layers side by side), in row order, float32; a row that
        is not all numbers is one line (``finite``)."""
        parts = layer.split(COMPOSITE)
        if len(parts) == 1:
            return finite(take_rows_in_place(self.reader.features(layer), self.rows), self.reader, self.rows, layer)
        out = np.empty((len(self.rows), self.dims(layer)), dtype=np.float32)
        start = 0
        for part in parts:
            X = take_rows_in_place(self.reader.features(part), self.rows)
            out[:, start : start + X.shape[1]] = X
            start += X.shape[1]
            del X  # before the next part is read
        return finite(out, self.reader, self.rows, layer)

    def free_features(self, layer: str, limit: int | None = None) -> np.ndarray:
        """The unlabeled rows' features of ``layer`` (``a+b`` side by side), in cache order, float32; ``limit``: at
        most that many of them, evenly spaced."""
        rows = self.free if self.free is not None else np.empty(0, dtype=np.int64)
        if limit is not None and len(rows) > limit:  # only those read from the file
            rows = np.unique(rows[np.linspace(0, len(rows) - 1, limit).astype(np.int64)])
            X = np.hstack([self.reader.features(part, rows) for part in layer.split(COMPOSITE)]).astype(np.float32)
        else:
            X = np.hstack([self.reader.features(part)[rows] for part in layer.split(COMPOSITE)]).astype(np.float32)
        return finite(X, self.reader, rows, layer)

    def dims(self, layer: str) -> int:
        return sum(self.reader.dims[part] for part in layer.split(COMPOSITE))

    @property
    def counts(self) -> dict[str, int]:
        return {c: int(n) for c, n in zip(self.classes, np.bincount(self.y, minlength=len(self.classes)))}


def take_rows_in_place(X: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``X[rows]`` (distinct rows, any order) without a second copy of X: the rows are moved to the front of X's
    own buffer, then put in order by following the permutation's cycles. Returns a view of X."""
    m = len(rows)
    ordered = np.sort(rows)
    if m < len(X) or (ordered != np.arange(m)).any():
        block = max(1, (1 << 24) // max(1, X.shape[1] * X.itemsize))  # 16 MB at a time
        for start in range(0, m, block):  # ordered[j] >= j: a block never overwrites rows still to be read
            part = ordered[start : start + block]
            X[start : start + len(part)] = X[part]
    X = X[:m]
    position = np.searchsorted(ordered, rows)  # row i of the result is X[position[i]] now
    moved = np.flatnonzero(position != np.arange(m))
    if len(moved):
        done = np.zeros(m, dtype=bool)
        for start in moved.tolist():
            if done[start]:
                continue
            kept, i = X[start].copy(), start
            while True:
                done[i] = True
                j = position[i]
                if j == start:
                    X[i] = kept
                    break
                X[i] = X[j]
                i = j
    return X


def open_cache(cache: str | os.PathLike | CacheReader) -> CacheReader:
    return cache if isinstance(cache, CacheReader) else CacheReader(os.fspath(cache))


def check_layers(reader: CacheReader, layers) -> list[str]:
    """The layers asked for (default: all of the cache's), each one present; ``a+b`` is those layers of the
    cache side by side (each part checked, ``penultimate`` resolved)."""
    wanted = list(layers) if layers else list(reader.layers)
    out = []
    for layer in wanted:
        parts = [reader.layer(part.strip()) for part in layer.split(COMPOSITE)]
        if len(set(parts)) < len(parts):
            raise InvalidValue(f"layer {layer!r} names a layer twice")
        out.append(COMPOSITE.join(parts))
    return list(dict.fromkeys(out))  # "penultimate" and its node's name are one layer


def finite(X: np.ndarray, reader: CacheReader, rows: np.ndarray, layer: str) -> np.ndarray:
    """``X`` (the cache ``rows`` of ``layer``) when every value is a number; else one line naming the first image
    whose vector is not (a backbone whose output overflowed, a damaged file), before a classifier sees it."""
    bad = np.flatnonzero(~np.isfinite(X.sum(axis=1, dtype=np.float64)))
    if len(bad):
        raise InvalidValue(
            f"{reader.path}: {len(bad)} image(s) have NaN or infinite values in layer {layer} (e.g. "
            f"{reader.paths[rows[bad[0]]]}): the backbone's output for them is not a number; check the file "
            f"(featurebank info --verify) and extract those images again, or make the cache without them"
        )
    return X


def labeled(cache: str | CacheReader, labels: np.ndarray | None = None, csv: str | None = None) -> Labeled:
    """The labelled rows of a cache; a cache without labels is an error that says how to get them. ``labels``: a
    class name per cache row ("" for unlabeled) to use instead of the cache's own (``labels.labels_of``), from the
    CSV ``csv`` (named in the error when it labels nothing)."""
    reader = open_cache(cache)
    labels = reader.labels if labels is None else np.asarray(labels, dtype=object)
    if labels is None:
        raise InvalidValue(
            f"{reader.path} has no labels: give --labels LABELLED.csv (path,label; featurebank select writes one "
            f"to fill in), or extract a class-per-folder tree or a CSV manifest with a label column (its input was "
            f"{reader.attrs['source']})"
        )
    keep = np.flatnonzero(labels != "")
    if len(keep) == 0:
        raise InvalidValue(
            f"{reader.path} has no labelled rows"
            + (f": every label of {csv} is empty; fill in the label column of some" if csv else "")
        )
    names = labels[keep]
    classes = sorted(set(names.tolist()))
    index = {c: i for i, c in enumerate(classes)}
    groups = reader.groups
    return Labeled(
        reader,
        keep,
        np.array([index[c] for c in names], dtype=np.int64),
        classes,
        reader.paths[keep],
        groups[keep] if groups is not None else None,
        len(labels) - len(keep),
        np.flatnonzero(labels == ""),
    )


def aligned(first: Labeled, cache: str | CacheReader, labels: np.ndarray | None = None) -> Labeled:
    """Another cache's labelled rows in ``first``'s order (matched by path), with ``first``'s labels and groups.
    Refused in one line, saying what differs, unless both hold the same labelled paths with the same labels (and
    the same file contents, where both recorded a digest)."""
    other = labeled(cache, labels)
    where = {p: i for i, p in enumerate(other.paths.tolist())}
    if len(where) < len(other.paths):
        raise InvalidValue(f"{other.reader.path} has a path in more than one row")
    mine = first.paths.tolist()
    missing = [p for p in mine if p not in where]
    extra = sorted(set(where) - set(mine))
    if missing or extra:
        said = [f"{len(missing)} labelled image(s) only in {first.reader.path} (e.g. {missing[0]})"] if missing else []
        said += [f"{len(extra)} only in {other.reader.path} (e.g. {extra[0]})"] if extra else []
        raise IncompatibleSettings(
            f"the caches do not hold the same labelled images: {'; '.join(said)}; "
            f"extract the same input with each backbone"
        )
    at = np.array([where[p] for p in mine], dtype=np.int64)
    theirs = np.array(other.classes)[other.y[at]]
    ours = np.array(first.classes)[first.y]
    differ = np.flatnonzero(theirs != ours)
    if len(differ):
        i = differ[0]
        raise IncompatibleSettings(
            f"the caches label {len(differ)} image(s) differently (e.g. {mine[i]}: {ours[i]} in "
            f"{first.reader.path}, {theirs[i]} in {other.reader.path})"
        )
    a = first.reader.rows["digest"][first.rows]
    b = other.reader.rows["digest"][other.rows[at]]
    changed = np.flatnonzero((a != "") & (b != "") & (a != b))
    if len(changed):
        raise IncompatibleSettings(
            f"{len(changed)} image(s) changed between the caches (e.g. {mine[changed[0]]}): "
            f"extract them again so that every cache embeds the same files"
        )
    return Labeled(other.reader, other.rows[at], first.y, first.classes, first.paths, first.groups, other.unlabeled)


def backbone_names(readers: list[CacheReader]) -> list[str]:
    """A short unique name per cache for the leaderboard: the backbone, plus the weights, pooling, precision or
    test-time augmentation where two caches share a backbone, else the file's name, else a number."""
    settings = [r.settings for r in readers]
    names = [s["backbone"] for s in settings]
    steps: list[Callable[[int], str]] = [
        (lambda i, key=key, short=short: short(settings[i].get(key)))
        for key, short in (
            ("weights", _short_weights),
            ("pooling", str),
            ("precision", str),
            ("tta", lambda v: f"tta-{v or 'none'}"),
        )
    ]
    steps.append(lambda i: os.path.splitext(os.path.basename(readers[i].path))[0])
    for step in steps:
        for name in set(names):
            same = [i for i, n in enumerate(names) if n == name]
            if len(same) > 1 and len({step(i) for i in same}) > 1:
                for i in same:
                    names[i] = f"{name}/{step(i)}"
    for name in set(names):
        same = [i for i, n in enumerate(names) if n == name]
        for k, i in enumerate(same if len(same) > 1 else []):
            names[i] = f"{name}#{k + 1}"
    return names


def _short_weights(identity) -> str:
    """``ResNet50_Weights.IMAGENET1K_V2`` → ``IMAGENET1K_V2``; ``sha256:0123abcd…`` → ``sha256:0123abcd``;
    ``none:seed=0`` → ``none``."""
    identity = str(identity)
    if identity.startswith("sha256:"):
        return identity[:15]
    if identity.startswith("none:"):
        return "none"
    return identity.rsplit(".", 1)[-1]
