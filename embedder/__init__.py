"""featurebank's embedder: frozen torchvision backbones → pooled intermediate-layer vectors → HDF5 cache.

The names below are imported on first use, so that ``featurebank --help`` does not wait for torch.
"""
import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "CacheReader": "cache", "load": "cache", "Embedder": "transformer", "ExtractSummary": "job", "extract": "job",
    "FeaturebankError": "errors", "feature_dim": "backbones", "layer_shapes": "backbones",
    "list_backbones": "backbones", "load_backbone": "backbones",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
