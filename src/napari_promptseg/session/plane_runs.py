"""The session's runs over whole planes: segment everything and Find (SAM 3 concepts), as the
methods :class:`~napari_promptseg.session.core.AnnotationSession` inherits. Each starts a job of
its runner (:class:`~napari_promptseg.session.everything.EverythingRunner`,
:class:`~napari_promptseg.session.find.FindRunner`) on the session's stack and writes into a new
labels array; committed labels do not change."""

from __future__ import annotations

from napari_promptseg.session.everything import scope_of
from napari_promptseg.session.find import FindRun, check_query

__all__ = ["PlaneRuns"]


class PlaneRuns:
    """Segment everything and Find for :class:`~napari_promptseg.session.core.AnnotationSession`
    (which owns ``_everything``, ``_find``, the image, the model and the stack they use)."""

    # ------------------------------------------------------------------ segment everything
    def segment_everything(self, scope: str = "plane", axis: int = 0, **params):
        """Every object on the displayed plane (``scope="plane"``) or on every plane of its line
        along leading ``axis`` (``"line"``: a z-stack's slices, a video's frames; objects are
        linked across planes by overlap into 3D ids) into a new int32 labels array of the image's
        shape (numpy for 2D, lazy zarr for stacks), filled plane by plane (events.everything);
        committed labels do not change. params: Meta's generator parameters
        (:data:`~napari_promptseg.models.generator_defaults.EVERYTHING_DEFAULTS`). Returns the new
        array, or None (with a status) when there is no model or image; a bad parameter raises
        ValueError or TypeError before any work. A running propagation or run is cancelled first."""
        if self.image is None or self.stack is None:
            self._status("choose an image and a model first." if self.image is None
                         else "choose a model first.")
            return None
        planes, target = scope_of(self.stack, self.plane, scope, axis, (*self._lead, *self._plane_shape))
        self.cancel_propagation()
        self._everything.start(self.model, self.stack, planes, target, params)
        return target

    @property
    def segmenting_everything(self) -> bool:
        return self._everything.run is not None

    # ------------------------------------------------------------------ find (SAM 3 concepts)
    find_threshold = 0.5  # Find shows the objects scoring at least this (set_find_threshold)

    def find(self, text: str | None = None, exemplars=None, negative=None, scope: str = "plane",
             axis: int = 0, threshold: float | None = None):
        """Every instance of a concept (SAM 3: :func:`napari_promptseg.find`) on the displayed
        plane (``scope="plane"``) or every plane of its line along leading ``axis`` (``"line"``:
        objects linked across planes into 3D ids; ``"track"``: SAM 3's video model detects on the
        displayed plane and tracks through the line, one box at most, the tracker weights needed,
        see :meth:`~napari_promptseg.session.find.FindRunner.start_track`) into a new int32 labels
        array of the image's shape (numpy for 2D, lazy zarr for stacks), filled plane by plane
        (events.found); committed labels do not change. text: a noun phrase; exemplars / negative:
        boxes ``(row0, col0, row1, col1)`` in plane pixels around instances / counter-examples,
        used on every plane searched. Every object and its score is kept: :meth:`set_find_threshold`
        shows more or fewer without running the model. threshold: the one to show (None: the
        current :attr:`find_threshold`). Returns the new array, or None (with a status) without an
        image; no model or one that cannot find concepts, bad boxes or an empty query raise
        TypeError or ValueError (said in the status line too) before any work."""
        if self.image is None:
            self._status("choose an image first.")
            return None
        track = scope == "track"
        try:
            query = check_query(self.model, text, exemplars, negative, self._plane_shape)
            if threshold is not None:
                self.set_find_threshold(threshold, refilter=False)
            planes, target = scope_of(self.stack, self.plane, "line" if track else scope, axis,
                                      (*self._lead, *self._plane_shape))
            if track and len(planes) < 2:
                raise ValueError("tracking needs a video or a stack: this image has one plane")
            self.cancel_propagation()
            self._everything.cancel()
            if track:
                self._find.start_track(self.model, self.stack, query, planes, target, self.find_threshold,
                                       planes.index(self.plane))
            else:
                self._find.start(self.model, self.stack, query, planes, target, self.find_threshold)
        except (TypeError, ValueError) as err:
            self._status(str(err) if str(err).startswith("Find") else f"find: {err}")
            raise
        return target

    def set_find_threshold(self, threshold: float, refilter: bool = True) -> None:
        """Show the last Find's objects scoring at least ``threshold`` (0..1) from the objects it
        kept, without running the model (a line of planes is relinked, in a job)."""
        t = float(threshold)
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"the score threshold must be in [0, 1], got {threshold!r}")
        self.find_threshold = t
        if refilter:
            self._find.refilter(t)

    @property
    def found(self) -> FindRun | None:
        """The last Find (:class:`~napari_promptseg.session.find.FindRun`: ``target``, ``query``,
        ``kept`` objects per plane, ``threshold``), or None."""
        return self._find.result

    @property
    def finding(self) -> bool:
        return self._find.running

    def found_edited(self) -> None:
        """The last Find's labels were painted by hand: the threshold no longer rewrites them."""
        if self._find.result is not None:
            self._find.edited(self._find.result.target)
