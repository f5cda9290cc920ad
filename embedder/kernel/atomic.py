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


RUN_LOCK = ".featurebank-run.lock"


@contextlib.contextmanager
def folder_lock(folder: str, what: str = "the run") -> Iterator[None]:
    """Hold ``folder`` (made here) for this process while a run writes into it: a second process that asks is one
    line, never two runs mixing their files in one folder. A POSIX record lock on ``folder/.featurebank-run.lock``:
    it belongs to this process (a forked decoding worker does not hold it after a kill -9 of the run), and, being a
    process's, it does not keep a second run in the same process out. The file stays, empty, once the run is done;
    a folder made here that the run left empty goes again, removed while the lock is still held (a refused run
    leaves nothing behind). A lock taken on a file no longer at that path (removed by its holder in the meantime)
    is let go and taken again on the new one, so that two processes never hold two files."""
    import errno
    import fcntl

    from .errors import FileProblem

    made = not os.path.exists(folder)
    lock = os.path.join(folder, RUN_LOCK)
    while True:
        os.makedirs(folder, exist_ok=True)
        try:
            handle = open(lock, "a+")  # noqa: SIM115 - held until the run ends
        except FileNotFoundError:  # the folder went between the two lines: made again
            continue
        try:
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            handle.close()
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                raise FileProblem(
                    f"another featurebank process is writing {what} {folder}: wait for it to finish, or choose "
                    f"another --out"
                ) from None
            raise
        try:
            if os.stat(lock).st_ino == os.fstat(handle.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        handle.close()  # a file its holder removed: take the one at the path now
    try:
        yield
    finally:
        try:
            if made and os.listdir(folder) == [RUN_LOCK]:  # still held: no other process holds this file now
                with contextlib.suppress(OSError):
                    os.unlink(lock)
                    os.rmdir(folder)
        finally:
            handle.close()  # closing the file releases its lock
