"""The one exception type the CLI turns into a one-line message."""


class UnirlError(Exception):
    """A user-facing error: bad input, missing file, wrong config. Its message is one line
    naming the file or field and what was expected."""
