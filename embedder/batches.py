"""Images → uint8 batches, decoded in worker processes while the model runs on the previous batch.

A file that cannot be decoded does not stop anything: its sample carries the reason, and the batch
carries it on as a failure next to the good images, always with the sample's index, so that no row can
ever be matched with the wrong image (unlike loaders that quietly substitute the next image).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from .decode import DEFAULT_MAX_PIXELS, Decoded, decode_file, to_rgb
from .preprocess import Preprocessing


@dataclass
class Batch:
    indices: list[int]  # positions in the dataset of the images in `images`, in order
    images: torch.Tensor  # uint8 N x 3 x crop x crop
    digests: list[str]
    failures: list[tuple[int, str, str]] = field(default_factory=list)  # (index, reason, digest)


class ImageDataset(Dataset):
    """File paths or PIL images, decoded and preprocessed to uint8 tensors."""

    def __init__(self, images, preprocessing: Preprocessing, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.images = list(images)
        self.preprocessing = preprocessing
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        source = self.images[index]
        if isinstance(source, Image.Image):
            decoded = Decoded(to_rgb(source))
        else:
            decoded = decode_file(os.fspath(source), self.max_pixels, self.preprocessing.draft_size)
        if decoded.image is None:
            return index, None, decoded.digest, decoded.reason
        try:
            return index, self.preprocessing.to_uint8(decoded.image), decoded.digest, None
        except Exception as exc:  # e.g. a 1 x 40000 image the resize cannot handle
            return index, None, decoded.digest, f"cannot preprocess ({type(exc).__name__}: {exc})"


def collate(samples) -> Batch:
    good = [s for s in samples if s[1] is not None]
    images = torch.stack([s[1] for s in good]) if good else torch.empty((0, 3, 0, 0), dtype=torch.uint8)
    return Batch(indices=[s[0] for s in good], images=images, digests=[s[2] for s in good],
                 failures=[(s[0], s[3], s[2]) for s in samples if s[1] is None])


def default_workers(device_type: str = "cpu") -> int:
    """Decoding processes. A GPU waits for images: several workers. On a CPU the model already uses every core
    (measured on 2 cores: a worker process made the loop 11 % slower), so only larger machines spare a few."""
    cores = os.cpu_count() or 2
    if device_type != "cpu":
        return max(1, min(8, cores - 1))
    return 0 if cores <= 2 else min(4, cores // 4)


def batches(dataset: ImageDataset, batch_size: int = 32, workers: int | None = None, pin_memory: bool = False,
            device_type: str = "cpu"):
    """Batches in dataset order, decoded by ``workers`` processes (0: in this process)."""
    workers = default_workers(device_type) if workers is None else workers
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate,
                      pin_memory=pin_memory, prefetch_factor=4 if workers else None,
                      persistent_workers=False)
