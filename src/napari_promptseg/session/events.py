"""The session's events (psygnal, as napari uses): what a view (the napari bridge, a notebook)
connects to. Plane indices are tuples of the leading axes."""

from __future__ import annotations

from psygnal import Signal, SignalGroup

__all__ = ["SessionEvents"]


class SessionEvents(SignalGroup):
    """Emitted on the thread that drives the session (napari: the UI thread)."""

    status = Signal(str)  # a line for the user
    preview = Signal(tuple)  # plane indices whose preview changed
    preview_reset = Signal(object)  # a new preview array (new image)
    target = Signal(object)  # the session created a labels array for commits
    labels = Signal(tuple)  # target planes written by commit, undo, redo, restore
    prompts_cleared = Signal()  # after a commit or clear: the prompt layers empty
    current_object = Signal(int)
    ready = Signal(tuple)  # the plane's embedding is ready
    progress = Signal(int, int)  # propagation, segment everything or Find (done, total)
    everything = Signal(object, tuple)  # segment everything wrote these planes of its new labels array
    found = Signal(object, tuple)  # Find (SAM 3 concepts) wrote these planes of its new labels array
    restorable = Signal(str)  # an autosave exists for this image (summary)
