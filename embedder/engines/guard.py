"""Running an engine on a batch without losing the run to the device: out-of-memory halves the batch.

A batch that does not fit (CUDA, MPS or host memory) is split in halves, then quarters, until it does; the
smaller size is kept for the rest of the run. Rows are only taken from pieces that succeeded, in order, so none
is lost or written twice. Any other failure is reported as what it is (a CUDA error as a CUDA error, with what
to do), never as a settings problem. Errors are recognized by type name and message, so no torch is imported.
"""

from __future__ import annotations

import sys

import numpy as np

from embedder.kernel.errors import FeaturebankError, first_line

OOM_TYPES = {"OutOfMemoryError", "MemoryError"}
OOM_TEXT = (
    "out of memory",
    "failed to allocate memory",
    "bad_alloc",
    "not enough memory",
)  # the last: torch's CPU allocator
CUDA_TYPES = {"AcceleratorError", "CudaError"}
CUDA_TEXT = (
    "cuda error",
    "cublas_status",
    "cudnn_status",
    "cudnn error",
    "device-side assert",
    "nccl error",
    "cuda driver",
    "an illegal memory access",
)


def is_out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return type(exc).__name__ in OOM_TYPES or any(t in text for t in OOM_TEXT)


def is_cuda_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return type(exc).__name__ in CUDA_TYPES or any(t in text for t in CUDA_TEXT)


def release_cached_memory() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


class BatchRunner:
    """Calls ``engine`` on a uint8 batch, in pieces of at most ``chunk`` images once memory ran out."""

    def __init__(self, engine, say=None):
        self.engine = engine
        self.chunk: int | None = None  # None: whole batches
        self.halvings = 0
        self._say = say or (lambda text: sys.stderr.write(f"featurebank: {text}\n"))

    def __call__(self, images) -> dict[str, np.ndarray]:
        n = len(images)
        pieces: list[dict[str, np.ndarray]] = []
        start = 0
        while start < n:
            size = min(self.chunk or n, n - start)
            try:
                out = self.engine(images[start : start + size])
            except FeaturebankError:
                raise
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise engine_failed(exc, self.engine, size) from None
                if size == 1:
                    raise FeaturebankError(
                        f"out of memory on a single image ({first_line(exc)}); free the device "
                        f"or use a smaller --crop; the batches before it are saved"
                    ) from None
                release_cached_memory()
                self.chunk = max(1, size // 2)
                self.halvings += 1
                self._say(f"out of memory on a batch of {size}: continuing with batches of {self.chunk}")
                continue
            pieces.append(out)
            start += size
        if len(pieces) == 1:
            return pieces[0]
        return {layer: np.concatenate([p[layer] for p in pieces]) for layer in pieces[0]}


def engine_failed(exc: BaseException, engine, size: int) -> FeaturebankError:
    name = getattr(engine, "name", "engine")
    device = getattr(engine, "device", "cpu")
    if is_cuda_error(exc):
        return FeaturebankError(
            f"CUDA error on {device} ({type(exc).__name__}: {first_line(exc)}); the batches "
            f"before it are saved: run the same command again to continue (CUDA_LAUNCH_BLOCKING=1 "
            f"locates the failing operation)"
        )
    return FeaturebankError(
        f"the {name} engine failed on a batch of {size} image(s) ({type(exc).__name__}: "
        f"{first_line(exc)}); the batches before it are saved"
    )
