"""The options of each propagation method, validated when made.

:class:`PromptPropagation`: each plane is prompted with the object's mask on the previous plane
(any model). :class:`MemoryTracking`: SAM 2's memory tracks the objects (SAM 2 models). The type
of the options object chooses the method; :func:`default_options` gives the model's default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["PromptPropagation", "MemoryTracking", "PROMPT_STRATEGIES", "STOP_RULES", "OLD_STOPS",
           "default_options", "check_count", "check_frame_object", "METHODS"]

#: How the previous slice's mask prompts the next slice:
#: ``"box"``: its bounding box; ``"box+logits"``: the box and the previous low-res logits as
#: ``mask_input``; ``"box+point"``: the box and a positive point at the mask's most interior
#: pixel; ``"box+point+logits"``: all three; ``"point"``: the point alone (three candidate masks,
#: the best-scoring one); ``"point+logits"``: the point and the logits (one mask).
PROMPT_STRATEGIES = ("box", "box+logits", "box+point", "box+point+logits", "point", "point+logits")

#: The stop rules of the prompt method, each the reason a front reports in ``SliceResult.stopped``:
#: ``"score"``, ``"area"``, ``"overlap"`` (the mask: see :class:`PromptPropagation`), and the rules
#: that read the image planes, ``"contrast"``, ``"extent"``, ``"neighbour"``
#: (:mod:`napari_promptseg.propagation.stops`). All apply by default.
STOP_RULES = ("score", "area", "overlap", "contrast", "extent", "neighbour")
#: the rules of the releases before the image rules: ``PromptPropagation(stops=OLD_STOPS)``
OLD_STOPS = ("score", "area", "overlap")

#: the methods by name: ``"auto"`` (memory when the model has one), ``"memory"``, ``"prompt"``
METHODS = ("auto", "memory", "prompt")


def check_count(name: str, v, low: int) -> int | None:
    """``v`` as an int (None stays None); ValueError unless a whole number >= ``low``."""
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
        raise ValueError(f"{name} must be an integer >= {low} or None, got {v!r}")
    return int(v)


def check_frame_object(k, obj, n_frames: int) -> tuple[int, int]:
    """``(frame, object id)`` as ints; ValueError unless ``0 <= k < n_frames`` and ``obj >= 1``."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < n_frames:
        raise ValueError(f"frame index {k!r} is out of range for {n_frames} frames")
    if isinstance(obj, bool) or not isinstance(obj, (int, np.integer)) or obj < 1:
        raise ValueError(f"object ids must be positive integers, got {obj!r}")
    return int(k), int(obj)


@dataclass(frozen=True)
class PromptPropagation:
    """Propagate by prompting each plane with the object's mask on the previous plane.

    min_score: stop an object when its predicted IoU falls below this; min_overlap: ... when the
    IoU of its masks on consecutive planes falls below this (it jumped to something else);
    min_area: ... when its mask has fewer pixels (it vanished); max_slices: at most this many
    planes from each seed in each direction (None: no limit); strategy: one of
    :data:`PROMPT_STRATEGIES` (default box + the previous logits, chosen by measurement, see
    :mod:`napari_promptseg.propagation.api`); box_margin: each side of a box prompt moves out by
    this fraction of the box's side plus 2 px (0: the tight box, the measured best).

    stops: the stop rules that apply, names from :data:`STOP_RULES` (None: all of them;
    :data:`OLD_STOPS`: only the mask rules of earlier releases). The image rules
    (:mod:`napari_promptseg.propagation.stops`) need the image planes, which ``ps.propagate`` and
    ``ps.Tracker`` pass: min_contrast: stop where the mask's contrast against a ring around it falls
    below this fraction of the object's peak contrast; max_depth: an object's extent along the
    axis is at most this many times its width (in the same units: the planes' spacing comes from
    the stack's ``scale``; None: no limit). Between two seeds of one object no image rule applies.
    """

    min_score: float = 0.65
    min_overlap: float = 0.2
    min_area: int = 10
    max_slices: int | None = None
    strategy: str = "box+logits"
    box_margin: float = 0.0
    stops: tuple[str, ...] | None = None
    min_contrast: float = 0.4
    max_depth: float | None = 1.3

    method = "prompt"

    def __post_init__(self) -> None:
        for name in ("min_score", "min_overlap", "min_contrast"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not 0 <= float(v) <= 1:
                raise ValueError(f"{name} must lie in [0, 1], got {v!r}")
            object.__setattr__(self, name, float(v))
        object.__setattr__(self, "min_area", check_count("min_area", self.min_area, 0))
        if self.min_area is None:
            raise ValueError("min_area must be an integer >= 0, got None")
        object.__setattr__(self, "max_slices", check_count("max_slices", self.max_slices, 0))
        if self.strategy not in PROMPT_STRATEGIES:
            raise ValueError(f"strategy must be one of {PROMPT_STRATEGIES}, got {self.strategy!r}")
        m = self.box_margin
        if isinstance(m, bool) or not isinstance(m, (int, float, np.number)) or not (
                math.isfinite(float(m)) and float(m) >= 0):
            raise ValueError(f"box_margin must be a finite number >= 0, got {m!r}")
        object.__setattr__(self, "box_margin", float(m))
        stops = STOP_RULES if self.stops is None else self.stops
        if isinstance(stops, str) or not all(isinstance(r, str) and r in STOP_RULES for r in stops):
            raise ValueError(f"stops must be a sequence of rule names from {STOP_RULES}, got {self.stops!r}")
        object.__setattr__(self, "stops", tuple(dict.fromkeys(stops)))
        d = self.max_depth
        if d is not None and (isinstance(d, bool) or not isinstance(d, (int, float, np.number))
                              or not (math.isfinite(float(d)) and float(d) > 0)):
            raise ValueError(f"max_depth must be a finite number > 0 or None, got {d!r}")
        object.__setattr__(self, "max_depth", None if d is None else float(d))


@dataclass(frozen=True)
class MemoryTracking:
    """Track with SAM 2's memory (Meta's video predictor, fed from memory).

    max_slices: at most this many planes from the earliest prompt in each direction (None: all);
    stop_after: an object stops (in that direction) after this many consecutive planes without
    it; SAM 2's object score decides where an object is absent (score <= 0: no mask there).
    Default 1: a track ends on the first plane without its object, so on a z-stack it does not
    run on onto the next nucleus above or below where SAM 2 finds one again; ``None``: never
    (Meta's ``propagate_in_video``: an object hidden for a few frames of a video is found again
    when it comes back). A prompt on a later plane starts a stopped object again.
    """

    max_slices: int | None = None
    stop_after: int | None = 1

    method = "memory"

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_slices", check_count("max_slices", self.max_slices, 0))
        object.__setattr__(self, "stop_after", check_count("stop_after", self.stop_after, 1))


Options = PromptPropagation | MemoryTracking


def default_options(model, tiled: bool = False) -> Options:
    """The default method for ``model``: memory tracking when it has a memory (SAM 2) and its
    planes are not tiled (SAM 2 tracks whole frames squeezed into its input), else prompts."""
    if getattr(model, "supports_memory", False) and not tiled:
        return MemoryTracking()
    return PromptPropagation()


def check_options(model, options) -> Options:
    """``options`` (None: :func:`default_options`) if they fit ``model``; TypeError / ValueError
    otherwise (memory tracking needs a model with a memory)."""
    if options is None:
        return default_options(model)
    if not isinstance(options, (PromptPropagation, MemoryTracking)):
        raise TypeError(f"options must be ps.PromptPropagation(...) or ps.MemoryTracking(...), "
                        f"got {type(options).__name__}")
    if isinstance(options, MemoryTracking) and not getattr(model, "supports_memory", False):
        raise ValueError(
            f"model {getattr(model, 'name', model)!r} has no memory: MemoryTracking needs a SAM 2 model "
            "(e.g. 'sam2.1_hiera_tiny'); use ps.PromptPropagation() with SAM models")
    return options
