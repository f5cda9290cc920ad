"""``select``'s options as one value (light to import: the command line reads it before anything heavy)."""

from __future__ import annotations

from dataclasses import dataclass

from embedder.options import option

from .options import LABELS_ONCE
from .select_rules import DUPLICATE_COSINE, RULES


@dataclass(frozen=True, kw_only=True)
class SelectOptions:
    """``select``'s options besides the cache and the output: ``classifiers.selection.select(cache, options,
    out=..., **overrides)``."""

    budget: int = option(None, "How many images to pick (1 or more).", required=True, metavar="N", low=1)
    labels: str | None = option(
        None,
        "A path,label CSV of the images labelled so far (paths as the cache names them, or the files' own paths; an empty label: not yet), "
        "on top of the cache's own labels.",
        path={"exists": True, "dir_okay": False},
        metavar="LABELLED.csv",
        once=LABELS_ONCE,
    )
    exclude: tuple[str, ...] = option(
        (),
        "Images already sent out for labelling, never picked: a CSV with a path column (an earlier TO_LABEL.csv) "
        "or a list, one path a line. Repeatable.",
        multiple=True,
        path={"exists": True, "dir_okay": False},
        metavar="FILE",
    )
    layer: str | None = option(None, "Layer of the cache. [default: its first]", short="-l")
    strategy: str = option(
        "auto",
        "The rule: auto picks the stage's default (no labels yet, or some), chosen on flowers (docs/few-labels.md). "
        "Cold start: kmeans, "
        "typiclust, probcover; with labels of two classes or more: coverage-margin, badge, cluster-margin, margin; "
        "random in both.",
        choices=("auto", *RULES),
    )
    seed: int = option(0, "Seed of k-means and of the random draws.")
    duplicate_cosine: float = option(
        DUPLICATE_COSINE,
        "A row this similar (cosine) to a picked or labelled image is a near-duplicate and is not picked; 1: off.",
        low=0.0,
        high=1.0,
    )


__all__ = ["SelectOptions"]
