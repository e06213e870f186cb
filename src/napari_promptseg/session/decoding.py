"""Decoding for the session (numpy + the model, no Qt): which objects' prompts changed since they
were decoded, the work a decode job does (off the UI thread, on a snapshot), and how its result
updates the decoded planes (on the UI thread).

``prompts``: ``{plane: {object id: ObjectPrompt}}``; ``decoded``: ``{plane: PlaneDecode}``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .planes import ObjectDecode, ObjectPrompt, Plane, PlaneDecode, extends, present, signature

__all__ = ["plan", "decode", "apply", "refine_prompts", "refine", "apply_refined", "predict"]

Todo = dict[Plane, dict[int, tuple[ObjectPrompt, np.ndarray | None]]]


def plan(prompts: Mapping[Plane, Mapping[int, ObjectPrompt]], decoded: Mapping[Plane, PlaneDecode]) -> tuple[
        Todo, dict[Plane, list[int]]]:
    """``(todo, removed)``: per plane the objects to decode, each with its refinement logits (the
    shown mask's, when the object only gained points; else None), and the object ids whose prompts
    are gone. Objects of a stale plane (new embeddings) are all decoded again."""
    todo: Todo = {}
    removed: dict[Plane, list[int]] = {}
    for p in set(prompts) | set(decoded):
        objs, dec = prompts.get(p, {}), decoded.get(p)
        known = dec.objects if dec is not None and not dec.stale else {}
        gone = [i for i in (dec.objects if dec else {}) if i not in objs]
        if gone:
            removed[p] = gone
        for i, o in objs.items():
            d = known.get(i)
            if d is None or d.sig != signature(o):
                mi = d.logits if (d is not None and d.pred is not None and extends(o, d.prompt)) else None
                todo.setdefault(p, {})[i] = (o, mi)
    return todo, removed


def decode(model, stack, todo: Todo) -> dict[Plane, dict[int, ObjectDecode]]:
    """The decode job's work: each object of ``todo`` against its plane's embedding (computed
    here if needed); an object with only negative points is absent (``pred`` None)."""
    out = {}
    for p, objs in todo.items():
        emb = stack.get(p) if any(present(o) for o, _ in objs.values()) else None
        out[p] = {}
        for i, (o, mi) in objs.items():
            pred = predict(model, emb, o, mi) if present(o) else None
            d = out[p][i] = ObjectDecode(signature(o), o, pred, pred.best if pred is not None else 0)
            if pred is not None:
                pred.mask(d.choice)  # upscaled here, in the worker: not on the UI thread when shown
    return out


def apply(decoded: dict[Plane, PlaneDecode], prompts: Mapping[Plane, Mapping[int, ObjectPrompt]], result,
          removed: Mapping[Plane, list[int]]) -> set[Plane]:
    """Put a decode's ``result`` into ``decoded`` (objects in id order; planes left without
    objects dropped); returns the planes whose preview must be composed again."""
    touched = set(result) | set(removed)
    for p in touched:
        dec = decoded.setdefault(p, PlaneDecode())
        for i in removed.get(p, []):
            dec.objects.pop(i, None)
        dec.objects.update(result.get(p, {}))
        here = prompts.get(p, {})
        dec.objects = {i: dec.objects[i] for i in sorted(dec.objects) if i in here}
        dec.stale = False
        if not dec.objects:
            del decoded[p]
    return touched


def refine_prompts(painted: np.ndarray, objs: Mapping[int, ObjectPrompt]) -> dict[int, ObjectPrompt]:
    """``G`` on one plane: per object id in the painted ``(H, W)`` preview, its bounding box and
    its points on the plane (``objs``: the plane's prompts)."""
    from ..interactive import bounding_box
    from .planes import ids_in

    empty = ObjectPrompt(np.zeros((0, 2)), np.zeros(0, np.int32))
    return {i: ObjectPrompt(objs.get(i, empty).points, objs.get(i, empty).labels, bounding_box(painted == i))
            for i in ids_in(painted)}


def apply_refined(decoded: dict[Plane, PlaneDecode], p: Plane, objs: Mapping[int, ObjectPrompt], preds,
                  kept: np.ndarray | None, shape) -> np.ndarray:
    """Put ``G``'s predictions for plane ``p`` in place: objects with prompts become decoded
    objects; painted ones without prompts go to the returned ``kept`` plane (which a propagation
    leaves alone)."""
    dec = decoded.setdefault(p, PlaneDecode())
    kept = np.zeros(shape, np.uint32) if kept is None else np.array(kept)
    for i, q in preds.items():
        if i in objs:
            dec.objects[i] = ObjectDecode(signature(objs[i]), objs[i], q, 0)
        else:
            kept[kept == i] = 0
            kept[q.mask(0) & (kept == 0)] = i
    if not dec.objects:
        decoded.pop(p, None)
    return kept


def refine(model, emb, painted: np.ndarray, prompts: Mapping[int, ObjectPrompt]) -> dict:
    """``G``: each object ``i`` of ``prompts`` decoded with its painted mask (``painted == i``)
    as the mask prompt; returns ``{object id: Prediction}``."""
    preds = {i: predict(model, emb, o, model.mask_prompt(emb, painted == i)) for i, o in prompts.items()}
    for q in preds.values():
        q.mask(0)  # upscaled in the worker
    return preds


def predict(model, emb, o: ObjectPrompt, mask_input):
    """One object's prediction: three candidates for a single point without a mask input."""
    pts = o.points if len(o.points) else None
    return model.predict(emb, points=pts, labels=o.labels if pts is not None else None, box=o.box,
                         mask_input=mask_input, multimask=o.ambiguous and mask_input is None)
