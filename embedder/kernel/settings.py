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

from .errors import FileProblem, InvalidValue
from .preprocess import Preprocessing

POOLINGS = ("avg", "max", "avgmax", "cls", "cls+avg")  # cls, cls+avg: token layers of timm ViTs
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
TORCH_PRECISIONS = ("fp32", "fp16", "bf16")  # what torch computes in (int8 runs on ONNX Runtime)
ONNX_PRECISIONS = ("fp32", "int8")  # what an ONNX Runtime engine, and an exported file, computes in
TTAS = ("none", "flip")  # test-time augmentation: "flip" is the mean of the image's and its mirror's vectors
AUGMENTATIONS = (
    "flip",
    "trivial",
    "none",
)  # training-time policies (embedder.backbones.augment; not a setting of vectors)
CALIBRATIONS = ("minmax",)  # ORT's percentile/entropy hold every activation of every image: >10 GB (MobileNetV2, 245)
# How int8 is computed (embedder.engines.quantize.SCHEMES): uint8 activations with per-channel int8 weights (u8s8), the same
# with 7-bit weights (u8s8-reduce: no 16-bit saturation on CPUs without VNNI), per-tensor int8 weights (u8s8-tensor),
# per-channel uint8 weights (u8u8). "auto" asks for the CPU's default and its fallbacks (embedder.engines.quantize.ladder).
INT8_SCHEMES = ("u8s8", "u8s8-reduce", "u8s8-tensor", "u8u8")


@dataclass(frozen=True)
class Int8:
    """Post-training static int8 (ONNX Runtime QDQ, uint8 activations, weights as ``scheme`` says), calibrated on
    ``images`` images drawn reproducibly (``seed``) from the input. ``calibration_set`` is a hash of those images'
    bytes: two inputs with other calibration images get other int8 models, hence other settings. ``scheme`` and
    ``fp32_layers`` (the convolutions that lost most on the calibration images, kept in fp32) are settings too: two
    schemes, two caches. ``scheme="auto"`` is a request only (the CPU's choice, ``embedder.engines.quantize.choose_int8``);
    settings that name vectors always hold the scheme chosen."""

    images: int = 256
    seed: int = 0
    method: str = "minmax"
    calibration_set: str = ""  # blake2b of the sorted content digests of the calibration images; "" until drawn
    fp32_tail: bool = True  # keep each output's last convolution and what follows it in fp32 (measured: README)
    scheme: str = "auto"  # a stored dict without it is "u8s8" (the only scheme before there were others)
    fp32_layers: int = 0

    def __post_init__(self):
        if self.scheme not in ("auto", *INT8_SCHEMES):
            raise InvalidValue(f"unknown int8 scheme {self.scheme!r}: choose one of auto, {', '.join(INT8_SCHEMES)}")
        if self.fp32_layers < 0:
            raise InvalidValue("fp32_layers must be at least 0")
        if self.method not in CALIBRATIONS:
            raise InvalidValue(f"unknown calibration {self.method!r}: choose one of {', '.join(CALIBRATIONS)}")
        if self.images < 1:
            raise InvalidValue("--calibration-images must be at least 1")

    def to_dict(self) -> dict:
        """The five keys of before, then ``scheme`` unless u8s8 and ``fp32_layers`` unless 0 (older int8 caches, all
        u8s8, keep their settings key)."""
        d: dict = {
            "images": self.images,
            "seed": self.seed,
            "method": self.method,
            "calibration_set": self.calibration_set,
            "fp32_tail": self.fp32_tail,
        }
        if self.scheme != "u8s8":
            d["scheme"] = self.scheme
        if self.fp32_layers:
            d["fp32_layers"] = self.fp32_layers
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Int8:
        return cls(**{"scheme": "u8s8", **d})

    @property
    def name(self) -> str:
        """The scheme as a person reads it: ``u8s8-reduce``, ``u8s8-reduce + 4 layers fp32``."""
        return self.scheme + (f" + {self.fp32_layers} layers fp32" if self.fp32_layers else "")


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
        for name in ("backbone", "weights"):  # a crafted record: a number where a name goes
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise InvalidValue(f"{name} must be a name, not {getattr(self, name)!r}")
        if not isinstance(self.layers, (list, tuple)) or not all(isinstance(n, str) and n for n in self.layers):
            raise InvalidValue(f"layers must be a list of layer names, not {self.layers!r}")
        object.__setattr__(self, "layers", tuple(self.layers))  # () in ``without_layers`` and a bundle's settings
        if self.tta not in TTAS:
            raise InvalidValue(f"unknown test-time augmentation {self.tta!r}: choose one of {', '.join(TTAS)}")
        if self.pooling not in POOLINGS:
            raise InvalidValue(f"unknown pooling {self.pooling!r}: choose one of {', '.join(POOLINGS)}")
        if self.precision not in PRECISIONS:
            raise InvalidValue(f"unknown precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if (self.precision == "int8") != (self.int8 is not None):
            raise InvalidValue("int8 settings go with precision int8, and only with it")

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
            raise FileProblem(f"settings written by a newer featurebank ({', '.join(unknown)}): upgrade featurebank")
        try:
            p = dict(d.get("preprocessing") or {})
            if p:
                p["mean"], p["std"] = tuple(p["mean"]), tuple(p["std"])
            try:
                prep = Preprocessing(**p)
            except InvalidValue as exc:  # a crafted or damaged record: a crop of 100,000 px, a std of 0
                raise InvalidValue(f"preprocessing {exc}") from None
            int8 = Int8.from_dict(d["int8"]) if d.get("int8") else None
            return cls(
                backbone=d["backbone"],
                weights=d["weights"],
                layers=d["layers"],  # __post_init__ checks it is a list of names (a string is not)
                pooling=d.get("pooling", "avg"),
                preprocessing=prep,
                precision=d.get("precision", "fp32"),
                int8=int8,
                tta=d.get("tta", "none"),
            )
        except (KeyError, TypeError) as exc:
            raise FileProblem(f"unreadable extraction settings ({type(exc).__name__}: {exc})") from None

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
