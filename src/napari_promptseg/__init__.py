"""napari-promptseg: promptable segmentation (Segment Anything) for napari and Python.

Importing this package is light (no torch, no Qt): napari reads our manifest at start-up.

>>> import napari_promptseg as ps
>>> model = ps.load_model("vit_b")                 # downloads once, verifies the hash
>>> emb = model.embed(image)                        # (H, W) or (H, W, 3|4), any real dtype
>>> pred = model.predict(emb, points=[[120, 340]])  # (row, col)
>>> mask = pred.masks[pred.best]                    # (H, W) bool
"""

from __future__ import annotations

from .models import ModelSpec, PromptableModel, list_models, load_model
from .prompts import Prompt
from .results import Embedding, Prediction

__version__ = "0.1.0"
__all__ = [
    "ModelSpec", "PromptableModel", "list_models", "load_model", "Embedding", "Prediction", "Prompt",
]
