"""Model surgery: which blocks a backbone has, which of them train, how BatchNorm behaves, and the new head
(started from the linear probe, with dropout on its input as a hook so that the state dict keeps the
architecture's own keys)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embedder.backbones.registry import block_names, head_inputs, head_name
from embedder.kernel.errors import InvalidValue

from .options import BN_POLICIES

BATCHNORMS = (nn.modules.batchnorm._BatchNorm,)


def unfrozen_blocks(model: nn.Module, unfreeze: int | str) -> list[str]:
    blocks = block_names(model)
    if unfreeze == "all":
        return blocks
    n = int(unfreeze)
    if n < 0:
        raise InvalidValue("--unfreeze takes 0 (head only), a number of blocks, or all")
    return blocks[len(blocks) - min(n, len(blocks)) :] if n else []


def _in(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def freeze(model: nn.Module, blocks: list[str], bn: str) -> None:
    """Gradients for the head and ``blocks`` only; with ``bn="frozen"`` no BatchNorm parameter trains either."""
    if bn not in BN_POLICIES:
        raise InvalidValue(f"unknown --bn {bn!r}: choose frozen or train")
    head = head_name(model)
    everything = blocks == block_names(model)  # then parameters of the model itself (a ViT's class token) train too
    for name, param in model.named_parameters():
        param.requires_grad_(_in(name, [head, *blocks]) or ("." not in name and everything))
    if bn == "frozen":
        for module in model.modules():
            if isinstance(module, BATCHNORMS):
                module.requires_grad_(False)


def set_train_mode(model: nn.Module, blocks: list[str], bn: str) -> None:
    """``train()`` for the head and the unfrozen blocks only; frozen parts stay in eval mode (their dropout off,
    their BatchNorm statistics fixed), and with ``bn="frozen"`` every BatchNorm does, as ``model.train()``
    alone would move running statistics of layers that are meant to be frozen."""
    model.eval()
    head = head_name(model)
    for name in [*blocks, head]:
        model.get_submodule(name).train()
    if bn == "frozen":
        for module in model.modules():
            if isinstance(module, BATCHNORMS):
                module.eval()


def has_training_batchnorm(model: nn.Module, blocks: list[str], bn: str) -> bool:
    """Whether a BatchNorm learns statistics in training (then a batch of one image cannot train)."""
    return bn == "train" and any(isinstance(m, BATCHNORMS) for b in blocks for m in model.get_submodule(b).modules())


def param_groups(model: nn.Module, lr: float, backbone_lr_scale: float, weight_decay: float) -> list[dict]:
    """Two learning rates: ``lr`` for the new head, ``lr * backbone_lr_scale`` for the pretrained layers."""
    head = head_name(model)
    groups: dict[str, list[nn.Parameter]] = {"head": [], "backbone": []}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups["head" if _in(name, [head]) else "backbone"].append(param)
    rates = {"head": lr, "backbone": lr * backbone_lr_scale}
    return [{"name": g, "params": p, "lr": rates[g], "weight_decay": weight_decay} for g, p in groups.items() if p]


def replace_head(
    model: nn.Module, n_classes: int, init: tuple[np.ndarray, np.ndarray] | None = None, seed: int | None = None
) -> nn.Module:
    """A new head for ``n_classes``; a Linear head starts from ``init`` (the probe's ``W``, ``b``) when given. A
    random start is drawn from ``seed`` (``--seed``) on a generator of its own, so that the same seed gives the same
    head whatever ran before (torch's global generator: ``None``)."""
    name = head_name(model)
    old = model.get_submodule(name)
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        new = _new_head(model, old, n_classes)
    if init is not None and isinstance(new, nn.Linear):
        with torch.no_grad():
            new.weight.copy_(torch.as_tensor(init[0], dtype=torch.float32))
            new.bias.copy_(torch.as_tensor(init[1], dtype=torch.float32))
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)
    return new


def starts_from_probe(head: nn.Module, init) -> bool:
    """Whether ``replace_head`` started ``head`` from the probe: then epoch 0 of training is the probe."""
    return init is not None and isinstance(head, nn.Linear)


def _new_head(model: nn.Module, old: nn.Module, n_classes: int) -> nn.Module:
    if isinstance(old, (nn.Linear, nn.Identity)):  # Identity: a timm model built without classes
        return nn.Linear(head_inputs(model), n_classes)
    # SqueezeNet's 1x1 convolution (followed by ReLU and pooling, so a linear probe does not map onto it)
    return nn.Conv2d(old.in_channels, n_classes, kernel_size=old.kernel_size)


def add_head_dropout(model: nn.Module, p: float):
    """Dropout on the head's input while training, as a hook: the state dict keeps the architecture's own keys."""
    if p <= 0:
        return None
    return model.get_submodule(head_name(model)).register_forward_pre_hook(
        lambda module, args: (F.dropout(args[0], p, module.training), *args[1:])
    )
