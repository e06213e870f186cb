"""The command line's user error: one line on stderr, exit code 2."""

from __future__ import annotations

from napari_promptseg.io import InputError

__all__ = ["UsageError", "USER_ERRORS"]


class UsageError(Exception):
    """A user error: reported as one line, exit code 2."""


#: what the command line reports as one line with exit code 2 (bad arguments, unreadable inputs)
USER_ERRORS = (UsageError, InputError)
