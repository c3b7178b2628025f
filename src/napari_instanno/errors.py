"""The one exception type users see: a one-line message saying what is wrong and what to do."""


class InstannoError(ValueError):
    """Bad input or state, reported in one line instead of a traceback from deep inside a library."""
