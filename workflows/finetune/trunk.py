"""The frozen trunk, run once: the network cut before its first unfrozen block, its output for the fixed views of
each image (``fixed_views``) computed one time, kept on disk in float16 and read back memory-mapped, so that every
epoch runs only the unfrozen blocks and the head.

- ``split_at``: the model as two graphs that share its modules (``torch.fx``, blocks kept whole): ``trunk``
  (input → the cut) and ``rest`` (the cut → logits). Training ``rest`` trains the model itself.
- ``TrunkStore``: rows keyed by (file digest, view) in a folder keyed by the backbone settings and the cut. Written
  like extraction's parts: each batch is one ``.npy`` plus its ``.json`` list of keys, each written to a temporary
  name and renamed, the list last, so that a kill keeps every finished batch and never a half one; a changed file
  has another digest, so its views are computed again.
- ``fill``: the missing rows of some images (only the views each lacks), a batch of images at a time (memory
  bounded by the batch).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import inspect
import io
import json
import os
import sys
import uuid
from typing import cast

import numpy as np
import torch
from torch import fx, nn
from tqdm import tqdm

from embedder.inputs.batches import ImageDataset, batches
from embedder.inputs.decode import file_kind
from embedder.kernel.atomic import atomic_path
from embedder.kernel.errors import FileProblem, InvalidValue, first_line
from embedder.kernel.preprocess import Preprocessing

from .fixed_views import VIEWS_VERSION, ViewsTransform

GPU_CHUNK = 8  # on a GPU the trunk runs on 8 training batches of view-images at a time (memory is plenty there)


def unavailable(reason: str, message: str) -> ViewsUnavailable:
    error = ViewsUnavailable(message)
    error.reason = reason
    return error


class BlockTracer(fx.Tracer):
    """Traces a model with its blocks (and head) as single calls, so that a block is a node to cut before."""

    def __init__(self, leaves):
        super().__init__()
        self.leaves = set(leaves)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.leaves or super().is_leaf_module(m, qualname)


def defaults_of(model: nn.Module) -> dict:
    """The forward's optional arguments at their defaults (timm's ViT: ``attn_mask=None``, ``is_causal=False``),
    so that tracing sees one input, the images."""
    params = list(inspect.signature(model.forward).parameters.values())[1:]
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def split_at(model: nn.Module, block: str, leaves) -> tuple[fx.GraphModule, fx.GraphModule]:
    """``(trunk, rest)`` with ``rest(trunk(x)) == model(x)``: the cut is the input of ``block``. Both share the
    model's modules (training ``rest`` trains ``model``; its hooks and train/eval modes apply). Refused, in one
    line, when anything after the cut needs the input other than through the cut."""
    was_training = model.training
    model.eval()  # Inception's auxiliary head: traced out, as in evaluation
    try:
        graph = BlockTracer([*leaves, block]).trace(model, concrete_args=defaults_of(model))
    except Exception as exc:  # noqa: BLE001 - any tracing failure is the same answer for the user
        raise unavailable(
            f"{type(model).__name__} cannot be split into blocks by torch.fx ({type(exc).__name__})",
            f"--augment views cannot split {type(model).__name__} into blocks "
            f"({type(exc).__name__}); use --augment pixels",
        ) from None
    finally:
        model.train(was_training)
    calls = [n for n in graph.nodes if n.op == "call_module" and n.target == block]
    if len(calls) != 1 or not calls[0].args or calls[0].all_input_nodes != [calls[0].args[0]]:  # one tensor in
        raise unavailable(
            f"{block} is not called once on one tensor",
            f"--augment views cannot cut before {block} (it is not called once on one tensor); use --augment pixels",
        )
    cut = calls[0].args[0]
    output = next(n for n in graph.nodes if n.op == "output")

    def needed(start, stop=None) -> set:
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            if node in seen:
                continue
            seen.add(node)
            if node is not stop:
                todo += node.all_input_nodes
        return seen

    before, after = needed(cut), needed(output, stop=cut)
    if cut.op == "placeholder" or any(n.op == "placeholder" for n in after - {cut}):
        raise unavailable(
            f"there is no frozen trunk before {block}, or a later layer reads the input itself",
            f"--augment views cannot cut before {block}: there is no frozen trunk before it, or "
            f"a later layer reads the input itself; use --augment pixels",
        )

    def copy(nodes, start: dict, out_node, g: fx.Graph | None = None) -> fx.Graph:
        g = fx.Graph() if g is None else g
        env = dict(start)
        for node in graph.nodes:
            if node in nodes and node not in env and node.op != "output":
                env[node] = g.node_copy(node, lambda n: env[n])
        g.output(env[out_node])
        return g

    rest_graph = fx.Graph()
    rest_graph = copy(after, {cut: rest_graph.placeholder("cut")}, output.args[0], rest_graph)
    trunk = fx.GraphModule(model, copy(before, {}, cut))
    return trunk.eval(), fx.GraphModule(model, rest_graph)


def store_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]


MAX_INDEX_BYTES = 64 << 20  # a part's key list: a batch's keys take a few kB


class ViewsUnavailable(InvalidValue):
    """``--augment views`` cannot run on this network: it does not split before the cut, or its trunk's output
    does not fit in float16. The default (``auto``) trains on pixels instead, with a note saying why."""

    reason = ""  # the why, in words, for that note


class RejectedPart(Exception):
    """A part of the store that cannot be used, with the reason (it is set aside and its images computed again)."""


class StoreWriteError(FileProblem):
    """The disk refused a part: every part written before it is kept."""


def _write_all(path: str, data: bytes) -> None:
    """``data`` as the file ``path``, written with ``os.write`` until done: a full disk is the ``OSError`` it is
    (ENOSPC), never a short write that numpy reports without an errno."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        view, done = memoryview(data), 0
        while done < len(view):
            done += os.write(fd, view[done:])
    finally:
        os.close(fd)


def write_file(path: str, data: bytes) -> None:
    with atomic_path(path) as tmp:
        _write_all(tmp, data)


def _open_regular(path: str, what: str) -> int:
    """A descriptor of ``path`` when it is a regular file (opened without waiting: a FIFO never blocks)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise RejectedPart(f"its {what} cannot be opened ({exc.strerror or exc})") from None
    kind = file_kind(os.fstat(fd).st_mode)
    if kind:
        os.close(fd)
        raise RejectedPart(f"its {what} is not a regular file ({kind})")
    return fd


def _read_index(path: str) -> list[tuple[str, str]]:
    """A part's key list: a JSON list of ``[digest, view]`` pairs of strings, nothing else."""
    fd = _open_regular(path, "index")
    try:
        if os.fstat(fd).st_size > MAX_INDEX_BYTES:
            raise RejectedPart(f"its index is larger than {MAX_INDEX_BYTES >> 20} MiB")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(MAX_INDEX_BYTES + 1)
    finally:
        os.close(fd)
    try:
        keys = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):
        raise RejectedPart("its index is not readable JSON") from None
    if not isinstance(keys, list) or not all(
        isinstance(k, list) and len(k) == 2 and all(isinstance(x, str) for x in k) for k in keys
    ):
        raise RejectedPart("its index is not a list of [digest, view] pairs")
    return [(k[0], k[1]) for k in keys]


def _read_rows(path: str, count: int, row_shape: tuple[int, ...] | None) -> np.ndarray:
    """A part's rows, memory-mapped, after checking that the file is a regular ``.npy`` of ``count`` float16 rows
    of ``row_shape``, every value finite (read once here, a block at a time)."""
    os.close(_open_regular(path, ".npy"))
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise RejectedPart(f"its .npy is not readable ({first_line(exc)})") from None
    if not isinstance(array, np.ndarray) or array.dtype != np.float16:
        raise RejectedPart(f"rows of {getattr(array, 'dtype', type(array).__name__)}, not float16")
    if array.ndim < 2 or (row_shape is not None and tuple(array.shape[1:]) != tuple(row_shape)):
        raise RejectedPart(f"rows of shape {tuple(array.shape[1:])}, not {tuple(row_shape or ())}")
    if len(array) != count:
        raise RejectedPart(f"its index lists {count} rows and its .npy holds {len(array)}")
    block = max(1, (16 << 20) // max(array[0].nbytes, 1) if len(array) else 1)
    for start in range(0, len(array), block):
        if not np.isfinite(array[start : start + block]).all():
            raise RejectedPart("a row that is not finite (NaN or infinity)")
    return array


class TrunkStore:
    """Trunk outputs at one cut of one backbone setting, one float16 row per (file digest, view), memory-mapped.

    Every part is checked when the store is opened (``row_shape``: the trunk's output for one view, when known):
    a part whose index or rows cannot be used (not regular files, an index that is not a list of pairs, rows of
    another type, shape or count, a value that is not finite) is set aside, its index renamed to
    ``.json.rejected`` so that it is not read again, and its images are computed again (``rejected`` says which
    and why)."""

    def __init__(self, root: str, settings: dict, row_shape: tuple[int, ...] | None = None):
        self.settings = {**settings, "views_version": VIEWS_VERSION}
        self.folder = os.path.join(root, store_key(self.settings))
        self.parts = os.path.join(self.folder, "parts")
        self.row_shape = tuple(row_shape) if row_shape is not None else None
        meta = os.path.join(self.folder, "settings.json")
        try:
            os.makedirs(self.parts, exist_ok=True)
            if not os.path.lexists(meta):
                write_file(meta, json.dumps(self.settings, indent=1, sort_keys=True).encode())
        except OSError as exc:
            raise FileProblem(
                f"cannot use the trunk store {self.parts}: {exc.strerror or exc}; delete {self.folder}, or choose "
                f"another cache folder (FEATUREBANK_CACHE_DIR)"
            ) from None
        self.index: dict[tuple[str, str], tuple[int, int]] = {}
        self.arrays: list[np.ndarray] = []
        self.rejected: list[dict] = []  # {"part": name, "reason": why}, set aside when opened
        self.reload()

    def reload(self) -> None:
        """Open every committed part (its key list exists: it was written after its rows), checked."""
        self.index.clear()
        self.arrays.clear()
        for name in sorted(os.listdir(self.parts)):
            if not name.endswith(".json"):
                continue
            base = os.path.join(self.parts, name[:-5])
            try:
                keys = _read_index(base + ".json")
                array = _read_rows(base + ".npy", len(keys), self.row_shape or self.shape)
            except RejectedPart as exc:
                self.set_aside(base, str(exc))
                continue
            self.add(keys, array)

    def set_aside(self, base: str, reason: str) -> None:
        """A part that cannot be used: renamed out of the store's sight (kept, for a look), its rows to compute."""
        self.rejected.append({"part": os.path.basename(base), "reason": reason})
        with contextlib.suppress(OSError):
            os.replace(base + ".json", base + ".json.rejected")

    def add(self, keys, array: np.ndarray) -> None:
        part = len(self.arrays)
        self.arrays.append(array)
        for row, (digest, view) in enumerate(keys):
            self.index[(digest, view)] = (part, row)

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self.index

    @property
    def shape(self) -> tuple[int, ...] | None:
        return tuple(self.arrays[0].shape[1:]) if self.arrays else self.row_shape

    def write(self, keys: list[tuple[str, str]], rows: np.ndarray) -> None:
        """One finished batch, committed: rows first, then the key list that makes them visible. A full disk is
        one line (``StoreWriteError``) and leaves no temporary file; every part committed before it is kept."""
        if not len(keys):
            return
        base = os.path.join(self.parts, uuid.uuid4().hex)
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(rows, dtype=np.float16))
        try:
            write_file(base + ".npy", buffer.getvalue())
            write_file(base + ".json", json.dumps([list(k) for k in keys]).encode())
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(base + ".npy")
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
            raise StoreWriteError(
                f"cannot write the frozen trunk's rows to {self.parts}: {exc.strerror or exc}; every batch written "
                f"before it is kept: {'free some space (or choose another cache folder), then ' if full else ''}"
                f"run the same command again to continue (with --resume once an epoch is saved)"
            ) from None
        self.add(keys, np.load(base + ".npy", mmap_mode="r"))

    def locate(self, keys) -> np.ndarray:
        """``(part, row)`` of each key, as an ``n x 2`` array (a training epoch gathers with it)."""
        return np.array([self.index[tuple(k)] for k in keys], dtype=np.int64).reshape(-1, 2)

    def gather(self, where: np.ndarray) -> np.ndarray:
        """The float16 rows at ``where`` (``locate``'s rows), in that order; reads only those rows."""
        out = np.empty((len(where), *self.arrays[0].shape[1:]), dtype=np.float16)
        for part in np.unique(where[:, 0]):
            mask = where[:, 0] == part
            out[mask] = self.arrays[part][where[mask, 1]]
        return out


def store_root(cache_dir: str | None) -> str:
    """Under the cache folder, next to the extraction caches: runs with other options reuse the same pass."""
    return os.path.join(cache_dir or os.environ.get("FEATUREBANK_CACHE_DIR") or "cache", "trunk")


@torch.no_grad()
def fill(
    store: TrunkStore,
    trunk: nn.Module,
    paths: list[str],
    digests: list[str],
    views: tuple[str, ...],
    prep: Preprocessing,
    *,
    device: torch.device,
    autocast,
    batch_size: int,
    workers: int | None,
    max_pixels: int,
    progress: bool = False,
) -> tuple[list[str], dict[str, str]]:
    """Compute the missing views of ``paths`` (their digests as recorded before) into ``store``, a batch of images
    at a time: only the views an image lacks (the center view the probe's pass stored is not computed again).
    Returns the digests of the images computed and ``{path: reason}`` of those that could not be (a file that
    fails to decode, or whose bytes changed since their digest was taken)."""
    lacking: dict[tuple[str, ...], list[int]] = {}  # the views missing → the images that miss exactly those
    for i, d in enumerate(digests):
        missing = tuple(v for v in views if (d, v) not in store)
        if missing:
            lacking.setdefault(missing, []).append(i)
    computed: list[str] = []
    failed: dict[str, str] = {}
    if not lacking:
        return computed, failed
    bar = tqdm(
        total=sum(len(todo) for todo in lacking.values()),
        unit="img",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
        desc="frozen trunk",
    )
    with bar:
        for missing, todo in lacking.items():
            dataset = ImageDataset(
                [paths[i] for i in todo], cast(Preprocessing, ViewsTransform(prep, missing)), max_pixels
            )
            for batch in batches(dataset, batch_size, workers, device_type=device.type):
                for i, reason, _ in batch.failures:
                    failed[paths[todo[i]]] = reason
                keep = [j for j, (i, d) in enumerate(zip(batch.indices, batch.digests)) if d == digests[todo[i]]]
                for j, i in enumerate(batch.indices):
                    if j not in keep:
                        failed[paths[todo[i]]] = "the file changed since it was listed: run again"
                bar.update(len(batch.indices) + len(batch.failures))
                if keep:
                    rows = trunk_rows(trunk, torch.as_tensor(batch.images[keep]), prep, device, autocast, batch_size)
                    store.write([(batch.digests[j], v) for j in keep for v in missing], rows)
                    computed += [batch.digests[j] for j in keep]
    return computed, failed


def trunk_rows(trunk, images: torch.Tensor, prep, device: torch.device, autocast, batch_size: int) -> np.ndarray:
    """The trunk's float16 rows of ``images`` (images x views x 3 x H x W uint8), image-major: image 0's views
    first. Refused in one line when they do not fit in float16."""
    chunk = batch_size * (GPU_CHUNK if device.type == "cuda" else 1)  # view-images per forward
    flat = images.flatten(0, 1)
    outs = []
    for start in range(0, len(flat), chunk):
        x = prep.normalize(flat[start : start + chunk].to(device))
        with autocast:
            outs.append(trunk(x).float().cpu())
    exact = torch.cat(outs)
    rows = exact.to(torch.float16)
    lost = int(((rows == 0) & (exact != 0)).sum())  # values below float16's smallest: flushed to zero
    if not torch.isfinite(rows).all() or lost > 0.01 * max(int((exact != 0).sum()), 1):
        raise unavailable(
            "its frozen trunk's output does not fit in float16 (values too large or too small)",
            "the frozen trunk's output does not fit in float16 (values too large or too small): use --augment pixels",
        )
    return rows.numpy()
