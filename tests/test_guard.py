"""Device failures: out-of-memory halves the batch without losing or duplicating a row; other errors say what they are.

No GPU is needed: fake engines raise torch's own exception types with CUDA's messages."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import FAST

import embedder
from embedder.cache.hdf5 import CacheReader
from embedder.engines.guard import BatchRunner
from embedder.kernel.errors import FeaturebankError


class Engine:
    """Row i of the output is i's pixel sum: any lost, repeated or reordered row shows."""

    name = "torch"
    device = "cuda:0"

    def __init__(self, fits: int = 10**9, error=None):
        self.fits, self.error, self.calls = fits, error, []

    def __call__(self, images):
        self.calls.append(len(images))
        if self.error is not None:
            raise self.error
        if len(images) > self.fits:
            raise torch.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate {len(images) * 98} MiB (GPU 0; 79.10 GiB total capacity)"
            )
        x = np.asarray(images, dtype=np.float32)
        return {"a": x.reshape(len(x), -1).sum(1, keepdims=True), "b": x[:, :1, 0, 0]}


def batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, 4, 4), dtype=np.uint8)


def test_out_of_memory_halves_until_it_fits_and_keeps_every_row_in_order():
    said = []
    engine = Engine(fits=3)
    runner = BatchRunner(engine, say=said.append)
    images = batch(13)
    out = runner(images)
    expected = Engine()(images)
    for layer in ("a", "b"):
        np.testing.assert_array_equal(out[layer], expected[layer])
    assert runner.chunk == 3 and runner.halvings == 2  # 13 → 6 → 3
    assert engine.calls == [13, 6, 3, 3, 3, 3, 1]  # each image ran once in a piece that succeeded
    assert said == [
        "out of memory on a batch of 13: continuing with batches of 6",
        "out of memory on a batch of 6: continuing with batches of 3",
    ]
    engine.calls.clear()
    np.testing.assert_array_equal(runner(batch(7, 1))["a"], Engine()(batch(7, 1))["a"])
    assert engine.calls == [3, 3, 1]  # the size that fits is kept: no failed attempt per batch


def test_out_of_memory_on_one_image_is_one_line():
    with pytest.raises(FeaturebankError, match=r"^out of memory on a single image \(CUDA out of memory"):
        BatchRunner(Engine(fits=0), say=lambda s: None)(batch(4))


@pytest.mark.parametrize(
    "error, expected",
    [
        (
            torch.AcceleratorError("CUDA error: an illegal memory access was encountered"),
            r"^CUDA error on cuda:0 \(AcceleratorError: CUDA error: an illegal memory access was encountered\); the "
            r"batches before it are saved",
        ),
        (
            RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED"),
            r"^CUDA error on cuda:0 \(RuntimeError: cuDNN error",
        ),
        (
            RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 5x6)"),
            r"^the torch engine failed on a batch of 4 image\(s\) \(RuntimeError: mat1 and mat2 shapes",
        ),
    ],
)
def test_other_errors_are_reported_as_what_they_are(error, expected):
    with pytest.raises(FeaturebankError, match=expected) as info:
        BatchRunner(Engine(error=error))(batch(4))
    assert "cannot run on" not in str(info.value)  # not mistaken for a settings problem


def test_an_extract_run_that_runs_out_of_memory_writes_the_same_rows(tree, tmp_path, monkeypatch, capfd):
    """End to end: the real engine wrapped so that batches over 2 images fail as CUDA does."""
    from embedder import job

    root, paths = tree
    normal = embedder.extract(str(root), str(tmp_path / "normal.h5"), engine="torch", **FAST)
    real_open = job.open_engine

    def small_memory(*args, **kwargs):
        engine = real_open(*args, **kwargs)

        def call(images):
            if len(images) > 2:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return engine(images)

        wrapped = type(
            "Small",
            (),
            {
                "name": "torch",
                "device": "cuda:0",
                "__call__": lambda self, x: call(x),
                "describe": lambda self: engine.describe(),
            },
        )()
        return wrapped

    monkeypatch.setattr(job, "open_engine", small_memory)
    squeezed = embedder.extract(str(root), str(tmp_path / "squeezed.h5"), engine="torch", **FAST)
    assert "continuing with batches of 2" in capfd.readouterr().err
    X, _, p = embedder.load(squeezed.cache)
    X0, _, p0 = embedder.load(normal.cache)
    assert list(p) == list(p0) == paths and len(set(p)) == len(p)
    np.testing.assert_allclose(X, X0, rtol=1e-5, atol=1e-6)  # other batch sizes: float rounding only
    assert CacheReader(squeezed.cache).info["runs"][-1]["embedded"] == 9
