"""Undo and redo of commits into one labels target, refused where the pixels were edited since."""

from __future__ import annotations

from napari_promptseg.labels.write import LabelsCommit, Plane

__all__ = ["LabelsHistory"]


def _planes_text(planes: list[Plane]) -> str:
    if not any(planes):
        return "the image"
    return "plane(s) " + ", ".join(str(p[0]) if len(p) == 1 else str(p) for p in planes)


class LabelsHistory:
    """Undo and redo stacks of :class:`LabelsCommit` for one labels target.

    Undo and redo refuse (and write nothing) when the committed pixels were edited since."""

    def __init__(self) -> None:
        self._done: list[LabelsCommit] = []
        self._undone: list[LabelsCommit] = []

    @property
    def can_undo(self) -> bool:
        return bool(self._done)

    @property
    def can_redo(self) -> bool:
        return bool(self._undone)

    def record(self, c: LabelsCommit) -> None:
        """Remember a commit just written (clears the redo stack); empty commits are ignored."""
        if c.edits:
            self._done.append(c)
            self._undone.clear()

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
