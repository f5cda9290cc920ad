"""featurebank's embedder: frozen torchvision backbones → pooled intermediate-layer vectors → HDF5 cache."""
__version__ = "0.1.0"

from .backbones import feature_dim, layer_shapes, list_backbones, load_backbone  # noqa: E402
from .cache import CacheReader, load  # noqa: E402
from .errors import FeaturebankError  # noqa: E402
from .job import ExtractSummary, extract  # noqa: E402

__all__ = ["CacheReader", "ExtractSummary", "FeaturebankError", "extract", "feature_dim", "layer_shapes",
           "list_backbones", "load", "load_backbone"]
