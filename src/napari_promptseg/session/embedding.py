"""The session's embeddings (no Qt): the displayed plane is embedded first, then, while idle, the
next planes in the direction the user moves; one encoder job at a time, a prefetch gives way to
the plane shown. The planes themselves live in a :class:`~napari_promptseg.embed.stack.StackEmbeddings`.

Plane indices are tuples of the leading axes (``()`` for 2D).
"""

from __future__ import annotations

from collections.abc import Callable

from napari_promptseg.embed.cache import EmbeddingCache
from napari_promptseg.embed.entry import explain_error
from napari_promptseg.session.jobs import Job
from napari_promptseg.session.planes import Plane, fmt

__all__ = ["PlaneEmbedder"]


class PlaneEmbedder:
    """Embeds the planes of one image for one model and window (see the module docstring).

    on_ready(plane): the displayed plane's embedding is ready; on_status(text): a message;
    paused(): True while prefetching must wait (e.g. a propagation embeds planes itself).
    store: an embeddings store (:mod:`napari_promptseg.embed.store`) checked for the image and model,
    or None: the planes it holds are read from it, with its window (see :meth:`restart`).
    """

    def __init__(self, schedule: Callable[[Job], None], prefetch: int, disk=None) -> None:
        self.schedule, self.prefetch, self.disk = schedule, prefetch, disk
        self.stack = None  # StackEmbeddings, None without a model or an image
        self.store = None  # an EmbeddingStore for this image and model, or None
        self.plane: Plane = ()
        self.on_ready: Callable[[Plane], None] = lambda plane: None
        self.on_status: Callable[[str], None] = lambda text: None
        self.paused: Callable[[], bool] = lambda: False
        self._cache = EmbeddingCache(8)  # by pixels: a window or model seen before is found again
        self._move = (0, 1)  # (leading axis, direction) of the last move
        self._job: Job | None = None
        self._closed = False

    @property
    def ready(self) -> bool:
        """The displayed plane's embedding is in memory."""
        return self.stack is not None and self.stack.cached(self.plane) is not None

    def restart(self, model, image, window, rgb: bool, plane: Plane) -> None:
        """Embed ``image`` with ``model`` through ``window`` from now on (None model or image: stop);
        with a :attr:`store`, through the store's window."""
        from napari_promptseg.embed.stack import StackEmbeddings

        self.stop()
        self.plane = tuple(plane)
        if model is None or image is None:
            return
        self.stack = StackEmbeddings(model, image, window, rgb=rgb, cache=self._cache, disk=self.disk,
                                     tiles=True, store=self.store)
        self._embed_current()

    def use_store(self, store, model, image, rgb: bool) -> str | None:
        """Read planes from ``store`` (an EmbeddingStore or its path; None: no store) from the next
        :meth:`restart` on. Returns what to tell the user (None: nothing changed); raises
        :class:`~napari_promptseg.embed.store.StoreError` for a store that does not fit (see
        :func:`~.stores.open_for`), keeping the store used so far."""
        from napari_promptseg.session.stores import open_for, store_note

        if store is None:
            if self.store is None:
                return None
            self.store = None
            return "embeddings store no longer used: planes are embedded by the model."
        self.store = open_for(store, model, image, rgb, self.plane)
        return store_note(self.store)

    def attach(self, store, model, image, rgb: bool) -> tuple[bool, str | None]:
        """:meth:`use_store` that reports a refusal instead of raising: (taken into use, what to
        tell the user, a refusal's message included)."""
        from napari_promptseg.embed.store import StoreError

        try:
            return True, self.use_store(store, model, image, rgb)
        except StoreError as err:
            return False, str(err)

    def drop_unfit_store(self, model) -> str | None:
        """Forget :attr:`store` unless ``model`` made it; returns why it was forgotten (None: kept)."""
        from napari_promptseg.embed.store import StoreError

        if self.store is None or model is None:
            return None
        try:
            self.store.check(model, self.store.shape)
        except StoreError as err:
            self.store = None
            return f"embeddings store no longer used: {err}"
        return None

    def forget(self) -> None:
        """:meth:`stop` and drop the store: the image is another one, or none."""
        self.stop()
        self.store = None  # a store belongs to the image it was made for

    def stop(self) -> None:
        """Cancel the encoder job (it stops at its next block) and forget the stack."""
        self.cancel()
        self.stack = None

    def cancel(self) -> None:
        if self._job is not None:
            self._job.token.cancel()
            self._job = None

    def close(self) -> None:
        self.stop()
        self._closed = True

    def set_plane(self, plane: Plane) -> bool:
        """The user now looks at ``plane``; returns False when it was already shown."""
        plane = tuple(int(v) for v in plane)
        if plane == self.plane:
            return False
        moved = [i for i, (a, b) in enumerate(zip(self.plane, plane, strict=True)) if a != b]
        if moved:
            self._move = (moved[0], 1 if plane[moved[0]] > self.plane[moved[0]] else -1)
        self.plane = plane
        if self.stack is not None:
            self._embed_current()
        return True

    def _embed_current(self) -> None:
        stack, plane = self.stack, self.plane
        if stack.cached(plane) is not None:
            self.on_ready(plane)
            self.resume()
            return
        if self._job is not None and self._job.plane == plane:
            return
        where = f" plane {fmt(plane)}" if plane else ""
        if stack.tiled:
            from napari_promptseg.embed.tiles import tile_side

            h, w = stack.plane_shape
            side = tile_side(stack.model)
            what = "planes of" if plane else "image of"
            self.on_status(f"{what} {h} x {w} pixels: {stack.model.name} embeds {side}-pixel tiles "
                           "as prompts need them…")
        elif stack.in_store(plane):
            self.on_status(f"reading{where} from the embeddings store {stack.store.path.name}…")
        else:
            self.on_status(f"embedding{where} with {stack.model.name}…")
        self._embed(plane, f"embedding{where}")

    def _embed(self, plane: Plane, label: str) -> None:
        stack = self.stack

        def done(_emb) -> None:
            if job is self._job:
                self._job = None
            if self._closed or stack is not self.stack:
                return
            if plane == self.plane:
                self.on_ready(plane)
                why = stack.store_problems.get(plane)
                if why:
                    self.on_status(f"{why}; plane {fmt(plane) or '(2D)'} was embedded with the model "
                                   "instead.")
            self.say_disk_problems()
            self.resume()

        def failed(err: BaseException) -> None:
            if job is self._job:
                self._job = None
            if not self._closed and stack is self.stack and not job.token.cancelled:
                self.on_status(f"could not embed plane {fmt(plane) or '(2D)'}: {explain_error(err)}")

        job = Job("embed", lambda: stack.get(plane), done, failed, label=label)
        job.plane = plane
        if self._job is not None and self._job.plane != self.plane:
            self._job.token.cancel()  # a prefetch gives way to the plane shown
        self._job = job
        self.schedule(job)

    def say_disk_problems(self) -> None:
        """Tell the user what went wrong with the disk cache since the last time (a full disk, a
        read-only or removed folder: each kind once; the embeddings stay in memory)."""
        take = getattr(self.disk, "take_problems", None)
        if take is not None and not self._closed:
            for text in take():
                self.on_status(text)

    def resume(self) -> None:
        """Prefetch the next plane in the direction of the last move, if nothing else runs."""
        stack = self.stack
        if (not self.prefetch or stack is None or not stack.lead_shape or self._closed or self.paused()
                or self._job is not None):
            return
        order = stack.prefetch_order(self.plane, *self._move, count=self.prefetch)
        if order:
            self._embed(order[0], "")
