"""The prompt method's stop rules that read the image: where does an object end along the axis?

On a real fluorescence z-stack the model's score and the overlap of consecutive masks do not see
where a nucleus ends: the microscope's point-spread function, longer along z than across, blurs
its ends into a haze that the model still segments, and then the next nucleus above or below
(docs/benchmarks.md, "Propagation on realistic z-stacks"). These rules look at the image planes
(read one at a time, by index, and only around the objects) and at the object's size:

- ``"contrast"``: the mask's contrast on its plane (the mean of its core minus the lower quartile
  of a ring around it, on the plane smoothed by a 1-pixel gaussian) falls below ``min_contrast``
  times the object's peak contrast, or rises above :data:`JUMP` times it (the mask moved onto a
  brighter object). The peak is the highest of the seed's contrast, of the planes the object
  filled so far, and of the :data:`CLIMB` planes next to the seed through the seed's footprint
  (so a seed near one end knows how bright the object's middle is). A blurred edge lies at about
  half the peak; the measured best threshold on the generated stacks is a little lower. A front
  also stops where its contrast, after falling below :data:`FALL` of the highest it had, climbs
  :data:`RISE` times again: past the dip at the object's end it reached the next object.
- ``"extent"``: the object's extent along the axis is at most ``max_depth`` times its width (the
  equivalent diameter of its widest bright mask so far), with the planes ``spacing`` pixel widths
  apart (the stack's voxel size: without it this rule does not apply). When the intensity
  profile through the seed's footprint ends (half its peak) on both sides within that extent,
  the object may fill at most :data:`BEYOND` planes past those ends (the next nucleus above or
  below, dimmer but still contrasted, is not taken); otherwise (nuclei stacked along z with no
  dip between them) the window starts at the profile's end near the seed, or is centred on it.
- ``"neighbour"``: another prompted object explains the planes: for two objects whose seed
  footprints overlap (one above the other) the planes between their seeds are split at the dip of
  the intensity profile between them, else at the step between their brightnesses, else in
  proportion to their widths.

The user's word wins: between two seeds of one object none of these rules applies.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import numpy as np

__all__ = ["ImageStops", "IMAGE_RULES", "mask_contrast", "axis_spacing", "CLIMB", "JUMP"]

IMAGE_RULES = ("contrast", "extent", "neighbour")
CLIMB = 2  # planes beyond the seed through its footprint that may raise the object's peak contrast
JUMP = 1.5  # a contrast above this many times the peak: the mask moved onto a brighter object
FALL = 0.7  # a front whose contrast fell below this share of its highest ...
RISE = 1.25  # ... and then climbs this many times from there has reached another object
HALF = 0.5  # the profile's edge, as a fraction of its peak
BEYOND = 2  # with the profile's ends on both sides within the extent: planes allowed past them
DIP = 0.9  # between two objects, a profile this far below both ends: a dip, the boundary
RING = 3  # pixels around the mask that give its local background
NEAR_END = 0.7  # an edge this share of the extent from the seeds: the seeds lie near that end
WIDE = 0.7  # masks with at least this share of the peak contrast measure the object's width
_STACKED = 0.3  # footprints overlapping by this share of the smaller one: one above the other


def _gray(plane) -> np.ndarray:
    a = np.asarray(plane)
    if a.ndim == 3:  # RGB(A): the mean of the colours
        a = a[..., :3].mean(axis=-1, dtype=np.float32)
    return a.astype(np.float32, copy=False)


def mask_contrast(plane: np.ndarray, mask: np.ndarray) -> float:
    """The contrast of ``mask`` on ``plane`` (both ``(H, W)``): the mean of the mask's core (its
    pixels at least half its largest inner distance from its edge) minus the lower quartile of a
    ring :data:`RING` px wide around it, on the plane smoothed by a 1-px gaussian; read in a crop
    around the mask. NaN for an empty mask or one with no ring (it fills the plane)."""
    from scipy import ndimage as ndi

    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return float("nan")
    pad = RING + 4
    r0, r1 = max(rows.min() - pad, 0), min(rows.max() + pad + 1, mask.shape[0])
    c0, c1 = max(cols.min() - pad, 0), min(cols.max() + pad + 1, mask.shape[1])
    m = mask[r0:r1, c0:c1]
    sm = ndi.gaussian_filter(_gray(plane[r0:r1, c0:c1]), 1.0)
    d = ndi.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
    core = d >= max(0.5 * d.max(), 1.0)
    ring = ndi.binary_dilation(m, iterations=RING) & ~m
    if not ring.any():
        return float("nan")
    return float(sm[core].mean() - np.percentile(sm[ring], 25))


def _width(mask: np.ndarray) -> float:
    return float(2 * np.sqrt(np.count_nonzero(mask) / np.pi))


class _Object:
    """What the rules know of one object."""

    def __init__(self, seeds: dict[int, np.ndarray]) -> None:
        self.seeds = seeds
        self.first, self.last = min(seeds), max(seeds)
        self.width = max(_width(m) for m in seeds.values())  # grows with the masks it fills
        self.peak = float("nan")
        self.edges: tuple[int | None, int | None] | None = None  # the profile's edges (None: not near)
        self.lo, self.hi = -1, 1 << 30  # a neighbour's planes: below lo / above hi
        self.profile: dict[int, float] = {}
        self.trail: dict[int, tuple[float, float]] = {}  # per direction: (last contrast, highest)

    def footprint(self, k: int) -> np.ndarray:
        """The seed mask that looks at plane ``k``: the nearest seed's."""
        return self.seeds[min(self.seeds, key=lambda s: (abs(s - k), s))]


class ImageStops:
    """The image rules of one run (see the module docstring).

    rules: the names of :data:`IMAGE_RULES` to apply; plane_of: plane index -> ``(H, W)`` or
    ``(H, W, 3|4)`` pixels (None: no image rule applies); spacing: the distance between planes in
    pixel widths (None: unknown, the extent rule does not apply; the others take 1); seeds:
    ``{plane: {object id: (H, W) bool}}``; n planes; min_contrast, max_depth: as
    :class:`~napari_promptseg.PromptPropagation`.
    """

    def __init__(self, rules, plane_of: Callable[[int], np.ndarray] | None, spacing: float | None,
                 seeds: dict[int, dict[int, np.ndarray]], n: int, min_contrast: float,
                 max_depth: float | None) -> None:
        self.rules = {r for r in rules if r in IMAGE_RULES} if plane_of is not None else set()
        if spacing is None or max_depth is None:  # the extent needs the voxel size
            self.rules.discard("extent")
        self.plane_of, self.n = plane_of, n
        self.spacing = 1.0 if spacing is None else float(spacing)
        self.min_contrast, self.max_depth = min_contrast, max_depth
        self._planes: OrderedDict[int, np.ndarray] = OrderedDict()
        by_obj: dict[int, dict[int, np.ndarray]] = {}
        for k, objs in seeds.items():
            for o, m in objs.items():
                by_obj.setdefault(o, {})[k] = m
        self.objects = {o: _Object(s) for o, s in by_obj.items()}
        if self.rules:
            self._prepare()

    def plane(self, k: int) -> np.ndarray:
        """Plane ``k`` as float32 gray (the last few planes are kept)."""
        p = self._planes.get(k)
        if p is None:
            p = self._planes[k] = _gray(self.plane_of(int(k)))
            while len(self._planes) > 3:
                self._planes.popitem(last=False)
        else:
            self._planes.move_to_end(k)
        return p

    # ---- before the run: profiles, peaks, windows ---------------------------------------
    def _reach(self, ob: _Object) -> int:
        """How far beyond its seeds an object's profile is read: twice the extent its seeds'
        width allows (a seed near an end is narrower than the object)."""
        if self.max_depth is None:
            return CLIMB
        return int(np.ceil(2 * self.max_depth * ob.width / self.spacing)) + 2

    def extent(self, ob: _Object) -> int:
        """The most planes the object may span: ``max_depth`` x its width so far, at least its
        seeds' span."""
        return max(int(round(self.max_depth * ob.width / self.spacing)), ob.last - ob.first + 1)

    def _prepare(self) -> None:
        want: dict[int, list[int]] = {}
        for o, ob in self.objects.items():
            r = self._reach(ob) if "extent" in self.rules or "neighbour" in self.rules else CLIMB
            for k in range(max(ob.first - r, 0), min(ob.last + r, self.n - 1) + 1):
                want.setdefault(k, []).append(o)
        for k in sorted(want):  # one plane at a time, every object that looks at it
            plane = self.plane(k)
            for o in want[k]:
                ob = self.objects[o]
                ob.profile[k] = mask_contrast(plane, ob.footprint(k))
        for ob in self.objects.values():
            self._peak(ob)
            if "extent" in self.rules and self.max_depth is not None:
                self._window(ob)
        if "neighbour" in self.rules:
            self._neighbours()

    def _peak(self, ob: _Object) -> None:
        p = ob.profile
        peak = [p[s] for s in ob.seeds if np.isfinite(p.get(s, np.nan))]
        for s, d in ((ob.first, -1), (ob.last, 1)):
            k = s
            while abs(k + d - s) <= CLIMB and np.isfinite(p.get(k + d, np.nan)) and p[k + d] > p[k]:
                k += d
            if np.isfinite(p.get(k, np.nan)):
                peak.append(p[k])
        ob.peak = max(peak) if peak else float("nan")

    def _edge(self, ob: _Object, s: int, d: int, reach: int) -> int | None:
        """The last plane from seed ``s`` in direction ``d`` whose profile is >= half the peak
        (None: the profile stays above it up to ``reach`` planes away)."""
        k = s
        while abs(k + d - s) <= reach:
            v = ob.profile.get(k + d)
            if v is None:  # the stack ends
                return k
            if not v >= HALF * ob.peak:
                return k
            k += d
        return None

    def _window(self, ob: _Object) -> None:
        """The profile's edges next to the seeds (half the peak; None: not within reach)."""
        if ob.peak > 0:
            reach = self._reach(ob)
            ob.edges = self._edge(ob, ob.first, -1, reach), self._edge(ob, ob.last, 1, reach)

    def window(self, ob: _Object) -> tuple[int, int] | None:
        """The planes the extent rule lets the object fill now (None: any): ``extent`` planes
        from the profile's edge (or a prompted neighbour's split) when one lies within
        :data:`NEAR_END` of the extent from the seeds (a seed near that end), else centred on the
        seeds and moved inside the edges; when both edges lie within the extent, up to
        :data:`BEYOND` planes past them."""
        if ob.edges is None:
            return None
        lo, hi = ob.edges
        if ob.lo >= 0 and (lo is None or ob.lo > lo):  # a prompted neighbour below ends it there
            lo = ob.lo
        if ob.hi < 1 << 30 and (hi is None or ob.hi < hi):  # ... or above
            hi = ob.hi
        span = self.extent(ob)
        if lo is not None and hi is not None and hi - lo + 1 <= span:  # the profile ends both ways
            return min(lo - BEYOND, ob.first), max(hi + BEYOND, ob.last)
        near = max(1, round(NEAR_END * span))
        d_lo = None if lo is None else ob.first - lo
        d_hi = None if hi is None else hi - ob.last
        if d_lo is not None and d_lo <= near and (d_hi is None or d_lo <= d_hi):
            start = lo
        elif d_hi is not None and d_hi <= near:
            start = hi - span + 1
        else:
            start = ob.first - (span - (ob.last - ob.first + 1)) // 2
            if lo is not None and start < lo:
                start = lo
            if hi is not None and start + span - 1 > hi:
                start = hi - span + 1
        return min(start, ob.first), max(start + span - 1, ob.last)

    def _neighbours(self) -> None:
        objs = sorted(self.objects.items())
        for i, (_, A) in enumerate(objs):
            for _, B in objs[i + 1:]:
                if A.last < B.first:
                    self._split(A, B)
                elif B.last < A.first:
                    self._split(B, A)

    def _split(self, A: _Object, B: _Object) -> None:
        """A lies below B (A's last seed < B's first): split the planes between them."""
        a, b = A.last, B.first
        fa, fb = A.seeds[a], B.seeds[b]
        small = min(np.count_nonzero(fa), np.count_nonzero(fb))
        if np.count_nonzero(fa & fb) < _STACKED * small or b - a > self._reach(A) + self._reach(B):
            return
        if b - a == 1:
            last, first = a, b
        else:
            pa = np.array([A.profile.get(k, np.nan) for k in range(a, b + 1)])
            pb = np.array([B.profile.get(k, np.nan) for k in range(a, b + 1)])
            last, first = (a + j for j in self._cut(pa, pb, A.width, B.width))
        A.hi, B.lo = min(A.hi, last), max(B.lo, first)

    @staticmethod
    def _cut(pa: np.ndarray, pb: np.ndarray, wa: float, wb: float) -> tuple[int, int]:
        """The last plane of the lower object A and the first of the upper one B, as offsets
        into their footprints' profiles ``pa``, ``pb`` from A's seed (0) to B's (n): the dip
        between them (the dip's plane to the one whose own profile is higher there, if above
        half its level), else the step between their brightnesses, else their widths' ratio."""
        n = len(pa) - 1
        split = int(np.floor(n * wa / (wa + wb)))
        q = (pa + pb) / 2
        if not np.isfinite(q).all():
            return split, split + 1
        v = int(np.argmin(q[1:-1])) + 1
        if q[v] < DIP * min(q[0], q[-1]):  # a dip: the boundary
            ra, rb = pa[v] / pa[0], pb[v] / pb[n]
            if max(ra, rb) < HALF:
                return v - 1, v + 1
            return (v, v + 1) if ra >= rb else (v - 1, v)
        if abs(q[0] - q[-1]) > 0.25 * max(q[0], q[-1]):  # a step: where it crosses half way
            mid = (q[0] + q[-1]) / 2
            above = q[0] > mid
            j = next((j for j in range(1, n + 1) if (q[j] > mid) != above), n)
            return j - 1, j
        return split, split + 1

    # ---- during the run --------------------------------------------------------------------
    def exempt(self, o: int, k: int) -> bool:
        """Plane ``k`` lies between two seeds of ``o``: the user's word wins."""
        ob = self.objects.get(o)
        return ob is None or ob.first < k < ob.last

    def before(self, o: int, k: int) -> str | None:
        """Why object ``o``'s front must not fill plane ``k`` (None: it may)."""
        if not self.rules or self.exempt(o, k):
            return None
        ob = self.objects[o]
        if not ob.lo <= k <= ob.hi:
            return "neighbour"
        w = self.window(ob) if "extent" in self.rules and self.max_depth is not None else None
        if w is not None and not w[0] <= k <= w[1]:
            return "extent"
        return None

    def after(self, o: int, k: int, mask: np.ndarray) -> str | None:
        """Why object ``o``'s ``mask`` on plane ``k`` stops its front (None: it is kept; the
        object's peak contrast and width may grow)."""
        if not self.rules & {"contrast", "extent"}:
            return None
        ob = self.objects[o]
        c = mask_contrast(self.plane(k), mask)
        if not (np.isfinite(c) and ob.peak > 0):
            return None
        if not self.exempt(o, k) and "contrast" in self.rules:
            if c < self.min_contrast * ob.peak or c > JUMP * ob.peak:
                return "contrast"
            d = 1 if k > ob.last else -1
            seed = ob.profile.get(ob.last if d > 0 else ob.first, np.nan)
            last, high = ob.trail.get(d, (seed, seed))
            if np.isfinite(last) and last < FALL * high and c > RISE * last:
                return "contrast"  # past a dip: the mask climbs onto the next object
            ob.trail[d] = (c, max(high, c) if np.isfinite(high) else c)
        if c >= WIDE * ob.peak:  # the object's bright part: its width counts for the extent
            ob.width = max(ob.width, _width(mask))
        ob.peak = max(ob.peak, c) if c <= JUMP * ob.peak else ob.peak
        return None


def axis_spacing(scale, axis: int) -> float | None:
    """The distance between the planes across ``axis`` in pixel widths, from a stack's voxel size
    ``scale`` (napari's layer ``scale`` over its 3 non-channel axes, e.g. ``(2.0, 1.0, 1.0)``):
    ``scale[axis]`` over the mean of the other two. None stays None (the rules then take 1)."""
    if scale is None:
        return None
    s = [float(v) for v in scale]
    if len(s) != 3 or not all(np.isfinite(v) and v > 0 for v in s):
        raise ValueError(f"scale must be 3 positive numbers (one per non-channel axis), got {scale!r}")
    axis = int(axis) % 3
    rest = [v for i, v in enumerate(s) if i != axis]
    return s[axis] / (sum(rest) / 2)
