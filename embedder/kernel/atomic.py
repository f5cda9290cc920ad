"""Whole files or none: every file featurebank writes for later reading (model files, checkpoints, ONNX files,
reports, thumbnails, engine records) is written under a temporary name beside it and renamed over it in one
step, so that a kill or a full disk leaves the old file or the new one, never half of one. A link given as the
path the user named is followed (its target written, the link kept); a device or a FIFO is written through, never
replaced."""

from __future__ import annotations

import contextlib
import os
import stat
import uuid
from collections.abc import Iterator


@contextlib.contextmanager
def atomic_path(path: str, *, fsync: bool = False, named: bool = False) -> Iterator[str]:
    """A temporary path beside ``path`` (its folder made) for the caller to write; on a clean exit it replaces
    ``path`` (``fsync``: its bytes on disk first), on an error or Ctrl-C it is removed. ``named``: ``path`` is one
    the user named (``-o``): a link is followed (its target replaced, the link kept) and a device or a FIFO
    (``-o /dev/stdout``) is written through, as a shell's redirection does, never replaced by a file. The files
    featurebank names itself (thumbnails, sidecars, records) are replaced whatever stands there: a link planted
    among them is not followed."""
    if named and special(path):  # before the link is resolved: /dev/stdout's target is no path to open
        yield path
        return
    path = os.path.realpath(path) if named else os.path.abspath(path)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f"{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if not exc.filename:  # a write that filled the disk names no file: the one line names the output
            exc.filename = path
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def special(path: str) -> bool:
    """``path`` exists and is neither a regular file nor a folder: a device, a FIFO, a socket."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def write_atomically(path: str, data: bytes) -> None:
    """``data`` as the whole of ``path``, durably (fsync before the rename)."""
    with atomic_path(path, fsync=True) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
