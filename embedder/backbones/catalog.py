"""What can be embedded with: the backbones and their feature sizes, and the layers of one backbone (``featurebank
backbones`` and ``featurebank layers`` print these rows; ``--json`` prints them as they are)."""

from __future__ import annotations

from .features import pooled_dim
from .registry import PENULTIMATE, layer_shapes, resolve_layers, skeleton


def layer_rows(backbone: str, size: int | None = None, pooling: str = "avg") -> list[dict]:
    """The nodes ``--layer`` accepts, with output shapes and vector sizes; the penultimate one (the default) marked."""
    model = skeleton(backbone)
    penultimate = resolve_layers(model, [PENULTIMATE])[0]
    return [
        {
            "node": n,
            "shape": list(s),
            "vector": pooled_dim(s, pooling) if len(s) in (1, 2, 3) else None,
            "penultimate": n == penultimate,
        }
        for n, s in layer_shapes(backbone, size)
    ]


def layers_text(rows: list[dict]) -> list[str]:
    lines = [f"  {'node':40} {'output shape':>18} {'vector':>7}"]
    for r in rows:
        lines.append(
            f"{'*' if r['penultimate'] else ' '} {r['node']:40} {'x'.join(map(str, r['shape'])):>18} "
            f"{r['vector'] if r['vector'] is not None else '-':>7}"
        )
    return lines
