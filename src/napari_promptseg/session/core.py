"""The annotation session: the ``SamPredictor`` of interaction, with no Qt and no napari.

It owns the model, the lazy per-plane embeddings of one image (2D or a stack ``(..., H, W)``),
the prompts per plane and object, the decode generations (newest wins), candidate masks and
refinement logits, the preview, propagation runs, commits with undo/redo and the autosave. It
emits :class:`SessionEvents` (psygnal). Slow work is handed to ``scheduler`` as
:class:`~.jobs.Job` objects; the default runs them at once, so in a script every call is done
when it returns::

    s = AnnotationSession(ps.load_model("vit_b"), stack)       # (Z, H, W) any dtype
    s.set_plane((12,)); s.add_point((60, 80))                   # (row, col) on plane 12
    s.propagate(); s.commit()                                    # one 3D label
    labels = s.target                                            # (Z, H, W) int32 (lazy zarr)

Plane indices are tuples of the leading axes (``()`` for 2D); coordinates ``(row, col)`` pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

import numpy as np

from napari_promptseg.core.deprecation import deprecated_alias
from napari_promptseg.labels.write import LabelsCommit
from napari_promptseg.session.decoding import Decoder
from napari_promptseg.session.embedding import PlaneEmbedder
from napari_promptseg.session.events import SessionEvents
from napari_promptseg.session.everything import EverythingRunner
from napari_promptseg.session.find import FindRunner
from napari_promptseg.session.jobs import Job, run_now
from napari_promptseg.session.labels import CommitLog
from napari_promptseg.session.plane_runs import PlaneRuns
from napari_promptseg.session.planes import (
    Plane,
    Prompt,
    fmt,
    image_shape,
    placed,
    present,
    prompts_json,
    with_marks,
    with_prompt,
)
from napari_promptseg.session.preview import Preview
from napari_promptseg.session.propagation import Propagator, check_scale, plane_spacing
from napari_promptseg.session.settings import CommitSettings, PropagationSettings, split_changes
from napari_promptseg.session.text import status_line

__all__ = ["AnnotationSession", "SessionEvents"]


class AnnotationSession(PlaneRuns):
    """Interactive segmentation of one image with one model (see the module docstring)."""

    def __init__(self, model=None, image=None, *, rgb: bool = False, window=None,
                 scheduler: Callable[[Job], None] = run_now, prefetch: int | None = None,
                 autosave: bool = True, source_path: str | None = None, disk=None) -> None:
        self.events = SessionEvents()
        self._schedule = scheduler
        self.prefetch = (0 if scheduler is run_now else 4) if prefetch is None else prefetch
        self.autosave_enabled = autosave
        self.propagation_settings = PropagationSettings()  # what P does (configure() changes it)
        self.commit_settings = CommitSettings()  # what K does
        self.model, self.image, self.rgb, self.window, self.disk = model, None, rgb, window, disk
        self.scale: tuple[float, ...] | None = None  # the image's voxel size (set_image)
        self._embedder = PlaneEmbedder(scheduler, self.prefetch, disk)
        self._embedder.on_ready, self._embedder.on_status = self._embedded, self._status
        self._propagation = Propagator(scheduler, self._show, self._status, self.events.progress.emit,
                                      lambda: self._embedder.resume(),
                                      lambda p: self._labels.blocked(p, self.commit_settings.overwrite))
        self._everything = EverythingRunner(scheduler, self.events.everything.emit, self._status,
                                           self.events.progress.emit, lambda: self._embedder.resume())
        self._find = FindRunner(scheduler, self.events.found.emit, self._status, self.events.progress.emit,
                                lambda: self._embedder.resume())
        self._embedder.paused = lambda: (self._propagation.run is not None or self._everything.run is not None
                                         or self._find.running)
        self.active: Plane = ()  # the plane prompted last: J acts on it unless the shown one is prompted
        self.current_object = 1
        self._placed, self._marks = {}, {}  # prompts placing objects; end marks {plane: {object id}}
        self._view: Preview | None = None
        # the target labels, undo/redo (bounded in bytes), autosave
        self._labels = CommitLog(scheduler, self._status, lambda: self.commit_settings.undo_bytes)
        self._decoder = Decoder(scheduler, lambda: (self.model, self.stack), self._show, self._status,
                               self.describe)  # prompts, decodes (newest wins), objects refined from paint
        self._closed = False
        if image is not None:
            self.set_image(image, rgb=rgb, window=window, source_path=source_path)

    # ------------------------------------------------------------------ image, model, window
    @property
    def lead_shape(self) -> tuple[int, ...]:
        return self.stack.lead_shape if self.stack is not None else self._lead

    @property
    def plane_shape(self) -> tuple[int, int]:
        return self._plane_shape

    @property
    def ready(self) -> bool:
        """The displayed plane's embedding is ready (a prompt there decodes at once)."""
        return self.stack is not None and self.stack.cached(self.plane) is not None

    def set_image(self, image, *, rgb: bool = False, window=None, source_path: str | None = None,
                  embeddings=None, scale=None) -> None:
        """Segment ``image`` (array-like ``(..., H, W)`` or ``(..., H, W, 3|4)`` with ``rgb``; numpy,
        dask, zarr: planes are read when needed). window: ``(lo, hi)`` for every plane (napari's
        contrast limits; default robust percentiles; uint8 RGB is never windowed). Prompts,
        preview and the commit target start afresh; an autosave of this image is announced.
        embeddings: an embeddings store for this image (see :meth:`use_embeddings`), taken into
        use before anything is embedded; a store used before is dropped. scale: the voxel size
        over the non-channel axes (napari's layer ``scale``; NaN along an axis whose spacing is not
        a length, e.g. time; None: unknown): propagation's extent stop rule needs it."""
        shape = image_shape(image, rgb)
        self.scale = check_scale(scale, len(shape))
        self._cancel_jobs("another image was opened")
        self.image, self.rgb, self.window = image, rgb, window
        self._lead, self._plane_shape = shape[:-2], shape[-2:]
        self._embedder.forget()
        self._find.forget()
        self._embedder.plane = self.active = tuple(0 for _ in self._lead)
        note = self._attach(embeddings)
        self._reset_state()
        self._view = Preview(shape, len(self._lead), self.events.preview_reset.emit)
        unsaved = self._labels.flush()  # the old image's queued autosaves, before its log goes
        self._labels = CommitLog(self._schedule, self._status, lambda: self.commit_settings.undo_bytes)
        self.events.preview_reset.emit(self.preview)
        self.events.current_object.emit(self.current_object)
        self._restart_embeddings()
        if note:
            self._status(note)
        if self.autosave_enabled:
            log = self._labels

            def offer(summary: str) -> None:  # read in a job: the image may have changed since
                if self._labels is log and not self._closed:
                    self.events.restorable.emit(summary)

            problem = log.open_store_for(image, rgb, source_path, offer)
            if problem:
                self._status(problem)
        if unsaved:
            self._status(f"the previous image's {unsaved}")

    def forget_image(self) -> None:
        """The image is gone (e.g. its layer was removed): stop its work, drop its embeddings."""
        self._cancel_jobs()
        self._embedder.forget()
        self._find.forget()
        self.image = None

    def set_model(self, model, embeddings=None) -> None:
        """Use ``model``; embeddings restart, prompts and preview are kept and decoded again. An
        embeddings store made by another model is no longer used; embeddings: a store to use
        with this model (see :meth:`use_embeddings`), taken into use before anything is embedded."""
        self.model = model
        notes = [self._embedder.drop_unfit_store(model), self._attach(embeddings)]
        self._restart_embeddings("the model changed")
        for note in filter(None, notes):
            self._status(note)

    def set_window(self, window) -> None:
        """A new intensity window (napari contrast limits): as :meth:`set_model`. While an
        embeddings store is used, planes keep the store's window (only the display changes)."""
        window = None if window is None else tuple(float(v) for v in window)
        if window != self.window:
            self.window = window
            if self._embedder.store is None:
                self._restart_embeddings("the intensity window changed")

    def use_embeddings(self, store=None) -> bool:
        """Read the planes of a precomputed embeddings store (``ps.open_embeddings`` or its
        path; made by ``promptseg embed`` or ``ps.embed_store_iter``) instead of encoding them;
        the image is then embedded with the store's window. A store made by another model, for
        another shape, axis or other pixels is refused: its message goes to the status line,
        nothing else changes, and False is returned. None: stop using a store."""
        ok, note = self._embedder.attach(store, self.model, self.image, self.rgb)
        if ok and note:
            self._restart_embeddings()
        if note:
            self._status(note)
        return ok

    def _attach(self, embeddings) -> str | None:
        """Use ``embeddings`` (None: keep the store) from the next restart on; returns what to say."""
        return None if embeddings is None else self._embedder.attach(embeddings, self.model, self.image,
                                                                     self.rgb)[1]

    @property
    def embeddings_store(self):
        """The :class:`~napari_promptseg.embed.store.EmbeddingStore` planes are read from, or None."""
        return self._embedder.store

    def _restart_embeddings(self, why: str | None = None) -> None:
        self._cancel_jobs(why)
        if self.model is None or self.image is None:
            self._embedder.stop()
            self._status("choose a model: the image is embedded as soon as one is loaded." if self.image
                         is not None else "choose an image.")
            return
        self._decoder.restale()  # keep showing the masks; decode again on the new embeddings
        self._embedder.restart(self.model, self.image, self.window, self.rgb, self.plane)
        self._decoder.redecode()

    @property
    def stack(self):
        """The :class:`~napari_promptseg.embed.stack.StackEmbeddings` of the image (None without a model)."""
        return self._embedder.stack

    @property
    def plane(self) -> Plane:
        """The plane shown to the user (embedded first; new prompts land there)."""
        return self._embedder.plane

    def set_plane(self, plane: Plane) -> None:
        """The user now looks at ``plane``: embed it first, then its neighbours that way."""
        if self._embedder.set_plane(plane) and self.stack is not None:
            self._status(self.describe())

    def _embedded(self, plane: Plane) -> None:
        self.events.ready.emit(plane)
        self._status(self.describe())

    # ------------------------------------------------------------------ objects and prompts
    def new_object(self) -> int:
        """Start a new object: the next prompts belong to it. Returns its id."""
        used = {self.current_object} | self._decoder.ids() | self._propagation.ids
        return self.select_object(max(used) + 1)

    def select_object(self, oid: int) -> int:
        """Make ``oid`` (>= 1) the current object: new prompts belong to it (e.g. to correct it)."""
        oid = int(oid)
        if oid < 1:
            raise ValueError(f"object ids start at 1, got {oid}")
        self.current_object = oid
        self.events.current_object.emit(oid)
        self._status(self.describe())
        return oid

    @property
    def prompts(self) -> dict[Plane, dict[int, Prompt]]:
        """``{plane: {object id: Prompt}}`` (a copy)."""
        return {p: dict(objs) for p, objs in self._decoder.prompts.items()}

    def set_prompts(self, prompts: Mapping[Plane, Mapping[int, Prompt]]) -> None:
        """Replace all prompts (the napari bridge calls this when a prompt layer changes); only
        the objects whose prompts changed are decoded again. End marks (:meth:`mark_end`) stay."""
        self._placed = placed(prompts)
        planned = self._decoder.replace(with_marks(self._placed, self._marks))
        changed = sorted(planned[0])
        if changed:
            self.active = self.plane if self.plane in changed else changed[-1]
        self._decoder.request(planned=planned)

    def mark_end(self, plane: Plane | None = None, obj: int | None = None) -> bool:
        """"The object ends here": object ``obj`` (default: the current one) is absent from
        ``plane`` (default: the displayed one); the plane shows none of it and a propagation stops
        before it. Marking it again takes the mark away; a positive point or a box of the object
        on the plane does too. Returns True when the plane is marked now."""
        if not self._lead:
            self._status("an end mark needs a z-stack or a time series; this image is 2D.")
            return False
        plane = self.plane if plane is None else tuple(plane)
        obj = self.current_object if obj is None else int(obj)
        there = self._placed.get(plane, {}).get(obj)
        if obj not in self._marks.get(plane, ()) and there is not None and present(there):
            self._status(f"object {obj} has a positive point or a box on plane {fmt(plane)}: delete them "
                         "first to mark its end there.")
            return False
        marks = self._marks.setdefault(plane, set())
        marked = obj not in marks
        (marks.add if marked else marks.discard)(obj)
        self.set_prompts(self._placed)
        marked = obj in self._marks.get(plane, ())
        where = fmt(plane) or "(2D)"
        self._status(f"object {obj} ends before plane {where}: P stops it there (H again: unmark)." if marked
                     else f"object {obj} is no longer marked absent from plane {where}.")
        return marked

    def add_point(self, rc, positive: bool = True, plane: Plane | None = None,
                  obj: int | None = None) -> None:
        """Add a point ``(row, col)`` to object ``obj`` (default: the current one) on ``plane``
        (default: the displayed one) and decode."""
        self._add(plane, obj, points=[rc], labels=[1 if positive else 0])

    def add_box(self, box, plane: Plane | None = None, obj: int | None = None) -> None:
        """Set the box ``(row0, col0, row1, col1)`` of object ``obj`` on ``plane`` and decode."""
        self._add(plane, obj, box=np.asarray(box, np.float64))

    def _add(self, plane, obj, points=(), labels=(), box=None) -> None:
        plane = self.plane if plane is None else tuple(plane)
        obj = self.current_object if obj is None else int(obj)
        self.set_prompts(with_prompt(self.prompts, plane, obj, points, labels, box))

    # ------------------------------------------------------------------ decoding
    @property
    def decoding(self) -> bool:
        """True while the newest prompts are being decoded (their masks are not shown yet)."""
        return self._decoder.pending is not None

    def _show(self, planes) -> None:
        """Compose ``planes`` from their decoded, propagated and refined objects into the preview."""
        planes = tuple(sorted(set(planes)))
        for p in planes:
            self._view.show(p, self._decoder.decoded.get(p), self._propagation.planes.get(p),
                            self._decoder.kept.get(p))
        if planes:
            self.events.preview.emit(planes)

    @property
    def preview(self):
        """What napari shows: ``(H, W)`` numpy or a lazy ``(..., H, W)`` zarr array of object ids
        (uint8, uint32 once an id passes 255); None before an image."""
        return None if self._view is None else self._view.array

    def preview_plane(self, plane: Plane | None = None) -> np.ndarray:
        """``(H, W)`` object ids of the preview on ``plane`` (default: the displayed one)."""
        return self._view.plane(self.plane if plane is None else tuple(plane))

    def preview_edited(self, planes) -> None:
        """The user painted into the preview on ``planes``: a decode in flight must not undo it,
        and a commit takes the painted pixels."""
        planes = {tuple(p) for p in planes}
        self._view.edited(planes)
        self._decoder.painted(planes)

    @property
    def predictions(self) -> dict[int, object]:
        """``{object id: Prediction}`` on :attr:`focus` (objects absent there left out)."""
        return {i: d.pred for i, d in self._decoder.predicted(self.focus).items()}

    @property
    def choices(self) -> dict[int, int]:
        """``{object id: index of the shown candidate mask}`` on :attr:`focus`."""
        return {i: d.choice for i, d in self._decoder.predicted(self.focus).items()}

    def next_mask(self) -> None:
        """Show the next candidate mask (by score) of each ambiguous object on :attr:`focus`."""
        self._decoder.next_mask(self.focus)

    def refine_from_preview(self) -> None:
        """Each object of the displayed plane's (painted) preview becomes a mask prompt, with its
        bounding box and its points on this plane."""
        self._decoder.refine(self.plane, np.array(self.preview_plane(self.plane)), self._plane_shape)

    # ------------------------------------------------------------------ propagation
    @property
    def propagating(self) -> bool:
        return self._propagation.run is not None

    def propagate(self, axis: int = 0) -> bool:
        """Propagate the objects of the prompted planes through the stack along leading ``axis``,
        both ways from every prompted plane, into the preview (a running propagation is cancelled
        first; newest prompts are decoded first). A prompted plane is the user's: nothing is
        written over its prompted objects, and an object absent from it stops there. Commit keeps
        the result. Returns False (with a status) when there is nothing to propagate."""
        if not self._lead:
            self._status("propagation needs a z-stack or a time series; this image is 2D.")
            return False
        if self.stack is None:
            self._status("choose a model first.")
            return False
        if self._decoder.defer(lambda: self.propagate(axis)):
            self._status("propagating as soon as the newest prompts are decoded…")
            return True
        options = self.propagation_settings.options_for(self.model, self._tiled)
        return self._propagation.start(self.model, self.stack, self.plane, int(axis), self._placed,
                                      self.preview_plane, options, self._marks,
                                      plane_spacing(self.scale, int(axis)))

    @property
    def _tiled(self) -> bool:
        return self.stack is not None and self.stack.tiled

    @property
    def propagation_method(self) -> str:
        """``"memory"`` or ``"prompt"``: what :meth:`propagate` will use with this model."""
        return self.propagation_settings.method_for(self.model, self._tiled)

    def configure(self, **changes) -> None:
        """Change settings by name (:mod:`~napari_promptseg.session.settings`: ``method``,
        ``min_score``, ``min_overlap``, ``stop_after``, ``overwrite``, ``undo_mb``); a bad value
        raises here and changes nothing. A smaller ``undo_mb`` applies at once (the status line
        says when undo steps go)."""
        current = {PropagationSettings: self.propagation_settings, CommitSettings: self.commit_settings}
        new = {g: replace(current[g], **c) for g, c in split_changes(changes).items()}  # validated
        self.propagation_settings = new.get(PropagationSettings, self.propagation_settings)
        self.commit_settings = new.get(CommitSettings, self.commit_settings)
        if "undo_mb" in changes and (note := self._labels.trim_history()):
            self._status(note)

    def setting_applies(self, name: str) -> bool:
        """Whether propagation setting ``name`` changes what P does with this model."""
        return self.propagation_settings.applies(name, self.model, self._tiled)

    def cancel_propagation(self) -> None:
        """Stop a running propagation; the planes it finished stay in the preview."""
        self._propagation.cancel()

    def cancel(self) -> None:
        """Cancel the propagation, segment everything, Find and the embedding in progress."""
        self.cancel_propagation()
        self._everything.cancel()
        self._find.cancel()
        self._embedder.cancel()
        self._status("cancelled.")

    # ------------------------------------------------------------------ commit, undo, clear
    @property
    def target(self):
        """The labels receiving commits (numpy, zarr, dask or a multiscale list); None until the
        first commit makes a new int32 array (a lazy zarr array for stacks)."""
        return self._labels.target

    def labels_edited(self, max_id: int) -> None:
        """The target labels were edited by hand (brush, eraser): new objects' ids start above
        ``max_id``."""
        self._labels.target_edited(int(max_id))
        self._find.edited(self._labels.target)

    @property
    def annotation_store(self):
        """The image's autosave store (:class:`~napari_promptseg.labels.autosave.AnnotationStore`)
        or None; the embeddings store is :attr:`embeddings_store`."""
        return self._labels.store

    store = deprecated_alias("annotation_store", "the autosave; the embeddings store is embeddings_store")

    def set_target(self, target) -> None:
        """Commit into ``target`` (written in place, plane by plane); None: a new array at the
        first commit."""
        self._labels.set_target(target)

    def ensure_target(self):
        """The labels array that receives commits (made if there is none)."""
        if self._labels.ensure((*self._lead, *self._plane_shape), lazy=bool(self._lead)):
            self.events.target.emit(self._labels.target)
        return self._labels.target

    def commit(self) -> tuple[int, ...]:
        """Write the preview's objects into the target with new ids (one label per object, on
        every plane it is on); clear the prompts. Other objects keep their pixels unless
        ``commit_settings.overwrite``. Newest prompts still decoding: the commit happens when they show.
        Returns the new ids (``()`` when nothing was written now)."""
        if self.image is None or self._closed:
            return ()
        if self.propagating:
            self._status("a propagation is running: wait for it or press Cancel, then commit.")
            return ()
        if self._decoder.defer(self.commit):
            self._status("committing as soon as the decode finishes…")
            return ()
        groups = {p: pl for p in sorted(self._shown()) if (pl := self.preview_plane(p)).any()}
        if not groups:
            self._status("nothing to commit: the preview is empty.")
            return ()
        self.ensure_target()
        c, message = self._labels.commit_preview(groups, self.commit_settings.overwrite, {
            "prompts": prompts_json(self._decoder.prompts)}, (*self._lead, *self._plane_shape))
        if c is not None:
            self._find.edited(self._labels.target)  # committed into the found labels: they stay
            self.events.labels.emit(tuple(e.plane for e in c.edits))
            self.clear(quiet=True)
        self._status(message)
        return () if c is None else c.ids

    def undo(self) -> LabelsCommit | None:
        """Undo the last commit (exactly; refused when the pixels were edited since)."""
        return self._written(*self._labels.step("undo"))

    def redo(self) -> LabelsCommit | None:
        """Redo the last undone commit."""
        return self._written(*self._labels.step("redo"))

    def _written(self, c: LabelsCommit | None, message: str) -> LabelsCommit | None:
        if c is not None:  # announce the planes it wrote
            self.events.labels.emit(tuple(e.plane for e in c.edits))
        self._status(message)
        return c

    def restore_autosave(self) -> tuple[int, ...]:
        """Write the autosaved labels of this image into the target (undoable); returns their ids."""
        if self._labels.store is not None and self._labels.store.exists():
            self.ensure_target()
        c = self._written(*self._labels.restore())
        return () if c is None else c.ids

    def clear(self, quiet: bool = False) -> None:
        """Remove the prompts and the preview (nothing committed changes)."""
        self.cancel_propagation()
        shown = self._shown()
        self._decoder.cancel()
        self._reset_state()
        self._show(shown)
        self.events.prompts_cleared.emit()
        self.events.current_object.emit(self.current_object)
        if not quiet:
            self._status("cleared.")

    def _shown(self) -> set[Plane]:
        """The planes whose preview may hold objects."""
        d = self._decoder
        return set(d.decoded) | set(self._propagation.planes) | set(d.kept) | self._view.painted

    def _reset_state(self) -> None:
        self._placed, self._marks = {}, {}  # prompts placing objects; end marks {plane: {object id}}
        self._decoder.reset()
        self._propagation.clear()
        if self._view is not None:
            self._view.painted.clear()
        self.current_object = 1

    # ------------------------------------------------------------------ status, close
    def describe(self) -> str:
        """The status line: the current object and the masks of the displayed plane when it is
        prompted; on a propagated plane its objects; else the masks of the plane prompted last."""
        return status_line(self, self._decoder.decoded)

    @property
    def focus(self) -> Plane:
        """The plane J and :attr:`predictions` act on: the displayed one when it is prompted, else
        the plane prompted last."""
        return self.plane if self.plane in self._decoder.decoded else self.active

    def _status(self, text: str) -> None:
        if not self._closed:
            self.events.status.emit(text)

    def _cancel_jobs(self, why: str | None = None) -> None:
        self._decoder.cancel()  # a commit or propagation waiting for these decodes is off
        self._propagation.cancel(why)
        self._everything.cancel()
        self._find.cancel()

    def close(self) -> None:
        """Stop every job (an encoder stops at its next block) and save what autosave has queued
        (a commit is never lost by closing; a failed save is said in the status line); the session
        is done."""
        self._cancel_jobs()
        self._embedder.close()
        self._decoder.close()
        problem = self._labels.flush()
        if problem:
            self._status(problem)
        self._closed = True

