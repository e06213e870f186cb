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

import numpy as np

from ..labels_io import LabelsCommit, read_plane
from ..propagate import MIN_OVERLAP, MIN_SCORE
from . import decoding
from .embedding import PlaneEmbedder
from .events import SessionEvents
from .everything import EverythingRunner
from .jobs import Job, run_now
from .labels import CommitLog
from .planes import ObjectPrompt, Plane, PlaneDecode, ids_in, offered, prompts_json, with_prompt
from .preview import Preview
from .propagation import Propagator
from .text import describe

__all__ = ["AnnotationSession", "SessionEvents"]


class AnnotationSession:
    """Interactive segmentation of one image with one model (see the module docstring)."""

    def __init__(self, model=None, image=None, *, rgb: bool = False, window=None,
                 scheduler: Callable[[Job], None] = run_now, prefetch: int | None = None,
                 autosave: bool = True, source_path: str | None = None, disk=None) -> None:
        self.events = SessionEvents()
        self.schedule = scheduler
        self.prefetch = (0 if scheduler is run_now else 4) if prefetch is None else prefetch
        self.autosave_enabled = autosave
        self.overwrite = False  # commits replace other objects' pixels
        self.min_score, self.min_overlap = MIN_SCORE, MIN_OVERLAP
        self.method = "auto"  # propagation: "memory" (SAM 2), "prompt", "auto" (memory if the model has it)
        self.stop_after: int | None = None  # memory tracking: drop an object after N frames without it
        self.model, self.image, self.rgb, self.window, self.disk = model, None, rgb, window, disk
        self.embedder = PlaneEmbedder(scheduler, self.prefetch, disk)
        self.embedder.on_ready, self.embedder.on_status = self._embedded, self._status
        self.propagation = Propagator(scheduler, self._show, self._status, self.events.progress.emit,
                                      lambda: self.embedder.resume(), self._blocked)
        self._propagated = self.propagation.planes  # {plane: (H, W) ids}, the same dict
        self.everything = EverythingRunner(scheduler, self.events.everything.emit, self._status,
                                           self.events.progress.emit, lambda: self.embedder.resume())
        self.embedder.paused = lambda: self.propagation.run is not None or self.everything.run is not None
        self.active: Plane = ()  # the plane prompted last: J acts on it unless the shown one is prompted
        self.current_object = 1
        self._view: Preview | None = None
        self.labels = CommitLog(scheduler, self._status)  # the target labels, undo/redo, autosave
        self._prompts: dict[Plane, dict[int, ObjectPrompt]] = {}
        self._decoded: dict[Plane, PlaneDecode] = {}
        self._kept: dict[Plane, np.ndarray] = {}  # objects refined from paint, without prompts
        self._gen = 0  # bumped by every prompt change: older decodes are stale
        self._pending: Job | None = None  # the newest decode not applied yet
        self._after_decode: list[Callable[[], object]] = []  # commit / propagate waiting for it
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
                  embeddings=None) -> None:
        """Segment ``image`` (array-like ``(..., H, W)`` or ``(..., H, W, 3|4)`` with ``rgb``; numpy,
        dask, zarr: planes are read when needed). window: ``(lo, hi)`` for every plane (napari's
        contrast limits; default robust percentiles; uint8 RGB is never windowed). Prompts,
        preview and the commit target start afresh; an autosave of this image is announced.
        embeddings: an embeddings store for this image (see :meth:`use_embeddings`), taken into
        use before anything is embedded; a store used before is dropped."""
        ndim = image.ndim - (1 if rgb else 0)
        if ndim < 2:
            raise ValueError(f"image of shape {image.shape} has no 2D plane to segment")
        self._cancel_jobs()
        self.image, self.rgb, self.window = image, rgb, window
        shape = tuple(image.shape[:ndim])
        self._lead, self._plane_shape = shape[:-2], shape[-2:]
        self.embedder.stop()
        self.embedder.store = None  # a store belongs to the image it was made for
        self.embedder.plane = self.active = tuple(0 for _ in self._lead)
        note = self._attach(embeddings)
        self._reset_state()
        self._view = Preview(shape, len(self._lead))
        self._view.on_reset = self.events.preview_reset.emit
        self.labels = CommitLog(self.schedule, self._status)
        self.events.preview_reset.emit(self.preview)
        self.events.current_object.emit(self.current_object)
        self._restart_embeddings()
        if note:
            self._status(note)
        if self.autosave_enabled:
            self._open_store(source_path)

    def forget_image(self) -> None:
        """The image is gone (e.g. its layer was removed): stop its work, drop its embeddings."""
        self._cancel_jobs()
        self.embedder.stop()
        self.embedder.store = None
        self.image = None

    def set_model(self, model, embeddings=None) -> None:
        """Use ``model``; embeddings restart, prompts and preview are kept and decoded again. An
        embeddings store made by another model is no longer used; embeddings: a store to use
        with this model (see :meth:`use_embeddings`), taken into use before anything is embedded."""
        self.model = model
        notes = [self.embedder.drop_unfit_store(model), self._attach(embeddings)]
        self._restart_embeddings()
        for note in filter(None, notes):
            self._status(note)

    def set_window(self, window) -> None:
        """A new intensity window (napari contrast limits): as :meth:`set_model`. While an
        embeddings store is used, planes keep the store's window (only the display changes)."""
        window = None if window is None else tuple(float(v) for v in window)
        if window != self.window:
            self.window = window
            if self.embedder.store is None:
                self._restart_embeddings()

    def use_embeddings(self, store=None) -> bool:
        """Read the planes of a precomputed embeddings store (``ps.open_embeddings`` or its
        path; made by ``promptseg embed`` or ``ps.embed_store_iter``) instead of encoding them;
        the image is then embedded with the store's window. A store made by another model, for
        another shape, axis or other pixels is refused: its message goes to the status line,
        nothing else changes, and False is returned. None: stop using a store."""
        from ..store import StoreError

        try:
            note = self.embedder.use_store(store, self.model, self.image, self.rgb)
        except StoreError as err:
            self._status(str(err))
            return False
        if note:
            self._restart_embeddings()
            self._status(note)
        return True

    def _attach(self, embeddings) -> str | None:
        """Use ``embeddings`` (None: leave the store as it is) from the next restart on; returns
        what to say, a refusal's message included."""
        from ..store import StoreError

        if embeddings is None:
            return None
        try:
            return self.embedder.use_store(embeddings, self.model, self.image, self.rgb)
        except StoreError as err:
            return str(err)

    @property
    def embeddings_store(self):
        """The :class:`~napari_promptseg.store.EmbeddingStore` planes are read from, or None."""
        return self.embedder.store

    def _restart_embeddings(self) -> None:
        self._cancel_jobs(keep_run=False)
        if self.model is None or self.image is None:
            self.embedder.stop()
            self._status("choose a model: the image is embedded as soon as one is loaded." if self.image
                         is not None else "choose an image.")
            return
        for d in self._decoded.values():  # keep showing their masks; decode again on the new embeddings
            d.stale = True
        self.embedder.restart(self.model, self.image, self.window, self.rgb, self.plane)
        if self._prompts or self._decoded:  # prompts placed before the model came are decoded now
            self._request_decode()

    @property
    def stack(self):
        """The :class:`~napari_promptseg.stack.StackEmbeddings` of the image (None without a model)."""
        return self.embedder.stack

    @property
    def plane(self) -> Plane:
        """The plane shown to the user (embedded first; new prompts land there)."""
        return self.embedder.plane

    def set_plane(self, plane: Plane) -> None:
        """The user now looks at ``plane``: embed it first, then its neighbours that way."""
        if self.embedder.set_plane(plane) and self.stack is not None:
            self._status(self.describe())

    def _embedded(self, plane: Plane) -> None:
        self.events.ready.emit(plane)
        self._status(self.describe())

    # ------------------------------------------------------------------ objects and prompts
    def new_object(self) -> int:
        """Start a new object: the next prompts belong to it. Returns its id."""
        used = {self.current_object} | {o for objs in self._prompts.values() for o in objs}
        used |= self.propagation.ids | {int(k.max()) for k in self._kept.values()}
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
    def prompts(self) -> dict[Plane, dict[int, ObjectPrompt]]:
        """``{plane: {object id: ObjectPrompt}}`` (a copy)."""
        return {p: dict(objs) for p, objs in self._prompts.items()}

    def set_prompts(self, prompts: Mapping[Plane, Mapping[int, ObjectPrompt]]) -> None:
        """Replace all prompts (the napari bridge calls this when a prompt layer changes); only
        the objects whose prompts changed are decoded again."""
        self._prompts = {tuple(p): dict(objs) for p, objs in prompts.items() if objs}
        planned = decoding.plan(self._prompts, self._decoded)
        changed = sorted(planned[0])
        if changed:
            self.active = self.plane if self.plane in changed else changed[-1]
        self._request_decode(planned=planned)

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
        return self._pending is not None

    def _request_decode(self, skip=(), planned=None) -> None:
        """Decode the objects whose prompts changed (not on ``skip`` planes: painted just now);
        planned: :func:`~.decoding.plan` of the current prompts, when the caller made it already."""
        self._gen += 1
        gen, stack, model = self._gen, self.stack, self.model
        todo, removed = planned or decoding.plan(self._prompts, self._decoded)
        todo = {p: v for p, v in todo.items() if p not in skip}
        removed = {p: v for p, v in removed.items() if p not in skip}
        if stack is None or (not todo and not removed):
            self._pending = None
            self._finish_waiting()
            return

        def done(result) -> None:
            if self._closed or gen != self._gen or stack is not self.stack:
                return  # stale: a newer decode (made from the prompts now) is on its way
            self._pending = None
            self._show(decoding.apply(self._decoded, self._prompts, result, removed))
            self._status(self.describe())
            self._candidates(result)
            self._finish_waiting()

        def failed(err: BaseException) -> None:
            if self._closed or gen != self._gen:
                return
            self._pending = None
            self._after_decode.clear()  # a commit or propagation waiting for these masks is off
            self._status(f"could not decode the prompts: {err}. Commit and propagate use what is shown.")

        self._pending = Job("decode", lambda: decoding.decode(model, stack, todo), done, failed)
        if stack.tiled:
            self._tile_status(stack, todo)
        self.schedule(self._pending)

    def _tile_status(self, stack, todo) -> None:
        """A huge 2D image: say which tile the decode is about to embed (if one)."""
        tiled = stack.cached(())
        if tiled is None:
            return
        for objs in todo.values():
            for o, _ in objs.values():
                what = tiled.pending(o.points, o.labels, o.box) if decoding.present(o) else None
                if what:
                    self._status(f"{what}…")
                    return

    def _finish_waiting(self) -> None:
        waiting, self._after_decode = self._after_decode, []
        for action in waiting:
            action()

    def _candidates(self, result) -> None:
        preds = [d.pred for objs in result.values() for d in objs.values() if d.pred is not None]
        preds = [q for q in preds if len(offered(q, q.best)) > 1]
        if preds and self.schedule is not run_now:  # J's other masks, computed before J is pressed
            self.schedule(Job("candidates", lambda: [q.mask(i) for q in preds for i in offered(q, q.best)],
                              lambda _: None, lambda _: None))

    def _show(self, planes) -> None:
        """Compose ``planes`` from their decoded, propagated and refined objects into the preview."""
        planes = tuple(sorted(set(planes)))
        for p in planes:
            self._view.show(p, self._decoded.get(p), self._propagated.get(p), self._kept.get(p))
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
        if self._after_decode:
            self._after_decode.clear()
            self._status("the preview was painted: press K (or P) again.")
        self._request_decode(skip=planes)  # other planes' prompts still decode

    @property
    def predictions(self) -> dict[int, object]:
        """``{object id: Prediction}`` on :attr:`focus` (objects absent there left out)."""
        dec = self._decoded.get(self.focus)
        return {i: d.pred for i, d in (dec.objects.items() if dec else ()) if d.pred is not None}

    @property
    def choices(self) -> dict[int, int]:
        """``{object id: index of the shown candidate mask}`` on :attr:`focus`."""
        dec = self._decoded.get(self.focus)
        return {i: d.choice for i, d in (dec.objects.items() if dec else ()) if d.pred is not None}

    def next_mask(self) -> None:
        """Show the next candidate mask (by score) of each ambiguous object on :attr:`focus`."""
        focus = self.focus
        dec = self._decoded.get(focus)
        objs = [d for d in (dec.objects.values() if dec else ()) if d.pred is not None]
        if not any(len(offered(d.pred, d.choice)) > 1 for d in objs):
            low = any(len(d.pred.scores) > 1 for d in objs)
            why = "the other candidate masks score below 0.1" if low else "only one candidate mask"
            self._status(f"{why}: add a point or a box to change the mask.")
            return
        for d in objs:
            o = offered(d.pred, d.choice)
            d.choice = o[(o.index(d.choice) + 1) % len(o)]
        self._show([focus])
        self._status(self.describe())

    def refine_from_preview(self) -> None:
        """Each object of the displayed plane's (painted) preview becomes a mask prompt, with its
        bounding box and its points on this plane."""
        p, stack, model = self.plane, self.stack, self.model
        painted = np.array(self.preview_plane(p))
        objs = self._prompts.get(p, {})
        prompts = decoding.refine_prompts(painted, objs)
        if stack is None or not prompts:
            self._status("choose a model." if stack is None else "the preview is empty: paint one first.")
            return
        self._gen += 1
        gen = self._gen

        def work():
            return decoding.refine(model, stack.get(p), painted, prompts)

        def done(preds) -> None:
            if self._closed or gen != self._gen or stack is not self.stack:
                return
            self._pending = None
            self._kept[p] = decoding.apply_refined(self._decoded, p, objs, preds, self._kept.get(p),
                                                   self._plane_shape)
            self._show([p])
            self._status(self.describe())
            self._finish_waiting()

        def failed(err: BaseException) -> None:
            if not self._closed and gen == self._gen:
                self._pending = None
                self._after_decode.clear()
                self._status(f"refine failed: {err}")

        self._pending = Job("decode", work, done, failed)
        self.schedule(self._pending)

    # ------------------------------------------------------------------ propagation
    @property
    def propagating(self) -> bool:
        return self.propagation.run is not None

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
        if self._pending is not None:
            self._after_decode.append(lambda: self.propagate(axis))
            self._status("propagating as soon as the newest prompts are decoded…")
            return True
        line = set(self.stack.line(self.plane, int(axis)))
        previews = {p[int(axis)]: self.preview_plane(p) for p in self._prompts if p in line}
        return self.propagation.start(self.model, self.stack, self.plane, int(axis), previews,
                                      min_score=self.min_score, min_overlap=self.min_overlap,
                                      method=self.propagation_method, stop_after=self.stop_after)

    @property
    def propagation_method(self) -> str:
        """``"memory"`` or ``"prompt"``: what :meth:`propagate` will use with this model."""
        from ..propagate import resolve_method

        if self.method == "memory" and not getattr(self.model, "supports_memory", False):
            return "prompt"  # a SAM model chosen after SAM 2: its only method
        return resolve_method(self.model, self.method) if self.model is not None else "prompt"

    def cancel_propagation(self) -> None:
        """Stop a running propagation; the planes it finished stay in the preview."""
        self.propagation.cancel()

    def _blocked(self, plane: Plane) -> np.ndarray | None:
        """Pixels a propagation leaves empty on ``plane``: committed objects, unless overwriting."""
        if self.target is None or self.overwrite:
            return None
        return read_plane(self.target, plane) != 0

    def cancel(self) -> None:
        """Cancel the propagation, segment everything and the embedding in progress."""
        self.cancel_propagation()
        self.everything.cancel()
        self.embedder.cancel()
        self._status("cancelled.")

    # ------------------------------------------------------------------ segment everything
    def segment_everything(self, scope: str = "plane", axis: int = 0, **params):
        """Every object on the displayed plane (``scope="plane"``) or on every plane of its line
        along leading ``axis`` (``"line"``: a z-stack's slices, a video's frames; objects are
        linked across planes by overlap into 3D ids) into a new int32 labels array of the image's
        shape (numpy for 2D, lazy zarr for stacks), filled plane by plane (events.everything);
        committed labels do not change. params: Meta's generator parameters
        (:data:`~napari_promptseg.automatic.EVERYTHING_DEFAULTS`). Returns the new array, or None
        (with a status) when there is no model or image; a bad parameter raises ValueError or
        TypeError before any work. A running propagation or run is cancelled first."""
        from ..labels_io import lazy_labels

        if self.image is None or self.stack is None:
            self._status("choose an image and a model first." if self.image is None
                         else "choose a model first.")
            return None
        if scope not in ("plane", "line"):
            raise ValueError(f"scope must be 'plane' or 'line', got {scope!r}")
        if scope == "line" and not self._lead:
            scope = "plane"
        planes = [self.plane] if scope == "plane" else list(self.stack.line(self.plane, int(axis)))
        shape = (*self._lead, *self._plane_shape)
        target = lazy_labels(shape, np.int32) if self._lead else np.zeros(shape, np.int32)
        self.cancel_propagation()
        self.everything.start(self.model, self.stack, planes, target, params)
        return target

    @property
    def segmenting_everything(self) -> bool:
        return self.everything.run is not None

    # ------------------------------------------------------------------ commit, undo, clear
    @property
    def target(self):
        """The labels receiving commits (numpy, zarr, dask or a multiscale list); None until the
        first commit makes a new int32 array (a lazy zarr array for stacks)."""
        return self.labels.target

    @property
    def store(self):
        """The image's autosave store (:class:`~napari_promptseg.autosave.AnnotationStore`) or None."""
        return self.labels.store

    def set_target(self, target) -> None:
        """Commit into ``target`` (written in place, plane by plane); None: a new array at the
        first commit."""
        self.labels.set_target(target)

    def ensure_target(self):
        """The labels array that receives commits (made if there is none)."""
        if self.labels.ensure((*self._lead, *self._plane_shape), lazy=bool(self._lead)):
            self.events.target.emit(self.labels.target)
        return self.labels.target

    def commit(self) -> tuple[int, ...]:
        """Write the preview's objects into the target with new ids (one label per object, on
        every plane it is on); clear the prompts. Other objects keep their pixels unless
        :attr:`overwrite`. Newest prompts still decoding: the commit happens when they show.
        Returns the new ids (``()`` when nothing was written now)."""
        if self.image is None or self._closed:
            return ()
        if self.propagating:
            self._status("a propagation is running: wait for it or press Cancel, then commit.")
            return ()
        if self._pending is not None:
            self._after_decode.append(self.commit)
            self._status("committing as soon as the decode finishes…")
            return ()
        planes = set(self._decoded) | set(self._propagated) | set(self._kept) | self._view.painted
        groups = {p: pl for p in sorted(planes) if (pl := self.preview_plane(p)).any()}
        if not groups:
            self._status("nothing to commit: the preview is empty.")
            return ()
        self.ensure_target()
        image_shape = (*self._lead, *self._plane_shape)
        if self.labels.shape != image_shape:
            self._status(f"cannot commit: the labels' shape {self.labels.shape} is not the image's "
                         f"{image_shape}; choose other labels or new ones.")
            return ()
        try:
            c, problem = self.labels.commit(groups, self.overwrite, {"prompts": prompts_json(self._prompts)})
        except (TypeError, ValueError, OverflowError) as err:
            self._status(f"cannot commit: {err}")
            return ()
        if not c.ids:
            self._status("nothing committed: every pixel already belongs to another object "
                         "(check 'overwrite other objects' to replace them).")
            return ()
        self.events.labels.emit(tuple(e.plane for e in c.edits))
        self.clear(quiet=True)
        ids = ", ".join(map(str, c.ids))
        self._status(problem or f"committed object{'s' * (len(c.ids) > 1)} {ids}. U: undo.")
        return c.ids

    def undo(self) -> LabelsCommit | None:
        """Undo the last commit (exactly; refused when the pixels were edited since)."""
        return self._replay("undo", "undid", " Shift-U: redo.")

    def redo(self) -> LabelsCommit | None:
        """Redo the last undone commit."""
        return self._replay("redo", "redid", "")

    def _replay(self, which: str, verb: str, hint: str) -> LabelsCommit | None:
        c, problem = self.labels.replay(which)
        if c is not None:
            self.events.labels.emit(tuple(e.plane for e in c.edits))
            ids = ", ".join(map(str, c.ids))
            self._status(problem or f"{verb} object{'s' * (len(c.ids) > 1)} {ids}.{hint}")
        else:
            self._status(problem)
        return c

    def restore_autosave(self) -> tuple[int, ...]:
        """Write the autosaved labels of this image into the target (undoable); returns their ids."""
        if self.labels.store is not None and self.labels.store.exists():
            self.ensure_target()
        c, message = self.labels.restore()
        if c is not None:
            self.events.labels.emit(tuple(e.plane for e in c.edits))
        self._status(message)
        return () if c is None else c.ids

    def clear(self, quiet: bool = False) -> None:
        """Remove the prompts and the preview (nothing committed changes)."""
        self.cancel_propagation()
        shown = set(self._decoded) | set(self._propagated) | set(self._kept) | self._view.painted
        self._gen += 1
        self._pending = None
        self._after_decode.clear()
        self._reset_state()
        self._show(shown)
        self.events.prompts_cleared.emit()
        self.events.current_object.emit(self.current_object)
        if not quiet:
            self._status("cleared.")

    def _reset_state(self) -> None:
        self._prompts.clear()
        self._decoded.clear()
        self._propagated.clear()
        self.propagation.ids.clear()
        self._kept.clear()
        if self._view is not None:
            self._view.painted.clear()
        self.current_object = 1

    def _open_store(self, source_path) -> None:
        try:
            earlier = self.labels.open_store(self.image, self.rgb, source_path)
        except (OSError, ValueError) as err:
            self.labels.store = None
            self._status(f"autosave is off for this image: {err}")
            return
        if earlier:
            self.events.restorable.emit(earlier)

    # ------------------------------------------------------------------ status, close
    def describe(self) -> str:
        """The status line: the current object and the masks of the displayed plane when it is
        prompted; on a propagated plane its objects; else the masks of the plane prompted last."""
        here = self._decoded.get(self.plane)
        if here is not None and any(d.pred is not None for d in here.objects.values()):
            return describe(self, here, self.plane)
        shown = len(ids_in(self.preview_plane())) if self._view is not None else 0  # read once
        return describe(self, None if shown else self._decoded.get(self.active), self.active, shown)

    @property
    def focus(self) -> Plane:
        """The plane J and :attr:`predictions` act on: the displayed one when it is prompted, else
        the plane prompted last."""
        return self.plane if self.plane in self._decoded else self.active

    def _status(self, text: str) -> None:
        if not self._closed:
            self.events.status.emit(text)

    def _cancel_jobs(self, keep_run: bool = False) -> None:
        self._pending = None
        self._after_decode.clear()  # a commit or propagation waiting for these decodes is off
        self._gen += 1
        if not keep_run:
            self.cancel_propagation()
            self.everything.cancel()

    def close(self) -> None:
        """Stop every job (an encoder stops at its next block); the session is done."""
        self._cancel_jobs()
        self.embedder.close()
        self._after_decode.clear()
        self._closed = True

