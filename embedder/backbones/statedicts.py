"""Weights files read safely (``torch.load(weights_only=True)``: tensors, never code) into a plain state dict,
models built without allocating parameters that are loaded or only inspected, and a model's blocks named from its
parameters. Shared by torchvision's and timm's loading (``backbones``, ``timm_source``)."""

from __future__ import annotations

import contextlib
import pickle
import re
import warnings
from collections.abc import Callable

import torch
from torch import nn

from embedder.kernel.errors import FileProblem, first_line

MAX_CLASSES = 1_000_000  # the most outputs a head read from a file may have (ImageNet-21k has 21,843)
MAX_TENSOR_VALUES = 1 << 31  # the most values one tensor of a weights file may declare (8 GiB of float32)


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


def load_checkpoint(path: str):
    """``torch.load(path, weights_only=True)``, its failures as one line of featurebank's own: torch's message is
    long, cut mid-sentence, and advises ``weights_only=False``, which would run whatever code the file names; its
    warnings (pickle protocol) are not repeated on stderr."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:  # a folder, no permission: nothing was read
        raise FileProblem(f"cannot read weights file {path}: {exc.strerror or first_line(exc)}") from None
    except pickle.UnpicklingError as exc:  # random bytes, or a pickle of more than tensors (code, objects)
        named = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f"it names {named.group(1)}, which is not a tensor" if named else "it is not a pickle of tensors"
        raise FileProblem(
            f"cannot read weights file {path}: not a PyTorch checkpoint featurebank can read safely ({what}; "
            f"featurebank loads tensors and plain values only, never code): give a state dict saved with torch.save"
        ) from None
    except Exception as exc:  # a cut or damaged archive, an empty file
        why = first_line(exc).split(". ")[0] if str(exc).strip() else f"{type(exc).__name__}: it ends too soon"
        raise FileProblem(f"cannot read weights file {path}: damaged, or not a PyTorch checkpoint ({why})") from None


def read_state_dict(path: str) -> dict:
    obj = load_checkpoint(path)
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise FileProblem(f"weights file {path} holds no state dict (a mapping of names to tensors)")
    if obj and all(k.startswith("module.") for k in obj):  # saved from DataParallel / DDP
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    check_sizes(obj, path)
    return obj


def _shape(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def check_sizes(state: dict, path: str | None) -> None:
    """No tensor of a weights file declares more than ``MAX_TENSOR_VALUES`` values: a view saved with stride 0
    costs nothing on disk and could otherwise ask for petabytes when a model of its shape is built."""
    for key, tensor in state.items():
        values = 1
        for d in tensor.shape:
            values *= int(d)
        if values > MAX_TENSOR_VALUES:
            raise FileProblem(
                f"weights file {path}: {key} declares {values:,} values (shape {_shape(tensor.shape)}), more than "
                f"the {MAX_TENSOR_VALUES:,} at most of any tensor featurebank loads"
            )


def head_outputs(state: dict, key: str, inputs: int, path: str | None) -> int | None:
    """The classes the head ``key`` of a weights file declares (None when the file has no such tensor), checked
    before a model of that size is built: a ``(classes, inputs)`` matrix (``(classes, inputs, 1, 1)`` for a
    convolution head), with at most ``MAX_CLASSES`` classes."""
    if key not in state:
        return None
    shape = tuple(int(d) for d in state[key].shape)
    if len(shape) not in (2, 4) or shape[0] < 1 or shape[1] != inputs or any(d != 1 for d in shape[2:]):
        raise FileProblem(f"weights file {path}: its head {key} has shape {_shape(shape)}, not (classes, {inputs})")
    if shape[0] > MAX_CLASSES:
        raise FileProblem(
            f"weights file {path}: its head {key} declares {shape[0]:,} classes, more than the {MAX_CLASSES:,} at "
            f"most that featurebank builds"
        )
    return shape[0]


def parameter_blocks(model: nn.Module, head: str, depth: Callable[[list[str]], int]) -> list[str]:
    """The blocks of ``model`` in forward order: each module that holds parameters of its own, outside the head
    ``head``, named by the first ``depth(parts)`` parts of its dotted name (``features.3`` for
    ``features.3.conv.0``), each block once."""
    names: list[str] = []
    for name, module in model.named_modules():
        if not name or name == head or name.startswith(head + "."):
            continue
        if not any(True for _ in module.parameters(recurse=False)):
            continue
        parts = name.split(".")
        block = ".".join(parts[: depth(parts)])
        if block not in names:
            names.append(block)
    return names
