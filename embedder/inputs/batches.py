"""Images → uint8 batches in input order, decoded while the engine runs on the previous batch.

A file that cannot be decoded does not stop anything: its sample carries the reason, and the batch carries it
on as a failure next to the good images, always with the sample's index, so that no row can ever be matched with
the wrong image (unlike loaders that quietly substitute the next image).

Two ways to decode in parallel with inference:
- threads (``ThreadBatches``; the CPU default, no torch needed): Pillow releases the GIL while it decodes and
  resizes, so threads use every core; on a CPU, decoding and the model share the same cores, and threads let the
  operating system give each the cores the other is not using (the limit is the sum of both works).
- worker processes (``batches(workers=N)``, torch's DataLoader): for GPUs, where decoding is the limit and Python
  work per image matters.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps

from embedder.engines.engine import BATCH_SIZE, cpu_cores
from embedder.kernel.preprocess import Preprocessing

from .decode import DEFAULT_MAX_PIXELS, Decoded, decode_file, to_rgb


@dataclass
class Batch:
    indices: list[int]  # positions in the dataset of the images in `images`, in order
    images: np.ndarray  # uint8 N x 3 x crop x crop
    digests: list[str]
    failures: list[tuple[int, str, str]] = field(default_factory=list)  # (index, reason, digest)
    notes: list[tuple[int, str]] = field(default_factory=list)  # (index, Pillow's warning), good or failed images

    def pin_memory(self) -> Batch:
        """The images in page-locked memory, as a torch tensor: called by the DataLoader's pinning thread
        (``pin_memory=True``), so that the copy to the GPU neither waits for a pinning copy on the main thread
        nor blocks it (``non_blocking``)."""
        import torch

        return Batch(self.indices, torch.from_numpy(self.images).pin_memory(), self.digests, self.failures)


class ImageDataset:
    """File paths or PIL images, decoded and preprocessed to uint8 arrays (a map-style dataset for torch too)."""

    def __init__(self, images, preprocessing: Preprocessing, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.images = list(images)
        self.preprocessing = preprocessing
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.images)

    def decode(self, index: int) -> Decoded:
        """The image at ``index`` (a subclass reads its bytes elsewhere: samples of shards)."""
        source = self.images[index]
        if isinstance(source, Image.Image):  # turned by its EXIF orientation as a file is (a copy: never in place)
            return Decoded(to_rgb(ImageOps.exif_transpose(source)))
        return decode_file(os.fspath(source), self.max_pixels, self.preprocessing.draft_size)

    def __getitem__(self, index: int):
        decoded = self.decode(index)
        if decoded.image is None:
            return index, None, decoded.digest, decoded.reason, decoded.notes
        try:
            return index, self.preprocessing.to_array(decoded.image), decoded.digest, None, decoded.notes
        except Exception as exc:  # e.g. a 1 x 40000 image the resize cannot handle
            return index, None, decoded.digest, f"cannot preprocess ({type(exc).__name__}: {exc})", decoded.notes


def collate(samples) -> Batch:
    good = [s for s in samples if s[1] is not None]
    images = np.stack([s[1] for s in good]) if good else np.empty((0, 3, 0, 0), dtype=np.uint8)
    return Batch(
        indices=[s[0] for s in good],
        images=images,
        digests=[s[2] for s in good],
        failures=[(s[0], s[3], s[2]) for s in samples if s[1] is None],
        notes=[(s[0], note) for s in samples for note in (s[4] if len(s) > 4 else ())],
    )


def default_workers(device_type: str = "cpu") -> int:
    """Decoding processes. A GPU waits for images: one worker per core but the main process's, no cap (on a GPU
    machine decoding is the likely limit, so every core helps: ``benchmarks/gpu.py`` measures it). On a CPU,
    none: decoding threads share the cores with the engine instead (a process per core competed with the model's
    threads: 11 % slower on 2 cores)."""
    cores = cpu_cores()
    if device_type != "cpu":
        return max(1, cores - 1)
    return 0


class ThreadBatches:
    """Batches in dataset order, decoded by ``threads`` threads (default: one per core), up to ``ahead`` batches
    ahead of the consumer (bounded memory). Decoding starts when this is created, so that whatever the caller does
    next (loading the engine) overlaps with it."""

    def __init__(self, dataset: ImageDataset, batch_size: int = BATCH_SIZE, threads: int | None = None, ahead: int = 2):
        self.dataset, self.batch_size = dataset, batch_size
        self.pool = ThreadPoolExecutor(threads or cpu_cores(), thread_name_prefix="featurebank-decode")
        self.pending: deque = deque()
        self.starts = iter(range(0, len(dataset), batch_size))
        for _ in range(ahead + 1):
            self._submit()

    def _submit(self) -> None:
        start = next(self.starts, None)
        if start is not None:
            stop = min(len(self.dataset), start + self.batch_size)
            self.pending.append([self.pool.submit(self.dataset.__getitem__, i) for i in range(start, stop)])

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        if not self.pending:
            self.close()
            raise StopIteration
        try:
            samples = [f.result() for f in self.pending.popleft()]
        except BaseException:
            self.close()
            raise
        self._submit()
        return collate(samples)

    def close(self) -> None:
        for futures in self.pending:
            for f in futures:
                f.cancel()
        self.pending.clear()
        self.pool.shutdown(wait=True)

    def __del__(self):
        self.pool.shutdown(wait=False, cancel_futures=True)


def batches(
    dataset: ImageDataset,
    batch_size: int = BATCH_SIZE,
    workers: int | None = None,
    pin_memory: bool = False,
    device_type: str = "cpu",
    threads: int | None = None,
):
    """Batches in dataset order: decoded by ``workers`` processes (torch's DataLoader), or, with no workers, by
    decoding threads in this process."""
    workers = default_workers(device_type) if workers is None else workers
    if not workers:
        return ThreadBatches(dataset, batch_size, threads)
    from torch.utils.data import DataLoader

    return iter(
        DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=False,
            num_workers=workers,
            collate_fn=collate,
            pin_memory=pin_memory,
            prefetch_factor=4,
            persistent_workers=False,
        )
    )
