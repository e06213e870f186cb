"""Segment everything: SAM's automatic mask generator, the same masks, computed faster.

:func:`segment_everything` follows ``segment_anything.SamAutomaticMaskGenerator`` step by step
(point grid per crop, predicted-IoU filter, stability score on the upscaled logits, crop-edge
filter, box NMS per crop and across crops, small-region cleanup), with Meta's parameter names
and defaults, so on the same weights it returns the same masks. For SAM 2 models it follows
``sam2.automatic_mask_generator.SAM2AutomaticMaskGenerator`` instead: its defaults
(``pred_iou_thresh`` 0.8), its ``mask_threshold``, ``multimask_output`` and ``use_m2m``, its
``min_mask_region_area`` (holes and specks removed in the low-resolution logits) and its
upscaling (:mod:`napari_promptseg.segmentation.everything_sam2`). What is faster:

- prompts are decoded in batches on the cached image side of the decoder
  (:meth:`~napari_promptseg.PromptableModel.decode_points`) and the output upscaling runs only
  for prompts with a mask above ``pred_iou_thresh`` (the IoU head needs only the transformer);
- logits are never upsampled to the 1024² input: the mask (``> 0``) and the stability score's
  two thresholds (``> +offset``, ``> -offset``) come from one resize
  (:func:`~napari_promptseg.models.upscale.upscale_levels`) that skips rows and columns that
  cannot pass (a bilinear resize is a convex combination), for the masks that survived the IoU
  filter only;
- candidates keep only their bounding-box piece of the mask until NMS has chosen.

Coordinates are ours: ``(row, col)`` image pixels; ``point_grids`` hold ``(row, col)`` fractions.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from napari_promptseg.core.results import Embedding
from napari_promptseg.models.generator_defaults import EVERYTHING_DEFAULTS, SAM2_EVERYTHING_DEFAULTS
from napari_promptseg.segmentation.generator import (
    Candidates,
    Everything,
    EverythingStep,
    MaskRecord,
    check_params,
    cleanup,
    decode_batch,
    nms,
    point_grids,
)

__all__ = ["MaskRecord", "Everything", "EverythingStep", "EVERYTHING_DEFAULTS", "SAM2_EVERYTHING_DEFAULTS",
           "segment_everything", "segment_everything_iter"]


def _image_shape(image_or_embedding) -> tuple[int, int]:
    """``(H, W)`` of an image, an :class:`Embedding` or a tiled embedding, without reading pixels."""
    size = getattr(image_or_embedding, "original_size", None)
    if size is not None:
        return tuple(int(v) for v in size)
    shape = getattr(image_or_embedding, "shape", None)
    if shape is None:
        shape = np.shape(image_or_embedding)
    return tuple(int(v) for v in shape[:2])


def segment_everything_iter(model, image_or_embedding, *, contrast_limits=None, cache=None, disk=None,
                            embedding: Embedding | None = None, zoom=None, tiles="auto", out=None,
                            **params) -> Iterator[EverythingStep]:
    """:func:`segment_everything` as a generator: an :class:`EverythingStep` per prompt batch
    (cancel by not iterating further); the last one holds the result."""
    from napari_promptseg.core.image import to_rgb_uint8
    from napari_promptseg.embed.cache import embed_cached
    from napari_promptseg.embed.tiles import TiledEmbedding, wants_tiles
    from napari_promptseg.io import check_labels_out
    from napari_promptseg.models import as_model
    from napari_promptseg.segmentation.everything_tiles import labels_result

    model = as_model(model)
    p = check_params(params, model)
    if tiles not in (True, False, "auto"):
        raise ValueError(f"tiles must be True, False or 'auto', got {tiles!r}")
    if out is not None:  # before any pixel is read
        check_labels_out(out, _image_shape(image_or_embedding))
    if (not isinstance(image_or_embedding, (Embedding, TiledEmbedding)) and embedding is None
            and hasattr(image_or_embedding, "shape")
            and (tiles is True or (tiles == "auto" and wants_tiles(model, image_or_embedding.shape)))):
        image_or_embedding = TiledEmbedding(model, image_or_embedding, contrast_limits, cache=cache,
                                            disk=disk)
    if isinstance(image_or_embedding, TiledEmbedding):
        from napari_promptseg.segmentation.everything_tiles import tiled_everything_iter

        model.check_tiled(image_or_embedding)
        yield from tiled_everything_iter(model, image_or_embedding, p, out)
        return
    if isinstance(image_or_embedding, Embedding):
        emb0, rgb = image_or_embedding, None
        model.check_embedding(emb0)
        if int(p["crop_n_layers"]) > 0:
            raise ValueError("crop_n_layers > 0 embeds crops of the image: pass the image, not its embedding")
        shape = tuple(emb0.original_size)
    else:
        rgb = to_rgb_uint8(image_or_embedding, contrast_limits)
        shape, emb0 = rgb.shape[:2], embedding
        if emb0 is not None:
            model.check_embedding(emb0)
            if tuple(emb0.original_size) != tuple(shape):
                raise ValueError(f"the embedding is of a {tuple(emb0.original_size)} image, not of this "
                                 f"{tuple(shape)} one")
    grids = point_grids(p)
    from segment_anything.utils.amg import generate_crop_boxes

    xywh, layers = generate_crop_boxes(shape, int(p["crop_n_layers"]), float(p["crop_overlap_ratio"]))
    crops = [(y0, x0, y1, x1) for x0, y0, x1, y1 in xywh]
    per = int(p["points_per_batch"])
    total = sum(-(-len(grids[li]) // per) for li in layers)
    done = 0
    found = Candidates()
    for ci, (crop, li) in enumerate(zip(crops, layers)):
        r0, c0, r1, c1 = crop
        if emb0 is not None and ci == 0:
            emb = emb0
        else:
            # the whole image at the model's scale (or ``zoom``); crops fill the input, as Meta's
            emb = embed_cached(model, np.ascontiguousarray(rgb[r0:r1, c0:c1]), None, cache, disk,
                               zoom=zoom if ci == 0 else "fit")
        pts = grids[li] * [r1 - r0, c1 - c0]
        here = Candidates()
        for s in range(0, len(pts), per):
            here.extend(decode_batch(model, emb, pts[s:s + per], crop, ci, shape, p))
            done += 1
            yield EverythingStep(done, total)
        keep = nms(np.asarray(here.box).reshape(-1, 4), here.score, p["box_nms_thresh"])
        found.extend(here.take(keep))
    if len(crops) > 1 and found.score:  # prefer masks from smaller crops
        areas = [(crops[i][2] - crops[i][0]) * (crops[i][3] - crops[i][1]) for i in found.crop]
        keep = nms(np.asarray(found.box).reshape(-1, 4), 1.0 / np.asarray(areas, np.float32),
                    p["crop_nms_thresh"])
        found = found.take(keep)
    found = cleanup(model, found, shape, p)
    yield EverythingStep(done, total, labels_result(found, crops, shape, out))


def segment_everything(model, image_or_embedding, *, contrast_limits=None, cache=None, disk=None,
                       embedding: Embedding | None = None, zoom=None, tiles="auto", out=None,
                       **params) -> Everything:
    """Every object in a 2D image, as Meta's ``SamAutomaticMaskGenerator`` finds them.

    image_or_embedding: ``(H, W)`` or ``(H, W, 3|4)`` image of any real dtype (mapped to uint8 by
    ``contrast_limits``, as :meth:`~napari_promptseg.PromptableModel.embed`), or its
    :class:`Embedding` (reused; then ``crop_n_layers`` must be 0), or a
    :class:`~napari_promptseg.embed.tiles.TiledEmbedding` (tile by tile; ``tiles="auto"`` makes one for
    an image more than :data:`~napari_promptseg.embed.tiles.TILE_FACTOR` tiles long). params: Meta's
    names and defaults (:data:`EVERYTHING_DEFAULTS`), except where the model declares its own
    (``model.everything_defaults``: the demo model's IoU and stability thresholds);
    ``point_grids`` in (row, col) fractions. cache /
    disk: embedding caches for the crops; embedding: the image's own, when the image is given
    for its crops (``crop_n_layers > 0``). SAM 2 models follow Meta's ``SAM2AutomaticMaskGenerator``:
    its defaults (:data:`SAM2_EVERYTHING_DEFAULTS`) and its extra ``mask_threshold``,
    ``multimask_output`` and ``use_m2m`` (:mod:`~napari_promptseg.segmentation.everything_sam2`).

    out: paint the labels into this ``(H, W)`` writable integer array-like instead of a new int32
    array (a zarr array, a numpy array or ``np.memmap``, a napari Labels layer's data; not dask),
    one block (its chunks, at least 256 px a side; else 1024 x 1024) at a time; every pixel of
    ``out`` is written (0 where no object is). With a zarr image tiled and a zarr ``out``, memory
    stays bounded by a few tiles and the objects' box pieces, however large the slide. A wrong
    shape or dtype or a read-only ``out`` raises ``ValueError`` / ``TypeError`` before any pixel
    is read; a dtype too narrow for the number of objects found, before ``out`` is written.
    Returns :class:`Everything` (``.labels``: the ``(H, W)`` labels, ``out`` when given;
    ``.objects``: their records, each with its box piece of the mask).
    """
    result = None
    for step in segment_everything_iter(model, image_or_embedding, contrast_limits=contrast_limits,
                                        cache=cache, disk=disk, embedding=embedding, zoom=zoom,
                                        tiles=tiles, out=out, **params):
        result = step.result
    return result
