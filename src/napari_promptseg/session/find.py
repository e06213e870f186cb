"""Find every instance of a concept in the session (numpy only): SAM 3's concept prompts (a noun
phrase, exemplar boxes) on one plane or a line of planes, as a job with steps.

Each plane is embedded through the session's stack (cached) and searched once with
:func:`napari_promptseg.find` at threshold 0: every object and its score is kept (cropped and
bit-packed). A huge (tiled) plane is searched tile by tile, a step per tile, keeping the objects
scoring at least :data:`TILED_FLOOR`. The labels shown are the objects scoring at least the
current threshold; on a line of planes they are linked into 3D ids by overlap
(:func:`~napari_promptseg.segmentation.link3d.link_plane`). Moving the threshold
(:meth:`FindRunner.refilter`) rebuilds the labels from the kept objects without running the
model. Results go to a new labels array, never into committed labels.

Coordinates: boxes ``(row0, col0, row1, col1)`` in plane pixels; planes are tuples of the leading
axes (``()`` for 2D).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from napari_promptseg.core.cancel import Cancelled, CancelToken
from napari_promptseg.core.results import Embedding, Found
from napari_promptseg.embed.entry import explain_error
from napari_promptseg.segmentation.find import concept_boxes
from napari_promptseg.segmentation.link3d import link_plane
from napari_promptseg.session.jobs import Job
from napari_promptseg.session.planes import Plane

__all__ = ["NEEDS_SAM3", "TILED_FLOOR", "LineFrames", "FindQuery", "PlaneFinds", "FindRun", "FindRunner",
           "check_query"]

#: on a tiled (huge) plane objects scoring below this are not kept: thousands of weak queries a slide
TILED_FLOOR = 0.2
#: what Find says when the model cannot find concepts
NEEDS_SAM3 = "Find needs the sam3 model: choose it in the model box"


@dataclass(frozen=True)
class FindQuery:
    """A checked concept prompt: ``text`` (stripped) or None; ``boxes`` ``(N, 4)`` ``(row0, col0,
    row1, col1)`` plane pixels with sorted corners; ``positive`` ``(N,)`` bool (False: a
    counter-example)."""

    text: str | None
    boxes: np.ndarray
    positive: np.ndarray

    @property
    def name(self) -> str:
        """A short name for the result: the text, else how many boxes."""
        if self.text:
            return self.text
        n = int(self.positive.sum())
        return f"{n} exemplar box{'es' * (n != 1)}"

    def kwargs(self) -> dict:
        """The prompt as :func:`napari_promptseg.find` keywords."""
        return {"text": self.text, "exemplars": self.boxes[self.positive] if self.positive.any() else None,
                "negative": self.boxes[~self.positive] if (~self.positive).any() else None}


def check_query(model, text, exemplars, negative, shape: tuple[int, int]) -> FindQuery:
    """The query, checked before any work: TypeError when ``model`` cannot find concepts,
    ValueError for an empty text, bad boxes (shape ``(N, 4)``, outside the plane of ``shape``
    ``(H, W)``), or neither a text nor a positive or negative box."""
    if model is None or not getattr(model, "supports_concepts", False):
        raise TypeError(NEEDS_SAM3 + (f" ({model.name} cannot find concepts)." if model is not None else "."))
    if text is not None:
        if not isinstance(text, str):
            raise TypeError(f"the text must be a string (a noun phrase), got {type(text).__name__}")
        text = text.strip() or None
    boxes, positive = concept_boxes(exemplars, negative, tuple(shape))
    if text is None and not len(boxes):
        raise ValueError("nothing to find: type a noun phrase (e.g. 'nucleus') or draw exemplar boxes")
    return FindQuery(text, boxes, positive)


@dataclass(frozen=True, eq=False)
class PlaneFinds:
    """Every object found on one plane: ``scores`` ``(N,)`` float32, decreasing; ``boxes``
    ``(N, 4)`` the model's boxes ``(row0, col0, row1, col1)``; each mask kept as its extent
    ``windows[i]`` ``(row0, col0, row1, col1)`` (ends exclusive; empty for an empty mask) and its
    bits there; ``shape`` ``(H, W)``. Ids and order are those of :func:`napari_promptseg.find`,
    or ``ids`` (a video frame's track ids, :meth:`from_labels`)."""

    scores: np.ndarray
    boxes: np.ndarray
    windows: np.ndarray
    bits: tuple
    shape: tuple[int, int]
    ids: np.ndarray | None = None  # the label of each object (a video's track ids); None: i + 1

    @classmethod
    def from_found(cls, found: Found) -> PlaneFinds:
        scores, boxes, windows, bits = [], [], [], []
        for o in found.objects:  # pieces are already cropped to the mask's extent
            scores.append(o.score)
            boxes.append(o.box)
            windows.append(o.window)
            bits.append(np.packbits(o.piece))
        return cls(np.asarray(scores, np.float32), np.asarray(boxes, np.float64).reshape(-1, 4),
                   np.asarray(windows, np.int64).reshape(-1, 4), tuple(bits), tuple(found.shape))

    @classmethod
    def from_labels(cls, labels: np.ndarray, scores: dict[int, float]) -> PlaneFinds:
        """A frame of a tracked video: each id of ``labels`` ``(H, W)`` an object (its bits in its
        extent), with its score from ``scores`` ``{id: probability}`` (0 when absent)."""
        from scipy import ndimage as ndi

        ids = np.unique(labels)
        ids = ids[ids > 0]
        windows, bits = [], []
        slices = ndi.find_objects(labels.astype(np.int64))
        for i in ids:
            rs, cs = slices[int(i) - 1]
            windows.append((rs.start, cs.start, rs.stop, cs.stop))
            bits.append(np.packbits(labels[rs, cs] == i))
        win = np.asarray(windows, np.int64).reshape(-1, 4)
        return cls(np.array([scores.get(int(i), 0.0) for i in ids], np.float32), win.astype(np.float64),
                   win, tuple(bits), tuple(labels.shape), ids.astype(np.int64))

    def __len__(self) -> int:
        return len(self.scores)

    def count(self, threshold: float) -> int:
        """How many objects score at least ``threshold``."""
        return int((self.scores >= threshold).sum())

    def mask(self, i: int) -> np.ndarray:
        """``(H, W)`` bool: object ``i``'s mask."""
        out = np.zeros(self.shape, bool)
        r0, c0, r1, c1 = (int(v) for v in self.windows[i])
        out[r0:r1, c0:c1] = self._crop(i)
        return out

    def _crop(self, i: int) -> np.ndarray:
        r0, c0, r1, c1 = (int(v) for v in self.windows[i])
        n = (r1 - r0) * (c1 - c0)
        return np.unpackbits(self.bits[i], count=n).reshape(r1 - r0, c1 - c0).astype(bool)

    def labels(self, threshold: float, scores=None) -> np.ndarray:
        """``(H, W)`` int32: the objects scoring at least ``threshold`` (``scores``: one per object
        instead of :attr:`scores`, e.g. a video's track scores), id ``i + 1`` for the ``i``-th best
        (or ``ids[i]``); where they overlap the better one keeps the pixel (as ``Found.labels``)."""
        s = self.scores if scores is None else np.asarray(scores, np.float32)
        out = np.zeros(self.shape, np.int32)
        for i in range(len(self) - 1, -1, -1):
            if s[i] >= threshold:
                r0, c0, r1, c1 = (int(v) for v in self.windows[i])
                out[r0:r1, c0:c1][self._crop(i)] = i + 1 if self.ids is None else self.ids[i]
        return out


@dataclass(eq=False)
class FindRun:
    """One Find over ``planes`` (in order): its ``query``, the new labels ``target``
    (``(..., H, W)`` int32), the ``threshold`` shown, the objects ``kept`` per plane, the planes
    ``done``; ``edited``: its labels were changed by hand (commit, brush), so the threshold no
    longer rewrites them."""

    query: FindQuery
    planes: Sequence[Plane]
    target: object
    threshold: float
    token: CancelToken = field(default_factory=CancelToken)
    kept: dict = field(default_factory=dict)  # plane -> PlaneFinds
    done: list = field(default_factory=list)
    edited: bool = False
    prev: np.ndarray | None = None  # the linked labels of the last plane written (a line)
    next_id: int = 1  # the next free 3D id (a line)
    shown: int = 0  # objects in the labels now
    floor: float = 0.0  # objects scoring below it were not kept (TILED_FLOOR on tiled planes)
    video: float | None = None  # a tracked video: the detection threshold it ran at
    tracks: dict = field(default_factory=dict)  # a tracked video: id -> best probability so far

    @property
    def line(self) -> bool:
        return len(self.planes) > 1


class FindRunner:
    """The session's Find runs (see the module docstring). Callbacks: written(target, planes):
    planes of ``target`` got new labels (the first call brings a new array); status(text);
    progress(done, total); finished(): a model run ended."""

    def __init__(self, schedule: Callable[[Job], None], written, status, progress, finished) -> None:
        self.schedule, self.written, self.status = schedule, written, status
        self.progress, self.finished = progress, finished
        self.result: FindRun | None = None  # the last Find (kept after it ends, for the threshold)
        self.running = False
        self._filtering = 0  # generation of the refilter job in flight (0: none)
        self._gen = 0

    def start(self, model, stack, query: FindQuery, planes: Sequence[Plane], target,
              threshold: float) -> FindRun:
        """Find ``query`` on ``planes`` of ``stack`` (embeddings reused or made in the job) into
        ``target`` (zeros, the image's shape), showing objects scoring at least ``threshold``."""
        from napari_promptseg.segmentation.find import find
        from napari_promptseg.segmentation.find_tiles import find_tiled_iter

        self.cancel(quiet=True)
        run = self.result = FindRun(query, list(planes), target, float(threshold))
        self.running, self._filtering = True, 0

        def work() -> Iterator:
            per = 2  # steps per plane: embed, find (a tiled plane: 1 + its tiles)
            for i, p in enumerate(run.planes):
                emb = stack.get(p)  # embedded in this worker when not cached yet (tiles: lazily)
                if isinstance(emb, Embedding):
                    yield (per * i + 1, per * len(run.planes), None)
                    found = find(model, emb, threshold=0.0, **query.kwargs())
                else:  # a huge plane: searched tile by tile, the weakest objects not kept
                    per, run.floor = 1 + len(emb.grid), TILED_FLOOR
                    objects: list = []
                    for done, _n, last in find_tiled_iter(model, emb, query.text, query.boxes,
                                                          query.positive, TILED_FLOOR):
                        objects = last if last is not None else objects
                        yield (per * i + done, per * len(run.planes), None)
                    found = Found(objects, emb.shape, TILED_FLOOR)
                yield (per * (i + 1), per * len(run.planes), (p, PlaneFinds.from_found(found)))

        where = "this plane" if not run.line else f"{len(run.planes)} planes"
        self._launch(run, work, f"finding '{query.name}' on {where}…")
        return run

    def start_track(self, model, stack, query: FindQuery, planes: Sequence[Plane], target,
                    threshold: float, frame: int) -> FindRun:
        """SAM 3's video model over ``planes`` (a video's frames, in order): detect ``query`` on
        ``planes[frame]`` at ``threshold`` (Meta's detection threshold), track every instance
        through the others (:class:`~napari_promptseg.propagation.concepts.ConceptTracking`), one
        id per track, into ``target``. A track's score is its best probability on any frame; the
        slider then hides tracks scoring below it without running the model (instances below
        ``threshold`` were never detected: Find again to go lower). Bad arguments (more than one
        box, a model without tracker weights) raise before the job."""
        from napari_promptseg.propagation.concepts import ConceptTracking

        tracking = ConceptTracking(model, LineFrames(stack, planes), frame=frame, threshold=threshold,
                                   contrast_limits=stack.window, **query.kwargs())
        self.cancel(quiet=True)
        run = self.result = FindRun(query, list(planes), target, float(threshold), video=float(threshold))
        self.running, self._filtering = True, 0

        def work() -> Iterator:
            for done, (k, labels, scores) in enumerate(tracking, 1):
                yield (done, len(run.planes), (run.planes[k], PlaneFinds.from_labels(labels, scores)))

        self._launch(run, work, f"tracking '{query.name}' through {len(planes)} frames (SAM 3 video "
                                "model; the first 15 frames come together)…")
        return run

    def _launch(self, run: FindRun, work, status: str) -> None:
        """Schedule ``run``'s job: ``work`` yields ``(done, total, None | (plane, PlaneFinds))``."""
        query = run.query

        def step(item) -> None:
            if run is not self.result:
                return
            done, total_, plane = item
            self.progress(done, total_)
            if plane is None:
                self.status(f"finding '{query.name}': plane {len(run.done) + 1} of {len(run.planes)}…")
                return
            p, finds = plane
            run.kept[p] = finds
            run.done.append(p)
            if run.video is not None:
                for i, s in zip(finds.ids, finds.scores, strict=True):
                    run.tracks[int(i)] = max(run.tracks.get(int(i), 0.0), float(s))
            if not self._filtering and not run.edited:  # else the refilter in flight writes it
                self._show(run, p, finds)

        def done(_) -> None:
            if run is not self.result or run.token.cancelled:
                return
            self.running = False
            self.progress(1, 1)
            self.status(self.describe(run) + " (the score slider shows more or fewer; choose the "
                        "layer in 'commit to' to add or correct objects).")
            if run.video is not None and not run.edited:  # tracks scored on later frames
                self.refilter(run.threshold, quiet=True)
            self.finished()

        def failed(err: BaseException) -> None:
            if run is self.result and self.running:
                self.running = False
                self.progress(1, 1)
                after = f" after {len(run.done)} of {len(run.planes)} planes"
                self.status(f"find stopped{after}." if run.token.cancelled
                            else f"find failed{after if run.line else ''}: {explain_error(err).rstrip('.')}.")
            self.finished()

        self.status(status)
        self.schedule(Job("find", work, done, failed, step, "find", run.token))

    def _show(self, run: FindRun, p: Plane, finds: PlaneFinds) -> None:
        """Write plane ``p``'s objects at the run's threshold (linked to the previous plane's; a
        tracked video: its tracks scoring at least the threshold)."""
        if run.video is not None:
            labels = finds.labels(run.threshold, _track_scores(run.tracks, finds))
            run.shown = sum(v >= run.threshold for v in run.tracks.values())
        elif run.line:
            labels, run.next_id = link_plane(run.prev, finds.labels(run.threshold), run.next_id)
            run.prev, run.shown = labels, run.next_id - 1
        else:
            labels = finds.labels(run.threshold)
            run.shown = finds.count(run.threshold)
        run.target[tuple(p)] = labels
        self.written(run.target, (p,))

    def describe(self, run: FindRun) -> str:
        unit = "frames" if run.video is not None else "planes"
        where = "this plane" if not run.line else f"{len(run.done)} of {len(run.planes)} {unit}"
        n = run.shown
        if run.video is not None:
            below = (f"; none below {run.video:.2f} were detected: Find again to go lower"
                     if run.threshold < run.video else "")
            return (f"tracked '{run.query.name}': {n} object{'s' * (n != 1)} scoring >= "
                    f"{run.threshold:.2f} on {where} ({len(run.tracks)} tracked{below})")
        kept = sum(len(f) for f in run.kept.values())
        floor = f", none below {run.floor:.2f} on tiled planes" if run.floor else ""
        return (f"found '{run.query.name}': {n} object{'s' * (n != 1)} scoring >= {run.threshold:.2f} "
                f"on {where} ({kept} kept{floor})")

    def refilter(self, threshold: float, quiet: bool = False) -> None:
        """Show the last run's objects scoring at least ``threshold`` (no model call): one plane
        at once, a line of planes relinked (a tracked video: its tracks filtered) in a job (newest
        wins). quiet: leave the status line as it is."""
        run = self.result
        if run is None:
            return
        run.threshold = float(threshold)
        if run.edited:
            self.status("the found labels were edited (a commit or the brush): the score threshold no "
                        "longer changes them; Find again to filter anew.")
            return
        if not run.line:
            for p in run.done:
                self._show(run, p, run.kept[p])
            if not quiet:
                self.status(self.describe(run) + ".")
            return
        self._gen += 1
        gen = self._filtering = self._gen
        planes, kept, thr = list(run.done), dict(run.kept), run.threshold
        tracks = dict(run.tracks) if run.video is not None else None

        def work() -> Iterator:
            prev, next_id = None, 1
            for p in planes:
                if tracks is not None:
                    yield p, kept[p].labels(thr, _track_scores(tracks, kept[p])), None
                    continue
                prev, next_id = link_plane(prev, kept[p].labels(thr), next_id)
                yield p, prev, next_id

        def step(item) -> None:
            if gen == self._filtering and run is self.result and not run.edited:
                p, labels, next_id = item
                if next_id is None:
                    run.shown = sum(v >= thr for v in run.tracks.values())
                else:
                    run.prev, run.next_id, run.shown = labels, next_id, next_id - 1
                run.target[tuple(p)] = labels
                self.written(run.target, (p,))

        def done(_) -> None:
            if gen != self._filtering or run is not self.result:
                return
            self._filtering = 0
            if len(run.done) > len(planes) or run.threshold != thr:  # planes came meanwhile
                self.refilter(run.threshold, quiet)
            elif not quiet:
                self.status(self.describe(run) + ".")

        def failed(err: BaseException) -> None:
            if gen == self._filtering:
                self._filtering = 0
                if run is self.result and not run.token.cancelled and not isinstance(err, Cancelled):
                    self.status(f"filtering the found objects failed: {explain_error(err)}")

        self.schedule(Job("find-filter", work, done, failed, step))

    def edited(self, array) -> None:
        """``array`` was changed by hand: if it holds the last run's labels, they stay as they are."""
        run = self.result
        if run is not None and array is not None and array is run.target:
            run.edited = True

    def cancel(self, quiet: bool = False) -> None:
        """Stop the running Find; the planes it finished stay in its labels (and refilter)."""
        run = self.result
        if run is None or not self.running:
            return
        self.running = False
        run.token.cancel()
        self.progress(1, 1)
        if not quiet:
            self.status(f"find stopped after {len(run.done)} of {len(run.planes)} planes.")
        self.finished()

    def forget(self) -> None:
        """A new image: stop, and drop the last run's objects."""
        self.cancel(quiet=True)
        self.result, self._filtering = None, 0



def _track_scores(tracks: dict, finds: PlaneFinds) -> list[float]:
    """Each object's track score (its best probability on any frame so far)."""
    return [tracks.get(int(i), 0.0) for i in finds.ids]


class LineFrames:
    """The planes ``planes`` of ``stack`` (an :class:`~napari_promptseg.embed.stack.EmbeddingStack`)
    as a ``(T, H, W[, C])`` array-like, a plane read when indexed (for SAM 3's video model)."""

    def __init__(self, stack, planes: Sequence[Plane]) -> None:
        self.stack, self.planes = stack, list(planes)
        image = stack.stack
        self.dtype = image.dtype
        self.shape = (len(self.planes), *tuple(int(v) for v in image.shape[len(stack.lead_shape):]))
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return len(self.planes)

    def __getitem__(self, key) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if isinstance(key[0], slice):  # a sample of frames (stack_window)
            return np.stack([self.stack.plane(self.planes[k]) for k in range(len(self))[key[0]]])[
                (slice(None), *key[1:])]
        return self.stack.plane(self.planes[int(key[0])])[key[1:]]
