"""The prompt method of :mod:`napari_promptseg.propagation.api`: one slice's mask prompts the next.

:class:`PromptPropagator` runs the two passes over the stack that :func:`~napari_promptseg.propagation.api.
propagate_iter` describes (fronts from every seed, meeting between seeds, stopping on score, area
or overlap, and on the image rules of :mod:`napari_promptseg.propagation.stops`: contrast, extent,
a neighbour), and yields a :class:`SliceResult` per slice. The mask-to-prompt geometry (the box
without specks, the interior point) is :mod:`napari_promptseg.core.geometry`'s. Coordinates are
``(row, col)`` slice pixels; masks are ``(H, W)`` bool.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from napari_promptseg.core.geometry import interior_point, mask_iou, prompt_box, without_specks
from napari_promptseg.core.results import Embedding, SliceResult
from napari_promptseg.propagation.options import PromptPropagation
from napari_promptseg.propagation.stops import ImageStops


@dataclass
class _Front:
    obj: int
    source: int  # seed slice
    last: int  # slice of ``mask``
    end: int  # last slice this front may fill (inclusive, in its direction)
    mask: np.ndarray
    logits: np.ndarray | None  # low-res logits of ``mask`` (None for a seed: made on demand)


def _plan(seeds: dict[int, dict[int, np.ndarray]], n: int, max_slices: int | None,
          absent: dict[int, list[int]] | None = None):
    """Per object and seed slice: the last slice of its forward front, and the lower limit of its
    backward front when the forward fronts fill their halves (the backward pass re-plans).
    ``absent``: object -> sorted slices it must not enter (fronts stop before them)."""
    lim = n if max_slices is None else max_slices
    by_obj: dict[int, list[int]] = {}
    for k in sorted(seeds):
        for o in seeds[k]:
            by_obj.setdefault(o, []).append(k)
    fwd_end: dict[tuple[int, int], int] = {}
    for o, ks in by_obj.items():
        for i, s in enumerate(ks):
            stop = s + math.ceil((ks[i + 1] - s - 1) / 2) if i + 1 < len(ks) else n - 1
            wall = next((b - 1 for b in (absent or {}).get(o, ()) if b > s), n - 1)
            fwd_end[(o, s)] = min(stop, s + lim, wall)
    return by_obj, fwd_end


class PromptPropagator:
    """One run of the prompt method over ``n`` slices from validated ``seeds`` of ``shape``
    (:func:`~napari_promptseg.propagation.seeds.check_seeds`) with ``options``
    (:class:`~napari_promptseg.propagation.options.PromptPropagation`); :meth:`run` yields the
    slices. plane_of: slice index -> its pixels ``(H, W)`` or ``(H, W, 3|4)`` for the image rules
    (None: they do not apply); spacing: the distance between slices in pixel widths (None:
    unknown, the extent rule does not apply)."""

    def __init__(self, model, embedding_of, n, seeds, shape, options: PromptPropagation, absent=None,
                 plane_of=None, spacing=None):
        max_slices = options.max_slices
        self.model, self.embedding_of, self.n = model, embedding_of, n
        self.seeds, self.shape = seeds, shape
        self.prompt, self.box_margin = options.strategy, options.box_margin
        self.min_score, self.min_overlap = options.min_score, options.min_overlap
        self.min_area = options.min_area
        self.rules = set(options.stops)
        self.image = ImageStops(options.stops, plane_of, spacing, seeds, n, options.min_contrast,
                                options.max_depth)
        self.lim = n if max_slices is None else max_slices
        self.absent = {o: sorted(int(b) for b in bs) for o, bs in (absent or {}).items()}
        self.by_obj, self.fwd_end = _plan(seeds, n, max_slices, self.absent)
        # (object, seed) -> last slice filled by its forward front (the seed itself if none)
        self.reached: dict[tuple[int, int], int] = {}
        # slice -> packed bits of the pixels the forward pass gave out (for the backward pass)
        self.owned: dict[int, np.ndarray] = {}
        self.done = 0

    # ---- bookkeeping ---------------------------------------------------------------------
    def _bwd_stop(self, o: int, s: int) -> int:
        """Lowest slice the backward front from seed ``s`` of ``o`` may fill: one past what the
        forward front from the previous seed reached (so far), or 0, within ``max_slices``."""
        ks = self.by_obj[o]
        i = ks.index(s)
        floor = 0 if i == 0 else self.reached.get((o, ks[i - 1]), ks[i - 1]) + 1
        wall = max((b + 1 for b in self.absent.get(o, ()) if b < s), default=0)
        return max(floor, s - self.lim, wall)

    def _remaining(self, direction: int, k: int, fronts: dict[int, _Front]) -> int:
        """Upper bound of the slice visits still to come after slice ``k`` of pass ``direction``."""
        fwd: set[int] = set()
        bwd: set[int] = set()
        if direction == 1:
            for f in fronts.values():
                fwd.update(range(k + 1, f.end + 1))
            for (_, s), e in self.fwd_end.items():
                if s >= k:
                    fwd.update(range(s + 1, e + 1))
        else:
            for f in fronts.values():
                bwd.update(range(f.end, k))
        for o, ks in self.by_obj.items():
            for s in ks:
                if direction == 1 or s <= k:
                    bwd.update(range(self._bwd_stop(o, s), s))
        return len(fwd) + len(bwd)

    def _seed_claims(self, k: int) -> np.ndarray | None:
        ms = list(self.seeds.get(k, {}).values())
        return np.logical_or.reduce(ms) if ms else None

    # ---- decoding --------------------------------------------------------------------------
    def _prompt_kwargs(self, emb: Embedding, f: _Front) -> dict:
        kw: dict = {}
        p = self.prompt
        if "box" in p:
            kw["box"] = prompt_box(without_specks(f.mask), self.box_margin)
        if "point" in p:
            kw["points"] = interior_point(f.mask)[None]
            kw["labels"] = [1]
        if "logits" in p:
            kw["mask_input"] = f.logits if f.logits is not None else self.model.mask_prompt(emb, f.mask)
        kw["multimask"] = p == "point"
        return kw

    def _step(self, k: int, direction: int, fronts: dict[int, _Front]) -> SliceResult:
        todo = [f for f in fronts.values() if f.last + direction == k]
        stopped = {f.obj: why for f in todo if (why := self.image.before(f.obj, k))}
        decode = [f for f in todo if f.obj not in stopped]
        emb = self.embedding_of(k) if decode else None  # no plane to embed when every front ends
        if emb is not None and tuple(emb.original_size) != tuple(self.shape):
            raise ValueError(
                f"the seed masks have shape {tuple(self.shape)} but slice {k} is "
                f"{tuple(emb.original_size)} pixels"
            )
        raw, scores, logits = {}, {}, {}
        for f in decode:
            pred = self.model.predict(emb, **self._prompt_kwargs(emb, f))
            i = pred.best
            raw[f.obj], scores[f.obj], logits[f.obj] = pred.mask(i), float(pred.scores[i]), pred.logits[i]
        if "score" in self.rules:
            stopped.update({o: "score" for o in raw if scores[o] < self.min_score})
        alive = [f for f in todo if f.obj not in stopped]
        taken = self._seed_claims(k)
        if direction == -1 and k in self.owned:
            fw = np.unpackbits(self.owned[k], count=self.shape[0] * self.shape[1]).reshape(self.shape)
            taken = fw.astype(bool) if taken is None else (taken | fw.astype(bool))
        while True:  # resolve, drop the objects that fail, resolve the survivors again
            masks = self._resolve({f.obj: raw[f.obj] for f in alive}, {f.obj: f.mask for f in alive},
                                  scores, taken)
            failed = {}
            for f in alive:
                m = masks[f.obj]
                if np.count_nonzero(m) < self.min_area and ("area" in self.rules or not m.any()):
                    failed[f.obj] = "area"
                elif "overlap" in self.rules and mask_iou(m, f.mask) < self.min_overlap:
                    failed[f.obj] = "overlap"
                elif why := self.image.after(f.obj, k, m):
                    failed[f.obj] = why
            if not failed:
                break
            stopped.update(failed)
            alive = [f for f in alive if f.obj not in failed]
        for f in todo:
            if f.obj in stopped:
                del fronts[f.obj]
            else:
                f.mask, f.logits, f.last = masks[f.obj], logits[f.obj], k
                if direction == 1:
                    self.reached[(f.obj, f.source)] = k
        if direction == 1 and masks:
            union = np.logical_or.reduce(list(masks.values()))
            self.owned[k] = np.packbits(union)
        self.done += 1
        return SliceResult(
            index=k, masks=masks, scores={o: scores[o] for o in masks}, done=self.done, total=0,
            direction=direction, sources={f.obj: f.source for f in alive}, stopped=stopped,
        )

    @staticmethod
    def _resolve(raw, prev, scores, taken) -> dict[int, np.ndarray]:
        masks = {o: (m & ~taken if taken is not None else m.copy()) for o, m in raw.items()}
        if len(masks) < 2:
            return masks
        ids = list(masks)
        count = np.sum([masks[o] for o in ids], axis=0, dtype=np.int32)
        contested = count > 1
        if not contested.any():
            return masks
        from scipy import ndimage as ndi

        rows, cols = np.nonzero(contested)
        # key per (object, contested pixel): not claiming it, then distance to the previous mask
        # (0 inside it), then higher score, then lower id: the smallest key wins.
        order = sorted(ids, key=lambda o: (-scores[o], o))
        keys = []
        for o in order:
            d = np.where(prev[o][rows, cols], 0.0, np.inf)
            outside = ~prev[o][rows, cols]
            if outside.any():
                d[outside] = ndi.distance_transform_edt(~prev[o])[rows[outside], cols[outside]]
            d[~masks[o][rows, cols]] = np.inf
            keys.append(d)
        winner = np.argmin(np.stack(keys), axis=0)  # argmin keeps the first of equal keys
        for j, o in enumerate(order):
            masks[o][rows, cols] = winner == j
        return masks

    # ---- passes ----------------------------------------------------------------------------
    def run(self) -> Iterator[SliceResult]:
        fronts: dict[int, _Front] = {}
        for k in range(self.n):  # forward pass
            if any(f.last + 1 == k and k <= f.end for f in fronts.values()):
                res = self._step(k, 1, fronts)
                res.total = self.done + self._remaining(1, k, fronts)
                yield res
            for o in [o for o, f in fronts.items() if k >= f.end]:
                del fronts[o]
            for o, m in self.seeds.get(k, {}).items():
                end = self.fwd_end[(o, k)]
                self.reached.setdefault((o, k), k)
                if end > k:
                    fronts[o] = _Front(o, k, k, end, m, None)
        fronts = {}
        for k in range(self.n - 1, -1, -1):  # backward pass
            if any(f.last - 1 == k and k >= f.end for f in fronts.values()):
                res = self._step(k, -1, fronts)
                res.total = self.done + self._remaining(-1, k, fronts)
                yield res
            for o in [o for o, f in fronts.items() if k <= f.end]:
                del fronts[o]
            for o, m in self.seeds.get(k, {}).items():
                end = self._bwd_stop(o, k)
                if end < k:
                    fronts[o] = _Front(o, k, k, end, m, None)
