"""The engine folder (``<cache folder>/engines``): exported models and small records, keyed by settings.

An exported model ``<name>.onnx`` has a sidecar ``<name>.json`` that holds its sha256 and what it was made from.
Both are written under a temporary name and renamed, so a kill leaves a whole file or none; a model whose bytes
do not match its sidecar (truncated, corrupt, edited) is reported and rebuilt, never loaded. Records
(``records/<key>.json``) memoize what would otherwise need torch to work out (resolved settings, the measured
engine choice), so that a run whose engine is ready imports no torch at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Callable
from typing import TypeVar

from .atomic import write_atomically
from .errors import FeaturebankError, FileProblem

T = TypeVar("T")

ENGINE_DIR_ENV = "FEATUREBANK_ENGINE_DIR"


def engine_dir_for(cache_path: str | None = None, cache_dir: str | None = None) -> str:
    """``$FEATUREBANK_ENGINE_DIR``, else ``engines/`` beside the cache file (or in the default cache folder)."""
    if os.environ.get(ENGINE_DIR_ENV):
        return os.path.abspath(os.environ[ENGINE_DIR_ENV])
    if cache_path:
        return os.path.join(os.path.dirname(os.path.abspath(cache_path)), "engines")
    folder = cache_dir or os.environ.get("FEATUREBANK_CACHE_DIR") or "cache"
    return os.path.abspath(os.path.join(folder, "engines"))


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


MAX_WEIGHTS_BYTES = 64 << 30  # the largest checkpoint a model file may name (timm's largest ViTs are a few GB)


def weights_digest(path: str) -> str:
    """The sha256 of a weights file a model names, read only when it is a regular file of a size between one byte
    and ``MAX_WEIGHTS_BYTES``, and never past the size it had when opened: a FIFO, a device or ``/proc/self/pagemap``
    (a "regular" file of size 0 that never ends) is one line, not a hang."""
    import hashlib
    import stat

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise FileProblem(f"cannot read the weights file {path}: {exc.strerror or exc}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise FileProblem(f"the weights file {path} is not a regular file: pass --weights PATH to the file")
    with os.fdopen(fd, "rb") as fh:
        if st.st_size == 0:
            raise FileProblem(f"the weights file {path} is empty: pass --weights PATH to the file")
        if st.st_size > MAX_WEIGHTS_BYTES:
            raise FileProblem(
                f"the weights file {path} is {st.st_size:,} bytes, more than any checkpoint "
                f"({MAX_WEIGHTS_BYTES:,}): pass --weights PATH to the file"
            )
        h, left = hashlib.sha256(), st.st_size
        while left > 0:
            block = fh.read(min(left, 1 << 22))
            if not block:
                break
            h.update(block)
            left -= len(block)
    return h.hexdigest()


def _shareable(path: str) -> None:
    """mkstemp makes 0600 files; an engine folder may be shared: give them the mode a plain open() would."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


class EngineStore:
    def __init__(self, folder: str):
        self.folder = os.path.abspath(folder)

    def remove_stale(self, older_than: float = 3600.0) -> None:
        """Temporary files a killed export or calibration left (a running one's are younger)."""
        import time

        try:
            names = os.listdir(self.folder)
        except OSError:
            return
        for n in names:
            p = os.path.join(self.folder, n)
            try:
                if n.endswith(".tmp") and time.time() - os.path.getmtime(p) > older_than:
                    os.unlink(p)
            except OSError:
                pass

    def sidecar(self, name: str) -> dict | None:
        """A model's record as it is on disk (not verified against the model file); None when it is missing,
        damaged or not a JSON object (edited by hand)."""
        try:
            with open(os.path.join(self.folder, f"{name}.json")) as fh:
                meta = json.load(fh)
        except (OSError, ValueError):
            return None
        return meta if isinstance(meta, dict) else None

    def model_path(self, name: str) -> str:
        return os.path.join(self.folder, f"{name}.onnx")

    def new_model_path(self, name: str) -> str:
        """A temporary path in the folder to export to; ``save_model`` renames it into place."""
        os.makedirs(self.folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f"{name}.", suffix=".onnx.tmp")
        os.close(fd)
        return tmp

    def save_model(self, name: str, tmp: str, meta: dict) -> str:
        """Put an exported file in place with its sidecar (hash and ``meta``). Returns its final path."""
        final = self.model_path(name)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        _shareable(tmp)
        meta = {**meta, "sha256": sha256_of(tmp), "bytes": os.path.getsize(tmp)}
        os.replace(tmp, final)
        write_atomically(os.path.join(self.folder, f"{name}.json"), json.dumps(meta, indent=1).encode())
        return final

    def find_model(self, name: str) -> tuple[str, dict] | None:
        """``(path, sidecar)`` of a model whose bytes match its sidecar; None when absent. A mismatch is said on
        stderr once and treated as absent (the caller rebuilds it)."""
        path, side = self.model_path(name), os.path.join(self.folder, f"{name}.json")
        if not os.path.exists(path) and not os.path.exists(side):
            return None
        try:
            with open(side) as fh:
                meta = json.load(fh)
            ok = os.path.getsize(path) == meta["bytes"] and sha256_of(path) == meta["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            sys.stderr.write(f"featurebank: {path} does not match its record (corrupt or incomplete); rebuilding it\n")
            return None
        return path, meta

    def update_meta(self, name: str, **changes) -> None:
        side = os.path.join(self.folder, f"{name}.json")
        with open(side) as fh:
            meta = json.load(fh)
        write_atomically(side, json.dumps({**meta, **changes}, indent=1).encode())

    # -- records: small JSON answers, keyed by what they were computed from -----------------------------------
    def record(self, kind: str, key: dict, read: Callable[[dict], T]) -> T | None:
        """``read(value)`` of the record stored for ``key``; None when there is none, it was stored for another key,
        or it is not of the shape ``read`` expects (a damaged or hand-edited record is computed again, as a damaged
        model is rebuilt, never a traceback)."""
        path = self._record_path(kind, key)
        try:
            with open(path) as fh:
                stored = json.load(fh)
            if not isinstance(stored, dict) or stored.get("key") != key or not isinstance(stored.get("value"), dict):
                return None
            return read(stored["value"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError, FeaturebankError):
            return None

    def put_record(self, kind: str, key: dict, value: dict) -> None:
        try:
            write_atomically(self._record_path(kind, key), json.dumps({"key": key, "value": value}).encode())
        except OSError:  # a read-only folder costs speed next time, not correctness
            pass

    def _record_path(self, kind: str, key: dict) -> str:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        return os.path.join(self.folder, "records", f"{kind}-{digest}.json")
