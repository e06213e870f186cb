"""Embeddings stores on dask.distributed: the planes of a stack embedded by many worker processes.

``workers=N`` starts a ``LocalCluster`` on this machine; ``scheduler=ADDRESS`` (or a ``Client``)
uses a running cluster (``dask scheduler`` + ``dask worker``, a dask-jobqueue ``SLURMCluster``...),
where the image and the store lie on a filesystem every node sees.

The client reads only the stack's shape and its intensity window (sampled planes), and creates the
store before any plane task, so a bad axis or a store made for other pixels or another model fails
at once. Each missing plane is one task: it opens the image file *on its worker* (a memory map, tif
pages or zarr chunks: only that plane's pixels are read), embeds the plane with the worker's model
(loaded once per worker by :class:`ModelPlugin`) and renames its entry into the store
(:func:`~napari_promptseg.embed.store.embed_plane`); only the plane's index goes back to the scheduler. A
worker that dies loses its running planes, which the scheduler gives to another worker; a run that
stops leaves a valid store, and running it again computes only the missing planes.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from distributed import Client, LocalCluster, WorkerPlugin, as_completed, get_worker

from napari_promptseg.core.image import stack_window
from napari_promptseg.embed.store import EmbeddingStore, create_store, embed_plane, plane_layout
from napari_promptseg.models import ModelSpec
from napari_promptseg.models.registry import get_spec

__all__ = ["embed_store_distributed_iter", "ModelPlugin", "WorkerLoadError", "local_cluster"]


class WorkerLoadError(RuntimeError):
    """A worker could not load the model (a damaged checkpoint, no weights in its cache offline)."""


class _Identity(NamedTuple):
    """What a store records of its model (``create_store`` needs no more)."""

    name: str
    checkpoint_id: str
    preprocessing: str


class ModelPlugin(WorkerPlugin):
    """Loads the model once per worker, on first use, from the registry spec and an optional
    local checkpoint (``PROMPTSEG_CACHE_DIR`` / ``PROMPTSEG_OFFLINE`` are the worker's, as for
    ``ps.load_model``). A worker embeds one plane at a time with torch using its ``nthreads``."""

    idempotent = False

    def __init__(self, spec: ModelSpec, checkpoint: str | None, device: str) -> None:
        self.spec, self.checkpoint, self.device = spec, checkpoint, device
        self.name = f"promptseg-model-{uuid.uuid4().hex[:8]}"

    def setup(self, worker) -> None:
        self.lock = threading.Lock()
        self.nthreads = max(1, int(worker.state.nthreads))
        self._model = None
        self._arrays: dict[tuple, Any] = {}

    def teardown(self, worker) -> None:
        self._model, self._arrays = None, {}

    def model(self):
        """The worker's model (call with :attr:`lock` held)."""
        if self._model is None:
            import torch

            from napari_promptseg.models import load_model

            torch.set_num_threads(self.nthreads)  # the nanny sets OMP_NUM_THREADS=1
            self._model = load_model(self.spec, checkpoint=self.checkpoint, device=self.device,
                                     progress=False)
        return self._model

    def array(self, path: str):
        """The image at ``path``, opened lazily. A memory map (npy, uncompressed tif) is opened
        per plane (about a millisecond), so the pages it read leave the worker's memory; anything
        else (zarr, a compressed tif) once per worker, again if the file changes."""
        from napari_promptseg.io import read_image

        st = os.stat(path)
        key = (path, st.st_mtime_ns, st.st_size)
        if key in self._arrays:
            return self._arrays[key]
        arr = read_image(path)
        if not isinstance(arr, np.memmap):
            self._arrays = {key: arr}
        return arr


def _plugin(name: str) -> ModelPlugin:
    return get_worker().plugins[name]


def _identity(plugin: str) -> _Identity:
    p = _plugin(plugin)
    with p.lock:
        m = p.model()
    return _Identity(m.name, m.checkpoint_id, m.preprocessing)


def _embed_task(flat: int, plugin: str, image: str, store: str) -> int:
    """Embed plane ``flat`` of the file ``image`` into ``store`` on this worker."""
    p = _plugin(plugin)
    with p.lock:
        embed_plane(EmbeddingStore(store), p.model(), p.array(image), flat)
    return flat


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def local_cluster(workers: int) -> LocalCluster:
    """``workers`` processes on 127.0.0.1 sharing this machine's cores (workers x threads = cores),
    no dashboard."""
    return LocalCluster(n_workers=workers, threads_per_worker=max(1, _cores() // workers),
                        processes=True, host="127.0.0.1", dashboard_address=None)


def embed_store_distributed_iter(
    model: str | ModelSpec,
    image: str | Path,
    out: str | Path,
    *,
    checkpoint: str | Path | None = None,
    axis: int = 0,
    window: tuple[float, float] | None = None,
    rgb: bool | None = None,
    device: str = "auto",
    workers: int | None = None,
    scheduler: str | Client | None = None,
    retries: int = 2,
) -> Iterator[tuple[int, int]]:
    """Embed every plane of the image file ``image`` into the store ``out`` on dask.distributed;
    yields ``(done, total)`` over the planes this run computes (the missing ones: resumable).

    model: registry name or :class:`ModelSpec`, loaded on each worker (``checkpoint``: a local
    file, no download; else the client downloads it into the cache once). image: a tif, npy, zarr,
    png or jpg path. axis, window, rgb: as :func:`~napari_promptseg.embed.store.embed_store_iter` (same
    default window). workers: start a LocalCluster of that many processes (closed at the end);
    scheduler: the address of a running scheduler, or a ``Client`` (left open). retries: how often
    a failing plane task is tried again. A missing file, bad axis, unknown model or missing
    checkpoint raises at the call; a store made for other pixels or another model raises
    :class:`~napari_promptseg.embed.store.StoreError` before any plane task.
    """
    from napari_promptseg.io import read_image

    if (workers is None) == (scheduler is None):
        raise ValueError("give one of workers=N (a local cluster) or scheduler=ADDRESS (a running one)")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    path, out = Path(image).expanduser().resolve(), Path(out).expanduser().resolve()
    arr = read_image(path)
    lead_axes, _, rgb = plane_layout(tuple(arr.shape), axis, rgb)
    if window is None:
        window = stack_window(arr, rgb, lead_axes)
    spec = model if isinstance(model, ModelSpec) else get_spec(model)
    if checkpoint is not None:
        checkpoint = Path(checkpoint).expanduser().resolve()
        if not checkpoint.is_file():
            raise FileNotFoundError(f"checkpoint file not found: {checkpoint}")
    else:
        from napari_promptseg.models.weights import fetch_weights

        fetch_weights(spec)  # once, here, rather than in every worker (a no-op once cached)
    plugin = ModelPlugin(spec, None if checkpoint is None else str(checkpoint), device)

    def run() -> Iterator[tuple[int, int]]:
        cluster = local_cluster(workers) if workers is not None else None
        futures: list = []
        try:
            client = scheduler if isinstance(scheduler, Client) else Client(cluster or scheduler)
        except BaseException:
            if cluster is not None:
                cluster.close()
            raise
        try:
            client.register_plugin(plugin)
            try:
                ident = client.submit(_identity, plugin.name, pure=False).result()
            except Exception as e:  # noqa: BLE001 - the worker's error, said as one
                raise WorkerLoadError(f"a worker cannot load {spec.name}: {type(e).__name__}: {e}") from e
            store = create_store(out, ident, arr, axis, window, rgb)
            todo = [i for i in range(store.n_planes) if not store.has_flat(i)]
            futures = client.map(_embed_task, todo, plugin=plugin.name, image=str(path), store=str(out),
                                 key=[f"promptseg-plane-{plugin.name[-8:]}-{i}" for i in todo],
                                 retries=retries, pure=False)
            for done, fut in enumerate(as_completed(futures), 1):
                fut.result()  # a plane that failed (after its retries) raises here
                yield done, len(todo)
        finally:
            if futures:
                client.cancel(futures)
            if cluster is None:  # a cluster we only joined: free its workers' models
                try:
                    client.unregister_worker_plugin(plugin.name)
                except Exception:  # noqa: BLE001 - best effort on a cluster that may be gone
                    pass
            if client is not scheduler:
                client.close()
            if cluster is not None:
                cluster.close()

    return run()
