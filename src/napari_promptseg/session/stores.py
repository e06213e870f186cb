"""Precomputed embeddings stores in the session (no Qt): open and check one for the session's
image and model, find one beside an image file, and the words the status line uses.

A store (:mod:`napari_promptseg.embed.store`, made by ``promptseg embed`` or ``ps.embed_store_iter``)
fits when it was made by the same model (name, checkpoint, preprocessing) for an image of the
same shape, with its planes across the image's last two axes; then the session reads the planes
it holds instead of encoding them, with the store's intensity window.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from napari_promptseg.embed.store import FORMAT, VERSION, EmbeddingStore, StoreError, open_embeddings
from napari_promptseg.session.planes import Plane

__all__ = ["StoreError", "open_for", "find_store", "store_note"]


def open_for(store, model, image, rgb: bool, plane: Plane) -> EmbeddingStore:
    """``store`` (an :class:`EmbeddingStore` or its path) checked for ``image`` (the full array,
    channels included) and ``model``; :class:`StoreError` with the store's message unless it fits.
    The stored ``plane`` (else the first stored one) is compared with the image's pixels there, so
    a store made for other pixels of the same shape is refused here, not plane by plane later."""
    from napari_promptseg.embed.store import store_lead_axes

    if model is None or image is None:
        raise StoreError("load a model and choose an image first: a store belongs to both")
    if not isinstance(store, EmbeddingStore):
        store = open_embeddings(store, device=model.device)
    store.check(model, tuple(image.shape))
    if store.rgb != bool(rgb):
        kinds = ("RGB" if store.rgb else "gray", "RGB" if rgb else "gray")
        raise StoreError(f"the store {store.path} holds {kinds[0]} planes, this image is {kinds[1]}: "
                         "embed it again")
    axes = store_lead_axes(store)
    plane = tuple(plane)
    index = tuple(plane[a] for a in axes)
    if index not in store:
        index = next(iter(store), None)
        if index is None:
            return store  # nothing stored yet: every plane is embedded as without a store
        index = tuple(int(i) for i in (index if isinstance(index, tuple) else (index,)))
        plane = tuple(index[axes.index(k)] for k in range(len(axes)))
    key = [slice(None)] * image.ndim
    key[:len(plane)] = plane
    store.embedding_for(index, model, np.asarray(image[tuple(key)]))  # raises for other pixels
    return store


def find_store(image_path, model, shape: tuple[int, ...], rgb: bool) -> Path | None:
    """An embeddings store beside the file ``image_path`` (a sibling ``*.zarr`` folder) made by
    ``model`` for an image of ``shape``, with planes across its last two axes; None if there is
    none. Only each folder's ``zarr.json`` is read; a folder named after the image comes first."""
    if not image_path or model is None:
        return None
    path = Path(image_path)
    try:
        folders = sorted(p for p in path.parent.glob("*.zarr") if p.is_dir() and p != path)
    except OSError:
        return None
    stem = path.name.split(".")[0]
    folders.sort(key=lambda p: p.name.split(".")[0] != stem)  # stable: the image's own name first
    want = (model.name, model.checkpoint_id, model.preprocessing, list(shape), bool(rgb))
    for folder in folders:
        try:
            meta = json.loads((folder / "zarr.json").read_text()).get("attributes", {})
            if meta.get("format") != FORMAT or meta.get("version") != VERSION:
                continue
            have = (meta["model"], meta["checkpoint_id"], meta["preprocessing"],
                    [int(s) for s in meta["shape"]], bool(meta["rgb"]))
            if have == want and _last_two_axes(meta):
                return folder
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
    return None


def _last_two_axes(meta: dict) -> bool:
    from napari_promptseg.embed.store import plane_layout

    shape, rgb = tuple(meta["shape"]), bool(meta["rgb"])
    _, plane_axes, _ = plane_layout(shape, int(meta["axis"]), rgb)
    spatial = len(shape) - (1 if rgb else 0)
    return plane_axes == (spatial - 2, spatial - 1)


def store_note(store: EmbeddingStore) -> str:
    """What the status line says when ``store`` is taken into use."""
    n, total = len(store), store.n_planes
    window = ("the uint8 pixels unchanged" if store.window is None
              else f"its intensity window {store.window[0]:g}–{store.window[1]:g}")
    return (f"using the embeddings store {store.path.name}: {n} of {total} plane{'s' * (total > 1)} "
            f"stored are read instead of embedded; planes are embedded with {window}, as the store "
            "was (the contrast limits change only the display).")
