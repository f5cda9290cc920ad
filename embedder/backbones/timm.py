"""timm as a second backbone source: ``timm:NAME[.TAG]``.

Only ``embedder.backbones.registry`` calls this module; everything else asks the registry. A name resolves
to its canonical form ``timm:ARCH.TAG`` (the tag whose pretrained config gives the preprocessing: the default
tag when none is typed), its weights to an identity (``ARCH.TAG`` for timm's pretrained weights, fetched
through timm's own Hugging Face hub cache, ``$HF_HOME``), and its preprocessing to that of
``timm.data.resolve_model_data_config`` (input size, interpolation, crop_pct, mean and std).

Models whose input size is fixed at construction (ViTs: position embeddings) are built at the crop size when it
differs from the pretrained one (timm resamples the position embeddings of pretrained weights).
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import importlib
import math
import os
import warnings

import torch
from torch import nn

from embedder.kernel.errors import FeaturebankError, FileProblem, IncompatibleSettings, InvalidValue, UnknownBackbone
from embedder.kernel.preprocess import Preprocessing, rgb

from .statedicts import head_outputs, parameter_blocks, parameters_on_meta, read_state_dict

PREFIX = "timm:"
CONTAINERS = ("stages", "blocks", "layers", "levels")  # top-level sequences whose items are fine-tuning blocks
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin", "open_clip_model.safetensors")


def is_timm_name(name: str) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def is_timm_model(model: nn.Module) -> bool:
    return type(model).__module__.startswith("timm.")


def _timm():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import timm

        return timm


def split_name(name: str) -> tuple[str, str]:
    """``timm:ARCH[.TAG]`` → (arch, tag); an empty tag when none is typed."""
    body = name[len(PREFIX) :] if is_timm_name(name) else name
    arch, _, tag = body.partition(".")
    return arch, tag


@functools.cache
def _pretrained_tags(arch: str) -> tuple[str, ...]:
    """The architecture's pretrained tags, default first (timm's order)."""
    from timm.models import _registry

    cfgs = _registry.get_arch_pretrained_cfgs(arch)
    return tuple(key.partition(".")[2] for key in cfgs)


def check_name(name: str) -> str:
    """The canonical ``timm:ARCH.TAG`` (``timm:ARCH`` for an architecture without pretrained configs)."""
    timm = _timm()
    arch, tag = split_name(name)
    if not timm.is_model(arch):
        import difflib

        close = difflib.get_close_matches(arch, timm.list_models(), n=3)
        hint = (
            f" (did you mean {', '.join(PREFIX + c for c in close)}?)"
            if close
            else "; `featurebank backbones --source timm` lists them"
        )
        raise UnknownBackbone(f"unknown timm model {arch!r}{hint}")
    tags = _pretrained_tags(arch)
    if tag and tag not in tags:
        choices = ", ".join(tags) or "none: it has no pretrained configs"
        raise InvalidValue(f"unknown tag {tag!r} for timm:{arch}: choose one of {choices}")
    tag = tag or (tags[0] if tags and tags[0] else "")
    return f"{PREFIX}{arch}.{tag}" if tag else f"{PREFIX}{arch}"


def pretrained_cfg(name: str) -> dict:
    timm = _timm()
    arch, tag = split_name(check_name(name))
    cfg = timm.models.get_pretrained_cfg(f"{arch}.{tag}" if tag else arch)
    return cfg.to_dict() if cfg is not None else {}


def weights_tag(name: str, weights: str) -> str:
    """The canonical name for timm pretrained ``weights`` (``DEFAULT``, a tag, or ``ARCH.TAG``) on ``name``."""
    canonical = check_name(name)
    arch, tag = split_name(canonical)
    if weights == "DEFAULT":
        if not tag:
            raise InvalidValue(f"timm has no pretrained weights for {arch}: use --weights none or a local file")
        return canonical
    wanted = weights.partition(".")[2] if weights.startswith(arch + ".") else weights
    typed = split_name(name)[1]
    if typed and wanted != typed:
        raise InvalidValue(f"two tags given: {name} and --weights {weights}; give the tag once")
    if wanted not in _pretrained_tags(arch):
        choices = ", ".join(["DEFAULT", *_pretrained_tags(arch), "none", "a .safetensors or .pth file"])
        raise InvalidValue(f"unknown weights {weights!r} for timm:{arch}: choose one of {choices}")
    return f"{PREFIX}{arch}.{wanted}"


def preprocessing(name: str) -> Preprocessing:
    """What ``timm.data.resolve_model_data_config`` gives for the tag, as featurebank's recorded value: the
    shorter side is resized to ``floor(size / crop_pct)`` and center-cropped to ``size``, as timm's eval
    transform does (``crop_mode`` center; ``squash`` resizes both sides)."""
    cfg = pretrained_cfg(name)
    _, h, w = cfg.get("input_size", (3, 224, 224))
    if h != w:
        raise InvalidValue(f"{name} takes {h}x{w} inputs: only square inputs are supported")
    crop_pct = cfg.get("crop_pct") or 0.875
    mode = cfg.get("crop_mode") or "center"
    if mode not in ("center", "squash"):
        raise InvalidValue(f"{name} uses timm's crop_mode {mode!r}, which featurebank does not reproduce")
    return Preprocessing(
        resize=math.floor(h / crop_pct),
        crop=int(h),
        mean=rgb(cfg["mean"]),
        std=rgb(cfg["std"]),
        interpolation=cfg.get("interpolation") or "bilinear",
        crop_mode=mode,
    )


def _build_kwargs(name: str, size: int | None, num_classes: int | None = None) -> dict:
    cfg = pretrained_cfg(name)
    kwargs = {}
    if size is not None and cfg.get("fixed_input_size") and int(size) != int(cfg.get("input_size", (3, 224, 224))[1]):
        kwargs["img_size"] = int(size)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return kwargs


def _create(name: str, pretrained: bool = False, **kwargs) -> nn.Module:
    timm = _timm()
    arch, tag = split_name(check_name(name))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return timm.create_model(f"{arch}.{tag}" if tag else arch, pretrained=pretrained, **kwargs)


def skeleton(name: str, size: int | None = None, **kwargs) -> nn.Module:
    """The architecture on the meta device (shapes and names only), built for ``size`` px inputs."""
    with torch.device("meta"):
        try:
            return _create(name, **_build_kwargs(name, size), **kwargs).eval()
        except TypeError as exc:
            raise InvalidValue(f"cannot build {name} for {size} px inputs: {exc}") from None


def random(name: str, seed: int, size: int | None) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _create(name, **_build_kwargs(name, size))


def read_state(path: str) -> dict:
    """A ``.safetensors`` file (no code can run), or a ``.pth`` read with ``weights_only=True``."""
    if path.lower().endswith(".safetensors"):
        try:
            from safetensors.torch import load_file

            return load_file(path, device="cpu")
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise FileProblem(f"cannot read weights file {path}: {first}") from None

    return read_state_dict(path)


def from_file(name: str, path: str, size: int | None) -> nn.Module:
    """Load a local state dict strictly; the head is sized from the file (``num_classes=0`` when it has none).
    A ViT's position embeddings saved for another input size are resampled by timm's own checkpoint filter."""
    state = read_state(path)
    classifier = _classifier_name(pretrained_cfg(name))
    probe = skeleton(name, size)
    head = probe.get_submodule(classifier) if classifier in dict(probe.named_modules()) else None
    inputs = head.in_features if isinstance(head, nn.Linear) else head_inputs(probe)
    num_classes = head_outputs(state, f"{classifier}.weight", inputs, path) or 0

    with parameters_on_meta():  # no random initialization of what the file replaces (buffers are built as usual)
        model = _create(name, **_build_kwargs(name, size, num_classes))
    try:
        model.load_state_dict(state, strict=True, assign=True)
        return model.float()
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        failure = first[1].strip() if len(first) > 1 else first[0]
    filter_fn = getattr(importlib.import_module(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        try:
            model.load_state_dict(filter_fn(dict(state), model), strict=True, assign=True)
            return model.float()
        except Exception:
            pass
    raise IncompatibleSettings(f"weights file {path} does not fit {name}: {failure}")


def _classifier_name(cfg: dict) -> str:
    head = cfg.get("classifier") or "head"
    return head[0] if isinstance(head, (tuple, list)) else head


def _cached_file(hub_id: str, filename: str | None) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for candidate in ([filename] if filename else []) + list(WEIGHT_FILES):
        found = try_to_load_from_cache(hub_id, candidate, cache_dir=hub_cache())
        if isinstance(found, str):
            return found
    return None


def hub_cache() -> str:
    """Where timm's hub downloads go, read from the environment now (not when huggingface_hub was imported)."""
    home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return os.environ.get("HF_HUB_CACHE") or os.path.join(home, "hub")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def pretrained(name: str, size: int | None) -> nn.Module:
    """timm's pretrained weights of the tag, through its own hub cache. Offline and not cached: one line that
    names the file and where it goes."""
    cfg = pretrained_cfg(name)
    arch, tag = split_name(check_name(name))
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        filename = cfg.get("hf_hub_filename") or "model.safetensors"
        where = f"https://huggingface.co/{hub_id}/resolve/main/{filename}"
    else:
        filename, where = os.path.basename(cfg.get("url") or "?"), cfg.get("url") or "?"
    advice = (
        f"download {where} elsewhere and pass it with --weights path/to/{filename}, or put it in timm's hub "
        f"cache {hub_cache()} with `hf download {hub_id} {filename}` (HF_HOME sets where)"
        if hub_id
        else f"download {where} elsewhere and pass it with --weights path/to/{filename}"
    )
    if hub_id and _offline() and _cached_file(hub_id, cfg.get("hf_hub_filename")) is None:
        raise FeaturebankError(
            f"timm weights {arch}.{tag} are not in the hub cache and HF_HUB_OFFLINE is set: {advice}"
        )
    try:
        with contextlib.redirect_stdout(None):
            return _create(name, pretrained=True, **_build_kwargs(name, size)).float()
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise FeaturebankError(
            f"cannot load timm weights {arch}.{tag} ({type(exc).__name__}: {first}; no network?): {advice}"
        ) from None


def head_name(model: nn.Module) -> str:
    return _classifier_name(getattr(model, "pretrained_cfg", None) or {})


def head_inputs(model: nn.Module) -> int:
    """Length of what the classifier takes: ``forward_head(..., pre_logits=True)``'s output."""
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


def prefix_tokens(model: nn.Module) -> tuple[int, bool]:
    """(number of prefix tokens: class, registers, distillation; whether the first one is a class token)."""
    if not is_timm_model(model):
        return 0, False
    return int(getattr(model, "num_prefix_tokens", 0) or 0), getattr(model, "cls_token", None) is not None


def node_names(model: nn.Module) -> list[str]:
    from timm.models import get_graph_node_names

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_graph_node_names(model.eval())[1]


def feature_body(model: nn.Module, layers: list[str]) -> nn.Module:
    """timm's FX feature extractor (its own leaf modules and untraceable helpers): ``{layer: output}``."""
    from timm.models import create_feature_extractor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return create_feature_extractor(model.eval(), return_nodes={layer: layer for layer in layers})


def block_names(model: nn.Module) -> list[str]:
    """Blocks in forward order, classifier excluded: ``stem``, ``stages.0``..``stages.3``, ``head.norm`` for a
    ConvNeXt; ``patch_embed``, ``blocks.0``..``blocks.N``, ``norm`` (and ``attn_pool``) for a ViT;
    ``conv_stem``, ``bn1``, ``blocks.0``..``blocks.6``, ``conv_head``, ``bn2`` for an EfficientNet."""
    head = head_name(model)

    def depth(parts: list[str]) -> int:
        if parts[0] in CONTAINERS and len(parts) > 1:
            return 2
        if head.startswith(parts[0] + "."):  # a sibling of the classifier inside the head (ConvNeXt's head.norm)
            return len(head.split("."))
        return 1

    return parameter_blocks(model, head, depth)


def list_names(pattern: str | None = None) -> list[str]:
    """Pretrained ``ARCH.TAG`` names (``timm.list_models(pretrained=True)``), filtered by a shell pattern."""
    names = _timm().list_models(pretrained=True)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else list(names)


def imagenet_classes(name: str) -> list[str]:
    """Class names of a tag's own head, when timm knows its ImageNet subset (``infer_imagenet_subset``)."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    cfg = pretrained_cfg(name)
    subset = infer_imagenet_subset(cfg) if cfg.get("num_classes") else None
    if not subset:
        raise InvalidValue(
            f"{name} has no ImageNet classifier head (its tag has {cfg.get('num_classes', 0)} "
            f"classes timm knows no names of): train a featurebank model on its features instead"
        )
    if subset == "imagenet-1k":  # torchvision's names: the same order, with the two duplicate names told apart
        from torchvision.models._meta import _IMAGENET_CATEGORIES

        return list(_IMAGENET_CATEGORIES)
    info = ImageNetInfo(subset)
    return [info.index_to_description(i).split(",")[0] for i in range(info.num_classes())]
