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


def mask_piece(mask: np.ndarray):
    """``(window, piece)`` of a ``(H, W)`` bool mask: its extent ``(row0, col0, row1, col1)``
    (ends exclusive; all 0 when empty) and the pixels there (what ``mask_pieces`` returns)."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return (0, 0, 0, 0), np.zeros((0, 0), bool)
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    return (r0, c0, r1, c1), mask[r0:r1, c0:c1].copy()


class ConceptComponents(ComponentModel):
    """A stand-in concept model: every bright connected component of the embedded image is an
    instance (score: 0.5 + its brightest pixel / 510, box: its extent), whatever the prompt; the
    logits of :meth:`detect` are component ids for :meth:`mask_pieces` of the same embedding.
    Records the prompts: ``prompts`` (concept_prompt's text, boxes, labels, embedding size) and
    ``detects`` (each detect's text, prompt and embedding size)."""

    supports_concepts = True

    def __init__(self):
        super().__init__()
        self.spec = ModelSpec("concepts", "test", "concepts", "", "", 0, "0", "test", "none")
        self.prompts, self.detects = [], []
        self._last = None

    def _embed_rgb(self, rgb):
        emb = super()._embed_rgb(rgb)
        emb.features["gray"] = rgb.astype(np.float32).mean(-1)
        return emb

    def concept_prompt(self, emb, text, boxes, labels):
        self.prompts.append((text, np.asarray(boxes).copy(), np.asarray(labels).copy(),
                             tuple(emb.original_size)))
        return ("prompt", len(self.prompts) - 1)

    @staticmethod
    def join_prompts(prompts):
        return ("joined", tuple(p[1] for p in prompts))

    def detect(self, emb, text, boxes, labels, prompt=None):
        import torch

        self.detects.append((text, prompt, tuple(emb.original_size)))
        comps, gray = emb.features["components"], emb.features["gray"]
        n = int(comps.max())
        from scipy import ndimage as ndi

        objs = ndi.find_objects(comps)
        scores = np.array([0.5 + ndi.maximum(gray, comps, k) / 510 for k in range(1, n + 1)], np.float32)
        pred = np.array([[s[0].start, s[1].start, s[0].stop, s[1].stop] for s in objs], np.float32)
        self._last = comps
        return scores, pred.reshape(-1, 4), torch.arange(1, n + 1)

    def mask_pieces(self, ids, size):
        assert tuple(self._last.shape) == tuple(size)
        return [mask_piece(self._last == int(i)) for i in ids]
