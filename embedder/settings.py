"""What a feature vector depends on, as one value: ``ExtractionSettings``.

It is what the cache records (``attrs["settings"]``), what a model bundle carries, what names an exported engine
file, and what ``extract``, ``Embedder`` and fine-tuning's probe embed with. Serialized to a canonical dict: keys
added after format 1 appear only when they differ from their default, so older caches open unchanged and keep
their settings key (and so their default file name).

What does *not* belong here: how the vectors are computed when that cannot change them beyond float rounding
(the engine, threads, batch size, device for fp32). Those are recorded per run, in the cache's ``info``.
Importing this module imports no torch.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace

from .errors import FeaturebankError
from .preprocess import Preprocessing

POOLINGS = ("avg", "max", "avgmax", "cls", "cls+avg")  # cls, cls+avg: token layers of timm ViTs
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
TORCH_PRECISIONS = ("fp32", "fp16", "bf16")  # what torch computes in (int8 runs on ONNX Runtime)
ONNX_PRECISIONS = ("fp32", "int8")  # what an ONNX Runtime engine, and an exported file, computes in
TTAS = ("none", "flip")  # test-time augmentation: "flip" is the mean of the image's and its mirror's vectors
AUGMENTATIONS = ("flip", "trivial", "none")  # training-time policies (embedder.augment; not a setting of vectors)
CALIBRATIONS = ("minmax",)  # ONNX Runtime 1.31's percentile and entropy calibrators fail on these graphs


@dataclass(frozen=True)
class Int8:
    """Post-training static int8 (ONNX Runtime QDQ: per-channel int8 weights, uint8 activations), calibrated on
    ``images`` images drawn reproducibly (``seed``) from the input. ``calibration_set`` is a hash of those images'
    bytes: two inputs with other calibration images get other int8 models, hence other settings."""

    images: int = 256
    seed: int = 0
    method: str = "minmax"
    calibration_set: str = ""  # blake2b of the sorted content digests of the calibration images; "" until drawn
    fp32_tail: bool = True  # keep each output's last convolution and what follows it in fp32 (measured: README)

    def __post_init__(self):
        if self.method not in CALIBRATIONS:
            raise FeaturebankError(f"unknown calibration {self.method!r}: choose one of {', '.join(CALIBRATIONS)}")
        if self.images < 1:
            raise FeaturebankError("--calibration-images must be at least 1")

    def to_dict(self) -> dict:
        return {
            "images": self.images,
            "seed": self.seed,
            "method": self.method,
            "calibration_set": self.calibration_set,
            "fp32_tail": self.fp32_tail,
        }


@dataclass(frozen=True)
class ExtractionSettings:
    """Everything the cached vectors depend on. Two runs with equal settings give interchangeable rows."""

    backbone: str
    weights: str  # identity: a torchvision enum name, "sha256:<hex>" of a file, or "none:seed=<n>"
    layers: tuple[str, ...]
    pooling: str = "avg"
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    precision: str = "fp32"
    int8: Int8 | None = None  # set exactly when precision is int8
    tta: str = "none"  # "flip": each layer's pooled vector averaged with that of the left-right mirrored image

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(self.layers))
        if self.tta not in TTAS:
            raise FeaturebankError(f"unknown test-time augmentation {self.tta!r}: choose one of {', '.join(TTAS)}")
        if self.pooling not in POOLINGS:
            raise FeaturebankError(f"unknown pooling {self.pooling!r}: choose one of {', '.join(POOLINGS)}")
        if self.precision not in PRECISIONS:
            raise FeaturebankError(f"unknown precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if (self.precision == "int8") != (self.int8 is not None):
            raise FeaturebankError("int8 settings go with precision int8, and only with it")

    # -- serialization ------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The canonical form stored in caches and bundles (format 1 keys always; newer keys when not default)."""
        d = {
            "backbone": self.backbone,
            "weights": self.weights,
            "layers": list(self.layers),
            "pooling": self.pooling,
            "preprocessing": self.preprocessing.to_dict(),
            "precision": self.precision,
        }
        if self.int8 is not None:
            d["int8"] = self.int8.to_dict()
        if self.tta != "none":
            d["tta"] = self.tta
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ExtractionSettings:
        """Read a stored dict; keys an older featurebank did not write take their defaults."""
        unknown = sorted(set(d) - set(cls.__dataclass_fields__)) + sorted(
            f"preprocessing.{k}" for k in set(d.get("preprocessing") or {}) - set(Preprocessing.__dataclass_fields__)
        )
        if unknown:  # a newer featurebank's setting: the vectors depend on something this version cannot honour
            raise FeaturebankError(
                f"settings written by a newer featurebank ({', '.join(unknown)}): upgrade featurebank"
            )
        try:
            p = dict(d.get("preprocessing") or {})
            if p:
                p["mean"], p["std"] = tuple(p["mean"]), tuple(p["std"])
            prep = Preprocessing(**p)
            int8 = Int8(**d["int8"]) if d.get("int8") else None
            return cls(
                backbone=d["backbone"],
                weights=d["weights"],
                layers=tuple(d["layers"]),
                pooling=d.get("pooling", "avg"),
                preprocessing=prep,
                precision=d.get("precision", "fp32"),
                int8=int8,
                tta=d.get("tta", "none"),
            )
        except (KeyError, TypeError) as exc:
            raise FeaturebankError(f"unreadable extraction settings ({type(exc).__name__}: {exc})") from None

    @property
    def key(self) -> str:
        """A short hash of the canonical dict: names engine files, and (with the input) default cache files."""
        return settings_key(self.to_dict())

    def without_layers(self) -> ExtractionSettings:
        """What an engine of any layer subset shares (layers aside)."""
        return replace(self, layers=())

    def differences(self, other: ExtractionSettings) -> list[str]:
        a, b = self.to_dict(), other.to_dict()
        return [
            f"{k}: {a.get(k)!r} in the cache, {b.get(k)!r} now" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)
        ]


def split_layers(values) -> list[str] | None:
    """Layer names given repeated or comma-separated (``--layer layer3,penultimate``); None when there are none."""
    return [v.strip() for value in values for v in value.split(",") if v.strip()] or None


def settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
