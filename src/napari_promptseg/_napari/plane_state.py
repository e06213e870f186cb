"""Per-plane prompt state of the widget (numpy only): which plane a prompt is on, what its
prompts decoded to, and how a plane's preview is composed from decoded and propagated objects."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["SliceState", "object_ids", "compose", "signature", "planes_of", "fmt", "ids_in"]


@dataclass
class SliceState:
    """What the prompts of one plane decoded to (``sig`` identifies those prompts)."""

    sig: bytes
    embedding: object
    preds: list
    choices: list[int]
    logits: dict[int, np.ndarray]  # per object: low-res logits of the shown mask, for refinement
    plane: np.ndarray  # (H, W) uint8 preview of this plane
    ids: list[int] = field(default_factory=list)  # preview id per object
    kept: np.ndarray | None = None  # propagated objects left on this plane (their preview ids)


def object_ids(objects, hint: list[int] | None, kept: np.ndarray | None) -> list[int]:
    """Preview ids for ``objects``: the ids they had (``hint``), else on a propagated plane the
    id under the object's first positive point (or its box's centre), else the next free ids."""
    used = list(hint or [])[: len(objects)]
    if kept is None:
        return used + [i for i in range(1, 256) if i not in used][: len(objects) - len(used)]
    taken = set(used) | set(ids_in(kept))
    for o in objects[len(used):]:
        pos = o.points[o.labels == 1]
        at = pos[0] if len(pos) else (None if o.box is None else (o.box[:2] + o.box[2:]) / 2)
        under = 0
        if at is not None:
            r, c = (int(np.clip(round(v), 0, n - 1)) for v, n in zip(at, kept.shape, strict=True))
            under = int(kept[r, c])
        if under and under not in used:
            used.append(under)
        else:
            used.append(max(taken | set(used) | {0}) + 1)
    return used


def compose(masks, ids: list[int], kept: np.ndarray | None, shape) -> np.ndarray:
    """The plane's preview: ``masks`` with ``ids`` (earlier wins), then the kept propagated
    objects whose ids are not re-prompted, where nothing else is."""
    out = np.zeros(shape, np.uint8)
    for m, i in zip(masks, ids, strict=True):
        out[np.asarray(m, bool) & (out == 0)] = i
    if kept is not None:
        rest = np.where(np.isin(kept, ids), 0, kept).astype(np.uint8)
        out = np.where(out == 0, rest, out)
    return out


def signature(objects) -> bytes:
    """Bytes that change whenever the objects' points, labels or boxes change."""
    parts = []
    for o in objects:
        parts += [np.asarray(o.points, np.float64).tobytes(), b"|", np.asarray(o.labels, np.int32).tobytes(),
                  b"|", b"-" if o.box is None else np.asarray(o.box, np.float64).tobytes(), b";"]
    return b"".join(parts)


def planes_of(lead: np.ndarray, lead_shape, keep: np.ndarray) -> tuple[list[tuple[int, ...]], np.ndarray]:
    """Plane index per row of leading coordinates (rounded); rows outside the stack are dropped
    from ``keep``."""
    idx = np.round(np.asarray(lead, float)).astype(int).reshape(len(keep), len(lead_shape))
    inside = ((idx >= 0) & (idx < np.asarray(lead_shape, int))).all(1)  # all() of no axes: True
    return [tuple(int(v) for v in row) for row in idx], keep & inside


def fmt(index: tuple[int, ...]) -> str:
    return ", ".join(map(str, index))


def ids_in(labels: np.ndarray) -> list[int]:
    """The non-zero ids present in a small-id labels image."""
    v = labels.ravel()
    return [int(i) + 1 for i in np.flatnonzero(np.bincount(v.clip(0) if v.dtype.kind == "i" else v)[1:])]
