"""The data of a run: the images embedded once (their frozen features are the probe's input), split into training
and validation, and kept apart from the test images. ``Embedding`` embeds them with ``extract`` into the cache (the
pixel path); ``center_pass.CenterEmbedding`` takes them from the views pass (``--augment views``): both give an
``Embedded``, the rows ``labeled_part`` reads.

Groups (a patient, a camera: the manifest's third column) never straddle two sides: ``--val-split`` keeps each
group on one side (a row without a group is a group of its own), an explicit ``--val`` or ``--test`` that shares a
group with the training data is refused, and so is a ``--test`` that shares an image (same file, or the same bytes
elsewhere) with training or validation.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from embedder.cache.hdf5 import CacheReader
from embedder.cache.hdf5 import own_groups as groups_of_rows
from embedder.job import extract
from embedder.kernel.errors import InvalidValue
from embedder.options import ExtractOptions


@dataclass(frozen=True)
class Part:
    """One side of the data (train, val or test), rows in the cache's order."""

    paths: list[str]  # full paths
    y: np.ndarray  # class indices
    X: np.ndarray  # frozen penultimate features (the probe's input)
    groups: list[str]  # the manifest's group per row, "" for none
    digests: list[str]  # content digests (blake2b-128 of the file's bytes), as the cache records them

    def take(self, index: np.ndarray) -> Part:
        return Part(
            [self.paths[i] for i in index],
            self.y[index],
            self.X[index],
            [self.groups[i] for i in index],
            [self.digests[i] for i in index],
        )

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class Data:
    classes: list[str]
    train: Part
    val: Part
    how: str  # how validation was chosen, for the report
    skipped: list[dict] = field(default_factory=list)  # files without a row, with reasons
    caches: list[str] = field(default_factory=list)
    embed_seconds: float = 0.0  # embedding in this run (0 when the caches were there already)


@dataclass(frozen=True)
class Embedded:
    """The good rows of one embedded input, in the input's order (files that failed left out), as a cache holds
    them: what ``labeled_part`` reads, whichever pass made them."""

    source: str  # the listing's source (``classes:/abs/folder``): names the input in messages
    labels: np.ndarray | None  # class name per row ("" for an unlabelled row); None when no row has one
    paths: list[str]  # full paths
    features: np.ndarray  # the frozen penultimate features, rows x D float32
    groups: list[str]  # the manifest's group per row, "" for none
    digests: list[str]  # content digests, as decoding records them

    @classmethod
    def of_cache(cls, reader: CacheReader) -> Embedded:
        """The cache's rows; a row that is not a number is one line naming its image (``classifiers.data.finite``),
        before the probe's scale step meets it."""
        from classifiers.data import finite

        return cls(
            reader.attrs["source"],
            reader.labels,
            reader.full_paths(),
            finite(reader.features(), reader, np.arange(len(reader)), reader.layer()),
            [str(g) for g in reader.rows["group"]],
            [str(d) for d in reader.rows["digest"]],
        )


class Embedding:
    """``extract`` with the run's settings, remembering the caches, skipped files and seconds it took. ``cache``
    (``--cache``) is DATA's file, as ``extract --cache`` made it: reused when its settings are these; the other
    inputs go to their default caches."""

    def __init__(self, options: ExtractOptions, progress: bool = False, cache: str | None = None):
        self.options, self.progress, self.cache = options, progress, cache
        self.skipped: list[dict] = []
        self.caches: list[str] = []
        self.seconds = 0.0

    def __call__(self, source, part: str) -> Embedded:
        summary = extract(source, self.cache if part == "DATA" else None, self.options, progress=self.progress)
        self.seconds += summary.seconds if summary.embedded else 0.0
        self.skipped += [{"path": f["path"], "reason": f["reason"], "part": part} for f in summary.failed]
        self.caches.append(summary.cache)
        return Embedded.of_cache(CacheReader(summary.cache))


def labeled_part(
    embedded: Embedded, classes: list[str] | None = None, role: str = "validation"
) -> tuple[list[str], Part]:
    """The labelled rows of an embedded input as a Part; ``classes`` (the training classes) must cover its labels."""
    labels = embedded.labels
    if labels is None:
        raise InvalidValue(f"{embedded.source} has no labels: fine-tuning needs class folders or a manifest")
    keep = np.flatnonzero(labels != "")
    classes = classes or sorted(set(labels[keep].tolist()))
    unknown = sorted(set(labels[keep].tolist()) - set(classes))
    if unknown:
        raise InvalidValue(f"{role} classes not in the training data: {', '.join(unknown[:10])}")
    index = {c: i for i, c in enumerate(classes)}
    full = embedded.paths
    return classes, Part(
        [full[i] for i in keep],
        np.array([index[labels[i]] for i in keep], dtype=np.int64),
        embedded.features[keep],
        [embedded.groups[i] for i in keep],
        [embedded.digests[i] for i in keep],
    )


def own_groups(part: Part) -> np.ndarray | None:
    """Groups for splitting: the manifest's, and each ungrouped row a group of its own (as ``CacheReader.groups``);
    None when no row has a group."""
    return groups_of_rows(part.groups, part.paths)


def split_rows(
    y: np.ndarray, groups: np.ndarray | None, val_split: float, seed: int, classes: list[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation row indices, sorted. Without groups: a stratified ``val_split`` share. With groups:
    the first fold of ``StratifiedGroupKFold(round(1 / val_split))`` (0.2: one fold of 5), so that a group is on
    one side only while the classes stay as balanced as the groups allow."""
    from sklearn.model_selection import StratifiedGroupKFold, train_test_split

    if not 0 < val_split < 1:
        raise InvalidValue("--val-split must be between 0 and 1 (or give --val DATA)")
    n_classes = len(classes) if classes else int(y.max()) + 1
    name = (lambda c: repr(classes[c])) if classes else str
    counts = np.bincount(y, minlength=n_classes)
    if counts.min() < 2:
        raise InvalidValue(
            f"class {name(int(counts.argmin()))} has {counts.min()} image(s): a stratified --val-split "
            f"needs at least 2 per class (or give --val DATA)"
        )
    if groups is None:
        n = len(y)
        held = int(np.ceil(val_split * n))  # as train_test_split counts a share
        if held < n_classes or n - held < n_classes:
            side, count = ("holds out", held) if held < n_classes else ("leaves to train on", n - held)
            low, high = np.ceil(100 * n_classes / n) / 100, np.floor(100 * (1 - n_classes / n)) / 100
            raise InvalidValue(  # low <= high: every class has 2 images or more (checked above), so n >= 2 classes
                f"--val-split {val_split:g} of {n} images {side} {count}, fewer than the {n_classes} classes: a "
                f"stratified split needs one of each on both sides; give a --val-split from {low:.2f} to "
                f"{high:.2f}, or --val DATA"
            )
        train, val = train_test_split(np.arange(len(y)), test_size=val_split, stratify=y, random_state=seed)
        return np.sort(train), np.sort(val)
    folds = max(2, round(1 / val_split))
    n_groups = len(set(groups.tolist()))
    if n_groups < folds:
        raise InvalidValue(
            f"{n_groups} groups: a --val-split of {val_split} keeps 1 of {folds} parts of the groups "
            f"apart, so it needs at least {folds} groups (or give --val DATA)"
        )
    train, val = next(StratifiedGroupKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y, groups))
    missing = sorted(set(range(n_classes)) - set(y[train].tolist()))
    if missing:
        raise InvalidValue(
            f"class {name(missing[0])} has all its images in the groups held out for validation: "
            f"add groups to it, or give --val DATA"
        )
    return np.sort(train), np.sort(val)


def shared_groups(a: Part, b: Part) -> list[str]:
    return sorted({g for g in a.groups if g} & {g for g in b.groups if g})


def _refuse_shared_groups(train: Part, other: Part, option: str) -> None:
    shared = shared_groups(train, other)
    if shared:
        raise InvalidValue(
            f"{option} shares {len(shared)} group(s) with DATA (first: {shared[0]!r}): images of "
            f"one group must be on one side only"
        )


def prepare_data(train, val, val_split: float, seed: int, embedding) -> Data:
    """Embed the training (and validation) images once (``embedding``: an ``Embedding``, or the views path's
    ``CenterEmbedding``), then split them."""
    classes, data = labeled_part(embedding(train, "DATA"))
    if len(classes) < 2:
        raise InvalidValue(f"only one class ({classes[0]}): fine-tuning needs at least two")
    if val is not None:
        _, held_out = labeled_part(embedding(val, "--val"), classes)
        _refuse_shared_groups(data, held_out, "--val")
        how = f"--val {val}"
        train_part = data
    else:
        groups = own_groups(data)
        idx_train, idx_val = split_rows(data.y, groups, val_split, seed, classes)
        train_part, held_out = data.take(idx_train), data.take(idx_val)
        how = f"--val-split {val_split:g} of DATA, " + (
            "groups kept on one side (an ungrouped image is a group of its own)" if groups is not None else "stratified"
        )
    return Data(classes, train_part, held_out, how, embedding.skipped, embedding.caches, embedding.seconds)


def check_test_apart(test, data: Data, drop_copies: bool = False) -> list[str]:
    """Before training: refuse a ``--test`` that shares an image with training or validation (the same file, or a
    file with the same bytes) or a group with them. With ``drop_copies``, test files whose bytes equal a training or
    validation image are left out instead (data sets have such copies: flowers' val/ has 2 of train/), and their
    paths returned. Only lists and hashes the test files: nothing of them is embedded, so they cannot influence
    training."""
    from embedder.inputs.decode import file_digest
    from embedder.inputs.sources import list_images

    listing = list_images(test)
    seen = {os.path.realpath(p): "file" for part in (data.train, data.val) for p in part.paths}
    digests = {d for part in (data.train, data.val) for d in part.digests if d}
    groups = {g for part in (data.train, data.val) for g in part.groups if g}
    copies = []
    for item in listing.items:
        full = listing.full_path(item)
        if os.path.realpath(full) in seen:
            raise InvalidValue(
                f"--test {test} holds {item.path}, which is also a training or validation image: "
                f"the test images must be images nothing was trained or selected on"
            )
        if item.group and item.group in groups:
            raise InvalidValue(
                f"--test {test} shares group {item.group!r} ({item.path}) with the training or "
                f"validation images: images of one group must be on one side only"
            )
        if item.error is None and os.path.isfile(full):
            try:
                digest = file_digest(full)
            except OSError:
                continue  # unreadable: it will be skipped and reported when the test images are embedded
            if digest in digests:
                copies.append(item.path)
    if copies and not drop_copies:
        raise InvalidValue(
            f"--test {test} holds {len(copies)} image(s) whose bytes equal a training or validation "
            f"image ({', '.join(copies[:3])}{', ...' if len(copies) > 3 else ''}): the test images "
            f"must be images nothing was trained or selected on; remove them, or give "
            f"--drop-test-copies to leave them out of the test numbers"
        )
    return copies


def embed_test(test, classes: list[str], embedding, data: Data) -> Part:
    """After training: the labelled test images, embedded by ``embedding`` (into their own cache), without those whose bytes equal a
    training or validation image (``check_test_apart`` refused them unless they were to be dropped)."""
    part = labeled_part(embedding(test, "--test"), classes, role="test")[1]
    seen = {d for side in (data.train, data.val) for d in side.digests if d}
    return part.take(np.array([i for i, d in enumerate(part.digests) if d not in seen], dtype=np.int64))
