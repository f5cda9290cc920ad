"""Labelled feature matrices read from a cache, checked once so that every later step can trust them."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embedder.cache import CacheReader
from embedder.errors import FeaturebankError


@dataclass
class Labeled:
    """The labelled rows of a cache: class indices into ``classes``, paths and groups in row order."""

    reader: CacheReader
    rows: np.ndarray  # indices of the labelled rows in the cache
    y: np.ndarray  # class index per row
    classes: list[str]
    paths: np.ndarray
    groups: np.ndarray | None
    unlabeled: int  # rows of the cache without a label, left out

    def features(self, layer: str) -> np.ndarray:
        X = self.reader.features(layer)
        return X if len(self.rows) == len(X) else X[self.rows]

    @property
    def counts(self) -> dict[str, int]:
        return {c: int(n) for c, n in zip(self.classes, np.bincount(self.y, minlength=len(self.classes)))}


def open_cache(cache: str | CacheReader) -> CacheReader:
    return cache if isinstance(cache, CacheReader) else CacheReader(cache)


def check_layers(reader: CacheReader, layers) -> list[str]:
    """The layers asked for (default: all of the cache's), each one present."""
    wanted = list(layers) if layers else list(reader.layers)
    return [reader.layer(layer) for layer in wanted]


def labeled(cache: str | CacheReader) -> Labeled:
    """The labelled rows of a cache; a cache without labels is an error that says how to get them."""
    reader = open_cache(cache)
    labels = reader.labels
    if labels is None:
        raise FeaturebankError(f"{reader.path} has no labels: extract a class-per-folder tree or a CSV manifest "
                               f"with a label column (its input was {reader.attrs['source']})")
    keep = np.flatnonzero(labels != "")
    if len(keep) == 0:
        raise FeaturebankError(f"{reader.path} has no labelled rows")
    names = labels[keep]
    classes = sorted(set(names.tolist()))
    index = {c: i for i, c in enumerate(classes)}
    groups = reader.groups
    return Labeled(reader, keep, np.array([index[c] for c in names], dtype=np.int64), classes,
                   reader.paths[keep], groups[keep] if groups is not None else None, len(labels) - len(keep))
