"""The probe's features from the views pass (``--augment views``): no separate extraction. The center view of each
image (the weights' preprocessing, what ``extract`` embeds) runs through the frozen trunk once, into the trunk store
the epochs read; the probe's features are those rows through the remaining layers as loaded (evaluation mode), up
to the head's input: the extraction's penultimate features, within the float16 rounding of the rows.

``CenterEmbedding`` plays ``split.Embedding``'s part: the same listing (``sources.list_images``), the same decoding
(``embedder.inputs.batches``: the same failures and reasons, the same content digests), rows in the input's order, the
failed files in ``skipped``. So the good images, and the split made from them, are the pixel path's.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from embedder.backbones.features import autocast_for, pool
from embedder.backbones.registry import head_name, tokens
from embedder.inputs.decode import file_digest, max_file_bytes
from embedder.inputs.sources import list_images

from .cached_loop import trunk_store
from .split import Embedded
from .trunk import fill


def listed_digest(path: str, max_pixels: int) -> str:
    """The digest decoding will record, taken before (the store is keyed by it); "" for a file that cannot be read
    (decoding then gives the reason)."""
    try:
        return file_digest(path, max_file_bytes(max_pixels))
    except OSError:
        return ""


@dataclass
class Phase:
    """The center pass before training (the training and validation images): what ``views.json`` reports."""

    images: int = 0  # files given (listed without an error)
    computed: list[str] = field(default_factory=list)  # digests of the images whose center was computed now
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {
            "images": self.images,
            "computed_images": len(set(self.computed)),
            "seconds": round(self.seconds, 2),
            "computed": list(self.computed),
        }


class CenterEmbedding:
    """``split.Embedding``'s part on the views path: ``(source, part)`` → the good rows (``Embedded``), their
    features the head's input of the remaining layers as loaded, on the stored center views.

    ``model`` is the loaded backbone (its own head) on ``device``, before any change: its trunk is shared (frozen,
    it never changes), the layers after the cut are copied, so that the test images, embedded after training, get
    the features the probe was fit on, not the fine-tuned layers'."""

    def __init__(
        self,
        model: nn.Module,
        blocks: list[str],
        settings: dict,
        prep,
        *,
        cache_dir: str | None,
        device: torch.device,
        precision: str,
        batch_size: int,
        workers: int,
        max_pixels: int,
        progress: bool = False,
    ):
        self.trunk, rest, self.store = trunk_store(model, blocks, settings, prep, cache_dir)
        self.rest = copy.deepcopy(rest).eval()  # the layers after the cut as loaded: training changes the model's
        self.head = self.rest.get_submodule(head_name(model))
        self.tokens = tokens(model)
        self.prep, self.device, self.precision, self.max_pixels = prep, device, precision, max_pixels
        self.run = dict(
            device=device,
            autocast=autocast_for(device, precision),
            batch_size=batch_size,
            workers=workers,
            max_pixels=max_pixels,
            progress=progress,
        )
        self.skipped: list[dict] = []
        self.caches = [self.store.folder]
        self.seconds = 0.0  # the passes over the inputs, features included
        self.phase = Phase()  # before training

    def __call__(self, source, part: str) -> Embedded:
        started = time.perf_counter()
        listing = list_images(source)
        good = [item for item in listing.items if not item.error]
        paths = [listing.full_path(item) for item in good]
        digests = [listed_digest(p, self.max_pixels) for p in paths]
        self.trunk.eval()
        computed, failed = fill(self.store, self.trunk, paths, digests, ("center",), self.prep, **self.run)
        ok = [i for i, p in enumerate(paths) if p not in failed]
        features = self.features([digests[i] for i in ok])
        reasons = {item.path: item.error for item in listing.items if item.error}
        reasons.update({item.path: failed[p] for item, p in zip(good, paths) if p in failed})
        self.skipped += [
            {"path": item.path, "reason": reasons[item.path], "part": part}
            for item in listing.items
            if item.path in reasons
        ]
        labels = [good[i].label for i in ok]
        seconds = time.perf_counter() - started
        self.seconds += seconds
        if part != "--test":  # the pass before training (the test images come after it)
            self.phase.images += len(paths)
            self.phase.computed += computed
            self.phase.seconds += seconds
        return Embedded(
            listing.source,
            np.array(labels, dtype=str) if any(labels) else None,
            [paths[i] for i in ok],
            features,
            [good[i].group for i in ok],
            [digests[i] for i in ok],
        )

    @torch.no_grad()
    def features(self, digests: list[str]) -> np.ndarray:
        """The head's input (pooled as ``extract`` pools the penultimate layer) for the stored center views of
        ``digests``, through the remaining layers as loaded, in evaluation mode, a batch at a time."""
        where = self.store.locate([(d, "center") for d in digests])
        seen: list[torch.Tensor] = []
        hook = self.head.register_forward_pre_hook(
            lambda module, args: seen.append(pool(args[0].float(), "avg", self.tokens).cpu())
        )
        batch = self.run["batch_size"]
        try:
            self.rest.eval()
            for start in range(0, len(where), batch):
                x = torch.from_numpy(self.store.gather(where[start : start + batch])).to(self.device).float()
                with autocast_for(self.device, self.precision):
                    self.rest(x)
        finally:
            hook.remove()
        return torch.cat(seen).numpy() if seen else np.zeros((0, 0), dtype=np.float32)
