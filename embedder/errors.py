"""The one exception type a user sees: its message is a single line that says what to do."""


class FeaturebankError(Exception):
    """A problem with the user's input or settings. The CLI prints it as one line, without a traceback."""


def first_line(exc: BaseException, limit: int = 300) -> str:
    """What a one-line error quotes of another library's exception: the first line of its message (its type's name
    when it has none), at most ``limit`` characters."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:limit]
