"""Propagation through a stack in the dock widget: axis choice, the worker, merging its planes
into the preview, cancel. A mixin of :class:`~.widget.PromptSegWidget` (it uses the widget's
layers, plane states and status line); the algorithm is :func:`napari_promptseg.propagate_iter`."""

from __future__ import annotations

import numpy as np

from ..propagate import propagate_iter
from .plane_state import ids_in

__all__ = ["PropagationMixin"]


class PropagationMixin:
    """Propagate (P), Cancel, and the 'propagate along' choice of the widget."""

    def _refresh_axis_choices(self, event=None) -> None:
        """List the image's leading axes by the viewer's axis labels; default z, else t, else the
        axis next to the plane."""
        n = self.n_lead
        labels = list(self.viewer.dims.axis_labels)[-(n + 2):][:n] if n else []
        names = [f"{lab} (axis {i})" for i, lab in enumerate(labels)]
        low = [str(lab).lower() for lab in labels]
        default = next((low.index(k) for k in ("z", "t", "time", "frame") if k in low), n - 1)
        from .widget import _set_items

        _set_items(self.axis_combo, names, names[default] if names else None)
        self.axis_combo.setEnabled(n > 1)
        self.buttons["propagate"].setEnabled(n > 0)

    @property
    def propagation_axis(self) -> int:
        """The leading axis (0 = first) along which objects are propagated."""
        return max(0, self.axis_combo.currentIndex())

    @property
    def _propagating(self) -> bool:
        return self._propagation is not None

    def propagate(self) -> None:
        """Propagate the objects of the prompted planes through the stack along the chosen axis,
        both ways from every prompted plane (between two prompted planes from both ends), into
        the preview; a running propagation is cancelled first. Commit (K) keeps the result.

        An object is its preview id: on prompted planes the order of its prompts (the first box
        or point group of plane 10 and of plane 30 are the same object), on a corrected
        propagated plane the id of the object the correction landed on. A prompted plane is the
        user's: nothing is written into it, and an object absent from it stops there."""
        from napari.qt.threading import thread_worker
        from napari.utils import progress

        if self._closed or self.image_layer is None:
            return
        if self.n_lead == 0:
            self._set_status("propagation needs a z-stack or a time series; this image is 2D.")
            return
        self._ensure_layers()
        if self._stack is None:
            self._set_status("choose a model first.")
            return
        if self._submitted == self._generation and self._shown != self._generation:
            self._set_status("the newest prompts are still being decoded: propagate again when they show.")
            return
        self.cancel_propagation()
        axis, here, stack = self.propagation_axis, self._slice, self._stack
        line = set(stack.line(here, axis))
        preview = self.preview_layer.data
        seeds = {}
        for p in self._states:
            if p in line:
                plane = np.asarray(preview[p])
                objs = {i: plane == i for i in ids_in(plane)}
                if objs:
                    seeds[p[axis]] = objs
        if not seeds:
            self._set_status("prompt an object on at least one plane of this stack first.")
            return
        prompted = sorted(p[axis] for p in self._states if p in line)
        # a prompted plane is the user's: an object not prompted there stops before it
        absent = {o: [k for k in prompted if o not in seeds.get(k, {})]
                  for objs in seeds.values() for o in objs}

        def plane_of(k: int) -> tuple[int, ...]:
            idx = list(here)
            idx[axis] = k
            return tuple(idx)

        kwargs = {"min_score": self.min_score_spin.value(), "min_overlap": self.min_overlap_spin.value(),
                  "absent": absent}
        visited: set[int] = set(prompted)  # planes this run has written (or must keep)
        self._linked.update(plane_of(k) for k in seeds)
        model, n = self.model, stack.lead_shape[axis]

        @thread_worker
        def run():
            yield from propagate_iter(model, lambda k: stack.get(plane_of(k)), n, seeds, **kwargs)

        worker = run()
        pbar = progress(total=n, desc="promptseg: propagating")
        self._propagation = worker
        token = worker

        def on_step(res):
            if self._propagation is not token or self._closed:
                return
            k = res.index
            # the first visit replaces what an earlier propagation left; a second (the other
            # direction) adds to this run's objects
            plane = (np.array(preview[plane_of(k)]) if k in visited
                     else np.zeros(preview.shape[-2:], np.uint8))
            visited.add(k)
            self._linked.add(plane_of(k))
            for oid, m in sorted(res.masks.items()):
                plane[m & (plane == 0)] = oid
            target = self.target_labels(create=False)
            keep_committed = not self.overwrite_check.isChecked()
            if target is not None and keep_committed and target.data.shape == preview.shape:
                plane[np.asarray(target.data[plane_of(res.index)]) != 0] = 0  # committed objects stay
            self._write_planes({plane_of(res.index): plane})
            pbar.total = max(res.total, 1)
            pbar.n = min(res.done, pbar.total)
            pbar.refresh()
            self._set_status(f"propagating: {res.done} / {res.total} planes (Cancel stops; K commits).")

        def on_done(*args):
            pbar.close()
            if self._propagation is token:
                self._propagation = None
                # what an earlier run left where this one did not reach
                self._write_planes({plane_of(k): None for k in range(n)
                                    if k not in visited and preview[plane_of(k)].any()})
                self._set_status("propagation done: check the planes, correct any plane with points "
                                 "and press P again; K commits.")
                self._prefetch()

        def on_error(err):
            if self._propagation is token:
                self._propagation = None  # finished follows errored: keep this message
                pbar.close()
                self._set_status(f"propagation failed: {err}")

        worker.yielded.connect(on_step)
        worker.errored.connect(on_error)
        worker.finished.connect(on_done)
        where = ", ".join(map(str, sorted(seeds)))
        self._set_status(f"propagating from plane{'s' * (len(seeds) > 1)} {where}…")
        worker.start()

    def cancel_propagation(self) -> None:
        """Stop a running propagation; the planes it finished stay in the preview."""
        worker, self._propagation = getattr(self, "_propagation", None), None
        if worker is not None:
            worker.quit()

    def wait_propagation(self, timeout: float = 60.0) -> None:
        """Block until the propagation ends (scripts and tests; processes Qt events)."""
        import time

        from qtpy.QtWidgets import QApplication

        end = time.monotonic() + timeout
        while self._propagation is not None and time.monotonic() < end:
            QApplication.processEvents()
            time.sleep(0.01)
