"""napari-promptseg: promptable segmentation (Segment Anything) for napari and Python.

Importing this package is light (no torch, no Qt): napari reads our manifest at start-up.

>>> import napari_promptseg as ps
>>> model = ps.load_model("vit_b")                 # downloads once, verifies the hash
>>> emb = model.embed(image)                        # (H, W) or (H, W, 3|4), any real dtype
>>> pred = model.predict(emb, points=[[120, 340]])  # (row, col)
>>> mask = pred.masks[pred.best]                    # (H, W) bool
>>> ps.load_model("promptseg_demo")                 # small model shipped in the package: offline
>>> labels = ps.propagate(model, stack, {12: seed_labels})  # through a z-stack or video
>>> found = ps.segment_everything(model, image)      # .labels (H, W) int32, .objects
>>> tiled = ps.embed_tiles(model, huge_image)        # tiles at the model's scale, on demand
>>> for done, total in ps.embed_store_iter(model, stack, "stack.zarr"): ...   # resumable
>>> labels = ps.propagate(model, stack, seeds, embeddings=ps.open_embeddings("stack.zarr"))
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .automatic import (
    EVERYTHING_DEFAULTS,
    SAM2_EVERYTHING_DEFAULTS,
    Everything,
    MaskRecord,
    segment_everything,
    segment_everything_iter,
)
from .disk_cache import CacheWarning, DiskCache
from .models import ModelSpec, PromptableModel, list_models, load_model
from .models.weights import default_model_name
from .prompts import Prompt
from .propagate import SliceResult, propagate, propagate_iter  # light: numpy only at import
from .results import Embedding, Prediction
from .store import EmbeddingStore, StoreError, embed_store_iter, open_embeddings
from .tiles import TiledEmbedding, embed_tiles

if TYPE_CHECKING:
    from .training.finetune import FinetuneResult

__version__ = "0.1.0"
__all__ = [
    "ModelSpec", "PromptableModel", "list_models", "load_model", "Embedding", "Prediction", "Prompt",
    "default_model_name", "finetune", "DiskCache", "CacheWarning", "propagate", "propagate_iter",
    "SliceResult", "segment_everything", "segment_everything_iter", "Everything", "MaskRecord",
    "EVERYTHING_DEFAULTS", "SAM2_EVERYTHING_DEFAULTS", "TiledEmbedding", "embed_tiles", "EmbeddingStore",
    "StoreError", "embed_store_iter", "open_embeddings",
]


def finetune(
    model, images, labels, steps: int = 300, out: str | Path | None = None, **kwargs
) -> FinetuneResult:
    """Finetune a SAM-family model (``"vit_b"``, ``"promptseg_demo"``, ...) on labelled images.

    images: ``(H, W)``, ``(H, W, 3)`` or stacks ``(Z, H, W)``, one array or a list; labels:
    integer instance ids of the same ``(Z,) H, W`` shape. Saves to ``out`` (load it with
    ``ps.load_model(name, checkpoint=out)``) and returns held-out IoUs before and after. Options:
    :func:`napari_promptseg.training.finetune.finetune`.
    """
    from .training.finetune import finetune as _finetune

    return _finetune(model, images, labels, steps, out, **kwargs)
