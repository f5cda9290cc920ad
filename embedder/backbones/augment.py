"""Training-time augmentation, shaped like ``Preprocessing`` (``draft_size``, ``to_uint8``) so that the same
decoding dataset and batches serve training: random resized crop and flip by default, TrivialAugment on request.
Evaluation never augments; it uses the weights' own preprocessing."""

from __future__ import annotations

from dataclasses import dataclass

import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode, v2

from embedder.kernel.errors import InvalidValue
from embedder.kernel.preprocess import Preprocessing
from embedder.kernel.settings import AUGMENTATIONS

POLICIES = AUGMENTATIONS


@dataclass(frozen=True)
class Augmentation:
    preprocessing: Preprocessing  # the evaluation preprocessing: crop size, interpolation, draft
    policy: str = "flip"

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise InvalidValue(f"unknown augmentation {self.policy!r}: choose one of {', '.join(POLICIES)}")

    @property
    def draft_size(self) -> int | None:
        return self.preprocessing.draft_size

    def to_array(self, image: Image.Image):
        """``to_uint8`` as a numpy array (what the decoding dataset stacks into batches)."""
        return self.to_uint8(image).numpy()

    def to_uint8(self, image: Image.Image):
        """A random ``3 x crop x crop`` uint8 view of the image (torch's global RNG: seeded per epoch)."""
        if self.policy == "none":
            return self.preprocessing.to_uint8(image)
        mode = InterpolationMode(self.preprocessing.interpolation)
        steps = [
            v2.RandomResizedCrop(self.preprocessing.crop, interpolation=mode, antialias=True),
            v2.RandomHorizontalFlip(),
        ]
        if self.policy == "trivial":
            steps.append(v2.TrivialAugmentWide(interpolation=mode))
        return TF.pil_to_tensor(v2.Compose(steps)(image))
