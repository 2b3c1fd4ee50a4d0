"""The one exception type for user errors (bad input, missing files, missing packages)."""


class DeramosError(Exception):
    """A user-facing error: one line saying what was wrong and how to fix it.

    CLIs catch it, print the message and exit non-zero without a traceback.
    """
