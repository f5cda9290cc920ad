"""featurebank's embedder: frozen torchvision backbones → pooled intermediate-layer vectors → HDF5 cache.

The names below are imported on first use, so that ``featurebank --help`` does not wait for torch.
"""

from .lazy import lazy_attributes

__version__ = "0.1.0"

_EXPORTS = {
    "CacheReader": "cache",
    "load": "cache",
    "Embedder": "transformer",
    "ExtractSummary": "job",
    "extract": "job",
    "FeaturebankError": "errors",
    "feature_dim": "backbones",
    "layer_shapes": "backbones",
    "list_backbones": "backbones",
    "load_backbone": "backbones",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_attributes(__name__, _EXPORTS)
