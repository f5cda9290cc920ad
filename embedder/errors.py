"""The one exception type a user sees: its message is a single line that says what to do."""


class FeaturebankError(Exception):
    """A problem with the user's input or settings. The CLI prints it as one line, without a traceback."""
