"""``Embedder``: a frozen backbone as a scikit-learn transformer (paths or PIL images → feature matrix).

It does nothing in ``__init__``; ``fit`` loads the model (nothing is learned); ``transform`` decodes,
preprocesses and embeds with the same code as ``featurebank extract``, so its rows equal the cache's.
"""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from .backbones import layer_dims, load_backbone, resolve_layers
from .batches import ImageDataset, batches
from .decode import DEFAULT_MAX_PIXELS
from .errors import FeaturebankError
from .features import FeatureExtractor, autocast_for, embed_uint8, resolve_device


class Embedder(TransformerMixin, BaseEstimator):
    """Frozen-backbone features for a list of image paths or PIL images.

    Several ``layers`` are concatenated side by side, in the order given. A bad image raises
    ``FeaturebankError`` naming it (a transformer must return one row per input).
    """

    def __init__(self, backbone="resnet50", weights="DEFAULT", layers=None, pooling="avg", resize=None, crop=None,
                 draft=True, precision="fp32", device="auto", batch_size=32, workers=0, seed=0,
                 max_pixels=DEFAULT_MAX_PIXELS):
        self.backbone = backbone
        self.weights = weights
        self.layers = layers
        self.pooling = pooling
        self.resize = resize
        self.crop = crop
        self.draft = draft
        self.precision = precision
        self.device = device
        self.batch_size = batch_size
        self.workers = workers
        self.seed = seed
        self.max_pixels = max_pixels

    def fit(self, X=None, y=None):
        """Load the backbone; nothing is learned from ``X``."""
        self.backbone_ = load_backbone(self.backbone, self.weights, self.seed, self.resize, self.crop, self.draft)
        self.layers_ = resolve_layers(self.backbone_.model, self.layers if not isinstance(self.layers, str) else [self.layers])
        self.dims_ = layer_dims(self.backbone_.model, self.layers_, self.pooling, self.backbone_.preprocessing.crop)
        self.n_features_out_ = sum(self.dims_.values())
        self.settings_ = {"backbone": self.backbone, "weights": self.backbone_.weights.identity,
                          "layers": self.layers_, "pooling": self.pooling,
                          "preprocessing": self.backbone_.preprocessing.to_dict(), "precision": self.precision}
        return self

    def transform(self, X) -> np.ndarray:
        check_is_fitted(self, "backbone_")
        images = _as_list(X)
        device = resolve_device(self.device)
        autocast_for(device, self.precision)
        extractor = self.__dict__.get("_extractor")
        if extractor is None or self.__dict__.get("_extractor_device") != device:
            extractor = FeatureExtractor(self.backbone_.model, self.layers_, self.pooling).to(device)
            self._extractor, self._extractor_device = extractor, device
        prep = self.backbone_.preprocessing
        out = np.empty((len(images), self.n_features_out_), dtype=np.float32)
        bad = []
        for batch in batches(ImageDataset(images, prep, self.max_pixels), self.batch_size, self.workers):
            bad += [(images[i], reason) for i, reason, _ in batch.failures]
            if batch.indices:
                features = embed_uint8(extractor, batch.images, prep, device, self.precision)
                out[batch.indices] = np.concatenate([features[layer] for layer in self.layers_], axis=1)
        if bad:
            listed = "; ".join(f"{_name(img)}: {reason}" for img, reason in bad[:3])
            raise FeaturebankError(f"{len(bad)} image(s) could not be embedded: {listed}{' ...' if len(bad) > 3 else ''}")
        return out

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        check_is_fitted(self, "backbone_")
        return np.array([f"{layer}:{i}" for layer in self.layers_ for i in range(self.dims_[layer])], dtype=object)

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_extractor", None)  # a traced graph; rebuilt on first use
        state.pop("_extractor_device", None)
        return state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        return tags


def _as_list(X) -> list:
    if isinstance(X, np.ndarray):
        X = X.reshape(-1) if X.ndim == 2 and X.shape[1] == 1 else X
        if X.ndim != 1:
            raise FeaturebankError(f"Embedder takes a list of paths or PIL images, not an array of shape {X.shape}")
    if isinstance(X, (str, bytes)):
        raise FeaturebankError("Embedder takes a list of paths or PIL images, not a single string")
    return list(X)


def _name(image) -> str:
    return str(image) if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__") else type(image).__name__
