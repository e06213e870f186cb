"""Old names that keep working for one release, with a DeprecationWarning naming the new one."""

from __future__ import annotations

import warnings

__all__ = ["deprecated_alias"]


class deprecated_alias:  # noqa: N801 - used like ``property``
    """A read-only attribute that warns and returns the attribute ``new`` (its release-0.1 name)."""

    def __init__(self, new: str, note: str = "") -> None:
        self.new, self.note, self.old = new, note, "?"
        self.__doc__ = f"Deprecated: use :attr:`{new}`."

    def __set_name__(self, owner, name: str) -> None:
        self.old = f"{owner.__name__}.{name}"

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        warnings.warn(f"{self.old} is deprecated; use {self.new}" + (f" ({self.note})" if self.note else ""),
                      DeprecationWarning, stacklevel=2)
        return getattr(obj, self.new)
