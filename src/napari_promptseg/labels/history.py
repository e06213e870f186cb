"""Undo and redo of commits into one labels target, refused where the pixels were edited since.

The stacks can be bounded in bytes (``max_bytes``, the size of a commit being the ``nbytes`` of its
:class:`~napari_promptseg.labels.write.PlaneEdit` arrays): past it the oldest steps are dropped
(the newest one always stays, so the last commit can be undone however big it is)."""

from __future__ import annotations

from napari_promptseg.labels.write import LabelsCommit, Plane

__all__ = ["LabelsHistory", "commit_nbytes"]


def _planes_text(planes: list[Plane]) -> str:
    if not any(planes):
        return "the image"
    return "plane(s) " + ", ".join(str(p[0]) if len(p) == 1 else str(p) for p in planes)


def commit_nbytes(c: LabelsCommit) -> int:
    """The memory an undo step of ``c`` holds: the ``nbytes`` of its edits' arrays."""
    return sum(e.indices.nbytes + e.old.nbytes + e.new.nbytes for e in c.edits)


class LabelsHistory:
    """Undo and redo stacks of :class:`LabelsCommit` for one labels target.

    Undo and redo refuse (and write nothing) when the committed pixels were edited since.
    max_bytes: the most memory the steps may hold (None: no bound); :meth:`record` and
    :meth:`trim` drop the oldest steps past it and say how many went."""

    def __init__(self, max_bytes: int | None = None) -> None:
        self._done: list[LabelsCommit] = []
        self._undone: list[LabelsCommit] = []
        self._nbytes = 0
        self.max_bytes = max_bytes

    @property
    def can_undo(self) -> bool:
        return bool(self._done)

    @property
    def can_redo(self) -> bool:
        return bool(self._undone)

    @property
    def nbytes(self) -> int:
        """The memory the undo and redo steps hold (see :func:`commit_nbytes`)."""
        return self._nbytes

    def record(self, c: LabelsCommit) -> int:
        """Remember a commit just written (clears the redo stack); empty commits are ignored.
        Returns how many of the oldest steps were dropped to stay within ``max_bytes``."""
        if not c.edits:
            return 0
        self._nbytes += commit_nbytes(c) - sum(map(commit_nbytes, self._undone))
        self._done.append(c)
        self._undone.clear()
        return self.trim()

    def trim(self) -> int:
        """Drop the oldest steps (then the furthest redo steps) while the history holds more than
        ``max_bytes``, keeping at least one step; returns how many were dropped."""
        dropped = 0
        if self.max_bytes is None:
            return dropped
        for stack in (self._done, self._undone):  # _undone[0] is the redo furthest away
            while self._nbytes > self.max_bytes and len(self._done) + len(self._undone) > 1 and stack:
                self._nbytes -= commit_nbytes(stack.pop(0))
                dropped += 1
        return dropped

    def undo(self, target) -> tuple[LabelsCommit | None, str | None]:
        """Undo the last commit: (the commit, None), or (None, why not)."""
        return self._move(self._done, self._undone, target, undo=True)

    def redo(self, target) -> tuple[LabelsCommit | None, str | None]:
        """Redo the last undone commit: (the commit, None), or (None, why not)."""
        return self._move(self._undone, self._done, target, undo=False)

    @staticmethod
    def _move(src: list, dst: list, target, undo: bool) -> tuple[LabelsCommit | None, str | None]:
        if not src:
            return None, f"nothing to {'undo' if undo else 'redo'}."
        c = src[-1]
        changed = c.changed_since(target, undone=not undo)
        if changed:
            return None, (
                f"the labels changed at the committed pixels since the commit "
                f"({_planes_text(changed)}: brush or eraser edits?): undo them with Ctrl-Z first, "
                "or edit by hand"
            )
        (c.undo if undo else c.redo)(target)
        dst.append(src.pop())
        return c, None

    def clear(self) -> None:
        self._done.clear()
        self._undone.clear()
        self._nbytes = 0
