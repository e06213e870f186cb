"""Embeddings stores: every plane of a stack embedded into one self-describing zarr folder.

Precompute on a cluster node, copy the folder, annotate on a laptop. Layout::

    STORE.zarr/zarr.json             zarr v3 group; attributes: format, version, model,
                                     checkpoint_id, preprocessing, shape, dtype, axis, rgb,
                                     lead_shape, plane_shape, window
    STORE.zarr/planes/<n>/           plane n (flat index over lead_shape, C order): a disk-cache
                                     entry (float16 features, checksums), its pixel key in attrs

A plane is written to a temporary folder and renamed into place, so a store is valid after an
interrupted run and :func:`embed_store_iter` run again only computes the missing planes. Planes
are the 2D planes across ``axis`` (as :func:`~napari_promptseg.propagate` takes them), over every
leading index for a T x Z stack.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from napari_promptseg.core.image import image_plane, stack_window, to_rgb_uint8
from napari_promptseg.core.results import Embedding
from napari_promptseg.embed.cache import embedding_key
from napari_promptseg.embed.entry import DEFAULT_DTYPE, machine_error, read_entry, resource_error, write_entry

__all__ = ["StoreError", "EmbeddingStore", "open_embeddings", "embed_store_iter", "plane_layout",
           "store_lead_axes", "create_store", "embed_plane"]

FORMAT = "napari-promptseg embeddings store"
VERSION = 1


class StoreError(ValueError):
    """A store that does not fit the pixels or the model it is used with, or is not a store."""


def plane_layout(shape: tuple[int, ...], axis: int = 0, rgb: bool | None = None):
    """``(lead_axes, plane_axes, rgb)`` for an array of ``shape``: the planes lie across ``axis``
    (among the non-channel axes; negative counts from the last) and any other leading axes.
    rgb None: as ``ps.propagate`` reads a stack, a 4D array ending in 3 or 4 is RGB(A), a 3D one
    is a gray stack (pass ``rgb=True`` for one RGB image)."""
    if rgb is None:
        rgb = len(shape) == 4 and shape[-1] in (3, 4)
    spatial = len(shape) - (1 if rgb else 0)
    if spatial < 2:
        raise StoreError(f"an image of shape {tuple(shape)} has no 2D {'RGB ' if rgb else ''}plane")
    if spatial == 2:
        return (), (0, 1), rgb
    if not -spatial <= axis < spatial:
        raise StoreError(f"axis {axis} does not exist: the image has {spatial} non-channel axes "
                         f"(shape {tuple(shape)}); use 0..{spatial - 1}")
    axis %= spatial
    order = [axis] + [i for i in range(spatial) if i != axis]
    return tuple(order[:-2]), tuple(sorted(order[-2:])), rgb


class EmbeddingStore(Mapping):
    """A read-only mapping plane index -> :class:`Embedding` over a store folder.

    Indices are ints for a stack with one leading axis, tuples for T x Z (``()`` for a 2D image);
    the mapping holds the planes stored so far (``len(store) == store.n_planes`` once complete).
    device: where the features are loaded. Attributes of the store: :attr:`model`,
    :attr:`checkpoint_id`, :attr:`shape`, :attr:`axis`, :attr:`window`, :attr:`lead_shape`, ...
    """

    def __init__(self, path: str | Path, device: Any = "cpu") -> None:
        self.path = Path(path)
        meta_file = self.path / "zarr.json"
        try:
            meta = json.loads(meta_file.read_text()).get("attributes", {})
        except (OSError, ValueError):
            raise StoreError(f"{self.path} is not an embeddings store (no readable zarr.json); make one "
                             "with `promptseg embed` or ps.embed_store_iter") from None
        if meta.get("format") != FORMAT:
            raise StoreError(f"{self.path} is a zarr folder but not an embeddings store")
        if meta.get("version") != VERSION:
            raise StoreError(f"{self.path} has store version {meta.get('version')}, this version reads "
                             f"{VERSION}: embed it again")
        self.meta, self.device = meta, device
        try:
            self.model: str = str(meta["model"])
            self.checkpoint_id: str = str(meta["checkpoint_id"])
            self.preprocessing: str = str(meta["preprocessing"])
            self.shape = tuple(int(v) for v in meta["shape"])
            self.axis: int = int(meta["axis"])
            self.rgb: bool = bool(meta["rgb"])
            self.lead_shape = tuple(int(v) for v in meta["lead_shape"])
            self.plane_shape = tuple(int(v) for v in meta["plane_shape"])
            self.window = None if meta["window"] is None else tuple(float(v) for v in meta["window"])
        except KeyError as e:
            raise StoreError(f"{self.path}: its metadata (zarr.json) lacks {e.args[0]!r}; the store is "
                             "damaged or from another program: embed it again") from None
        except (TypeError, ValueError) as e:
            raise StoreError(f"{self.path}: its metadata (zarr.json) is damaged ({e}): "
                             "embed it again") from None
        self.n_planes = int(np.prod(self.lead_shape)) if self.lead_shape else 1

    def __repr__(self) -> str:
        return (f"<EmbeddingStore {str(self.path)!r}: {len(self)} of {self.n_planes} planes, "
                f"{self.model}, shape {self.shape}, axis {self.axis}>")

    # -- the mapping -------------------------------------------------------------------------
    def _flat(self, index) -> int:
        idx = tuple(int(i) for i in np.atleast_1d(index)) if self.lead_shape else ()
        if len(idx) != len(self.lead_shape) or any(
                not 0 <= i < n for i, n in zip(idx, self.lead_shape, strict=True)):
            raise KeyError(f"plane {index!r} is outside the store's planes {self.lead_shape}")
        return int(np.ravel_multi_index(idx, self.lead_shape)) if idx else 0

    def _index(self, flat: int):
        if not self.lead_shape:
            return ()
        idx = tuple(int(i) for i in np.unravel_index(flat, self.lead_shape))
        return idx[0] if len(idx) == 1 else idx

    def entry_path(self, flat: int) -> Path:
        """The folder of the plane with flat index ``flat`` (it may not exist yet)."""
        return self.path / "planes" / str(flat)

    def has_flat(self, flat: int) -> bool:
        """Whether the plane with flat index ``flat`` is stored (a whole entry: renamed into place)."""
        return (self.entry_path(flat) / "zarr.json").is_file()

    def __contains__(self, index) -> bool:
        try:
            return self.has_flat(self._flat(index))
        except KeyError:
            return False

    def __getitem__(self, index) -> Embedding:
        flat = self._flat(index)
        path = self.entry_path(flat)
        if not (path / "zarr.json").is_file():
            raise KeyError(f"plane {index!r} is not in the store yet (run `promptseg embed` again "
                           "to complete it)")
        return self._read(index, path, self.device)

    def _read(self, index, path: Path, device) -> Embedding:
        """The plane at ``path``; :class:`StoreError` saying what happened and what to do."""
        try:
            return read_entry(path, None, device)
        except Exception as e:  # noqa: BLE001 - a damaged plane is reported as what it is
            if resource_error(e):
                raise  # out of memory: the plane is fine
            if machine_error(e):  # no permission, an I/O error: the plane may be fine
                raise StoreError(f"plane {index!r} of the embeddings store {self.path} could not be read "
                                 f"({type(e).__name__}: {e}); check the folder's permissions and the "
                                 "disk, then try again") from None
            raise StoreError(f"plane {index!r} of the embeddings store {self.path} is damaged ({e}); "
                             f"delete {path} and run `promptseg embed` again (it embeds the missing "
                             "planes only)") from None

    def __iter__(self) -> Iterator:
        root = self.path / "planes"
        names = sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.is_dir() else []
        return (self._index(n) for n in names if (root / str(n) / "zarr.json").is_file())

    def __len__(self) -> int:
        return sum(1 for _ in self)

    @property
    def complete(self) -> bool:
        return len(self) == self.n_planes

    def key(self, index) -> str | None:
        """The pixel key (:func:`~napari_promptseg.embed.cache.embedding_key`) of a stored plane."""
        try:
            meta = json.loads((self.entry_path(self._flat(index)) / "zarr.json").read_text())
        except (OSError, ValueError):
            return None
        return meta.get("attributes", {}).get("key")

    # -- checks ------------------------------------------------------------------------------
    def check(self, model, shape: tuple[int, ...], axis: int | None = None) -> None:
        """Raise :class:`StoreError` unless this store was made by ``model`` for an image of
        ``shape`` with planes across ``axis``."""
        mine = (model.name, model.checkpoint_id, model.preprocessing)
        theirs = (self.model, self.checkpoint_id, self.preprocessing)
        if mine != theirs:
            raise StoreError(f"the store {self.path} was made with model {self.model!r} (checkpoint "
                             f"{self.checkpoint_id[:12]}), not with {model.name!r} (checkpoint "
                             f"{model.checkpoint_id[:12]}): load that model or embed again")
        if tuple(shape) != self.shape:
            raise StoreError(f"the store {self.path} was made for an image of shape {self.shape}, not "
                             f"{tuple(shape)}: it belongs to other pixels; open that image, or embed "
                             "this one into another store (`promptseg embed`)")
        if axis is not None and len(self.shape) - self.rgb > 2:
            spatial = len(self.shape) - (1 if self.rgb else 0)
            if axis % spatial != self.axis:
                raise StoreError(f"the store {self.path} holds planes across axis {self.axis}, not "
                                 f"{axis}: embed again with --axis {axis}")

    def embedding_for(self, index, model, plane: np.ndarray) -> Embedding | None:
        """The stored embedding of ``plane`` (its pixels at ``index``), None if not stored yet;
        :class:`StoreError` if the store holds other pixels there."""
        stored = self.key(index)
        if stored is None:
            return None
        rgb = to_rgb_uint8(plane, self.window)
        key = embedding_key(model, rgb, model.input_zoom(rgb.shape[:2]))
        if key != stored:
            raise StoreError(f"plane {index!r} of the image differs from the one embedded in "
                             f"{self.path}: the store was made for other pixels (or another window); "
                             "embed this image into another store (`promptseg embed`)")
        return self._read(index, self.entry_path(self._flat(index)), model.device)


def open_embeddings(path: str | Path, device: Any = "cpu") -> EmbeddingStore:
    """The embeddings store at ``path`` as a read-only mapping plane index -> :class:`Embedding`."""
    return EmbeddingStore(path, device)


def create_store(path: Path, model, arr, axis: int, window, rgb: bool) -> EmbeddingStore:
    lead_axes, plane_axes, rgb = plane_layout(tuple(arr.shape), axis, rgb)
    spatial = arr.ndim - (1 if rgb else 0)
    meta = {
        "format": FORMAT, "version": VERSION, "model": model.name,
        "checkpoint_id": model.checkpoint_id, "preprocessing": model.preprocessing,
        "shape": [int(s) for s in arr.shape], "dtype": str(np.dtype(arr.dtype)),
        "axis": int(axis % spatial) if spatial > 2 else 0, "rgb": bool(rgb),
        "lead_shape": [int(arr.shape[a]) for a in lead_axes],
        "plane_shape": [int(arr.shape[a]) for a in plane_axes],
        "window": None if window is None else [float(window[0]), float(window[1])],
    }
    if (path / "zarr.json").is_file():
        store = EmbeddingStore(path)
        store.check(model, tuple(arr.shape), axis)
        if store.window != (None if window is None else tuple(meta["window"])):
            raise StoreError(f"the store {path} was made with the window {store.window}, not {window}: "
                             "use that window, another --out, or delete the store")
        return store
    (path / "planes").mkdir(parents=True, exist_ok=True)
    group = {"zarr_format": 3, "node_type": "group", "attributes": meta}
    (path / "planes" / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group",
                                                           "attributes": {}}))
    tmp = path / f".zarr.json-{uuid.uuid4().hex}"
    tmp.write_text(json.dumps(group, indent=1))
    os.replace(tmp, path / "zarr.json")
    return EmbeddingStore(path)


def embed_plane(store: EmbeddingStore, model, arr, flat: int, dtype: str = DEFAULT_DTYPE) -> bool:
    """Embed plane ``flat`` of ``arr`` into ``store`` unless it is there; True if it computed.
    Safe to run in several processes at once (the last rename wins, entries are equal)."""
    final = store.entry_path(flat)
    if (final / "zarr.json").is_file():
        return False
    idx = tuple(int(i) for i in np.unravel_index(flat, store.lead_shape)) if store.lead_shape else ()
    lead_axes, _, _ = plane_layout(store.shape, store.axis, store.rgb)
    rgb = to_rgb_uint8(image_plane(arr, lead_axes, idx), store.window)
    zoom = model.input_zoom(rgb.shape[:2])
    emb = model.embed(rgb, zoom=zoom if zoom is not None else "fit")
    tmp = final.parent / f".tmp-{flat}-{uuid.uuid4().hex}"
    try:
        write_entry(tmp, embedding_key(model, rgb, zoom), emb, dtype, plane=list(idx))
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "zarr.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True


def embed_store_iter(model, image, path: str | Path, axis: int = 0, *,
                     window: tuple[float, float] | None = None, rgb: bool | None = None,
                     planes=None) -> Iterator[tuple[int, int]]:
    """Embed every plane of ``image`` into the store at ``path`` in this process; yields
    ``(done, total)``. Resumable: planes already stored are skipped. window: the intensity window
    (default: the stack's, :func:`~napari_promptseg.core.image.stack_window`, as ``ps.propagate``
    uses); planes: flat plane indices to embed (default all). A bad image, axis or a store made
    for other pixels or another model raises :class:`StoreError` at the call, before any work.
    model: a loaded model or a registry name."""
    from napari_promptseg.models import as_model

    model = as_model(model)
    lead_axes, _, rgb = plane_layout(tuple(image.shape), axis, rgb)
    if window is None:
        window = stack_window(image, rgb, lead_axes)
    store = create_store(Path(path), model, image, axis, window, rgb)  # bad input raises here, at the call
    todo = list(range(store.n_planes)) if planes is None else [int(p) for p in planes]

    def run() -> Iterator[tuple[int, int]]:
        for done, flat in enumerate(todo, 1):
            embed_plane(store, model, image, flat)
            yield done, len(todo)

    return run()


def store_lead_axes(store) -> tuple[int, ...]:
    """The image axis of each of ``store``'s leading (plane index) axes; :class:`StoreError`
    unless its planes are the image's last two non-channel axes (as napari shows them)."""
    lead_axes, plane_axes, rgb = plane_layout(store.shape, store.axis, store.rgb)
    spatial = len(store.shape) - (1 if rgb else 0)
    if plane_axes != (spatial - 2, spatial - 1):
        raise StoreError(f"the store {store.path} holds planes across axis {store.axis}, but planes are "
                         f"segmented across the last two axes here: embed again with --axis 0")
    return tuple(lead_axes)
