"""Weights files read safely (``torch.load(weights_only=True)``: tensors, never code) into a plain state dict, and
models built without allocating parameters that are loaded or only inspected. Shared by torchvision's and timm's
loading (``backbones``, ``timm_source``)."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .errors import FeaturebankError, first_line


@contextlib.contextmanager
def parameters_on_meta():
    """Build a model without allocating or initializing its parameters (they are loaded or only inspected)."""
    register = nn.Module.register_parameter

    def register_on_meta(module, name, param):
        register(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def read_state_dict(path: str) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = first_line(exc)
        raise FeaturebankError(f"cannot read weights file {path}: {first}") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise FeaturebankError(f"weights file {path} holds no state dict (a mapping of names to tensors)")
    if obj and all(k.startswith("module.") for k in obj):  # saved from DataParallel / DDP
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj
