"""The error every data problem raises."""

from __future__ import annotations


class DataError(ValueError):
    """A data spec, file or array is invalid.

    The message is one line naming the file, the key, what was expected and what was
    found; the CLI prints it and exits with status 2.
    """
