"""The fixed views of ``--augment views``: ``center`` (the weights' preprocessing), ``flip`` (its mirror) and
``crops:N`` (N fixed crops of 25-100 % of the image, every other one mirrored). Each view is a name whose pixels
never change (crop ``i`` is the same box whatever N is), so the frozen trunk's output for it can be cached under
that name. Needs no torch (the command line checks ``--views`` with ``parse_views``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embedder.kernel.errors import InvalidValue
from embedder.kernel.preprocess import PIL_FILTERS, Preprocessing

VIEWS_VERSION = 1  # the geometry of the views; part of the trunk store's key
DEFAULT_VIEWS = "center,flip,crops:2"
MAX_CROPS = 64
CROP_AREA = (0.25, 1.0)  # share of the image's area a crop covers
CROP_RATIO = (3 / 4, 4 / 3)


def parse_views(spec: str) -> tuple[str, ...]:
    """``"center,flip,crops:4"`` → ``("center", "flip", "crop0", "crop1", "crop2", "crop3")``."""
    names: list[str] = []
    for item in (p.strip() for p in str(spec).split(",")):
        if item in ("center", "flip"):
            new = [item]
        elif item.startswith("crops:") and item[6:].isdigit() and 1 <= int(item[6:]) <= MAX_CROPS:
            new = [f"crop{i}" for i in range(int(item[6:]))]
        else:
            raise InvalidValue(f"--views {spec!r}: {item!r} is not center, flip or crops:N (N from 1 to {MAX_CROPS})")
        names += [n for n in new if n not in names]
    return tuple(names)


def views_option(spec: str) -> str:
    """``--views`` as the command line reads it: checked, kept as written (it is recorded in the checkpoints)."""
    parse_views(spec)
    return spec


def crop_box(i: int) -> tuple[float, float, float, float, bool]:
    """Crop ``i``: ``(left, top, right, bottom)`` as fractions of the image, and whether it is mirrored. Drawn
    from a generator seeded by ``i`` alone, like ``RandomResizedCrop`` with scale 0.25-1."""
    rng = np.random.default_rng([VIEWS_VERSION, i])
    area = rng.uniform(*CROP_AREA)
    ratio = float(np.exp(rng.uniform(np.log(CROP_RATIO[0]), np.log(CROP_RATIO[1]))))
    w, h = min(1.0, np.sqrt(area * ratio)), min(1.0, np.sqrt(area / ratio))
    left, top = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
    return float(left), float(top), float(left + w), float(top + h), i % 2 == 1


@dataclass(frozen=True)
class ViewsTransform:
    """Shaped like ``Preprocessing`` for the decoding dataset: one decoded image → ``V x 3 x crop x crop`` uint8."""

    preprocessing: Preprocessing
    views: tuple[str, ...]

    @property
    def draft_size(self) -> int | None:
        return self.preprocessing.draft_size

    def view(self, image, name: str) -> np.ndarray:
        prep = self.preprocessing
        if name == "center":
            return prep.to_array(image)
        if name == "flip":
            return np.ascontiguousarray(prep.to_array(image)[:, :, ::-1])
        left, top, right, bottom, mirrored = crop_box(int(name[4:]))
        w, h = image.size
        out = image.resize(
            (prep.crop, prep.crop), PIL_FILTERS[prep.interpolation], box=(left * w, top * h, right * w, bottom * h)
        )
        arr = np.asarray(out, dtype=np.uint8).transpose(2, 0, 1)
        return np.ascontiguousarray(arr[:, :, ::-1] if mirrored else arr)

    def to_array(self, image) -> np.ndarray:
        return np.stack([self.view(image, v) for v in self.views])
