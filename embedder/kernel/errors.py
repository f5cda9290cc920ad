"""The one exception type a user sees: its message is a single line that says what to do."""

import contextlib


class FeaturebankError(Exception):
    """A problem with the user's input or settings. The CLI prints it as one line, without a traceback."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """What a one-line error quotes of another library's exception: the first line of its message (its type's name
    when it has none), at most ``limit`` characters."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]


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
