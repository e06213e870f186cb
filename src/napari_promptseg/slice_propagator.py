"""The prompt method of :mod:`napari_promptseg.propagate`: one slice's mask prompts the next.

:class:`_Propagator` runs the two passes over the stack that :func:`~napari_promptseg.propagate.
propagate_iter` describes (fronts from every seed, meeting between seeds, stopping on score, area
or overlap), and yields a :class:`SliceResult` per slice. The mask-to-prompt geometry lives here
too: the box (:func:`_bbox`, without specks: :func:`_body`) and the interior point. Coordinates
are ``(row, col)`` slice pixels; masks are ``(H, W)`` bool.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from .results import Embedding

#: pixels added to each side of a box prompt besides ``box_margin`` (see :func:`_bbox`)
BOX_MARGIN_PX = 2.0


@dataclass
class SliceResult:
    """The masks of the objects decoded on one slice.

    index: slice index along the propagation axis; masks: object id -> ``(H, W)`` bool (objects
    that stopped on this slice are absent); scores: object id -> predicted IoU; done: slices
    processed so far (this one included); total: upper bound of the slices to process (it only
    decreases, as objects stop); direction: +1 (forward pass) or -1 (backward pass); sources:
    object id -> the seed slice its mask was propagated from; stopped: object id -> why its front
    stopped here (``"score"``, ``"area"`` or ``"overlap"``).
    """

    index: int
    masks: dict[int, np.ndarray]
    scores: dict[int, float]
    done: int
    total: int
    direction: int = 1
    sources: dict[int, int] = field(default_factory=dict)
    stopped: dict[int, str] = field(default_factory=dict)


@dataclass
class _Front:
    obj: int
    source: int  # seed slice
    last: int  # slice of ``mask``
    end: int  # last slice this front may fill (inclusive, in its direction)
    mask: np.ndarray
    logits: np.ndarray | None  # low-res logits of ``mask`` (None for a seed: made on demand)


def _bbox(mask: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """``(row0, col0, row1, col1)`` through the centres of the mask's outermost pixels (like the
    tight boxes SAM was trained with), widened to the pixels' edges where a side would be 0.

    margin > 0: each side moves out by ``margin`` x the box's extent along that axis (in pixels,
    ``row1 - row0 + 1``) plus :data:`BOX_MARGIN_PX`, clipped to the image (pixel centres
    ``0 .. H - 1``, ``0 .. W - 1``); 0 gives the tight box."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    box = np.array([rows[0], cols[0], rows[-1], cols[-1]], np.float64)
    if margin > 0:
        h, w = mask.shape
        for lo, hi, size in ((0, 2, h), (1, 3, w)):
            grow = margin * (box[hi] - box[lo] + 1) + BOX_MARGIN_PX
            box[lo], box[hi] = max(box[lo] - grow, 0.0), min(box[hi] + grow, size - 1.0)
    for lo, hi in ((0, 2), (1, 3)):
        if box[lo] == box[hi]:
            box[lo] -= 0.5
            box[hi] += 0.5
    return box


#: a piece of a mask smaller than this fraction of its largest piece does not widen its box
SPECK_FRACTION = 0.05


def _body(mask: np.ndarray) -> np.ndarray:
    """``mask`` without its specks: 8-connected pieces under :data:`SPECK_FRACTION` of the largest
    (a stray pixel of a mask, e.g. where a window cuts a neighbour, would stretch the box prompt
    made from it far beyond the object, and the next slice's decode fails)."""
    from scipy import ndimage

    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not rows.size:
        return mask
    r0, c0 = rows[0], cols[0]
    crop = mask[r0:rows[-1] + 1, c0:cols[-1] + 1]
    lab, n = ndimage.label(crop, structure=np.ones((3, 3), bool))
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())[1:]
    keep = np.concatenate([[False], sizes >= SPECK_FRACTION * sizes.max()])
    out = np.zeros_like(mask, dtype=bool)
    out[r0:rows[-1] + 1, c0:cols[-1] + 1] = keep[lab]
    return out


def interior_point(mask: np.ndarray) -> np.ndarray:
    """``(row, col)`` of the mask pixel farthest from the background (distance transform max)."""
    from scipy import ndimage as ndi

    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    r0, c0, r1, c1 = rows[0], cols[0], rows[-1], cols[-1]
    crop = np.pad(mask[r0 : r1 + 1, c0 : c1 + 1], 1)
    d = ndi.distance_transform_edt(crop)
    r, c = np.unravel_index(int(np.argmax(d)), d.shape)
    return np.array([r - 1 + r0, c - 1 + c0], np.float64)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def _check_seeds(seeds, n_slices: int) -> tuple[dict[int, dict[int, np.ndarray]], tuple[int, int]]:
    if not isinstance(n_slices, (int, np.integer)) or isinstance(n_slices, bool) or n_slices < 1:
        raise ValueError(f"n_slices must be a positive integer, got {n_slices!r}")
    if not isinstance(seeds, Mapping):
        raise TypeError("seeds must be a mapping {slice index: {object id: (H, W) bool mask}}")
    out: dict[int, dict[int, np.ndarray]] = {}
    shape = None
    for k, objs in seeds.items():
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
            raise ValueError(f"seed slice index must be an integer, got {k!r}")
        k = int(k)
        if not 0 <= k < n_slices:
            raise ValueError(f"seed slice index {k} is out of range for {n_slices} slices")
        if not isinstance(objs, Mapping):
            raise TypeError(f"seeds[{k}] must be a mapping {{object id: (H, W) bool mask}}")
        for o, m in objs.items():
            if not isinstance(o, (int, np.integer)) or isinstance(o, bool) or o < 1:
                raise ValueError(f"object ids must be positive integers, got {o!r} on slice {k}")
            m = np.asarray(m)
            if m.ndim != 2:
                raise ValueError(
                    f"the seed mask of object {o} on slice {k} must be 2D (H, W), got shape {m.shape}"
                )
            if shape is None:
                shape = m.shape
            elif m.shape != shape:
                raise ValueError(
                    f"the seed mask of object {o} on slice {k} has shape {m.shape}, others {shape}"
                )
            m = m.astype(bool)
            if not m.any():
                raise ValueError(f"the seed mask of object {o} on slice {k} is empty")
            out.setdefault(k, {})[int(o)] = m
    if not out:
        raise ValueError("no seeds: give at least one object mask on one slice")
    return out, shape


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


class _Propagator:
    def __init__(self, model, embedding_of, n, seeds, shape, prompt, box_margin, min_score,
                 min_overlap, min_area, max_slices, absent=None):
        self.model, self.embedding_of, self.n = model, embedding_of, n
        self.seeds, self.shape, self.prompt, self.box_margin = seeds, shape, prompt, box_margin
        self.min_score, self.min_overlap, self.min_area = min_score, min_overlap, min_area
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
            kw["box"] = _bbox(_body(f.mask), self.box_margin)
        if "point" in p:
            kw["points"] = interior_point(f.mask)[None]
            kw["labels"] = [1]
        if "logits" in p:
            kw["mask_input"] = f.logits if f.logits is not None else self.model.mask_prompt(emb, f.mask)
        kw["multimask"] = p == "point"
        return kw

    def _step(self, k: int, direction: int, fronts: dict[int, _Front]) -> SliceResult:
        todo = [f for f in fronts.values() if f.last + direction == k]
        emb = self.embedding_of(k)
        if tuple(emb.original_size) != tuple(self.shape):
            raise ValueError(
                f"the seed masks have shape {tuple(self.shape)} but slice {k} is "
                f"{tuple(emb.original_size)} pixels"
            )
        raw, scores, logits = {}, {}, {}
        for f in todo:
            pred = self.model.predict(emb, **self._prompt_kwargs(emb, f))
            i = pred.best
            raw[f.obj], scores[f.obj], logits[f.obj] = pred.mask(i), float(pred.scores[i]), pred.logits[i]
        stopped = {o: "score" for o in raw if scores[o] < self.min_score}
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
                if np.count_nonzero(m) < self.min_area:
                    failed[f.obj] = "area"
                elif _iou(m, f.mask) < self.min_overlap:
                    failed[f.obj] = "overlap"
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
