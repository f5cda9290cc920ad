"""The one exception type a user sees: its message is a single line that says what to do."""

from __future__ import annotations

import contextlib


class FeaturebankError(Exception):
    """A problem with the user's input or settings. The CLI prints it as one line, without a traceback.

    The errors raised are of its subclasses where a standard exception says what went wrong, so that a caller can
    catch them as Python's own (``except ValueError``, ``except FileNotFoundError``, ``except OSError``) or all of
    featurebank's at once (``except FeaturebankError``); the others (an engine, a device or a worker that failed, a
    missing optional package) are ``FeaturebankError`` itself. Each takes one argument, its message."""


class InvalidValue(FeaturebankError, ValueError):
    """A bad argument, option or combination of options, a bad line in a manifest or labels file, or data that cannot
    do what is asked (one class, fewer images than folds)."""


class IncompatibleSettings(InvalidValue):
    """Things that must go together do not: a cache made with other settings, caches or a model of other images, a
    weights file that does not fit its backbone, a run resumed with other options."""


class MissingFile(FeaturebankError, FileNotFoundError):
    """A file or folder that was named does not exist (an input, a cache, a model, a weights file, a shard)."""


class FileProblem(FeaturebankError, OSError):
    """A file or folder that exists but cannot be used: unreadable or unwritable, a full disk, a file where a folder
    is expected (or the reverse), damaged, of another format or written by a newer featurebank, in use by another
    process."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """What a one-line error quotes of another library's exception: the first line of its message (its type's name
    when it has none), at most ``limit`` characters."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]


def os_error_line(exc: OSError) -> str:
    """An operating system's error no check caught first (a disk that filled while writing, a file in the way of a
    folder, a folder that cannot be written), as the one line the CLI prints: what, where, and what to do."""
    import errno

    what = exc.strerror or f"{type(exc).__name__}: {first_line(exc)}"
    named = exc.filename2 or exc.filename  # a rename's target, not the temporary file beside it
    where = f": {named}" if named else ""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        advice = "a network or scheduler problem: check the address and that it is up, then run again"
    elif exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        advice = "free some space, or write elsewhere, then run the same command again"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        advice = "choose a folder you can write to, or give yourself the right to"
    elif exc.errno in (errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
        advice = "a file stands where a folder is needed, or the reverse: move it, or write elsewhere"
    else:
        advice = "check the path and run the same command again"
    return f"{what}{where} ({advice}; FEATUREBANK_TRACEBACK=1 shows where it came from)"


class UnknownBackbone(InvalidValue):
    """A backbone name this installation does not have: a model file's reader says it is the model's."""

    def of_model(self) -> UnknownBackbone:
        """The same, said of a model file's backbone (not an option the user gave)."""
        return UnknownBackbone(f"the model was trained on features of a backbone this featurebank lacks: {self}")


class Note(UserWarning):
    """Something a user should look at that does not stop the run (the command line prints it as one line)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be: whatever cleans up after an interrupt (temporary files, the cache's
    finished batches) runs for it too, and the command says what it kept."""


@contextlib.contextmanager
def terminate_as_interrupt():
    """Inside, SIGTERM raises ``Terminated`` in the main thread instead of killing the process silently."""
    import signal
    import threading

    def handler(signum, frame):
        raise Terminated()

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
