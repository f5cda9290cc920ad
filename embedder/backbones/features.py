"""Batches → chosen layers → one pooled float32 vector per image and layer (device, precision).

The same code serves the cache (``embedder.job``) and the scikit-learn transformer (``Embedder``), so a
vector in the cache is exactly what ``Embedder.transform`` returns for the same image.
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import torch
from torch import nn

from embedder.backbones.registry import feature_body, layer_shapes, tokens
from embedder.kernel.errors import InvalidValue
from embedder.kernel.preprocess import Preprocessing
from embedder.kernel.settings import POOLINGS, TORCH_PRECISIONS, TTAS


def pool(t: torch.Tensor, pooling: str = "avg", tokens: tuple[int, bool] = (0, False)) -> torch.Tensor:
    """N x C x H x W maps are pooled over H, W; N x T x D token sequences over T; N x D is kept.

    ``tokens``: (prefix tokens, whether the first is a class token) of the model's sequences (timm's
    ``num_prefix_tokens``): prefix tokens (class, registers) never enter ``avg``/``max``; ``cls`` is the class
    token, ``cls+avg`` the class token and the average of the patch tokens, concatenated (DINOv2's probe)."""
    if t.ndim == 2:
        return t
    if t.ndim not in (3, 4):
        raise InvalidValue(f"cannot pool a {t.ndim}-D output of shape {tuple(t.shape)}")
    check_pooling(t.ndim, pooling, tokens)
    if t.ndim == 3:
        prefix, _ = tokens
        if pooling == "cls":
            return t[:, 0]
        if pooling == "cls+avg":
            return torch.cat([t[:, 0], t[:, prefix:].mean(1)], dim=1)
        if prefix:
            t = t[:, prefix:]
    dims = (2, 3) if t.ndim == 4 else (1,)
    if pooling == "avg":
        return t.mean(dims)
    if pooling == "max":
        return t.amax(dims)
    if pooling == "avgmax":
        return torch.cat([t.mean(dims), t.amax(dims)], dim=1)
    raise InvalidValue(f"unknown pooling {pooling!r}: choose one of {', '.join(POOLINGS)}")


def check_pooling(ndim: int, pooling: str, tokens: tuple[int, bool]) -> None:
    """``cls`` and ``cls+avg`` take token sequences of a model with a class token."""
    if pooling in ("cls", "cls+avg"):
        if ndim == 4:
            raise InvalidValue(
                f"--pooling {pooling} takes token layers (N x T x D), not feature maps: use avg, max or avgmax"
            )
        if ndim == 3 and not tokens[1]:
            raise InvalidValue(f"--pooling {pooling}: this model's tokens have no class token (use avg)")


def pooled_dim(shape: tuple[int, ...], pooling: str = "avg", tokens: tuple[int, bool] = (0, False)) -> int:
    """Size of the vector :func:`pool` makes of an output of ``shape`` (without the batch dimension)."""
    if len(shape) in (2, 3):
        check_pooling(len(shape) + 1, pooling, tokens)
    dim = shape[0] if len(shape) in (1, 3) else shape[-1]
    if pooling == "cls" or len(shape) <= 1:
        return dim
    return dim * 2 if pooling in ("avgmax", "cls+avg") else dim


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InvalidValue(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidValue(f"device {device} asked for, but torch sees no CUDA GPU")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InvalidValue(f"device {device} asked for, but torch sees {torch.cuda.device_count()} GPU(s)")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InvalidValue("device mps asked for, but it is not available")
    return dev


class FeatureExtractor(nn.Module):
    """A frozen backbone that returns ``{layer: pooled N x D float32}`` for the chosen node names.

    ``tta="flip"``: the batch and its left-right mirror go through the backbone as one batch of 2N, and each
    layer's pooled vector is the mean of the image's and its mirror's. Both engines (torch, and ONNX Runtime,
    which exports this module) compute it here, so their rows agree and int8 calibrates on what it runs."""

    def __init__(self, model: nn.Module, layers: list[str], pooling: str = "avg", tta: str = "none"):
        super().__init__()
        if tta not in TTAS:
            raise InvalidValue(f"unknown test-time augmentation {tta!r}: choose one of {', '.join(TTAS)}")
        if pooling not in POOLINGS:
            raise InvalidValue(f"unknown pooling {pooling!r}: choose one of {', '.join(POOLINGS)}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.body = feature_body(model.eval(), list(layers))
        self.tokens = tokens(model)
        self.layers = list(layers)
        self.pooling = pooling
        self.tta = tta
        self.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.tta == "flip":
            outputs = self.body(torch.cat([x, x.flip(3)]))
            return {
                layer: _mean_of_halves(pool(outputs[layer], self.pooling, self.tokens).float()) for layer in self.layers
            }
        outputs = self.body(x)
        return {layer: pool(outputs[layer], self.pooling, self.tokens).float() for layer in self.layers}


def _mean_of_halves(v: torch.Tensor) -> torch.Tensor:
    """``2N x D`` (the images, then their mirrors) → ``N x D``: one ReduceMean in the ONNX graph, after which
    int8's fp32 tail search walks on to the last convolution. The width is a constant (``int``), so that the
    exported graph's outputs keep a static width, as without tta."""
    return v.reshape(2, -1, int(v.shape[1])).mean(0)


def autocast_for(device: torch.device, precision: str):
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    if precision == "int8":
        raise InvalidValue("int8 runs on the onnxruntime engine, not in torch: use --engine onnxruntime (or auto)")
    if precision not in TORCH_PRECISIONS:
        raise InvalidValue(f"unknown precision {precision!r}: choose one of {', '.join(TORCH_PRECISIONS)}")
    if precision == "fp16" and device.type == "cpu":
        raise InvalidValue("fp16 needs a GPU; on the CPU use fp32 (or bf16, which is emulated and slow here)")
    return torch.autocast(device.type, dtype=torch.float16 if precision == "fp16" else torch.bfloat16)


@contextlib.contextmanager
def tf32_off(device: torch.device, precision: str = "fp32"):
    """fp32 on a CUDA GPU computed in true fp32: cuDNN convolutions (and, if someone allowed it, matrix products)
    otherwise run in TF32 by default on Ampere and later, whose 10-bit mantissa moves vectors by about 1e-3, so
    that rows would depend on the GPU. Restores the flags afterwards; does nothing on other devices and precisions.
    Uses torch's ``fp32_precision`` API where it exists (mixing it with ``allow_tf32`` is an error there)."""
    if device.type != "cuda" or precision != "fp32":
        yield
        return
    backends = torch.backends
    new_api = hasattr(getattr(backends.cudnn, "conv", None), "fp32_precision") and hasattr(
        backends.cuda.matmul, "fp32_precision"
    )
    places: list[tuple[object, str, str | bool]]
    if new_api:
        places = [(backends.cudnn.conv, "fp32_precision", "ieee"), (backends.cuda.matmul, "fp32_precision", "ieee")]
    else:
        places = [(backends.cudnn, "allow_tf32", False), (backends.cuda.matmul, "allow_tf32", False)]
    saved = [getattr(owner, name) for owner, name, _ in places]
    try:
        for owner, name, value in places:
            setattr(owner, name, value)
        yield
    finally:
        for (owner, name, _), value in zip(places, saved):
            setattr(owner, name, value)


@torch.inference_mode()
def embed_uint8(
    extractor: FeatureExtractor,
    images: torch.Tensor,
    preprocessing: Preprocessing,
    device: torch.device,
    precision: str = "fp32",
    channels_last: bool = False,
    tf32: bool = False,
) -> dict[str, np.ndarray]:
    """One uint8 batch → ``{layer: N x D float32 numpy}``, normalized on ``device``. ``images`` in pinned memory
    are copied to a GPU without blocking. fp32 on CUDA runs without TF32 unless ``tf32`` (see ``tf32_off``)."""
    x = preprocessing.normalize(torch.as_tensor(images).to(device, non_blocking=True))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast_for(device, precision), contextlib.nullcontext() if tf32 else tf32_off(device, precision):
        out = extractor(x)
    return {layer: t.float().cpu().numpy() for layer, t in out.items()}


def layer_dims(model: nn.Module, layers: list[str], pooling: str, size: int) -> dict[str, int]:
    """Length of each layer's pooled vector."""
    shapes = dict(layer_shapes(model, size, layers))
    return {layer: pooled_dim(shapes[layer], pooling, tokens(model)) for layer in layers}
