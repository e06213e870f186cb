"""Cooperative cancellation of long work (image encoders, stacks), Qt-free.

A thread opens a :func:`cancel_scope` around long work; code deep inside it (an encoder block,
a sleep loop) calls :func:`check_cancelled`, which raises :class:`Cancelled` as soon as any
enclosing scope's check says so. :func:`install_cancel_hooks` makes a torch encoder call it
before each of its repeated blocks, so closing the dock (or napari) during a minute-long
``vit_h`` embedding on a CPU returns at the next block boundary::

    token = CancelToken()
    with cancel_scope(token):          # in the worker thread
        emb = model.embed(image)       # raises Cancelled soon after token.cancel()
    token.cancel()                     # from any thread, e.g. the UI's close event

Scopes are per thread: a scope in one thread never cancels work in another.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["Cancelled", "CancelToken", "cancel_scope", "check_cancelled", "install_cancel_hooks"]

#: attribute set on a torch module whose cancel hooks are installed (makes installing idempotent)
_MARK = "_promptseg_cancel_hooks"


class Cancelled(Exception):
    """The work was cancelled by the user (or the session closed)."""


class CancelToken:
    """A thread-safe cancel flag: :meth:`cancel` from any thread, :meth:`check` in the worker.

    A token is also a valid ``check`` for :func:`cancel_scope` (calling it returns
    :attr:`cancelled`).
    """

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise :class:`Cancelled` if :meth:`cancel` was called."""
        if self._event.is_set():
            raise Cancelled("cancelled")

    def __call__(self) -> bool:
        return self._event.is_set()

    def __repr__(self) -> str:
        return f"<CancelToken cancelled={self.cancelled}>"


_local = threading.local()


def _checks() -> list[Callable[[], bool]]:
    checks = getattr(_local, "checks", None)
    if checks is None:
        checks = _local.checks = []
    return checks


@contextmanager
def cancel_scope(check: Callable[[], bool] | CancelToken) -> Iterator[None]:
    """While inside, :func:`check_cancelled` in THIS thread raises :class:`Cancelled` when
    ``check()`` is true (or, nested, when any enclosing scope's check is)."""
    if not callable(check):
        raise TypeError(f"check must be a callable returning bool, got {type(check).__name__}")
    checks = _checks()
    checks.append(check)
    try:
        yield
    finally:
        # remove this scope's entry (the last one, normally; robust to out-of-order exits)
        for i in range(len(checks) - 1, -1, -1):
            if checks[i] is check:
                del checks[i]
                break


def check_cancelled() -> None:
    """Raise :class:`Cancelled` if a scope of the current thread says so; no-op outside scopes."""
    checks = getattr(_local, "checks", None)
    if checks:
        for check in checks:
            if check():
                raise Cancelled("cancelled")


def _pre_hook(module, args) -> None:
    check_cancelled()


def install_cancel_hooks(module) -> None:
    """Make ``module``'s forward stop with :class:`Cancelled` at its next block boundary when the
    running thread's :func:`cancel_scope` is cancelled.

    ``module``: a ``torch.nn.Module`` such as SAM's ``ImageEncoderViT``. A forward pre-hook
    calling :func:`check_cancelled` is registered on the module itself and on each of its
    repeated blocks (the children of ``module.blocks``), else on every direct child. Installing
    twice is a no-op. Outside a scope the hooks cost one attribute lookup per block.
    """
    import torch

    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(module).__name__}")
    if getattr(module, _MARK, False):
        return
    blocks = getattr(module, "blocks", None)
    if isinstance(blocks, torch.nn.Module) and len(list(blocks.children())) > 0:
        targets = list(blocks.children())
    else:
        targets = list(module.children())
    for target in [module, *targets]:
        target.register_forward_pre_hook(_pre_hook)
    object.__setattr__(module, _MARK, True)
