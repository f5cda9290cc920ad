"""The preprocessing a backbone expects, as a value that is recorded in the cache.

Images stay uint8 until they are batched (4 times less to move between processes); ``normalize`` then does
what ``weights.transforms()`` does to a float tensor. ``to_uint8`` followed by ``normalize`` gives exactly the
tensor torchvision's ``ImageClassification`` preset gives for the same PIL image.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    resize: int = 256  # shorter side, before the crop
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    draft: bool = True  # JPEG decoded at a reduced scale when it is at least twice `resize`

    @classmethod
    def from_transforms(cls, transforms) -> "Preprocessing":
        """Read a torchvision ``ImageClassification`` preset (``weights.transforms()``)."""
        return cls(resize=int(transforms.resize_size[0]), crop=int(transforms.crop_size[0]),
                   mean=tuple(float(v) for v in transforms.mean), std=tuple(float(v) for v in transforms.std),
                   interpolation=InterpolationMode(transforms.interpolation).value)

    def overridden(self, resize: int | None = None, crop: int | None = None, draft: bool | None = None) -> "Preprocessing":
        changes = {k: v for k, v in (("resize", resize), ("crop", crop), ("draft", draft)) if v is not None}
        return replace(self, **changes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @property
    def draft_size(self) -> int | None:
        return self.resize if self.draft else None

    def to_uint8(self, image: Image.Image) -> torch.Tensor:
        """Resize the shorter side, center-crop: a ``3 x crop x crop`` uint8 tensor."""
        image = TF.resize(image, [self.resize], interpolation=InterpolationMode(self.interpolation), antialias=True)
        image = TF.center_crop(image, [self.crop])
        return TF.pil_to_tensor(image)

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 ``N x 3 x H x W`` (on any device) → normalized float32."""
        mean = torch.tensor(self.mean, device=batch.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=batch.device).view(1, 3, 1, 1)
        return (batch.float() / 255.0 - mean) / std
