"""The report's extras (the neighbour search of the outliers and label issues, the map's coordinates), computed once
per cache, layer and setting and kept beside the cache, so that a later ``cv`` of the same cache reuses them.

They depend only on the features of the rows, never on the folds or classifiers: a file in ``CACHE.extras/``,
named after the cache's fingerprint (its size, modification time, inode, write time and settings key: a cache is
rewritten as a whole file, so any change to it changes these), the layer, the rows and the parameters. A changed
cache computes them again (and its old files are removed); a folder that cannot be written, or a file that cannot
be read, computes them as before, with nothing kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np

from embedder.kernel.atomic import atomic_path

SUFFIX = ".extras"


def fingerprint(reader) -> str:
    """What identifies the cache file's content without reading it: the cache is replaced whole when it changes."""
    return file_fingerprint(reader.path, reader.attrs.get("updated", ""), reader.attrs.get("settings_key"))


def file_fingerprint(path: str, updated=None, settings_key=None) -> str:
    """``fingerprint`` from the file alone (its two attributes read when not given)."""
    if updated is None:
        import h5py

        with h5py.File(path, "r") as f:
            updated, settings_key = (_text(f.attrs.get(k, "")) for k in ("updated", "settings_key"))
    st = os.stat(path)
    parts = [st.st_size, st.st_mtime_ns, st.st_ino, updated, settings_key]
    return hashlib.blake2b(json.dumps(parts, default=str).encode(), digest_size=8).hexdigest()


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def thumbs_folder(cache: str) -> str | None:
    """Where the thumbnails of the images of ``cache`` are kept between run folders (None: no such cache)."""
    try:
        return os.path.join(os.path.abspath(cache) + SUFFIX, f"{file_fingerprint(cache)}-thumbs")
    except (OSError, KeyError, ValueError):
        return None


def sidecar(data, layer: str, what: str, params: dict) -> str:
    """The file of one extra of ``data`` (a ``Labeled``: its cache and its rows) on ``layer``."""
    key = hashlib.blake2b(digest_size=8)
    key.update(json.dumps([layer, what, params], sort_keys=True, default=str).encode())
    key.update(np.ascontiguousarray(data.rows, dtype=np.int64).tobytes())  # the labelled rows, in their order
    return os.path.join(data.reader.path + SUFFIX, f"{fingerprint(data.reader)}-{what}-{key.hexdigest()}.npz")


def remembered(
    data,
    layer: str,
    what: str,
    params: dict,
    compute: Callable[[], dict[str, np.ndarray]],
    valid: Callable[[dict[str, np.ndarray]], bool] | None = None,
) -> tuple[dict[str, np.ndarray], bool]:
    """``compute()``'s arrays, read from the sidecar when this cache, layer, rows and ``params`` made them before
    and ``valid`` accepts them (a file beside the cache can be damaged or planted: indices out of range, NaN); else
    computed and kept (best effort). Returns them and whether they were reused."""
    try:
        path = sidecar(data, layer, what, params)
    except OSError:  # the cache went away under us: nothing to key on
        return compute(), False
    try:
        with np.load(path, allow_pickle=False) as saved:
            found = {name: saved[name] for name in saved.files}
        if valid is None or valid(found):
            return found, True
    except (
        OSError,
        ValueError,
        EOFError,
        KeyError,
        zipfile.BadZipFile,
    ):  # absent, unreadable or half a file from elsewhere
        pass
    arrays = compute()
    try:
        _forget_others(path)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            save: Any = np.savez  # (numpy's stubs take the arrays' names for its own keywords)
            save(fh, **arrays)
    except OSError:  # a read-only folder (a shared cache): computed again next time
        pass
    return arrays, False


def _forget_others(path: str) -> None:
    """The files of an earlier version of the cache (another fingerprint) are of no further use."""
    folder, name = os.path.split(path)
    mine = name.split("-", 1)[0]
    if not os.path.isdir(folder):
        return
    for other in os.listdir(folder):
        if other.startswith(mine + "-"):
            continue
        if other.endswith(".npz"):
            os.unlink(os.path.join(folder, other))
        elif other.endswith("-thumbs"):
            shutil.rmtree(os.path.join(folder, other), ignore_errors=True)


def kept(reader, what: str) -> bool:
    """Whether an extra (``"neighbours"``, ``"map"``) of this version of the cache is kept beside it, for some layer
    and setting: what the budget need not charge again (a close guess: the best layer is known only after the folds).
    """
    try:
        prefix = f"{fingerprint(reader)}-{what}-"
        return any(name.startswith(prefix) for name in os.listdir(reader.path + SUFFIX))
    except (OSError, KeyError, ValueError):
        return False


def neighbours_of(
    data, layer: str, k: int, reference: int, seed: int, approximate: int | None = None, info: dict | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``nearest_neighbours`` of ``data``'s rows on ``layer``, kept beside the cache (the layer is read only when
    they are computed). ``approximate``: the rows beyond which the approximate index answers (None: the module's
    switch, ``neighbours.APPROXIMATE``); ``info``, when given, receives how they were searched (kept with them)."""
    from . import neighbours

    switch = neighbours.APPROXIMATE if approximate is None else approximate
    n = len(data.rows)
    params: dict = {"k": k, "reference": reference, "seed": seed}
    if n > switch:  # the index's settings are part of the key (an exact search's key is as it always was)
        params["index"] = neighbours.index_settings()

    def compute():
        details: dict = {}
        index, similarity = neighbours.nearest_neighbours(data.features(layer), k, reference, seed, switch, details)
        return {"index": index, "similarity": similarity, "search": np.array(json.dumps(details))}

    def valid(found) -> bool:  # integer indices of rows, finite similarities, one row of each per image
        index, similarity = found.get("index"), found.get("similarity")
        return (
            isinstance(index, np.ndarray)
            and isinstance(similarity, np.ndarray)
            and index.dtype.kind in "iu"
            and index.ndim == 2
            and index.shape[0] == n
            and similarity.shape == index.shape
            and similarity.dtype.kind == "f"
            and bool(((index >= 0) & (index < n)).all())
            and not np.isnan(similarity).any()
        )

    found, _ = remembered(data, layer, "neighbours", params, compute, valid)
    if info is not None:
        info.update(_search_details(found.get("search"), n, reference, k))
    return found["index"], found["similarity"]


def _search_details(saved, rows: int, reference: int, k: int) -> dict:
    """How a kept search was made (a file written before this was recorded: what its rows imply)."""
    from .neighbours import search_text

    try:
        details = json.loads(str(saved[()])) if isinstance(saved, np.ndarray) and saved.ndim == 0 else None
    except (ValueError, TypeError):
        details = None
    if not isinstance(details, dict) or not isinstance(details.get("text"), str):
        method = "exact" if rows <= reference else "sample"
        details = {"method": method, "recall": None, "recall_queries": 0, "k": k}
        details["text"] = search_text(rows, reference, method)
    return details


def valid_map(n: int):
    """The check of a kept map of ``n`` rows: rows are distinct row numbers, one finite 2-D point each."""

    def valid(found) -> bool:
        rows, xy, method = found.get("rows"), found.get("xy"), found.get("method")
        return (
            isinstance(rows, np.ndarray)
            and isinstance(xy, np.ndarray)
            and isinstance(method, np.ndarray)
            and method.ndim == 0
            and method.dtype.kind == "U"
            and rows.dtype.kind in "iu"
            and rows.ndim == 1
            and xy.shape == (len(rows), 2)
            and xy.dtype.kind == "f"
            and bool(((rows >= 0) & (rows < n)).all())
            and len(np.unique(rows)) == len(rows)
            and bool(np.isfinite(xy).all())
        )

    return valid


__all__ = ["SUFFIX", "fingerprint", "kept", "neighbours_of", "remembered", "sidecar", "thumbs_folder", "valid_map"]
