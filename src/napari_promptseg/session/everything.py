"""Segment everything in the session (numpy only): one plane or a line of planes of the image as a
job with steps, and the linking of per-plane objects into 3D objects by overlap. The algorithm
is :func:`napari_promptseg.segment_everything_iter`; results go to a new labels array, never
into committed labels."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from napari_promptseg.core.cancel import CancelToken
from napari_promptseg.embed.entry import explain_error
from napari_promptseg.segmentation.generator import batch_count, check_params
from napari_promptseg.segmentation.link3d import link_plane
from napari_promptseg.session.jobs import Job
from napari_promptseg.session.planes import Plane

__all__ = ["EverythingRun", "EverythingRunner", "PlaneStep", "scope_of"]

def scope_of(stack, here: Plane, scope: str, axis: int, shape: tuple[int, ...]) -> tuple[list[Plane], object]:
    """The planes of a run over ``scope`` (``"plane"``: ``here``; ``"line"``: the line of planes
    through ``here`` along leading ``axis``; a 2D image has only its plane) and its new int32
    labels of the image's ``shape`` (numpy for 2D, lazy zarr for stacks)."""
    from napari_promptseg.labels.write import lazy_labels

    if scope not in ("plane", "line"):
        raise ValueError(f"scope must be 'plane' or 'line', got {scope!r}")
    lead = len(shape) > 2
    planes = [here] if scope == "plane" or not lead else list(stack.line(here, int(axis)))
    return planes, lazy_labels(shape, np.int32) if lead else np.zeros(shape, np.int32)


@dataclass(eq=False)
class PlaneStep:
    """Progress of a run: ``done`` of ``total`` prompt batches; ``plane``: ``(plane, linked
    labels, objects so far)`` when a plane has just finished."""

    done: int
    total: int
    plane: tuple | None = None


@dataclass(eq=False)
class EverythingRun:
    """One run over ``planes`` (in order; each plane's objects are linked to the previous one's)."""

    planes: Sequence[Plane]
    target: object  # the new labels array, ``(..., H, W)`` int32
    token: CancelToken = field(default_factory=CancelToken)
    done: list = field(default_factory=list)  # planes written so far
    objects: int = 0  # ids used so far


class EverythingRunner:
    """The session's segment-everything runs.

    written(target, planes): planes of ``target`` got their objects (the first call brings a new
    array); status(text); progress(done, total); finished(): a run ended.
    """

    def __init__(self, schedule: Callable[[Job], None], written, status, progress, finished) -> None:
        self.schedule, self.written, self.status = schedule, written, status
        self.progress, self.finished = progress, finished
        self.run: EverythingRun | None = None

    def start(self, model, stack, planes: Sequence[Plane], target, params: dict) -> EverythingRun:
        """Segment every object on ``planes`` of ``stack`` (their embeddings are reused or made)
        into ``target`` (zeros, the image's shape). params: :data:`~napari_promptseg.segmentation.everything.
        EVERYTHING_DEFAULTS` names; checked here, before any work."""
        from napari_promptseg.models.triton_guard import guard_triton

        guard_triton()  # the generator imports segment_anything -> torchvision -> triton: see there
        check_params(dict(params))  # a bad parameter fails now, with its name
        self.cancel()
        run = self.run = EverythingRun(list(planes), target)
        batches = batch_count(check_params(dict(params), model))

        def work() -> Iterator:
            from napari_promptseg.segmentation.everything import segment_everything_iter

            prev, next_id = None, 1
            for i, p in enumerate(run.planes):
                emb = stack.get(p)  # embedded in this worker when not cached yet
                crops = int(params.get("crop_n_layers", 0)) > 0 and not stack.tiled
                image = stack.plane(p) if crops else emb
                kw = ({"contrast_limits": stack.window, "disk": stack.disk, "embedding": emb}
                      if image is not emb else {})
                for step in segment_everything_iter(model, image, **kw, **params):
                    per_plane = step.total if stack.tiled else batches  # 2D in tiles: tiles x batches
                    if step.result is None:
                        yield PlaneStep(i * per_plane + step.done, len(run.planes) * per_plane)
                    else:
                        prev, next_id = link_plane(prev, step.result.labels, next_id)
                        yield PlaneStep((i + 1) * per_plane, len(run.planes) * per_plane,
                                        (p, prev, next_id - 1))

        def step(item) -> None:
            if run is not self.run:
                return
            done, total, plane = item.done, item.total, item.plane
            self.progress(done, total)
            if plane is None:
                self.status(f"segmenting everything: plane {len(run.done) + 1} of {len(run.planes)}, "
                            f"{done} / {total} prompt batches (Cancel stops; planes done stay).")
                return
            p, labels, run.objects = plane
            _write(run.target, p, labels)
            run.done.append(p)
            self.written(run.target, (p,))

        def done(_) -> None:
            if run is not self.run:
                return
            self.run = None
            self.progress(1, 1)
            where = "this plane" if len(run.planes) == 1 else f"{len(run.planes)} planes"
            self.status(f"segment everything: {run.objects} object{'s' * (run.objects != 1)} on {where}, "
                        "in a new labels layer (choose it in 'commit to' to add or correct objects).")
            self.finished()

        def failed(err: BaseException) -> None:
            if run is self.run:
                self.run = None
                self.progress(1, 1)
                done = f" after {len(run.done)} of {len(run.planes)} planes"
                kept = f"{done} (those stay in its labels)" if run.done else ""
                self.status(f"segment everything stopped{done}." if run.token.cancelled
                            else f"segment everything failed{kept}: {explain_error(err).rstrip('.')}.")
            self.finished()

        self.status(f"segmenting everything on {len(run.planes)} plane{'s' * (len(run.planes) > 1)}…")
        self.schedule(Job("everything", work, done, failed, step, "segment everything", run.token))
        return run

    def cancel(self) -> None:
        """Stop the running run; the planes it finished stay in its labels."""
        run, self.run = self.run, None
        if run is not None:
            run.token.cancel()
            self.progress(1, 1)
            self.status(f"segment everything stopped after {len(run.done)} of {len(run.planes)} planes.")
            self.finished()


def _write(target, plane: Plane, labels: np.ndarray) -> None:
    target[tuple(plane)] = labels
