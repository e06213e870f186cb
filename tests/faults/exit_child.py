"""A script that opens a z-stack in napari with the dock, starts a job of each kind, closes the
viewer while it runs, and ends: its interpreter must exit with code 0 (issue 28, item 1: a worker
outliving the viewer aborted the process at exit). Prints ``closed KIND`` after each close."""

from __future__ import annotations

import functools
import sys
import time


def main(kinds) -> None:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_promptseg._napari.demo import WIDGET_NAME
    from napari_promptseg.models.triton_guard import guard_triton
    from tests.test_session_risks import two_bars_stack

    for k, kind in enumerate(kinds):
        viewer = napari.Viewer(show=False)
        guard_triton()  # napari's OpenGL LLVM is loaded now: see triton_guard
        app = QApplication.instance()
        viewer.add_image(two_bars_stack(12, (60, 80 + k)), name="img")
        _, w = viewer.window.add_plugin_dock_widget("napari-promptseg", WIDGET_NAME)
        start(w, kind, functools.partial(wait, app))
        viewer.close()
        print("closed", kind, flush=True)


def wait(app, predicate, timeout=20.0):
    end = time.monotonic() + timeout
    while not predicate():
        app.processEvents()
        if time.monotonic() > end:
            raise TimeoutError("the dock did not get there")
        time.sleep(0.005)


def start(w, kind, wait) -> None:
    """A model in dock ``w``, then a job of ``kind`` running."""
    from tests.component_model import ComponentModel

    model = ComponentModel(embed_delay=0.3)  # the neighbours' prefetch runs when we close
    w.set_model(model)
    wait(lambda: w.ready)
    if kind == "prefetch":  # the user clicks a nucleus, then the script closes the viewer
        w.bridge.points_layer.add([[w.session.plane[0], 15, 40]])
        wait(lambda: w.scheduler.running("embed"))
    elif kind == "propagate":
        w.bridge.points_layer.add([[w.session.plane[0], 15, 40]])
        wait(lambda: not w.session.decoding)
        model.delay = 0.1
        w.propagate()
        wait(lambda: w.scheduler.running("propagate"))
    elif kind == "everything":
        model.delay = 0.005
        w.everything_spins["points_per_side"].setValue(8)
        w.scope_combo.setCurrentText("every plane along the axis")
        w.segment_everything()
        wait(lambda: w.scheduler.running("everything"))
    elif kind == "load":
        w.set_model("promptseg_demo")  # a real model load (torch) in a worker
        wait(lambda: w.scheduler.running("load"))

if __name__ == "__main__":
    main(sys.argv[1:])
