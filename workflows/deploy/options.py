"""``export``'s options as one value (each field says once its default, help and reading:
``embedder.options.option``): ``workflows.deploy.entry.export(model, options, **overrides)``. Imports nothing heavy, so that the command line can build it before anything runs."""

from __future__ import annotations

from dataclasses import dataclass

from embedder.kernel.settings import ONNX_PRECISIONS, Int8
from embedder.options import BACKBONE, ExtractOptions, RunOptions, option, same_as


@dataclass(frozen=True, kw_only=True)
class ExportOptions:
    out: str | None = option(None, "The ONNX file to write.", short="-o", path={"dir_okay": False}, required=True)
    precision: str | None = option(
        None,
        "int8: the backbone calibrated as extract --precision int8 does, the head "
        "in fp32. [default: the model's own precision]",
        choices=ONNX_PRECISIONS,
    )
    backbone: str | None = option(
        None, "A checkpoint's architecture (default: what it records).", short="-b", check=BACKBONE
    )
    weights: str | None = option(
        None, "Where the model's weights file is now, if it moved (checked by sha256).", short="-w"
    )
    images: str | None = option(
        None,
        "int8: labelled images to calibrate on and to compare fp32 with int8 on "
        "(default: the model's training images; a checkpoint needs them).",
        path={},
    )
    calibration_images: int = same_as(
        ExtractOptions, "calibration_images", "int8: images drawn reproducibly to calibrate on."
    )
    seed: int = same_as(ExtractOptions, "seed", "Seed of the int8 calibration draw.")
    trust_pickle: bool = same_as(RunOptions, "trust_pickle")

    @property
    def int8(self) -> Int8:
        """The calibration an int8 export draws (when the model is not int8 already)."""
        return Int8(self.calibration_images, self.seed)
