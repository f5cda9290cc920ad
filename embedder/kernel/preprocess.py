"""The preprocessing a backbone expects, as a value that is recorded in the cache.

Images stay uint8 until they are batched (4 times less to move between threads or processes); the engine then
does what ``weights.transforms()`` does to a float tensor (normalization is inside an exported ONNX graph, or
``normalize`` for torch). ``to_array`` is Pillow and NumPy only (no torch import, so a run whose engine is ready
never waits for torch) and gives exactly the pixels of torchvision's ``ImageClassification`` preset (tested).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from .errors import InvalidValue

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's InterpolationMode values → Pillow's resampling filters (Image.Resampling: NEAREST 0, LANCZOS 1,
# BILINEAR 2, BICUBIC 3, BOX 4, HAMMING 5), as torchvision.transforms.functional maps them
PIL_FILTERS = {"nearest": 0, "nearest-exact": 0, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5, "lanczos": 1}
# The largest resize and crop: a 4096 x 4096 crop is 50 MB of uint8 and 200 MB of float32 an image, already more
# than any backbone is trained for (timm's largest inputs are about 1,000 px); 100,000 asked for 30 GB an image.
MAX_SIDE = 4096


def rgb(values) -> tuple[float, float, float]:
    """A value per channel (a mean or a standard deviation): three numbers, else a ValueError."""
    r, g, b = (float(v) for v in values)
    return r, g, b


@dataclass(frozen=True)
class Preprocessing:
    resize: int = 256  # shorter side, before the crop
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    draft: bool = True  # JPEG decoded at a reduced scale when it is at least twice `resize`
    crop_mode: str = "center"  # timm's "squash": both sides resized to `resize` (aspect not kept), then the crop

    def __post_init__(self):
        """Checked wherever it comes from (a model file, a cache, a checkpoint, an option): a crafted size would
        allocate without bound, a std of 0 divides by zero."""
        for name in ("resize", "crop"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or not 1 <= value <= MAX_SIDE:
                raise InvalidValue(f"{name} {value!r} is not a whole number of pixels from 1 to {MAX_SIDE}")
            object.__setattr__(self, name, int(value))  # numpy's integers too, as plain ones (JSON, hashing)
        for name in ("mean", "std"):
            value = getattr(self, name)
            ok = isinstance(value, (tuple, list, np.ndarray)) and len(value) == 3
            ok = ok and all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in value)
            if not ok or (name == "std" and any(v <= 0 for v in value)):
                above = " above 0" if name == "std" else ""
                raise InvalidValue(f"{name} {value!r} is not three finite numbers{above}, one per channel")
            if not isinstance(value, tuple) or any(isinstance(v, np.generic) for v in value):  # numpy's as Python's
                object.__setattr__(self, name, tuple(v.item() if isinstance(v, np.generic) else v for v in value))
        if self.interpolation not in PIL_FILTERS:
            raise InvalidValue(f"interpolation {self.interpolation!r} is not one of {', '.join(PIL_FILTERS)}")
        if self.crop_mode not in ("center", "squash"):
            raise InvalidValue(f"crop_mode {self.crop_mode!r} is not center or squash")

    @classmethod
    def from_transforms(cls, transforms) -> Preprocessing:
        """Read a torchvision ``ImageClassification`` preset (``weights.transforms()``)."""
        mode = transforms.interpolation
        return cls(
            resize=int(transforms.resize_size[0]),
            crop=int(transforms.crop_size[0]),
            mean=rgb(transforms.mean),
            std=rgb(transforms.std),
            interpolation=str(getattr(mode, "value", mode)),
        )

    def overridden(
        self, resize: int | None = None, crop: int | None = None, draft: bool | None = None
    ) -> Preprocessing:
        changes: dict[str, Any] = {
            k: v for k, v in (("resize", resize), ("crop", crop), ("draft", draft)) if v is not None
        }
        return replace(self, **changes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        if self.crop_mode == "center":  # added after format 1: recorded only when it is not the default
            del d["crop_mode"]
        return d

    @property
    def draft_size(self) -> int | None:
        return self.resize if self.draft else None

    def to_array(self, image) -> np.ndarray:
        """Resize the shorter side, center-crop (zero padding where the image is smaller than the crop, as
        torchvision does): a ``3 x crop x crop`` uint8 array."""
        w, h = image.size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = self.resize, int(self.resize * long / short)
        size = (new_short, new_long) if w <= h else (new_long, new_short)
        if self.crop_mode == "squash":
            size = (self.resize, self.resize)
        if size != (w, h):
            image = image.resize(size, PIL_FILTERS[self.interpolation])
        w, h = size
        c = self.crop
        if c > w or c > h:  # torchvision pads (left/top get the smaller half), then crops
            from PIL import Image

            padded = Image.new(image.mode, (max(w, c), max(h, c)))
            padded.paste(image, ((c - w) // 2 if c > w else 0, (c - h) // 2 if c > h else 0))
            image, (w, h) = padded, padded.size
        top, left = int(round((h - c) / 2.0)), int(round((w - c) / 2.0))
        if (w, h) != (c, c):
            image = image.crop((left, top, left + c, top + c))
        return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))

    def to_uint8(self, image):
        """``to_array`` as a torch tensor (for training code that works in torch)."""
        import torch

        return torch.from_numpy(self.to_array(image))

    def normalize(self, batch):
        """uint8 ``N x 3 x H x W`` torch tensor (on any device) → normalized float32."""
        import torch

        mean = torch.tensor(self.mean, device=batch.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=batch.device).view(1, 3, 1, 1)
        return (batch.float() / 255.0 - mean) / std
