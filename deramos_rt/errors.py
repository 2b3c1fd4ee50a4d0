"""The one exception type for user errors, and the exit codes every command and job report."""

EXIT_OK = 0
EXIT_ERROR = 2  # the job could not start, or a user error stopped it (one line, no traceback)
EXIT_PARTIAL = 3  # the job finished and wrote everything, but some items failed (each has its error)
EXIT_INTERRUPTED = 130


class DeramosError(Exception):
    """A user-facing error: one line saying what was wrong and how to fix it.

    CLIs catch it, print the message and exit non-zero without a traceback.
    """
