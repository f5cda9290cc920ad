"""``Embedder``: a frozen backbone as a scikit-learn transformer (paths or PIL images → feature matrix).

It does nothing in ``__init__``; ``fit`` loads the model (and for int8, calibrates on the images it is given:
the only thing it learns); ``transform`` decodes, preprocesses and embeds with the same settings value, decoding
and engine as ``featurebank extract``, so its rows equal the cache's.
"""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
from PIL import Image
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from embedder.backbones.features import layer_dims
from embedder.backbones.registry import load_backbone, resolve_layers
from embedder.engines.engine import Calibration, open_engine, prepare_int8, resolve_device_name
from embedder.engines.guard import BatchRunner
from embedder.inputs.batches import ImageDataset, batches
from embedder.kernel.errors import FeaturebankError, InvalidValue
from embedder.kernel.settings import ExtractionSettings, Int8
from embedder.kernel.store import EngineStore, engine_dir_for

from .options import ExtractOptions

_D = ExtractOptions()  # the defaults, as extract's


class Embedder(TransformerMixin, BaseEstimator):
    """Frozen-backbone features for a list of image paths or PIL images.

    Several ``layers`` are concatenated side by side, in the order given. A bad image raises
    ``FeaturebankError`` naming it (a transformer must return one row per input). ``engine`` is that of
    ``featurebank extract`` (``auto``, ``torch``, ``onnxruntime``); exported engines live in ``engine_dir``
    (default: ``$FEATUREBANK_ENGINE_DIR``, else ``cache/engines``). ``tta="flip"`` is ``extract --tta flip``.
    Each parameter is the ``ExtractOptions`` field of its name, with its default (``workers`` aside: 0).
    """

    def __init__(
        self,
        backbone=_D.backbone,
        weights=_D.weights,
        layers=_D.layers,
        pooling=_D.pooling,
        resize=_D.resize,
        crop=_D.crop,
        draft=_D.draft,
        precision=_D.precision,
        device=_D.device,
        batch_size=_D.batch_size,
        workers=0,  # decoding in this process: a transformer is often called inside another's workers
        seed=_D.seed,
        max_pixels=_D.max_pixels,
        engine=_D.engine,
        engine_dir=_D.engine_dir,
        calibration_images=_D.calibration_images,
        int8=_D.int8,
        tta=_D.tta,
    ):
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
        self.engine = engine
        self.engine_dir = engine_dir
        self.calibration_images = calibration_images
        self.int8 = int8
        self.tta = tta

    def fit(self, X=None, y=None):
        """Load the backbone; nothing is learned from ``X``, except int8's calibration, which needs it. The
        parameters become one ``ExtractOptions`` (``options_``), as ``extract`` takes them; the rest reads that."""
        params = self.get_params()
        layers = params.pop("layers")
        self.options_ = o = ExtractOptions(**params, layers=(layers,) if isinstance(layers, str) else layers)
        self.backbone_ = load_backbone(o.backbone, o.weights, o.seed, o.resize, o.crop, o.draft)
        self.layers_ = resolve_layers(self.backbone_.model, o.layers)
        self.dims_ = layer_dims(self.backbone_.model, self.layers_, o.pooling, self.backbone_.preprocessing.crop)
        self.n_features_out_ = sum(self.dims_.values())
        int8 = None
        self._calibration = None
        if o.precision == "int8":
            if o.int8 is not None:  # a cache's int8 engine (embedder.job.int8_of_cache): its rows exactly
                int8 = o.int8
            elif X is None:
                raise InvalidValue(
                    "int8 calibrates on images: call fit with a list of paths or PIL images (or give int8= of a cache)"
                )
            else:
                int8, self._calibration = self._calibrate_on(_as_list(X))
        self.settings_ = ExtractionSettings(
            self.backbone_.name,
            self.backbone_.weights.identity,
            tuple(self.layers_),
            o.pooling,
            self.backbone_.preprocessing,
            o.precision,
            int8,
            o.tta,
        )
        self.__dict__.pop("_engine", None)
        return self

    def _calibrate_on(self, images: list):
        """Up to ``calibration_images`` of ``images``, drawn as ``extract`` draws (a seeded hash of each path) and
        identified as it does (by the files' bytes; a PIL image by its pixels)."""
        from embedder.engines.quantize import calibration_set_id, draw_calibration

        o = self.options_
        wanted = Int8(o.calibration_images, o.seed)
        keys = [(i, _name(img) if not isinstance(img, Image.Image) else f"<image {i}>") for i, img in enumerate(images)]
        chosen = draw_calibration(keys, wanted)[: wanted.images]
        dataset = ImageDataset([images[i] for i in chosen], self.backbone_.preprocessing, o.max_pixels)
        decoded = list(batches(dataset, 16, 0))
        digests = [
            d or hashlib.blake2b(dataset.images[i].tobytes(), digest_size=16).hexdigest()
            for b in decoded
            for i, d in list(zip(b.indices, b.digests)) + [(j, d) for j, _, d in b.failures]
        ]
        chunks = [b.images for b in decoded if b.indices]
        if not chunks:
            raise FeaturebankError("none of the calibration images could be decoded")
        return Int8(o.calibration_images, o.seed, o.calibration, calibration_set_id(digests)), chunks

    def _engine_for(self, device: str):
        engine = self.__dict__.get("_engine")
        if engine is None or self.__dict__.get("_engine_device") != device:
            o = self.options_
            store = EngineStore(o.engine_dir or engine_dir_for())
            chunks = self.__dict__.get("_calibration")

            # a cache's engine, or an unpickled one (no chunks): found, never redrawn
            calibration = Calibration(lambda: chunks, fixed=chunks is None)
            if self.settings_.int8 is not None and self.settings_.int8.scheme == "auto":
                choice = prepare_int8(
                    self.settings_, store, lambda: self.backbone_.model, calibration, batch_size=o.batch_size
                )
                if choice.note:  # another scheme, or fp32: the vectors are what settings_ says
                    warnings.warn(choice.note, stacklevel=3)
                self.settings_ = choice.settings
            engine = open_engine(
                self.settings_,
                store,
                lambda: self.backbone_.model,
                engine=o.engine,
                device=device,
                batch_size=o.batch_size,
                calibration=calibration,
            )
            self._engine, self._engine_device = engine, device
        return engine

    def transform(self, X) -> np.ndarray:
        check_is_fitted(self, "backbone_")
        o = self.options_
        images = _as_list(X)
        device = resolve_device_name(o.device)
        if o.precision == "fp16" and device == "cpu":
            raise InvalidValue("fp16 needs a GPU; on the CPU use fp32 or int8")
        runner = BatchRunner(self._engine_for(device))
        out = np.empty((len(images), self.n_features_out_), dtype=np.float32)
        bad = []
        dataset = ImageDataset(images, self.backbone_.preprocessing, o.max_pixels)
        for batch in batches(dataset, o.batch_size, o.workers, device_type=device.split(":")[0]):
            bad += [(images[i], reason) for i, reason, _ in batch.failures]
            if batch.indices:
                features = runner(batch.images)
                out[batch.indices] = np.concatenate([features[layer] for layer in self.layers_], axis=1)
        if bad:
            listed = "; ".join(f"{_name(img)}: {reason}" for img, reason in bad[:3])
            raise FeaturebankError(
                f"{len(bad)} image(s) could not be embedded: {listed}{' ...' if len(bad) > 3 else ''}"
            )
        return out

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        check_is_fitted(self, "backbone_")
        return np.array([f"{layer}:{i}" for layer in self.layers_ for i in range(self.dims_[layer])], dtype=object)

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_engine", None)  # an ONNX Runtime session or a traced graph: rebuilt on first use
        state.pop("_engine_device", None)
        state.pop("_calibration", None)  # pixels: the engine is in the engine folder once transform ran
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
            raise InvalidValue(f"Embedder takes a list of paths or PIL images, not an array of shape {X.shape}")
    if isinstance(X, (str, bytes)):
        raise InvalidValue("Embedder takes a list of paths or PIL images, not a single string")
    return list(X)


def _name(image) -> str:
    return str(image) if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__") else type(image).__name__
