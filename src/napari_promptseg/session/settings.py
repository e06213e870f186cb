"""The session's settings: typed option groups, validated when made or changed.

``AnnotationSession.configure(overwrite=True, undo_mb=1024, min_score=0.8, method="prompt", stop_after=4)``
replaces the groups these names belong to; a bad value raises there, not later in a worker.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from napari_promptseg.propagation.options import (
    METHODS,
    MemoryTracking,
    Options,
    PromptPropagation,
    check_count,
    default_options,
)

__all__ = ["PropagationSettings", "CommitSettings", "METHODS"]

_PROMPT = PromptPropagation()


@dataclass(frozen=True)
class PropagationSettings:
    """What P does. method: one of :data:`METHODS`; min_score, min_overlap: the prompt method's
    stop rules (:class:`~napari_promptseg.PromptPropagation`); stop_after: memory tracking drops an
    object after this many planes in a row without it (default 1, as
    :class:`~napari_promptseg.MemoryTracking`; None: never)."""

    method: str = "auto"
    min_score: float = _PROMPT.min_score
    min_overlap: float = _PROMPT.min_overlap
    stop_after: int | None = 1

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        p = PromptPropagation(min_score=self.min_score, min_overlap=self.min_overlap)
        object.__setattr__(self, "min_score", p.min_score)
        object.__setattr__(self, "min_overlap", p.min_overlap)
        object.__setattr__(self, "stop_after", check_count("stop_after", self.stop_after, 1))

    def method_for(self, model, tiled: bool = False) -> str:
        """``"memory"`` or ``"prompt"``: what P uses with ``model`` (None: ``"prompt"``). A SAM
        model chosen after SAM 2 falls back to prompts; tiled planes keep the tiles' scale with
        prompts (SAM 2's memory tracks whole frames squeezed into its input)."""
        if model is None or not getattr(model, "supports_memory", False):
            return "prompt"
        if self.method == "auto":
            return default_options(model, tiled).method
        return self.method

    def options_for(self, model, tiled: bool = False) -> Options:
        """The propagation options P runs with (:func:`~napari_promptseg.propagate_iter`)."""
        if self.method_for(model, tiled) == "memory":
            return MemoryTracking(stop_after=self.stop_after)
        return PromptPropagation(min_score=self.min_score, min_overlap=self.min_overlap)

    def applies(self, name: str, model, tiled: bool = False) -> bool:
        """Whether setting ``name`` changes what P does with ``model`` (the dock greys the others)."""
        used = self.method_for(model, tiled)
        return {"method": bool(getattr(model, "supports_memory", False)), "stop_after": used == "memory",
                "min_score": used == "prompt", "min_overlap": used == "prompt"}[name]


#: bytes in one MB of the undo memory setting
MB = 2**20


@dataclass(frozen=True)
class CommitSettings:
    """What K does, and what it keeps for U. overwrite: a commit replaces other objects' pixels
    (default: it keeps them); undo_mb: the most memory (MB, 2**20 bytes) the undo history of one
    labels target holds; past it the oldest steps can no longer be undone (the last commit always
    can)."""

    overwrite: bool = False
    undo_mb: float = 512

    def __post_init__(self) -> None:
        if not isinstance(self.overwrite, bool):
            raise TypeError(f"overwrite must be True or False, got {self.overwrite!r}")
        v = self.undo_mb
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not (
                math.isfinite(v) and v > 0):
            raise ValueError(f"undo_mb must be a number of megabytes > 0, got {v!r}")
        object.__setattr__(self, "undo_mb", float(v))

    @property
    def undo_bytes(self) -> int:
        """:attr:`undo_mb` in bytes."""
        return int(self.undo_mb * MB)


GROUPS = (PropagationSettings, CommitSettings)


def split_changes(changes: dict) -> dict[type, dict]:
    """``{group: its changes}`` for keyword ``changes``; TypeError naming an unknown setting."""
    names = {f.name: g for g in GROUPS for f in fields(g)}
    unknown = sorted(set(changes) - set(names))
    if unknown:
        raise TypeError(f"unknown settings {unknown}; the settings are {sorted(names)}")
    out: dict[type, dict] = {}
    for k, v in changes.items():
        out.setdefault(names[k], {})[k] = v
    return out

