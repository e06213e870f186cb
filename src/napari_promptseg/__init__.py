"""napari-promptseg: promptable segmentation (Segment Anything) for napari and Python.

Importing this package is light (no torch, no Qt): napari reads our manifest at start-up.

>>> import napari_promptseg as ps
>>> model = ps.load_model("vit_b")                 # downloads once, verifies the hash
>>> emb = model.embed(image)                        # (H, W) or (H, W, 3|4), any real dtype
>>> pred = model.predict(emb, points=[[120, 340]])  # (row, col)
>>> mask = pred.masks[pred.best]                    # (H, W) bool
>>> labels = ps.segment(model, image, [{"points": [[120, 340]]}])   # prompts -> labels, tiles too
>>> labels = ps.propagate(model, stack, {12: seed_labels})  # through a z-stack or video
>>> tracker = ps.Tracker(model, video); tracker.add_prompt(0, obj=1, points=[[40, 60]])
>>> for step in tracker.propagate(): ...             # correct any frame, propagate again
>>> found = ps.segment_everything(model, image)      # .labels (H, W) int32, .objects
>>> found = ps.find("sam3", image, text="nucleus")   # every instance of a concept (SAM 3)
>>> tiled = ps.embed_tiles(model, huge_image)        # tiles at the model's scale, on demand
>>> for done, total in ps.embed_store_iter(model, stack, "stack.zarr"): ...   # resumable
>>> labels = ps.propagate(model, stack, seeds, embeddings=ps.open_embeddings("stack.zarr"))

The data flow, one package per step, each importing only those before it: ``core`` (values and
rules) -> ``models`` -> ``embed`` -> ``segmentation`` -> ``propagation`` / ``labels`` ->
``session`` -> ``cli`` / ``_napari``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from napari_promptseg import _compat
from napari_promptseg.core.results import Embedding, Prediction, SliceResult
from napari_promptseg.embed.disk_cache import DiskCache
from napari_promptseg.embed.store import StoreError, embed_store_iter, open_embeddings
from napari_promptseg.embed.tiles import embed_tiles
from napari_promptseg.models import ModelSpec, PromptableModel, list_models, load_model
from napari_promptseg.propagation.api import propagate, propagate_iter  # light: numpy only at import
from napari_promptseg.propagation.concepts import track_concept
from napari_promptseg.propagation.options import MemoryTracking, PromptPropagation
from napari_promptseg.propagation.tracker import Tracker
from napari_promptseg.segmentation.everything import Everything, segment_everything, segment_everything_iter
from napari_promptseg.segmentation.find import find
from napari_promptseg.segmentation.find_stack import find_stack
from napari_promptseg.segmentation.prompted import segment

if TYPE_CHECKING:
    from napari_promptseg.propagation.memory import MemoryTracker  # noqa: F401 (lazy, see _LAZY)
    from napari_promptseg.session import AnnotationSession
    from napari_promptseg.training.finetune import FinetuneResult

__version__ = "0.1.0"
__all__ = [
    # models
    "list_models", "load_model", "ModelSpec", "PromptableModel",
    # what they return
    "Embedding", "Prediction", "SliceResult", "Everything",
    # segmentation
    "segment", "segment_everything", "segment_everything_iter", "find", "find_stack",
    # embeddings: huge images, caches, stores
    "embed_tiles", "DiskCache", "embed_store_iter", "open_embeddings", "StoreError",
    # z-stacks and videos
    "propagate", "propagate_iter", "PromptPropagation", "MemoryTracking", "Tracker", "track_concept",
    # interactive annotation without napari, finetuning
    "AnnotationSession", "finetune",
]

_LAZY = {  # heavy or higher-layer names, imported when first used
    "MemoryTracker": "napari_promptseg.propagation.memory",
    "AnnotationSession": "napari_promptseg.session",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    return _compat.deprecated_name(name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def finetune(
    model, images, labels, steps: int = 300, out: str | Path | None = None, **kwargs
) -> FinetuneResult:
    """Finetune a SAM-family model (``"vit_b"``, ``"promptseg_demo"``, ...) on labelled images.

    images: ``(H, W)``, ``(H, W, 3)`` or stacks ``(Z, H, W)``, one array or a list; labels:
    integer instance ids of the same ``(Z,) H, W`` shape. Saves to ``out`` (load it with
    ``ps.load_model(name, checkpoint=out)``) and returns held-out IoUs before and after. Options:
    :func:`napari_promptseg.training.finetune.finetune`.
    """
    from napari_promptseg.training.finetune import finetune as _finetune

    return _finetune(model, images, labels, steps, out, **kwargs)
