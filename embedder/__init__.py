"""featurebank's embedder: frozen torchvision backbones → pooled intermediate-layer vectors → HDF5 cache.

The names below are imported on first use, so that ``featurebank --help`` does not wait for torch.
"""

from typing import TYPE_CHECKING

from embedder.kernel.lazy import lazy_attributes, lazy_dir

__version__ = "0.1.0"

_EXPORTS = {
    "CacheReader": "cache.hdf5",
    "load": "cache.hdf5",
    "Embedder": "transformer",
    "ExtractSummary": "job",
    "extract": "job",
    "FeaturebankError": "kernel.errors",
    "FileProblem": "kernel.errors",
    "IncompatibleSettings": "kernel.errors",
    "InvalidValue": "kernel.errors",
    "MissingFile": "kernel.errors",
    "feature_dim": "backbones.registry",
    "layer_shapes": "backbones.registry",
    "list_backbones": "backbones.registry",
    "load_backbone": "backbones.registry",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_attributes(__name__, _EXPORTS)
__dir__ = lazy_dir(globals(), _EXPORTS)

if TYPE_CHECKING:  # the real names, for type checkers and editors; at run time each is imported on first use
    from embedder.backbones.registry import feature_dim, layer_shapes, list_backbones, load_backbone
    from embedder.cache.hdf5 import CacheReader, load
    from embedder.kernel.errors import FeaturebankError, FileProblem, IncompatibleSettings, InvalidValue, MissingFile

    from .job import ExtractSummary, extract
    from .transformer import Embedder
