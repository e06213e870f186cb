"""Choosing and loading the session's model, and its on-disk embedding cache (no Qt).

A load is a steps :class:`~.jobs.Job`: it yields :class:`Download` progress while a registry
model's weights download, then the loaded model; any scheduler runs it (napari: a worker, whose
progress bar follows the downloaded bytes; scripts: :func:`~.jobs.run_now`)::

    loader = ModelLoader(run_now, on_loaded=session.set_model, on_status=print)
    loader.load("vit_b")                      # downloading vit_b: 12 / 375 MB ... then on_loaded
    loader.load(None, checkpoint="my.pth")    # the registry model the file fits, read once
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from napari_promptseg.core.cancel import Cancelled, check_cancelled
from napari_promptseg.embed.entry import explain_error
from napari_promptseg.models.base import PromptableModel
from napari_promptseg.models.registry import ModelSpec, get_spec
from napari_promptseg.session.jobs import Job
from napari_promptseg.session.text import model_note

__all__ = ["Download", "ModelLoader", "load_steps", "default_disk_cache", "use_model"]

#: seconds between two progress reports of a download (pooch reports every KiB)
REPORT_EVERY = 0.2


@dataclass(frozen=True)
class Download:
    """Progress of a weights download: bytes ``done`` of ``total`` (0: the server did not say)."""

    label: str
    done: int
    total: int

    def __str__(self) -> str:
        return f"downloading {self.label}: {self.done / 1e6:.0f} / {self.total / 1e6:.0f} MB"


def default_disk_cache():
    """The shared on-disk embedding cache (:class:`~napari_promptseg.embed.disk_cache.DiskCache`),
    or None when ``$PROMPTSEG_EMBED_CACHE_GB`` is 0 (the cache's own reading of the setting)."""
    from napari_promptseg.embed.disk_cache import DiskCache, default_max_bytes

    max_bytes = default_max_bytes()
    return DiskCache(max_bytes=max_bytes) if max_bytes > 0 else None


def load_steps(name: str | None, checkpoint: str | Path | None = None,
               device: str = "auto") -> Iterator[Download | PromptableModel]:
    """The steps of loading a model: :class:`Download` items while registry model ``name``'s
    weights download, then the loaded model (the last item). ``checkpoint``: a local file, with
    ``name`` None the registry model whose architecture it fits (the file is read once; an
    unknown architecture raises a WeightsError naming the file and the known models)."""
    from napari_promptseg.core.devices import resolve_device
    from napari_promptseg.models import load_model
    from napari_promptseg.models.checkpoint import load_checkpoint
    from napari_promptseg.models.weights import available_locally

    if name is None:
        if checkpoint is None:
            raise ValueError("load_steps needs a registry name or a checkpoint file")
        yield load_checkpoint(checkpoint, device)
        return
    spec = get_spec(name)
    resolve_device(device)  # fail fast, before any download
    if checkpoint is None and not available_locally(spec):
        yield from _fetch(spec)
    yield load_model(spec, checkpoint=checkpoint, device=device, progress=False)


def _fetch(spec: ModelSpec) -> Iterator[Download]:
    """Download ``spec``'s weights in a helper thread, yielding its progress; the caller's cancel
    scope (checked while waiting) stops the download at its next chunk."""
    from napari_promptseg.models.weights import fetch_weights

    updates: queue.SimpleQueue = queue.SimpleQueue()
    stop = threading.Event()
    last = [float("-inf")]

    def on_bytes(done: int, total: int) -> None:
        if stop.is_set():
            raise Cancelled("cancelled")  # pooch removes the partial file
        now = time.monotonic()
        if now - last[0] >= REPORT_EVERY or (total and done >= total):
            last[0] = now
            updates.put(Download(spec.name, int(done), int(total or 0)))

    def fetch() -> None:
        try:
            fetch_weights(spec, progress=on_bytes)
        except BaseException as err:  # noqa: BLE001 - handed to the waiting generator, raised there
            updates.put(err)
        else:
            updates.put(None)

    threading.Thread(target=fetch, name=f"promptseg download {spec.name}", daemon=True).start()
    try:
        while True:
            check_cancelled()
            try:
                item = updates.get(timeout=0.05)
            except queue.Empty:
                continue
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


class ModelLoader:
    """Loads one model at a time through ``schedule``; ``on_loaded(model)`` gets the result and
    ``on_status(text)`` what to tell the user (progress, failures). A newer load replaces a
    running one, whose result is then dropped."""

    def __init__(self, schedule: Callable[[Job], None], on_loaded: Callable[[PromptableModel], None],
                 on_status: Callable[[str], None]) -> None:
        self.schedule, self.on_loaded, self.on_status = schedule, on_loaded, on_status
        self.job: Job | None = None

    @property
    def loading(self) -> bool:
        """True while a load runs or waits."""
        return self.job is not None

    def load(self, name: str | None, checkpoint: str | Path | None = None, device: str = "auto") -> Job:
        """Load registry model ``name`` (downloaded once if needed) or the local ``checkpoint``
        (see :func:`load_steps`) in a job; returns the job."""
        label = name or str(checkpoint)
        loaded: list[PromptableModel] = []

        def step(item) -> None:
            if job is not self.job:
                return
            if isinstance(item, Download):
                self.on_status(str(item))
            else:
                loaded.append(item)

        def done(_) -> None:
            if job.token.cancelled:  # cancelled after the last check: the model is not used
                failed(Cancelled("cancelled"))
            elif job is self.job:
                self.job = None
                self.on_loaded(loaded[-1])

        def failed(err: BaseException) -> None:
            if job is self.job:
                self.job = None
                self.on_status(f"could not load {label}: "
                               f"{'cancelled' if job.token.cancelled else explain_error(err)}")

        self.drop()
        job = self.job = Job("load", lambda: load_steps(name, checkpoint, device), done, failed, step,
                             label=f"loading {label}")
        self.on_status(f"loading {label}…")
        self.schedule(job)
        return job

    def choose(self, name: str, device: str = "auto") -> bool:
        """The user picked registry model ``name``: load it when that needs no download (True);
        else say what loading it would download (a download waits for an explicit :meth:`load`)."""
        from napari_promptseg.models.weights import available_locally

        spec = get_spec(name)
        if available_locally(spec):
            self.load(name, None, device)
            return True
        self.on_status(f"press 'Load model' to download {name} ({spec.size_mb:.0f} MB, once).")
        return False

    def load_default(self, device: str = "auto") -> str:
        """Load the default model when it needs no download (a registry model already in the
        cache, else the demo model shipped in the package); returns its name."""
        from napari_promptseg.models.weights import available_locally, default_model_name

        name = default_model_name()
        if available_locally(get_spec(name)):
            self.load(name, None, device)
        return name

    def cancel(self) -> None:
        """Stop the running load; it reports that it was cancelled."""
        if self.job is not None:
            self.job.token.cancel()

    def drop(self) -> None:
        """Stop the running load and forget it: its result and its failure are not reported."""
        job, self.job = self.job, None
        if job is not None:
            job.token.cancel()


def use_model(session, model: PromptableModel, store=None) -> str:
    """Give ``session`` the loaded ``model`` (with ``store``, an embeddings store found for it,
    or None) and return the status line saying so: the model, then the store's note (or why it
    was refused) when a store was given, else the session's description."""
    said: list[str] = []

    def hear(text: str) -> None:
        said.append(text)

    session.events.status.connect(hear)
    try:
        session.set_model(model, embeddings=store)
    finally:
        session.events.status.disconnect(hear)
    note = said[-1] if store is not None and said else session.describe()
    return f"model {model.name} on {model.device}{model_note(model)}. {note}"
