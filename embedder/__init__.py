"""featurebank's embedder: frozen torchvision backbones → pooled intermediate-layer vectors → HDF5 cache.

The names below are imported on first use, so that ``featurebank --help`` does not wait for torch.
"""

from typing import TYPE_CHECKING

from .lazy import lazy_attributes, lazy_dir

__version__ = "0.1.0"

_EXPORTS = {
    "CacheReader": "cache",
    "load": "cache",
    "Embedder": "transformer",
    "ExtractSummary": "job",
    "extract": "job",
    "FeaturebankError": "errors",
    "FileProblem": "errors",
    "IncompatibleSettings": "errors",
    "InvalidValue": "errors",
    "MissingFile": "errors",
    "feature_dim": "backbones",
    "layer_shapes": "backbones",
    "list_backbones": "backbones",
    "load_backbone": "backbones",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_attributes(__name__, _EXPORTS)
__dir__ = lazy_dir(globals(), _EXPORTS)

if TYPE_CHECKING:  # the real names, for type checkers and editors; at run time each is imported on first use
    from .backbones import feature_dim, layer_shapes, list_backbones, load_backbone
    from .cache import CacheReader, load
    from .errors import FeaturebankError, FileProblem, IncompatibleSettings, InvalidValue, MissingFile
    from .job import ExtractSummary, extract
    from .transformer import Embedder
