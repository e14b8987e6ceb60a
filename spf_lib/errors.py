"""One exception type for bad input: the CLI prints its message as one line and exits non-zero."""


class SpfError(Exception):
    """A user-facing error. The message names the file or field and what is wrong with it."""

    exit_code = 2
