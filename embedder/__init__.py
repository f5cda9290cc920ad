"""featurebank's embedder: frozen torchvision backbones → pooled intermediate-layer vectors → HDF5 cache.

The names below are imported on first use, so that ``featurebank --help`` does not wait for torch.
"""

from embedder.kernel.lazy import lazy_attributes

__version__ = "0.1.0"

_EXPORTS = {
    "CacheReader": "cache.hdf5",
    "load": "cache.hdf5",
    "Embedder": "transformer",
    "ExtractSummary": "job",
    "extract": "job",
    "FeaturebankError": "kernel.errors",
    "feature_dim": "backbones.registry",
    "layer_shapes": "backbones.registry",
    "list_backbones": "backbones.registry",
    "load_backbone": "backbones.registry",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_attributes(__name__, _EXPORTS)
