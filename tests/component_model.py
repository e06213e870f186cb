"""A deterministic model that implements the backend protocol, for testing the plumbing.

The "embedding" labels the connected components of the bright pixels; a positive point selects
the component under it, a negative point removes the component under it, a box selects the
bright pixels inside it, a mask_input (low-res logits > 0) selects the bright pixels it covers.
Ambiguous prompts return three distinct masks (component, component + 2 px, all bright pixels)
with scores 0.9, 0.6, 0.3. ``delay`` (seconds) slows predict down; ``calls`` records prompts.

``mask_input="objects"`` (opt-in; the default ``"pixels"`` is the behaviour above): a mask_input
selects the whole bright components it covers, so it names the object rather than fixing its
outline (closer to SAM, where the mask prompt is a prior, not a stencil); a box still crops the
result. With it, a box prompt's extent alone decides how far a mask can grow from slice to slice.
"""

from __future__ import annotations

import threading
import time

import numpy as np
from scipy import ndimage

from napari_promptseg.core.cancel import check_cancelled
from napari_promptseg.core.results import Embedding, Prediction
from napari_promptseg.models.base import PromptableModel
from napari_promptseg.models.registry import ModelSpec

SPEC = ModelSpec("components", "test", "components", "", "", 0, "0", "test backend", "none")


class ComponentModel(PromptableModel):
    image_size = 64  # the low-res logits cover a 64 x 64 square, like SAM's 256 of 1024

    def __init__(self, delay: float = 0.0, embed_delay: float = 0.0, mask_input: str = "pixels",
                 multimask_scores=(0.9, 0.6, 0.3)):
        super().__init__(SPEC, "components-v1", "cpu")
        self.multimask_scores = np.array(multimask_scores, np.float32)
        if mask_input not in ("pixels", "objects"):
            raise ValueError(f"mask_input must be 'pixels' or 'objects', got {mask_input!r}")
        self.delay, self.embed_delay, self.mask_input_mode = delay, embed_delay, mask_input
        self.calls: list[dict] = []
        self.embed_calls = 0
        self._lock = threading.Lock()

    @property
    def low_res_shape(self):
        return (16, 16)

    def _cell(self, h, w) -> float:
        """Image pixels per low-res cell: the low-res grid covers the model's square input."""
        return max(h, w) / self.image_size * self.image_size / self.low_res_shape[0]

    def _embed_rgb(self, rgb):
        self.embed_calls += 1
        end = time.monotonic() + self.embed_delay
        while (left := end - time.monotonic()) > 0:  # small steps: a cancel_scope can stop it
            check_cancelled()
            time.sleep(min(0.02, left))
        gray = rgb.astype(np.float32).mean(-1)
        fg = gray > 127
        comps, _ = ndimage.label(fg)
        h, w = fg.shape
        s = self.image_size / max(h, w)
        return Embedding(self.name, self.checkpoint_id, self.preprocessing, (h, w),
                         (max(1, round(h * s)), max(1, round(w * s))), {"components": comps})

    def _predict(self, embedding, prompt, multimask):
        with self._lock:
            self.calls.append({"points": prompt.points.copy(), "labels": prompt.labels.copy(),
                               "box": None if prompt.box is None else prompt.box.copy(),
                               "mask_input": prompt.mask_input, "multimask": multimask})
        time.sleep(self.delay)
        comps = embedding.features["components"]
        fg = comps > 0
        h, w = comps.shape
        mask = np.zeros((h, w), bool)
        if prompt.box is not None:
            r0, c0, r1, c1 = np.round(prompt.box).astype(int)
            mask[max(r0, 0):r1 + 1, max(c0, 0):c1 + 1] = True
            mask &= fg
        if prompt.mask_input is not None:
            lr = prompt.mask_input[0] > 0
            cell = self._cell(h, w)  # image pixels per low-res cell
            rr = np.minimum((np.arange(h) / cell).astype(int), lr.shape[0] - 1)
            cc = np.minimum((np.arange(w) / cell).astype(int), lr.shape[1] - 1)
            painted = lr[rr][:, cc] & fg
            if self.mask_input_mode == "objects":
                painted = np.isin(comps, np.unique(comps[painted])) & fg
            mask = painted if prompt.box is None else (mask & painted)
        for (r, c), lab in zip(np.round(prompt.points).astype(int), prompt.labels, strict=True):
            r, c = min(max(r, 0), h - 1), min(max(c, 0), w - 1)
            comp = comps == comps[r, c] if comps[r, c] else np.zeros_like(mask)
            mask = (mask | comp) if lab == 1 else (mask & ~comp)
        if multimask:
            grown = ndimage.binary_dilation(mask, iterations=2)
            masks = np.stack([mask, grown, fg])
            scores = self.multimask_scores.copy()
        else:
            masks, scores = mask[None], np.array([0.95], np.float32)
        lh, lw = self.low_res_shape
        cell = self._cell(h, w)
        rows = ((np.arange(lh) + 0.5) * cell).astype(int)
        cols = ((np.arange(lw) + 0.5) * cell).astype(int)
        logits = np.full((len(masks), lh, lw), -10.0, np.float32)
        ri, ci = rows < h, cols < w
        for k, m in enumerate(masks):
            logits[k][np.ix_(ri, ci)] = np.where(m[np.ix_(rows[ri], cols[ci])], 10.0, -10.0)
        return Prediction(masks, scores, logits)


def blob_image(shape=(120, 160)) -> tuple[np.ndarray, np.ndarray]:
    """A uint16 image with three bright disjoint rectangles (ids 1, 2, 3 in the truth labels)."""
    img = np.full(shape, 1000, np.uint16)
    truth = np.zeros(shape, np.int32)
    for i, (r0, r1, c0, c1) in enumerate([(10, 40, 10, 50), (60, 100, 20, 60), (20, 70, 90, 140)], 1):
        img[r0:r1, c0:c1] = 30000
        truth[r0:r1, c0:c1] = i
    return img, truth
