"""Decoding for the session (numpy + the model, no Qt): which objects' prompts changed since they
were decoded, the work a decode job does (off the UI thread, on a snapshot), how its result
updates the decoded planes (on the UI thread), and :class:`Decoder`, which holds the prompts and
decodes and runs the decode jobs (newest wins).

``prompts``: ``{plane: {object id: Prompt}}``; ``decoded``: ``{plane: PlaneDecode}``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from napari_promptseg.embed.entry import explain_error
from napari_promptseg.session.jobs import Cancelled, Job, run_now
from napari_promptseg.session.planes import (
    ObjectDecode,
    Plane,
    PlaneDecode,
    Prompt,
    extends,
    offered,
    present,
    signature,
)

__all__ = ["plan", "decode", "apply", "refine_prompts", "refine", "apply_refined", "predict", "Decoder"]

Todo = dict[Plane, dict[int, tuple[Prompt, np.ndarray | None]]]


def plan(prompts: Mapping[Plane, Mapping[int, Prompt]], decoded: Mapping[Plane, PlaneDecode]) -> tuple[
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


def apply(decoded: dict[Plane, PlaneDecode], prompts: Mapping[Plane, Mapping[int, Prompt]], result,
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


def refine_prompts(painted: np.ndarray, objs: Mapping[int, Prompt]) -> dict[int, Prompt]:
    """``G`` on one plane: per object id in the painted ``(H, W)`` preview, its bounding box and
    its points on the plane (``objs``: the plane's prompts)."""
    from napari_promptseg.core.geometry import bounding_box
    from napari_promptseg.session.planes import ids_in

    empty = Prompt(np.zeros((0, 2)), np.zeros(0, np.int32))
    return {i: Prompt(objs.get(i, empty).points, objs.get(i, empty).labels, bounding_box(painted == i))
            for i in ids_in(painted)}


def apply_refined(decoded: dict[Plane, PlaneDecode], p: Plane, objs: Mapping[int, Prompt], preds,
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


def refine(model, emb, painted: np.ndarray, prompts: Mapping[int, Prompt]) -> dict:
    """``G``: each object ``i`` of ``prompts`` decoded with its painted mask (``painted == i``)
    as the mask prompt; returns ``{object id: Prediction}``."""
    preds = {i: predict(model, emb, o, model.mask_prompt(emb, painted == i)) for i, o in prompts.items()}
    for q in preds.values():
        q.mask(0)  # upscaled in the worker
    return preds


def predict(model, emb, o: Prompt, mask_input):
    """One object's prediction: three candidates for a single point without a mask input."""
    pts = o.points if len(o.points) else None
    return model.predict(emb, points=pts, labels=o.labels if pts is not None else None, box=o.box,
                         mask_input=mask_input, multimask=o.ambiguous and mask_input is None)


class Decoder:
    """The session's prompts, what they decoded to, and its decode jobs (newest wins).

    prompts: ``{plane: {object id: Prompt}}``; decoded: ``{plane: PlaneDecode}``; kept:
    ``{plane: (H, W) ids}``, objects refined from paint, without prompts. pending: the newest
    decode not applied yet; waiting: actions (commit, propagate) run once it is. source() ->
    ``(model, stack)`` now; show(planes): compose those planes' previews again; status(text);
    describe() -> the status line.
    """

    def __init__(self, schedule: Callable[[Job], None], source: Callable[[], tuple], show, status,
                 describe: Callable[[], str]) -> None:
        self.schedule, self.source, self.show, self.status, self.describe = (
            schedule, source, show, status, describe)
        self.prompts: dict[Plane, dict[int, Prompt]] = {}
        self.decoded: dict[Plane, PlaneDecode] = {}
        self.kept: dict[Plane, np.ndarray] = {}
        self.gen = 0  # bumped by every prompt change: older decodes are stale
        self.pending: Job | None = None
        self.waiting: list[Callable[[], object]] = []
        self.closed = False

    def ids(self) -> set[int]:
        """The objects with prompts, and the largest id refined from paint on each plane."""
        return {o for objs in self.prompts.values() for o in objs} | {int(k.max()) for k in
                                                                      self.kept.values()}

    def replace(self, prompts: Mapping[Plane, Mapping[int, Prompt]]) -> tuple[Todo, dict]:
        """Take ``prompts`` (planes without objects dropped); returns their :func:`plan`."""
        self.prompts = {tuple(p): dict(objs) for p, objs in prompts.items() if objs}
        return plan(self.prompts, self.decoded)

    def reset(self) -> None:
        self.prompts.clear()
        self.decoded.clear()
        self.kept.clear()

    def cancel(self) -> None:
        """Decodes in flight are stale; actions waiting for them are off."""
        self.pending = None
        self.waiting.clear()
        self.gen += 1

    def close(self) -> None:
        self.cancel()
        self.closed = True

    def defer(self, action: Callable[[], object]) -> bool:
        """Run ``action`` once the newest prompts are decoded; False (nothing kept) when none are
        decoding."""
        if self.pending is None:
            return False
        self.waiting.append(action)
        return True

    def restale(self) -> None:
        """New embeddings: keep showing the decoded masks; :meth:`redecode` decodes them again."""
        for d in self.decoded.values():
            d.stale = True

    def redecode(self) -> None:
        """Decode what needs it, if there are prompts or decodes (prompts placed before the model
        came are decoded now)."""
        if self.prompts or self.decoded:
            self.request()

    def predicted(self, plane: Plane) -> dict[int, ObjectDecode]:
        """The objects decoded on ``plane`` (those absent there left out)."""
        dec = self.decoded.get(plane)
        return {i: d for i, d in (dec.objects.items() if dec else ()) if d.pred is not None}

    def painted(self, planes: set[Plane]) -> None:
        """The user painted the preview on ``planes``: actions waiting are off, a decode in flight
        must not undo the paint; other planes' prompts still decode."""
        if self.waiting:
            self.waiting.clear()
            self.status("the preview was painted: press K (or P) again.")
        self.request(skip=planes)

    def request(self, skip=(), planned=None) -> None:
        """Decode the objects whose prompts changed (not on ``skip`` planes: painted just now);
        planned: :func:`plan` of the current prompts, when the caller made it already."""
        self.gen += 1
        gen, (model, stack) = self.gen, self.source()
        todo, removed = planned or plan(self.prompts, self.decoded)
        todo = {p: v for p, v in todo.items() if p not in skip}
        removed = {p: v for p, v in removed.items() if p not in skip}
        if stack is None or (not todo and not removed):
            self.pending = None
            self.finish()
            return

        def done(result) -> None:
            if self.closed or gen != self.gen or stack is not self.source()[1]:
                return  # stale: a newer decode (made from the prompts now) is on its way
            self.pending = None
            self.show(apply(self.decoded, self.prompts, result, removed))
            self.status(self.describe())
            self._candidates(result)
            self.finish()

        def failed(err: BaseException) -> None:
            if self.closed or gen != self.gen:
                return
            self.pending = None
            self.waiting.clear()  # a commit or propagation waiting for these masks is off
            self.status(f"could not decode the prompts: {explain_error(err).rstrip('.')}. "
                        "Commit and propagate use what is shown.")

        self.pending = Job("decode", lambda: decode(model, stack, todo), done, failed)
        if stack.tiled:
            self._tile_status(stack, todo)
        self.schedule(self.pending)

    def _tile_status(self, stack, todo) -> None:
        """Huge planes: say which tile the decode is about to embed (if one)."""
        for plane, objs in todo.items():
            tiled = stack.cached(plane)
            if tiled is None:
                continue
            for o, _ in objs.values():
                what = tiled.pending(o.points, o.labels, o.box) if present(o) else None
                if what:
                    self.status(f"{what}…")
                    return

    def finish(self) -> None:
        """Run the actions waiting for the newest decode."""
        waiting, self.waiting = self.waiting, []
        for action in waiting:
            action()

    def _candidates(self, result) -> None:
        preds = [d.pred for objs in result.values() for d in objs.values() if d.pred is not None]
        preds = [q for q in preds if len(offered(q, q.best)) > 1]
        if preds and self.schedule is not run_now:  # J's other masks, computed before J is pressed
            self.schedule(Job("candidates", lambda: [q.mask(i) for q in preds for i in offered(q, q.best)],
                              lambda _: None, self._candidates_failed))

    def _candidates_failed(self, err: BaseException) -> None:
        """A failed precomputation of J's masks is said (J computes them again when pressed)."""
        if not isinstance(err, Cancelled):
            self.status(f"the other candidate masks could not be prepared ({type(err).__name__}: {err}); "
                        "J computes them when pressed.")

    def next_mask(self, plane: Plane) -> None:
        """J on ``plane``: show the next candidate mask (by score) of each ambiguous object, or say
        why there is none."""
        objs = list(self.predicted(plane).values())
        if not any(len(offered(d.pred, d.choice)) > 1 for d in objs):
            low = any(len(d.pred.scores) > 1 for d in objs)
            why = "the other candidate masks score below 0.1" if low else "only one candidate mask"
            self.status(f"{why}: add a point or a box to change the mask.")
            return
        for d in objs:
            o = offered(d.pred, d.choice)
            d.choice = o[(o.index(d.choice) + 1) % len(o)]
        self.show([plane])
        self.status(self.describe())

    def refine(self, p: Plane, painted: np.ndarray, shape) -> None:
        """``G`` on plane ``p``: each object of its ``painted`` preview ``(H, W)`` becomes a mask
        prompt, with its bounding box and its points on the plane (see :func:`refine`)."""
        (model, stack), objs = self.source(), self.prompts.get(p, {})
        prompts = refine_prompts(painted, objs)
        if stack is None or not prompts:
            self.status("choose a model." if stack is None else "the preview is empty: paint one first.")
            return
        self.gen += 1
        gen = self.gen

        def done(preds) -> None:
            if self.closed or gen != self.gen or stack is not self.source()[1]:
                return
            self.pending = None
            self.kept[p] = apply_refined(self.decoded, p, objs, preds, self.kept.get(p), shape)
            self.show([p])
            self.status(self.describe())
            self.finish()

        def failed(err: BaseException) -> None:
            if not self.closed and gen == self.gen:
                self.pending = None
                self.waiting.clear()
                self.status(f"refine failed: {explain_error(err)}")

        self.pending = Job("decode", lambda: refine(model, stack.get(p), painted, prompts), done, failed)
        self.schedule(self.pending)
