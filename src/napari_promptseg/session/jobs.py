"""Work the session hands out: a :class:`Job` is computed off the caller's thread by a scheduler
(napari: a worker; scripts: :func:`run_now`, in place) and its result applied on the caller's
thread. Jobs never touch the session's state while they run: they work on a snapshot, and the
session drops results that are stale when they come back (newest wins)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from napari_promptseg.core.cancel import Cancelled, CancelToken, cancel_scope

__all__ = ["Job", "run_now", "Cancelled", "QUEUED_KINDS"]

#: kinds whose jobs all run, one after another, and are never cancelled by a newer job of the
#: kind or by ``cancel(kind)``: a dropped autosave job would lose commits
QUEUED_KINDS = frozenset({"autosave"})


@dataclass(eq=False)
class Job:
    """One piece of slow work.

    kind: ``"embed"``, ``"decode"``, ``"candidates"``, ``"propagate"``, ``"everything"``,
    ``"autosave"`` or ``"load"`` (a scheduler keeps at most one running per kind and only the
    newest waiting one); work: ``() -> result`` or, for
    ``steps`` jobs, ``() -> iterator`` whose items go to ``on_step`` one by one; on_done(result)
    / on_error(exception) run on the session's thread. ``token`` cancels it (``Cancelled`` is
    raised inside the work at the next check; an encoder stops at its next block).
    """

    kind: str
    work: Callable[[], Any]
    on_done: Callable[[Any], None]
    on_error: Callable[[BaseException], None]
    on_step: Callable[[Any], None] | None = None
    label: str = ""
    token: CancelToken = field(default_factory=CancelToken)

    def compute(self) -> Any:
        """Run the work in the current thread inside the job's cancel scope (not for steps jobs)."""
        with cancel_scope(lambda: self.token.cancelled):
            return self.work()

    def iterate(self) -> Iterator[Any]:
        """The steps of a steps job, each computed inside the job's cancel scope."""
        it = self.work()
        while True:
            with cancel_scope(lambda: self.token.cancelled):
                try:
                    item = next(it)
                except StopIteration:
                    return
            yield item
            if self.token.cancelled:
                return


def run_now(job: Job) -> None:
    """The synchronous scheduler (scripts, notebooks, tests without a viewer). A failed job's
    ``on_error`` runs (the session tidies up and sets its status line), then the error is raised
    to the caller: in a script nothing else would show it. A cancelled job only hears it."""
    try:
        if job.on_step is not None:
            for item in job.iterate():
                job.on_step(item)
            result = None
        else:
            result = job.compute()
    except Cancelled as err:
        job.on_error(err)
        return
    except Exception as err:
        job.on_error(err)
        raise
    job.on_done(result)
