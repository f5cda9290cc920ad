"""A frozen backbone → one ONNX graph: uint8 ``N x 3 x crop x crop`` in, one pooled float32 output per layer.

Normalization, pooling and test-time augmentation (``tta="flip"``: the mirror and the mean) are inside the graph,
so that the engine only moves uint8 pixels in and vectors out, exactly the computation of ``TorchEngine`` (the same ``FeatureExtractor``). torch's TorchScript-based exporter is
used: it exports torchvision's traced feature extractors as they are (the dynamo exporter needs onnxscript and
rewrites more), with a dynamic batch dimension.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import torch
from torch import nn

from embedder.backbones.features import FeatureExtractor
from embedder.kernel.errors import FeaturebankError, first_line
from embedder.kernel.settings import ExtractionSettings

OPSET = 17


class _Normalized(nn.Module):
    """uint8 pixels → normalized float → the chosen layers, pooled, in ``settings.layers`` order."""

    def __init__(self, model: nn.Module, settings: ExtractionSettings):
        super().__init__()
        prep = settings.preprocessing
        self.extractor = FeatureExtractor(model, list(settings.layers), settings.pooling, settings.tta)
        self.register_buffer("scale", 1.0 / (255.0 * torch.tensor(prep.std).view(1, 3, 1, 1)))
        self.register_buffer("shift", (torch.tensor(prep.mean) / torch.tensor(prep.std)).view(1, 3, 1, 1))
        self.layers = list(settings.layers)

    def forward(self, images: torch.Tensor):
        out = self.extractor(images.float() * self.scale - self.shift)
        return tuple(out[layer] for layer in self.layers)


def export_onnx(model: nn.Module, settings: ExtractionSettings, path: str) -> None:
    """Write the ONNX graph of ``model`` for ``settings`` to ``path``; a model the exporter cannot take is a
    FeaturebankError naming the reason (the caller falls back to torch)."""
    wrapper = _Normalized(model.eval(), settings).eval()
    crop = settings.preprocessing.crop
    example = torch.zeros(2, 3, crop, crop, dtype=torch.uint8)
    names = list(settings.layers)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.inference_mode(False):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                (example,),
                path,
                dynamo=False,
                opset_version=OPSET,
                input_names=["images"],
                output_names=names,
                dynamic_axes={"images": {0: "batch"}, **{n: {0: "batch"} for n in names}},
            )
    except Exception as exc:
        first = first_line(exc)
        raise FeaturebankError(
            f"{settings.backbone} cannot be exported to ONNX ({type(exc).__name__}: {first})"
        ) from None
    if settings.tta != "none":
        with torch.inference_mode():
            widths = [int(t.shape[1]) for t in wrapper(example)]
        _static_widths(path, widths)


def _static_widths(path: str, widths: list[int]) -> None:
    """Write the outputs' vector lengths into the graph where the exporter left a symbol (after tta's Reshape and
    ReduceMean it does): deployment reads the width of its head's input from there."""
    import onnx

    model = onnx.load(path)
    for output, width in zip(model.graph.output, widths):
        dim = output.type.tensor_type.shape.dim[1]
        dim.ClearField("dim_param")
        dim.dim_value = width
    onnx.save(model, path)
