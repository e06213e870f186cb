"""Per-plane objects -> 3D ids: an object continues on the next plane where its masks overlap.

Used to link segment everything's planes of a stack (the session, the command line) into one id
per object through the stack.
"""

from __future__ import annotations

import numpy as np

__all__ = ["link_plane", "LINK_IOU"]

LINK_IOU = 0.5  # an object continues on the next plane when its masks there overlap this much (IoU)


def link_plane(prev: np.ndarray | None, labels: np.ndarray, next_id: int,
               min_iou: float = LINK_IOU) -> tuple[np.ndarray, int]:
    """Give plane ``labels`` (``(H, W)``, 0 = background, ids 1..n) the ids of the objects of
    ``prev`` (the neighbouring plane, already linked) they overlap with IoU >= ``min_iou``, best
    pairs first, one to one; the others get new ids from ``next_id``. Returns the relabelled
    plane (int32) and the next free id."""
    labels = np.asarray(labels)
    n = int(labels.max(initial=0))
    out = np.zeros(labels.shape, np.int32)
    if n == 0:
        return out, next_id
    mapping = np.zeros(n + 1, np.int64)
    if prev is not None and prev.any():
        prev = np.asarray(prev)
        pv, inv = np.unique(prev, return_inverse=True)
        inv = inv.reshape(prev.shape)
        m = len(pv)
        pairs = (labels.astype(np.int64) * m + inv).ravel()
        inter = np.bincount(pairs, minlength=(n + 1) * m).reshape(n + 1, m)
        a, b = inter.sum(1), inter.sum(0)
        iou = inter / np.maximum(a[:, None] + b[None, :] - inter, 1)
        iou[0, :] = 0
        iou[:, pv == 0] = 0
        used_new, used_old = set(), set()
        for flat in np.argsort(-iou, axis=None):
            i, j = divmod(int(flat), m)
            if iou[i, j] < min_iou:
                break
            if i not in used_new and j not in used_old:
                mapping[i] = pv[j]
                used_new.add(i)
                used_old.add(j)
    for i in range(1, n + 1):
        if mapping[i] == 0 and np.any(labels == i):
            mapping[i] = next_id
            next_id += 1
    out[...] = mapping[labels]
    return out, next_id
