"""The HDF5 feature cache: the one module that reads and writes HDF5.

Layout of a cache ``X.h5`` (the README documents it for users)::

    attrs     format, format_version, settings (JSON: what the features depend on), settings_key,
              source (the input it mirrors), root, classes, versions (JSON), info (JSON), updated
    rows/     path, label, group (utf-8 strings), size, mtime_ns (int64), digest (blake2b-128 hex)   [N]
    features/<layer>   float32 [N, D], one dataset per layer, attrs: node, pooling; a fletcher32 checksum per
                       chunk (since it exists: older caches have none and still read)
    failures/ path, reason, digest (strings), size, mtime_ns (int64)                                [F]

Crash safety by construction, not by luck: ``X.h5`` is never modified in place. While a run goes, each
finished batch is written to its own small file ``X.h5.parts/part-NNNNNNNN-rankR.h5`` (written under a
temporary name, flushed to disk, then renamed: it exists whole or not at all). When the run ends, the old ``X.h5`` and
the parts are merged, in input order, into a new file that atomically replaces ``X.h5``; then the parts go.
A kill at any moment (even ``kill -9``) therefore leaves the previous ``X.h5`` intact plus every finished
batch, and the next run continues from there. One writer at a time: ``X.h5.lock`` holds a POSIX record lock (the file
is there while a writer runs, and removed when it is done).

Several processes (the ranks of a torchrun job) write one cache the same way: rank 0 holds the lock for the job
and cleans up what a killed run left, the others then open the cache without the lock (``lock=False``), each
writes parts named by its rank, and once all are done rank 0 takes the others' parts in (``adopt_parts``) and
merges. NNNNNNNN counts on from the largest number already in the folder, so a later run's parts sort after an
earlier run's (later parts win: they hold newer versions of a file).

The merge reads and writes in blocks bounded by bytes whatever the order of the rows: when the new order is
close to the old one it gathers each block of output rows from a few contiguous reads; when it is shuffled (a
reordered manifest) it sorts through a temporary spill file instead (read each source once, write each row to
its output block's region of the spill file, then fill the output block by block).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import os
import re
import shutil
import stat
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import IO

import h5py
import numpy as np

from embedder.inputs.sources import same_files
from embedder.kernel.destination import featurebank_kind, writable_folder
from embedder.kernel.errors import (
    FeaturebankError,
    FileProblem,
    IncompatibleSettings,
    InvalidValue,
    MissingFile,
    Note,
    first_line,
)
from embedder.kernel.settings import ExtractionSettings, settings_key

FORMAT = "featurebank-cache"
FORMAT_VERSION = 1
STRING = h5py.string_dtype("utf-8")
SETTINGS_KEYS = ("backbone", "weights", "layers")  # the settings without a default (older caches may lack others)
ROW_STRINGS = ("path", "label", "group", "digest")
FAILURE_STRINGS = ("path", "reason", "digest")
INTS = ("size", "mtime_ns")  # the stat columns rows/ and failures/ both have (the reader checks them)
PART_NAME = re.compile(r"^part-(\d{8})(?:-rank(\d+))?\.h5$")  # without a rank: parts of older versions
PART_TMP = re.compile(r"^part-\d{8}(?:-rank\d+)?\.h5\.tmp$")  # a part being written (a killed run's, unfinished)
BLOCK_BYTES = 64 << 20  # the merge's unit: output rows filled, source rows read, spill rows moved at a time
GAP_BYTES = 256 << 10  # a gap this small between wanted rows is read through rather than skipped
READ_COST_BYTES = 64 << 10  # the cost of one more read call, in bytes read, when choosing how to merge


_HELD: set[str] = set()  # caches this process is writing
_HELD_GUARD = threading.Lock()


@dataclass(frozen=True)
class Entry:
    """What the cache knows of one path: a row of features in some file, or a failure."""

    source: int  # 0: the main file, k: the k-th part (in order)
    row: int  # row in that file's rows/ (or failures/ when `reason` is set)
    size: int
    mtime_ns: int
    digest: str
    reason: str | None = None


def parts_dir(path: str) -> str:
    return path + ".parts"


def _part_key(name: str) -> tuple[int, int]:
    m = PART_NAME.match(os.path.basename(name))
    assert m is not None, name  # only the names _parts listed
    return int(m.group(1)), int(m.group(2) or 0)


def _part_files(path: str) -> list[str]:
    """The finished parts, oldest first: by number, then rank."""
    folder = parts_dir(path)
    if not os.path.isdir(folder):
        return []
    return sorted((os.path.join(folder, n) for n in os.listdir(folder) if PART_NAME.match(n)), key=_part_key)


def spill_path(path: str) -> str:
    return path + ".spill.tmp"


def _open(path: str, mode: str = "r") -> h5py.File:
    try:
        kind = os.stat(path).st_mode
    except OSError:
        kind = None  # not there (a new cache), or h5py says why below
    if kind is not None and stat.S_ISDIR(kind):
        raise FileProblem(f"{path} is a folder, not a cache file: give the .h5 file (featurebank extract --cache)")
    if kind is not None and not stat.S_ISREG(kind):  # h5py would wait on a FIFO for ever
        raise FileProblem(f"{path} is not a regular file (a FIFO or a device): give the cache file itself")
    try:
        return h5py.File(path, mode, locking="best-effort")
    except OSError as exc:
        if _is_model_file(path):
            raise FileProblem(
                f"{path} is a model file (a zip, as train writes), not a cache: give the .h5 cache; a model file's "
                f"settings and classes are in its featurebank-model.json (unzip -p {path} featurebank-model.json)"
            ) from None
        raise FileProblem(f"cannot open {path} as an HDF5 cache: {first_line(exc)}") from None


def _is_model_file(path: str) -> bool:
    """A zip holding ``featurebank-model.json``: what ``train`` writes (``classifiers.modelfile``)."""
    return featurebank_kind(path) == "model"


def _write_columns(group: h5py.Group, columns: dict, strings: tuple[str, ...]) -> None:
    """Strings are stored as the bytes they are: a file name that is not UTF-8 (``caf\xe9.jpg``, which Python
    names with a surrogate, ``caf\udce9.jpg``) keeps its bytes, and ``_read_columns`` gives back the same ``str``."""
    for name, values in columns.items():
        if name in strings:
            data = np.array([to_bytes(v) for v in values], dtype=object)
            group.create_dataset(name, data=data, dtype=STRING)
        else:
            group.create_dataset(name, data=np.asarray(values, dtype=np.int64))


def to_bytes(text) -> bytes:
    """A path, label or reason as stored: UTF-8, and the bytes of a name that was not UTF-8 as they were."""
    return text.encode("utf-8", "surrogateescape") if isinstance(text, str) else bytes(text)


def _read_columns(group: h5py.Group) -> dict[str, np.ndarray]:
    return {
        name: ds.asstr(errors="surrogateescape")[()] if h5py.check_string_dtype(ds.dtype) else ds[()]
        for name, ds in group.items()
    }


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_folder(folder: str) -> None:
    """Rename, then delete: a kill in the middle leaves ``X.h5.parts.merged`` (finished by the next writer,
    ``_finish_removal``), never a half-deleted ``X.h5.parts`` whose remaining parts would be read again as unmerged
    batches. Only the files featurebank wrote there are deleted: anything else (a user's notes) is put back where it
    was, the folder kept, and a note says so."""
    if os.path.isdir(folder):
        gone = folder + ".merged"
        _finish_removal(gone, folder)
        os.replace(folder, gone)
        _finish_removal(gone, folder)


def _finish_removal(gone: str, folder: str) -> None:
    """Delete featurebank's parts (and their temporary files) in ``gone``; what else is there goes back to
    ``folder`` (named in a note), or stays in ``gone`` when ``folder`` exists again."""
    if not os.path.isdir(gone):
        return
    kept = []
    for name in os.listdir(gone):
        if PART_NAME.match(name) or PART_TMP.match(name):
            _unlink_quietly(os.path.join(gone, name))
        else:
            kept.append(name)
    if not kept:
        shutil.rmtree(gone, ignore_errors=True)
        return
    where = folder
    if not os.path.exists(folder):
        os.replace(gone, folder)
    else:  # a parts folder again (a kill, then a new run): the user's files join it, a name taken there with a suffix
        for name in kept:
            target, n = os.path.join(folder, name), 1
            while os.path.lexists(target):
                target, n = os.path.join(folder, f"{name}.kept-{n}"), n + 1
            os.replace(os.path.join(gone, name), target)
        with contextlib.suppress(OSError):
            os.rmdir(gone)
        where = gone if os.path.isdir(gone) else folder
    warnings.warn(
        f"kept {where}: it holds what featurebank did not write there ({', '.join(sorted(kept)[:3])}"
        f"{', …' if len(kept) > 3 else ''}); the merged batches in it are deleted",
        Note,
        stacklevel=3,
    )


class _GuardedFile(io.RawIOBase):
    """The file HDF5 writes a part or the merged cache through. A write that fails (a full disk) is kept, not
    passed to HDF5: a failed write inside HDF5 leaves its file in a state that crashed the process when it was
    closed (exit 139). From then on writes go to memory (``overlay``, up to ``OVERLAY_BYTES``), so that what HDF5
    reads back is what it wrote, it closes cleanly, and ``check`` raises the kept error. Beyond that bound writes are
    dropped: the merge stops copying features once a write failed, so only metadata gets there."""

    OVERLAY_BYTES = 256 << 20

    def __init__(self, path: str):
        super().__init__()
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o644)
        self.pos = 0
        self.error: OSError | None = None
        self.overlay: list[tuple[int, bytes]] = []  # (offset, bytes) written after the failure, in order
        self.overlay_bytes = 0

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = offset if whence == 0 else self.pos + offset if whence == 1 else os.fstat(self.fd).st_size + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        data = os.pread(self.fd, len(view), self.pos)
        view[: len(data)] = data
        got = len(data)
        start, end = self.pos, self.pos + len(view)
        spans = [(max(o, start), min(o + len(b), end), o, b) for o, b in self.overlay if o < end and o + len(b) > start]
        if spans:  # what was written after the failure, over what the disk has (zeros in between)
            top = max(hi for _, hi, _, _ in spans) - start
            if top > got:
                view[got:top] = bytes(top - got)
                got = top
            for lo, hi, offset, blob in spans:
                view[lo - start : hi - start] = blob[lo - offset : hi - offset]
        self.pos += got
        return got

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        if self.error is None:
            try:
                done = 0
                while done < len(view):
                    done += os.pwrite(self.fd, view[done:], self.pos + done)
            except OSError as exc:
                self.error = exc
        if self.error is not None and self.overlay_bytes + len(view) <= self.OVERLAY_BYTES:
            self.overlay.append((self.pos, bytes(view)))
            self.overlay_bytes += len(view)
        self.pos += len(view)
        return len(view)

    def truncate(self, size: int | None = None) -> int:
        size = self.pos if size is None else size
        if self.error is None:
            try:
                os.ftruncate(self.fd, size)
            except OSError as exc:
                self.error = exc
        return size

    def flush(self) -> None:
        pass

    def check(self) -> None:
        """Raise the first failed write, or flush the file to disk."""
        if self.error is not None:
            raise self.error
        os.fsync(self.fd)

    def close(self) -> None:
        if not self.closed:
            os.close(self.fd)
        super().close()


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _advice(exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return "free some space (or choose another --cache), then "
    return ""


def settings_differences(stored: dict, wanted: dict) -> list[str]:
    """What differs between two settings dicts, read as ``ExtractionSettings`` (an older cache's dict lacks keys
    added since; they take their defaults)."""
    return ExtractionSettings.from_dict(stored).differences(ExtractionSettings.from_dict(wanted))


def _same_inode(handle, path: str) -> bool:
    """Whether the open file ``handle`` is still the file at ``path``."""
    try:
        a, b = os.fstat(handle.fileno()), os.stat(path)
    except OSError:
        return False
    return (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev)


def stored_input(path: str) -> tuple[str, str] | None:
    """The input a cache mirrors, ``(source, root)``, or None when there is no readable cache at ``path`` (the
    writer says what is wrong with one that is not)."""
    if not os.path.isfile(path):  # absent, or not a regular file (never opened: a FIFO would wait)
        return None
    try:
        with _open(path) as f:
            return str(f.attrs["source"]), str(f.attrs["root"])
    except Exception:  # noqa: BLE001 - absent, damaged or not a cache: CacheWriter's own checks speak for it
        return None


class CacheWriter:
    """Adds rows to a cache for one set of extraction settings; used as a context manager.

    ``write_batch`` is where a row enters the cache (as a part); ``commit`` merges everything into ``X.h5``.
    ``rank`` names this writer's parts; ``lock=False`` opens the cache for a rank of a job whose rank 0 holds the
    lock: it reads and checks, writes its own parts, and neither cleans up nor commits.
    """

    def __init__(
        self,
        path: str,
        settings: dict,
        source: str,
        root: str,
        info: dict | None = None,
        *,
        rank: int = 0,
        lock: bool = True,
    ):
        self.path = os.path.abspath(path)
        self.rank, self.locking = rank, lock
        self.settings = settings
        self.dims: dict[str, int] | None = None  # vector length per layer, known once a file holds features
        self.settings_key = settings_key(settings)
        self.source = source
        self.root = root
        # the info written with the file; a function where it is worked out only then (library versions)
        self.info: dict | Callable[[], dict] = info or {}
        self.entries: dict[str, Entry] = {}
        self.sources: list[str] = []  # file of each Entry.source; "" when there is no main file
        self.previous_info: dict = {}  # the existing file's info (run records carry over)
        self._lock: IO[str] | None = None
        self._next_part = 1  # number of the next part this writer writes

    # -- opening: lock, check, read what is there ------------------------------------------------------
    def __enter__(self) -> CacheWriter:
        writable_folder(os.path.dirname(self.path), f"the cache {os.path.basename(self.path)}")
        if not self.locking:  # a rank of a job whose rank 0 holds the lock (and has cleaned up)
            self._check_existing()
            self._read_entries()
            return self
        # A POSIX record lock, not flock: it belongs to this process, so a decoding worker forked from it does not
        # hold it after a kill -9 of this process (an flock would live on in the orphaned worker for seconds).
        # POSIX locks do not exclude a second writer in the same process, and closing any descriptor of the
        # file drops them: the paths this process holds are kept in _HELD, and the file is opened once.
        # The lock file is removed when the lock is released (no empty X.h5.lock is left beside a cache): the
        # holder unlinks it before unlocking, and a writer that locked a file no longer at that path (one it opened
        # just before the unlink) lets it go and takes the new one, so two writers never hold two files.
        with _HELD_GUARD:
            busy = self.path in _HELD
            while not busy:
                handle = open(self.path + ".lock", "a+")
                try:
                    fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as exc:
                    handle.close()
                    if exc.errno not in (errno.EACCES, errno.EAGAIN):
                        raise
                    busy = True
                    break
                if _same_inode(handle, self.path + ".lock"):
                    self._lock = handle
                    _HELD.add(self.path)
                    break
                fcntl.lockf(handle, fcntl.LOCK_UN)  # a released writer's old file: take the new one
                handle.close()
        if busy:
            raise FileProblem(
                f"another featurebank process is writing {self.path}; wait for it to finish (or use another --cache)"
            ) from None
        try:
            self._check_existing()
            self._read_entries()
        except FeaturebankError:  # its own line (another input's cache is a ValueError, not a damaged file)
            self._release()
            raise
        except (KeyError, ValueError, TypeError, AttributeError, IndexError) as exc:
            self._release()
            raise damaged(self.path, f"{type(exc).__name__}: {exc}") from None
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._release()

    def _release(self) -> None:
        """Remove the lock file, then unlock (in that order: see ``__enter__``)."""
        if self._lock is not None:
            with _HELD_GUARD:
                try:
                    if _same_inode(self._lock, self.path + ".lock"):
                        os.unlink(self.path + ".lock")
                except OSError:  # a read-only folder: the empty file stays, as it always did
                    pass
                fcntl.lockf(self._lock, fcntl.LOCK_UN)
                self._lock.close()
                self._lock = None
                _HELD.discard(self.path)

    def _check_existing(self) -> None:
        """Refuse to mix rows of other settings or another input: a clear message, nothing touched."""
        if os.path.exists(self.path):
            with _open(self.path) as f:
                if f.attrs.get("format") != FORMAT:
                    raise FileProblem(f"{self.path} is not a featurebank cache; choose another --cache")
                if f.attrs.get("format_version") is None:
                    raise damaged(self.path, "format_version is None")
                if int(f.attrs["format_version"]) > FORMAT_VERSION:
                    raise FileProblem(
                        f"{self.path} was written by a newer featurebank (format "
                        f"{f.attrs['format_version']}); upgrade featurebank"
                    )
                check_storage(f, self.path)  # its rows are copied into the new file: none from outside it
                stored = json_attribute(f, "settings", self.path)
                stored_source = str(f.attrs["source"])
                stored_root = str(f.attrs.get("root", ""))
                self.previous_info = json_attribute(f, "info", self.path, "{}")
            diff = settings_differences(stored, self.settings)
            if diff:
                raise IncompatibleSettings(
                    f"{self.path} was made with other settings ({'; '.join(diff)}): rows are "
                    f"never mixed; leave out --cache to get a cache of its own, or delete it"
                )
            if stored_source != self.source and not same_files(stored_source, stored_root, self.source, self.root):
                raise IncompatibleSettings(
                    f"{self.path} mirrors another input ({stored_source}, not {self.source}); "
                    f"leave out --cache to get a cache of its own, or delete it"
                )
        for part in _part_files(self.path):
            with _open(part) as f:
                check_storage(f, part)
                key, source = str(f.attrs["settings_key"]), str(f.attrs["source"])
            if key != self.settings_key or source != self.source:
                raise IncompatibleSettings(
                    f"{parts_dir(self.path)} holds batches of an interrupted run with other "
                    f"settings or input: run that again to finish it, or delete the folder"
                )
        if self.locking:
            self._clean_up()

    def _clean_up(self) -> None:
        """What a killed run left: unfinished temporary files. Only the lock holder does this, before the other
        ranks of its job start writing: no rank deletes another's temporary files."""
        folder = parts_dir(self.path)
        if os.path.isdir(folder):  # half-written parts of a killed run: never renamed, so never counted
            for name in os.listdir(folder):
                if PART_TMP.match(name):
                    os.unlink(os.path.join(folder, name))
        for leftover in (self.path + ".tmp", spill_path(self.path)):
            if os.path.exists(leftover):
                os.unlink(leftover)
        # a kill while deleting merged parts: finish it (a user's files there go back to the parts folder)
        _finish_removal(parts_dir(self.path) + ".merged", parts_dir(self.path))

    def _add_entries(self, source: int, f: h5py.File) -> None:
        if self.dims is None and len(f["rows/path"]):
            self.dims = {layer: int(f["features"][layer].shape[1]) for layer in self.settings["layers"]}
        self._add_columns(source, _read_columns(f["rows"]), _read_columns(f["failures"]))

    def _add_columns(self, source: int, rows: dict, fails: dict) -> None:
        for i, path in enumerate(rows["path"]):
            self.entries[path] = Entry(source, i, int(rows["size"][i]), int(rows["mtime_ns"][i]), rows["digest"][i])
        for i, path in enumerate(fails["path"]):
            self.entries[path] = Entry(
                source, i, int(fails["size"][i]), int(fails["mtime_ns"][i]), fails["digest"][i], fails["reason"][i]
            )

    def _read_entries(self) -> None:
        self.sources = [self.path if os.path.exists(self.path) else ""]
        if self.sources[0]:
            with _open(self.path) as f:
                self._add_entries(0, f)
        self._add_parts(_part_files(self.path))

    def _add_parts(self, parts: list[str]) -> None:
        for part in parts:  # later parts win: they hold newer versions of a file
            self.sources.append(part)
            with _open(part) as f:
                self._add_entries(len(self.sources) - 1, f)
            self._next_part = max(self._next_part, _part_key(part)[0] + 1)

    def adopt_parts(self) -> int:
        """Take in the parts other ranks wrote since this writer opened the cache (they come after everything
        this writer had read, and hold other paths than its own parts). Returns how many."""
        known = set(self.sources)
        new = [p for p in _part_files(self.path) if p not in known]
        self._add_parts(new)
        return len(new)

    @property
    def pending_parts(self) -> int:
        return len(self.sources) - 1

    def touch(self, path: str, size: int, mtime_ns: int) -> None:
        """The file was touched but its bytes are the same (same digest): keep its row, new stat."""
        self.entries[path] = replace(self.entries[path], size=size, mtime_ns=mtime_ns)

    # -- writing ----------------------------------------------------------------------------------------
    def write_batch(self, rows: dict, features: dict[str, np.ndarray], failures: dict) -> None:
        """Commit one finished batch as a part file: after this returns, a kill loses none of it.

        ``rows`` and ``failures`` are columns (path, label, group, size, mtime_ns, digest / path, reason,
        size, mtime_ns, digest); ``features`` maps each layer to an ``N x D`` array in the order of ``rows``.
        """
        folder = parts_dir(self.path)
        final = os.path.join(folder, f"part-{self._next_part:08d}-rank{self.rank}.h5")
        self._next_part += 1
        tmp = final + ".tmp"
        try:
            os.makedirs(folder, exist_ok=True)
            with _GuardedFile(tmp) as disk:  # a full disk: an OSError here, never a failed write inside HDF5
                with h5py.File(disk, "w") as f:
                    f.attrs.update(
                        format=FORMAT,
                        format_version=FORMAT_VERSION,
                        settings_key=self.settings_key,
                        source=self.source,
                        settings=json.dumps(self.settings),
                    )
                    _write_columns(f.create_group("rows"), rows, ROW_STRINGS)
                    _write_columns(f.create_group("failures"), failures, FAILURE_STRINGS)
                    group = f.create_group("features")
                    for layer in self.settings["layers"]:
                        group.create_dataset(layer, data=np.asarray(features[layer], dtype=np.float32), fletcher32=True)
                disk.check()
            os.replace(tmp, final)
            _fsync(folder)
        except OSError as exc:
            _unlink_quietly(tmp)
            raise FileProblem(
                f"cannot write a batch to {folder}: {exc.strerror or exc}; every batch written "
                f"before it is kept: {_advice(exc)}run the same command again to continue"
            ) from None
        except BaseException:
            _unlink_quietly(tmp)
            raise
        self.sources.append(final)
        if self.dims is None and len(rows["path"]):
            self.dims = {layer: int(np.shape(features[layer])[1]) for layer in self.settings["layers"]}
        self._add_columns(len(self.sources) - 1, rows, failures)

    def commit(self, order: list[tuple[str, str, str]], extra_failures: dict[str, tuple[int, int, str]]) -> bool:
        """Write ``X.h5`` anew with the rows of ``order`` ((path, label, group), in input order) and atomically
        put it in place; paths not in ``order`` are dropped. ``extra_failures`` holds problems found while
        listing (path → size, mtime_ns, reason). Returns whether anything was written."""
        if not self.locking:
            raise RuntimeError("only the writer that holds the cache's lock commits")
        rows: dict[str, list] = {k: [] for k in ("path", "label", "group", "size", "mtime_ns", "digest")}
        fails: dict[str, list] = {k: [] for k in ("path", "reason", "digest", "size", "mtime_ns")}
        where: list[tuple[int, int]] = []
        for path, label, group in order:
            if path in extra_failures:
                size, mtime_ns, reason = extra_failures[path]
                e = Entry(-1, -1, size, mtime_ns, "", reason)
            else:
                e = self.entries[path]
            if e.reason is not None:
                for k, v in zip(fails, (path, e.reason, e.digest, e.size, e.mtime_ns)):
                    fails[k].append(v)
                continue
            for k, v in zip(rows, (path, label, group, e.size, e.mtime_ns, e.digest)):
                rows[k].append(v)
            where.append((e.source, e.row))
        if not self.pending_parts and self._unchanged(rows, fails):
            return False
        classes = sorted({label for label in rows["label"] if label})
        if callable(self.info):  # worked out only when the file is written (library versions read package metadata)
            self.info = self.info()
        tmp = self.path + ".tmp"
        try:
            with _GuardedFile(tmp) as disk:
                try:
                    with h5py.File(disk, "w") as out:
                        out.attrs.update(
                            format=FORMAT,
                            format_version=FORMAT_VERSION,
                            settings=json.dumps(self.settings),
                            settings_key=self.settings_key,
                            source=self.source,
                            root=self.root,
                            classes=json.dumps(classes),
                            info=json.dumps(self.info),
                            updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        )
                        _write_columns(out.create_group("rows"), rows, ROW_STRINGS)
                        _write_columns(out.create_group("failures"), fails, FAILURE_STRINGS)
                        self._copy_features(
                            out.create_group("features"),
                            np.array(where, dtype=np.int64).reshape(-1, 2),
                            lambda: disk.error is not None,
                        )
                except Exception:
                    if disk.error is None:  # not the disk's doing (a damaged part, a bug): as it is
                        raise
                disk.check()
            os.replace(tmp, self.path)
            _fsync(os.path.dirname(self.path))
        except OSError as exc:
            _unlink_quietly(tmp)
            if exc.errno is None:  # HDF5's: a part or the old cache cannot be read (a checksum failed)
                raise FileProblem(
                    f"cannot merge the batches into {self.path}: a batch in {parts_dir(self.path)} "
                    f"or the cache is damaged ({str(exc).splitlines()[0]}); delete that folder "
                    f"(its images are embedded again) or the cache"
                ) from None
            raise FileProblem(
                f"cannot merge the batches into {self.path}: {exc.strerror or exc}; the cache is "
                f"as it was and every batch is kept in {parts_dir(self.path)}: {_advice(exc)}run "
                f"the same command again to merge them"
            ) from None
        except BaseException:
            _unlink_quietly(tmp)
            raise
        _remove_folder(parts_dir(self.path))
        self.sources, self.entries = [self.path], {}  # the writer's work is done; a new one reads the new file
        return True

    def _unchanged(self, rows: dict, fails: dict) -> bool:
        if not self.sources[0]:
            return False
        with _open(self.path) as f:
            old_rows, old_fails = _read_columns(f["rows"]), _read_columns(f["failures"])
        same = lambda a, b: all(list(a[k]) == list(b[k]) for k in b)  # noqa: E731
        return same(old_rows, rows) and same(old_fails, fails)

    def _copy_features(self, group: h5py.Group, where: np.ndarray, failed=lambda: False) -> None:
        """Each layer's output rows from the file and row that hold them (``where``: source, row per output row),
        in blocks bounded by bytes whatever their order (see the module's docstring). ``failed``: whether a write
        already failed (a full disk), after which no further layer is copied."""
        handles: dict[int, h5py.File] = {}
        try:
            for layer in self.settings["layers"]:
                if failed():
                    break
                dim = (self.dims or {})[layer]  # known once a part holds rows (a KeyError otherwise, as None's)
                n = len(where)
                rows_per_chunk = max(1, min(n, (1 << 20) // (4 * dim))) if n else 1
                ds = group.create_dataset(
                    layer,
                    shape=(n, dim),
                    dtype=np.float32,  # a checksum per chunk:
                    chunks=(rows_per_chunk, dim) if n else None,
                    fletcher32=True,
                )  # damage shows
                ds.attrs.update(node=layer, pooling=self.settings["pooling"])
                if n:
                    copy_rows(
                        ds,
                        where,
                        lambda source: self._handle(source, handles)["features"][layer],  # noqa: B023 (used now)
                        spill_path(self.path),
                    )
        finally:
            for h in handles.values():
                h.close()

    def _handle(self, source: int, handles: dict[int, h5py.File]) -> h5py.File:
        if source not in handles:
            if len(handles) >= 64:  # a long run has thousands of parts: keep few open
                handles.pop(next(iter(handles))).close()
            handles[source] = _open(self.sources[source])
        return handles[source]


@dataclass(frozen=True)
class Blocks:
    """How many rows of one layer make a block of each kind, from the row size in bytes."""

    out: int  # output rows filled at a time
    read: int  # source rows read at a time
    gap: int  # skipped rows read through rather than skipped

    @classmethod
    def for_row(cls, row_bytes: int, block_bytes: int) -> Blocks:
        return cls(max(1, block_bytes // row_bytes), max(1, block_bytes // row_bytes), max(1, GAP_BYTES // row_bytes))


def copy_rows(out: h5py.Dataset, where: np.ndarray, source, spill: str, block_bytes: int | None = None) -> str:
    """``out[i] = source(where[i, 0])[where[i, 1]]`` for every row ``i``, holding O(``block_bytes``) in memory
    whatever the order. Gathers directly when the reads that takes are little more than the rows themselves
    (rows in about their old order), else goes through the spill file ``spill``. Returns which: "direct" or
    "spill"."""
    blocks = Blocks.for_row(4 * out.shape[1], block_bytes or BLOCK_BYTES)
    spans = _direct_spans(where, blocks)
    order, starts, ends = spans
    rows = where[order, 1]
    direct = int((rows[ends] - rows[starts] + 1).sum()) * 4 * out.shape[1] + len(starts) * READ_COST_BYTES
    spilled = (_source_extent(where) + 2 * len(where)) * 4 * out.shape[1]
    if direct <= spilled:
        _copy_direct(out, where, source, blocks, spans)
        return "direct"
    _copy_spilled(out, where, source, blocks, spill)
    return "spill"


def _direct_spans(where: np.ndarray, blocks: Blocks):
    """The contiguous reads of a direct copy: output rows sorted by (output block, source, row), cut where the
    block or source changes or the gap to the next wanted row is wider than ``blocks.gap``. Returns that order
    and the first and last position (in it) of each span."""
    n = len(where)
    block = np.arange(n) // blocks.out
    order = np.lexsort((where[:, 1], where[:, 0], block))
    b, s, r = block[order], where[order, 0], where[order, 1]
    cut = np.ones(n, dtype=bool)
    cut[1:] = (b[1:] != b[:-1]) | (s[1:] != s[:-1]) | (r[1:] - r[:-1] > blocks.gap)
    starts = np.flatnonzero(cut)
    return order, starts, np.append(starts[1:], n) - 1


def _source_extent(where: np.ndarray) -> int:
    """Rows between the first and last wanted row of each source: what a spilled copy reads."""
    extent = 0
    for s in np.unique(where[:, 0]):
        r = where[where[:, 0] == s, 1]
        extent += int(r.max() - r.min() + 1)
    return extent


def _copy_direct(out: h5py.Dataset, where: np.ndarray, source, blocks: Blocks, spans) -> None:
    """Fill the output one block at a time from its spans, each read in windows of at most ``blocks.read`` rows."""
    order, starts, ends = spans
    dim = out.shape[1]
    block_of = order[starts] // blocks.out
    k = 0
    for b0 in range(0, len(where), blocks.out):
        b1 = min(len(where), b0 + blocks.out)
        buf = np.empty((b1 - b0, dim), dtype=np.float32)
        while k < len(starts) and block_of[k] == b0 // blocks.out:
            dest = order[starts[k] : ends[k] + 1]
            rows = where[dest, 1]
            ds = source(int(where[dest[0], 0]))
            for w in range(int(rows[0]), int(rows[-1]) + 1, blocks.read):
                lo, hi = np.searchsorted(rows, [w, w + blocks.read])
                if hi > lo:
                    data = ds[int(rows[lo]) : int(rows[hi - 1]) + 1]
                    buf[dest[lo:hi] - b0] = data[rows[lo:hi] - rows[lo]]
            k += 1
        out[b0:b1] = buf


def _copy_spilled(out: h5py.Dataset, where: np.ndarray, source, blocks: Blocks, spill: str) -> None:
    """Two sequential passes through a spill file laid out by output block: read each source once in windows,
    append each row to its output block's region; then read one region at a time, order it, write the block."""
    n, dim = len(where), out.shape[1]
    row_bytes = 4 * dim
    reading = np.lexsort((where[:, 1], where[:, 0]))  # output rows in the order they are read: by source, row
    bucket = reading // blocks.out  # the output block of each row read
    by_bucket = np.argsort(bucket, kind="stable")  # the spill file's rows: by block, then reading order
    slot = np.empty(n, dtype=np.int64)
    slot[by_bucket] = np.arange(n)  # the spill row of each row read
    del bucket
    fd = os.open(spill, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        src, rows = where[reading, 0], where[reading, 1]
        edges = np.flatnonzero(np.diff(src)) + 1
        for a, z in zip(np.r_[0, edges], np.r_[edges, n]):
            ds = source(int(src[a]))
            for w in range(int(rows[a]), int(rows[z - 1]) + 1, blocks.read):
                lo, hi = a + np.searchsorted(rows[a:z], [w, w + blocks.read])
                if hi == lo:
                    continue
                by_slot = np.argsort(slot[lo:hi])  # a block's rows of one window are consecutive in the file:
                slots = slot[lo:hi][by_slot]  # one write per output block the window touches
                data = ds[int(rows[lo]) : int(rows[hi - 1]) + 1][(rows[lo:hi] - rows[lo])[by_slot]]
                runs = np.flatnonzero(np.diff(slots) != 1) + 1
                for r0, r1 in zip(np.r_[0, runs], np.r_[runs, hi - lo]):
                    os.pwrite(fd, data[r0:r1].tobytes(), int(slots[r0]) * row_bytes)
                del data
        del src, rows, slot
        for b0 in range(0, n, blocks.out):
            b1 = min(n, b0 + blocks.out)
            raw = os.pread(fd, (b1 - b0) * row_bytes, b0 * row_bytes)
            buf = np.empty((b1 - b0, dim), dtype=np.float32)
            buf[reading[by_bucket[b0:b1]] - b0] = np.frombuffer(raw, dtype=np.float32).reshape(-1, dim)
            del raw
            out[b0:b1] = buf
    finally:
        os.close(fd)
        os.unlink(spill)


def stored_settings(path: str) -> dict | None:
    """The settings a cache was made with: from ``X.h5``, or, while a first run is unfinished, from its parts."""
    path = os.path.abspath(path)
    sources = ([path] if os.path.exists(path) else []) + _part_files(path)
    for source in sources:
        with _open(source) as f:
            if "settings" in f.attrs:
                return json_attribute(f, "settings", source)
    return None


def own_groups(groups, paths) -> np.ndarray | None:
    """Groups to split by: the manifest's, and a row without a group a group of its own (named by a NUL and its
    path, which no manifest group can equal), so that ungrouped rows spread over folds instead of all landing in
    one group ``""``. None when no row has a group."""
    if not any(groups):
        return None
    return np.array([g if g else "\0" + p for g, p in zip(groups, paths)], dtype=object)


class CacheReader:
    """Read access to a finished cache: settings, rows, features per layer, failures."""

    def __init__(self, path: str):
        self.path = os.path.abspath(os.fspath(path))
        if not os.path.exists(self.path):
            if _part_files(self.path):
                raise FeaturebankError(
                    f"{path} is not finished: an interrupted run left batches in "
                    f"{parts_dir(self.path)}; run the same extract command again to finish it"
                )
            raise MissingFile(f"cache not found: {path}")
        with _open(self.path) as f:
            if f.attrs.get("format") != FORMAT:
                raise FileProblem(f"{path} is not a featurebank cache")
            try:
                self._read(f)
            except FeaturebankError:
                raise
            except (KeyError, ValueError, TypeError, AttributeError, IndexError, OSError, RuntimeError) as exc:
                text = str(exc).strip().splitlines()
                raise damaged(path, f"{type(exc).__name__}: {text[0] if text else ''}") from None
        self.pending_parts = len(_part_files(self.path))

    def _read(self, f: h5py.File) -> None:
        """Everything but the features, checked: a damaged or crafted file is one line, never a KeyError later."""
        version = f.attrs.get("format_version")
        if version is None or not np.issubdtype(np.asarray(version).dtype, np.integer) or int(version) < 1:
            raise damaged(self.path, f"format_version is {version!r}")
        if int(version) > FORMAT_VERSION:
            raise FileProblem(
                f"{self.path} was written by a newer featurebank (cache format {int(version)}; this "
                f"one reads up to {FORMAT_VERSION}): upgrade featurebank"
            )
        self.attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
        check_storage(f, self.path)
        for name in ("settings", "source", "root", "classes"):
            if not isinstance(self.attrs.get(name), str):
                raise damaged(self.path, f"attribute {name!r} is missing or not text")
        self.settings = json.loads(self.attrs["settings"])
        self.classes = json.loads(self.attrs["classes"])
        self.info = json.loads(self.attrs.get("info", "{}"))
        if (
            not isinstance(self.settings, dict)
            or not isinstance(self.info, dict)
            or not (isinstance(self.classes, list) and all(isinstance(c, str) for c in self.classes))
        ):
            raise damaged(self.path, "settings, classes or info are not what a cache holds")
        missing = [k for k in SETTINGS_KEYS if k not in self.settings]
        if missing:
            raise damaged(self.path, f"its settings lack {', '.join(missing)}")
        try:  # a wrong type: one line; every key, with the defaults of those an older writer left out
            self.full_settings = ExtractionSettings.from_dict(self.settings).to_dict()
        except FeaturebankError as exc:
            raise FileProblem(f"{self.path}: {exc}") from None
        self.rows = _read_columns(f["rows"])
        self.failures = _read_columns(f["failures"])
        for group, names, columns in (
            ("rows", ROW_STRINGS + INTS, self.rows),
            ("failures", FAILURE_STRINGS + INTS, self.failures),
        ):
            lacking = [n for n in names if n not in columns]
            if lacking or len({len(columns[n]) for n in names}) > 1:
                raise damaged(
                    self.path,
                    f"{group}/ lacks {', '.join(lacking)}" if lacking else f"the columns of {group}/ differ in length",
                )
        self.layers = list(self.settings["layers"])
        n = len(self.rows["path"])
        self.dims = {}
        for layer in self.layers:
            ds = f["features"].get(layer)
            if not isinstance(ds, h5py.Dataset) or ds.ndim != 2 or ds.shape[0] != n or ds.dtype.kind != "f":
                raise damaged(self.path, f"features/{layer} is missing or is not {n} rows of floats")
            self.dims[layer] = int(ds.shape[1])
        self.checksums = all(f["features"][layer].fletcher32 for layer in self.layers)
        self.attrs.setdefault("updated", "")

    def __len__(self) -> int:
        return len(self.rows["path"])

    @property
    def paths(self) -> np.ndarray:
        return self.rows["path"]

    @property
    def labels(self) -> np.ndarray | None:
        """Class names per row, or None for an unlabeled cache."""
        return self.rows["label"] if self.classes else None

    @property
    def groups(self) -> np.ndarray | None:
        """The group of each row (one animal, patient or camera), or None when no row has one; see ``own_groups``."""
        return own_groups(self.rows["group"], self.paths)

    def full_paths(self) -> list[str]:
        return [os.path.join(self.attrs["root"], p) for p in self.paths]

    def layer(self, layer: str | None = None) -> str:
        if layer is None:
            return self.layers[0]
        if layer == "penultimate":
            from embedder.backbones.registry import resolve_layers, skeleton

            layer = resolve_layers(skeleton(self.settings["backbone"]), [layer])[0]
        if layer not in self.dims:
            raise InvalidValue(f"layer {layer!r} is not in {self.path} (it has {', '.join(self.layers)})")
        return layer

    def features(self, layer: str | None = None, rows: np.ndarray | None = None) -> np.ndarray:
        """One layer's rows (``rows``: only those, increasing indices), checked against their checksum (caches
        written since it exists)."""
        layer = self.layer(layer)
        with _open(self.path) as f:
            try:
                return f["features"][layer][()] if rows is None else f["features"][layer][np.asarray(rows)]
            except OSError as exc:  # the fletcher32 filter refuses a chunk whose bytes changed
                raise damaged(
                    self.path,
                    f"features/{layer} cannot be read ({str(exc).splitlines()[0]}): its bytes changed on disk",
                ) from None

    def verify(self) -> int:
        """Read every feature chunk, so that the checksums are checked (``info --verify``), holding one block of
        rows at a time. Returns the bytes checked; a damaged chunk is one line naming its rows."""
        checked = 0
        with _open(self.path) as f:
            for layer in self.layers:
                ds = f["features"][layer]
                step = max(1, BLOCK_BYTES // max(1, 4 * ds.shape[1]))
                for start in range(0, ds.shape[0], step):
                    try:
                        checked += ds[start : start + step].nbytes
                    except OSError as exc:
                        raise damaged(
                            self.path,
                            f"features/{layer} rows {start}..{min(ds.shape[0], start + step) - 1} "
                            f"fail their checksum ({str(exc).splitlines()[0]})",
                        ) from None
        return checked


MAX_VALUES_PER_PIXEL = 256  # no layer's output has more values per input pixel (VGG's first convolutions: 64)


def max_columns(settings: dict) -> int:
    """The most values a feature row can have for the cache's input size: ``MAX_VALUES_PER_PIXEL`` per pixel of
    the crop (at least a million)."""
    crop = (settings.get("preprocessing") or {}).get("crop") if isinstance(settings, dict) else None
    crop = crop if isinstance(crop, int) and 0 < crop <= 100_000 else 224
    return max(1 << 20, MAX_VALUES_PER_PIXEL * crop * crop)


def check_storage(f: h5py.File, path: str) -> None:
    """What a crafted file could make a reader do, refused before anything is read: a dataset stored outside the
    file (HDF5 external storage: /etc/passwd, a FIFO) or virtual (its rows in other files, zeros when they are
    gone), a feature layer wider than any layer of the cache's input size, and any dataset declaring more bytes
    than the file holds (a cache never compresses: every declared byte is in the file)."""
    file_size = os.path.getsize(f.filename)
    try:
        settings = json.loads(f.attrs.get("settings", "{}"))
    except (TypeError, ValueError, RecursionError):
        settings = {}
    found: list[tuple[str, h5py.Dataset]] = []
    f.visititems(lambda name, obj: found.append((name, obj)) if isinstance(obj, h5py.Dataset) else None)
    for name, ds in found:
        if ds.is_virtual:
            raise damaged(
                path, f"{name} is an HDF5 virtual dataset (its rows are read from other files), which a cache never is"
            )
        external = ds.external
        if external:
            target = os.fsdecode(external[0][0])
            raise damaged(
                path, f"{name} is stored outside the file (HDF5 external storage: {target}), which a cache never is"
            )
        shape: tuple[int, ...] = tuple(ds.shape or ())
        if name.startswith("features/") and len(shape) == 2 and shape[1] > max_columns(settings):
            raise damaged(
                path,
                f"{name} declares {shape[1]:,} columns, more than any layer of the cache's input size can have "
                f"({max_columns(settings):,})",
            )
        count = int(np.prod(shape, dtype=object)) if shape else 1
        declared = count * ds.id.get_type().get_size()
        if declared > file_size:
            raise damaged(
                path,
                f"{name} declares {count:,} values ({declared:,} bytes), more than the file holds ({file_size:,} bytes)",
            )


def json_attribute(f, name: str, path: str, default: str | None = None):
    """A JSON attribute of a cache file, or one line: not JSON, or nested past Python's stack (a crafted file's
    ``[[[[…``, which was a RecursionError traceback in ``extract --cache``)."""
    try:
        return json.loads(f.attrs[name] if default is None else f.attrs.get(name, default))
    except RecursionError:
        raise damaged(path, f"attribute {name!r} is nested too deeply to read") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise damaged(path, f"attribute {name!r} is not JSON ({first_line(exc)})") from None


def damaged(path: str, what: str) -> FeaturebankError:
    return FileProblem(f"{path} is damaged ({what}); extract the input again into a new cache, or delete it")


def load(path: str, layer: str | None = None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """``(X, y, paths)`` of a cache: features of ``layer`` (default: the first), class names (None when
    unlabeled) and paths relative to the input's root, in the cache's row order."""
    reader = CacheReader(path)
    return reader.features(layer), reader.labels, reader.paths
