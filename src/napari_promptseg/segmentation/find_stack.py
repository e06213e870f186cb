"""Find every instance of a concept on every plane of a z-stack or every frame of a video, with
one id per instance through the stack (SAM 3).

Each plane is embedded once (the store, the memory and disk caches as for every model), searched
with :func:`~napari_promptseg.find`, and its instances are linked to the previous plane's by
overlap (:func:`~napari_promptseg.segmentation.link3d.link_plane`, as segment everything links
its planes). The labels are written one ``(H, W)`` plane at a time, so a zarr ``out`` keeps
memory bounded by a few planes however long the stack.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from napari_promptseg.segmentation.find import concept_boxes, find
from napari_promptseg.segmentation.link3d import link_plane

__all__ = ["find_stack"]


def find_stack(model, stack, text: str | None = None, exemplars=None, negative=None,
               threshold: float = 0.5, *, axis: int = 0, contrast_limits=None, embeddings=None,
               cache=None, disk=None, out=None,
               progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Every instance of a concept on every plane of ``stack``, linked into 3D ids (SAM 3).

    stack: ``(N, H, W)`` gray or ``(N, H, W, 3|4)`` RGB(A), any real dtype (numpy, zarr, dask: one
    plane is read at a time), planes across ``axis`` (of the 3 non-channel axes); one intensity
    window for the whole stack (``contrast_limits``, default the stack's robust percentiles, as
    :func:`~napari_promptseg.propagate`). text, exemplars, negative, threshold: as
    :func:`~napari_promptseg.find`; exemplar boxes ``(row0, col0, row1, col1)`` are in plane
    pixels and prompt every plane at that place (SAM 3 reads each plane's own features inside
    them), so draw them around an instance that stays there through the planes, or give a text.
    embeddings: an embeddings store made for this stack, model and axis; cache / disk: for the
    planes embedded here. Planes longer than 4 model inputs are searched tile by tile, as
    :func:`~napari_promptseg.find` does (``tiles="auto"``). out: a writable integer array-like
    shaped like ``stack`` without its channel axis (zarr, numpy, ``np.memmap``, a napari Labels
    layer's data; checked before any pixel is read), every plane written; None: a new int32
    array. progress(done, total): after each plane.

    Returns ``out`` (or the new array): 0 = background; an instance keeps its id on the next plane
    where its masks overlap (IoU >= 0.5), else gets a new one.
    """
    from napari_promptseg.embed.frames import Frames
    from napari_promptseg.embed.tiles import TiledEmbedding, wants_tiles
    from napari_promptseg.io import LabelPlanes, check_labels_out
    from napari_promptseg.models import as_model

    model = as_model(model)
    if not getattr(model, "supports_concepts", False):
        raise TypeError(f"model {model.name!r} cannot find concepts; use a SAM 3 model: "
                        "ps.load_model('sam3')")
    frames = Frames(model, stack, axis, contrast_limits=contrast_limits, embeddings=embeddings,
                    cache=cache, disk=disk)
    boxes, _ = concept_boxes(exemplars, negative, frames.plane_shape)  # bad boxes: before any pixel
    if text is None and not len(boxes):
        raise ValueError("nothing to find: give text (a noun phrase), exemplars (boxes), or both")
    target = (np.zeros(frames.spatial, np.int32) if out is None
              else check_labels_out(out, frames.spatial, max_id=1))
    planes = LabelPlanes(target, frames.axis)
    prev, next_id = None, 1
    tiled = frames.store is None and wants_tiles(model, frames.plane_shape)
    for k in range(frames.n):
        if tiled:  # a huge plane: searched tile by tile (ps.find's tiles="auto")
            src = TiledEmbedding(model, frames.plane(k), frames.window, cache=cache, disk=disk)
        else:
            src = frames.embedding(k)
        found = find(model, src, text, exemplars, negative, threshold)
        plane, next_id = link_plane(prev, found.labels, next_id)
        if np.issubdtype(target.dtype, np.integer) and next_id - 1 > np.iinfo(target.dtype).max:
            raise ValueError(f"out's dtype {target.dtype} cannot hold {next_id - 1} instances: pass an "
                             "int32 array")
        planes.write(k, plane)
        prev = plane
        if progress is not None:
            progress(k + 1, frames.n)
    return target
