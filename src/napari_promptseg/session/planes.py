"""Per-plane state of an annotation session (numpy only): the prompts of each object on each
plane, what they decoded to, the propagated objects, and how a plane's preview is composed.

Plane indices are tuples of the image's leading axes: ``()`` for 2D, ``(z,)`` for a z-stack,
``(t, z)`` for T x Z. Coordinates are ``(row, col)`` image pixels; boxes ``(row0, col0, row1, col1)``.
Object ids are explicit integers >= 1, chosen by the user (``new_object``), the same on every
plane: an object prompted on planes 10 and 40 is one object.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field

import numpy as np

from napari_promptseg.core.geometry import extent
from napari_promptseg.core.prompts import Prompt

__all__ = ["Plane", "Prompt", "ObjectDecode", "PlaneDecode", "signature", "merge_prompts",
           "compose", "ids_in", "fmt", "MIN_CANDIDATE_SCORE", "offered", "PlaneStore"]

Plane = tuple[int, ...]
#: J skips candidate masks whose predicted IoU is below this (the model itself calls them wrong);
#: the best one and the shown one are always kept
MIN_CANDIDATE_SCORE = 0.1


def signature(obj: Prompt) -> bytes:
    """Bytes that change whenever the object's points, labels or box change."""
    box = b"-" if obj.box is None else np.asarray(obj.box, np.float64).tobytes()
    pts, labels = np.asarray(obj.points, np.float64).tobytes(), np.asarray(obj.labels, np.int32).tobytes()
    return b"|".join([pts, labels, box])


def extends(new: Prompt, old: Prompt) -> bool:
    """True when ``new`` only adds points to ``old`` (same box, old points first): the mask shown
    for ``old`` is then a good mask prompt for ``new`` (refinement); a moved or removed point or
    a changed box starts afresh."""
    same_box = (new.box is None and old.box is None) or (
        new.box is not None and old.box is not None and np.array_equal(new.box, old.box))
    n = len(old.points)
    return (same_box and len(new.points) > n and np.array_equal(new.points[:n], old.points)
            and np.array_equal(new.labels[:n], old.labels))


def merge_prompts(points: np.ndarray, labels: np.ndarray, objects: np.ndarray,
                  boxes: np.ndarray, box_objects: np.ndarray) -> dict[int, Prompt]:
    """Group one plane's prompts by object id: points ``(N, 2)``, labels ``(N,)`` 1/0, their object
    ids ``(N,)``; boxes ``(B, 4)`` and their object ids ``(B,)`` (one box per object: the last
    one wins). An object with only negative points is kept: it says "not on this plane"."""
    out = {}
    ids = sorted({int(i) for i in objects} | {int(i) for i in box_objects})
    for i in ids:
        pm = objects == i
        bm = np.flatnonzero(box_objects == i)
        box = np.asarray(boxes[bm[-1]], np.float64) if len(bm) else None
        out[i] = Prompt(np.asarray(points[pm], np.float64).reshape(-1, 2),
                              np.asarray(labels[pm], np.int32), box)
    return out


def with_prompt(prompts: dict[Plane, dict[int, Prompt]], plane: Plane, obj: int, points=(), labels=(),
                box=None) -> dict[Plane, dict[int, Prompt]]:
    """``prompts`` with ``points`` ``(N, 2)`` / ``labels`` added to object ``obj`` on ``plane``
    (and its box replaced when ``box`` is given); ``prompts`` is changed in place and returned."""
    old = prompts.setdefault(plane, {}).get(obj) or Prompt(np.zeros((0, 2)), np.zeros(0, np.int32))
    pts = np.concatenate([old.points, np.asarray(points, np.float64).reshape(-1, 2)])
    prompts[plane][obj] = Prompt(pts, np.concatenate([old.labels, np.asarray(labels, np.int32)]),
                                       old.box if box is None else np.asarray(box, np.float64))
    return prompts


def image_shape(image, rgb: bool) -> tuple[int, ...]:
    """The shape ``(..., H, W)`` of ``image`` without its channel axis (``rgb``); ValueError for
    an image without a 2D plane."""
    ndim = image.ndim - (1 if rgb else 0)
    if ndim < 2:
        raise ValueError(f"image of shape {image.shape} has no 2D plane to segment")
    return tuple(image.shape[:ndim])


def present(obj: Prompt) -> bool:
    """The prompts place the object on the plane (a positive point or a box)."""
    return obj.box is not None or bool((obj.labels == 1).any())


_ABSENT = Prompt(np.zeros((0, 2)), np.zeros(0, np.int32))  # no point, no box: the object is not here


def placed(prompts: Mapping[Plane, Mapping[int, Prompt]]) -> dict[Plane, dict[int, Prompt]]:
    """``prompts`` without the empty ones (no point, no box: what an end mark adds)."""
    out = {p: {o: q for o, q in objs.items() if len(q.points) or q.box is not None}
           for p, objs in prompts.items()}
    return {p: objs for p, objs in out.items() if objs}


def with_marks(prompts: Mapping[Plane, Mapping[int, Prompt]], marks: dict[Plane, set[int]]) -> dict[
        Plane, dict[int, Prompt]]:
    """``prompts`` plus, for each end mark (``{plane: {object id}}``: "the object is absent here"),
    an empty prompt, unless the object has a positive point or a box on that plane: that mark is
    the user's newer word and is dropped from ``marks`` (in place)."""
    out = {p: dict(objs) for p, objs in prompts.items()}
    for p, objs in list(marks.items()):
        for o in sorted(objs):
            cur = out.get(p, {}).get(o)
            if cur is not None and present(cur):
                objs.discard(o)
            else:
                out.setdefault(p, {})[o] = cur if cur is not None else _ABSENT
        if not objs:
            del marks[p]
    return out


@dataclass
class ObjectDecode:
    """What one object's prompts on one plane decoded to."""

    sig: bytes
    prompt: Prompt
    pred: object | None  # Prediction; None: the object is absent from this plane
    choice: int = 0

    @property
    def mask(self) -> np.ndarray | None:
        return None if self.pred is None else self.pred.mask(self.choice)

    @property
    def logits(self) -> np.ndarray | None:
        return None if self.pred is None else self.pred.logits[self.choice]


@dataclass
class PlaneDecode:
    """The decoded objects of one plane, by object id (in prompt order)."""

    objects: dict[int, ObjectDecode] = field(default_factory=dict)
    stale: bool = False  # the embedding changed (window, model): decode again, keep showing these


def offered(pred, chosen: int) -> list[int]:
    """Candidate indices that J cycles through, best score first: those scoring at least
    :data:`MIN_CANDIDATE_SCORE`, plus the best and the shown one."""
    order = [int(k) for k in np.argsort(-pred.scores)]
    return [k for k in order if k in (order[0], chosen) or pred.scores[k] >= MIN_CANDIDATE_SCORE]


def compose(decoded: PlaneDecode | None, propagated: np.ndarray | None, shape, dtype=np.uint32,
            window: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """A plane's preview ``(H, W)``: decoded objects by id (earlier objects win where they
    overlap), then the propagated objects that are not decoded here, where nothing else is. An
    object decoded as absent (negative points only) removes its propagated mask from the plane.
    dtype: of the result; it must hold every id (see :func:`top_id`). window: ``(row0, col0,
    row1, col1)`` (ends exclusive): compose only that part of the plane and return it."""
    r0, c0, r1, c1 = window if window is not None else (0, 0, *shape)
    sl = (slice(r0, r1), slice(c0, c1))
    out = np.zeros((r1 - r0, c1 - c0), dtype)
    here: set[int] = set()
    if decoded is not None:
        for oid, d in decoded.objects.items():
            here.add(oid)
            m = d.mask
            if m is not None:
                out[np.asarray(m[sl], bool) & (out == 0)] = oid
    if propagated is not None:
        prop = propagated[sl]
        rest = np.where(np.isin(prop, list(here)), 0, prop) if here else prop
        out = np.where(out == 0, rest, out).astype(dtype, copy=False)
    return out


Box = tuple[int, int, int, int]


def content_box(decoded: PlaneDecode | None, propagated: np.ndarray | None) -> Box | None:
    """``(row0, col0, row1, col1)`` (ends exclusive) around everything :func:`compose` would
    write on a plane, or None when it writes nothing."""
    masks = [d.mask for d in (decoded.objects.values() if decoded is not None else ()) if d.mask is not None]
    if propagated is not None:
        masks.append(propagated != 0)
    extents = (extent(m) for m in masks)
    return union_box(*((r0, c0, r1 + 1, c1 + 1) for r0, c0, r1, c1 in filter(None, extents)))


def union_box(*boxes: Box | None) -> Box | None:
    """The smallest ``(row0, col0, row1, col1)`` box (ends exclusive) around ``boxes``; None
    entries are skipped; None when there is none."""
    boxes = [b for b in boxes if b is not None]
    if not boxes:
        return None
    b = np.array(boxes)
    return int(b[:, 0].min()), int(b[:, 1].min()), int(b[:, 2].max()), int(b[:, 3].max())


def top_id(decoded: PlaneDecode | None, propagated: np.ndarray | None) -> int:
    """The largest object id :func:`compose` would write."""
    ids = list(decoded.objects) if decoded is not None else []
    return max([0, *ids, int(propagated.max(initial=0)) if propagated is not None else 0])


class PlaneStore(MutableMapping):
    """``{plane: (H, W) integer array}`` kept compressed (Blosc lz4, ~1 ms a 2048² plane): the objects
    a propagation left on hundreds of 2048² planes take megabytes, not gigabytes."""

    def __init__(self) -> None:
        from numcodecs import Blosc

        self._codec = Blosc(cname="lz4", clevel=5, shuffle=Blosc.NOSHUFFLE)
        self._data: dict[Plane, tuple[bytes, tuple[int, ...], np.dtype]] = {}

    def __getitem__(self, key: Plane) -> np.ndarray:
        raw, shape, dtype = self._data[key]
        return np.frombuffer(self._codec.decode(raw), dtype).reshape(shape).copy()

    def __setitem__(self, key: Plane, plane: np.ndarray) -> None:
        a = np.ascontiguousarray(plane)
        self._data[key] = (self._codec.encode(a), a.shape, a.dtype)

    def __delitem__(self, key: Plane) -> None:
        del self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


def masks_of(plane: np.ndarray) -> dict[int, np.ndarray]:
    """``{object id: (H, W) bool}`` of a labels plane."""
    return {i: plane == i for i in ids_in(plane)}


def ids_in(labels: np.ndarray) -> list[int]:
    """The non-zero ids present in a labels array (any integer dtype, ids of any size)."""
    v = np.asarray(labels).ravel()
    if v.size == 0:
        return []
    if v.dtype in (np.uint8, np.uint16):  # the preview: a histogram is ~10x faster than unique
        return [int(i) for i in np.flatnonzero(np.bincount(v)[1:]) + 1]
    return [int(i) for i in np.unique(v) if i > 0]


def fmt(index: Plane) -> str:
    return ", ".join(map(str, index))


def prompts_json(prompts: Mapping[Plane, Mapping[int, Prompt]]) -> dict:
    """The prompts as json-able data (for the autosave journal): ``{"z,y": {"id": {...}}}``."""
    out = {}
    for p, objs in prompts.items():
        out[fmt(p) or "2d"] = {str(i): {"points": o.points.tolist(), "labels": o.labels.tolist(),
                                        "box": None if o.box is None else o.box.tolist()}
                               for i, o in objs.items()}
    return out
