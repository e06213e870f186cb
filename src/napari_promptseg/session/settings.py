"""The session's settings: typed option groups, validated when made or changed.

``AnnotationSession.configure(overwrite=True, min_score=0.8, method="prompt", stop_after=4)``
replaces the groups these names belong to; a bad value raises there, not later in a worker.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

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
    object after this many planes in a row without it (None: never)."""

    method: str = "auto"
    min_score: float = _PROMPT.min_score
    min_overlap: float = _PROMPT.min_overlap
    stop_after: int | None = None

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


@dataclass(frozen=True)
class CommitSettings:
    """What K does. overwrite: a commit replaces other objects' pixels (default: it keeps them)."""

    overwrite: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.overwrite, bool):
            raise TypeError(f"overwrite must be True or False, got {self.overwrite!r}")


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

