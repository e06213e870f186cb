"""Make the user guide's screenshots by driving a real napari viewer (run under Xvfb).

    xvfb-run -a python docs/make_screenshots.py [--model promptseg_demo] [--checkpoint PATH]

Opens the nuclei sample (and the nuclei z-stack sample), docks the widget, loads the model,
clicks like a user would (by adding to the prompt layers' data, which is what a click does),
propagates through the stack, and saves PNGs into docs/images/.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).parent / "images"


def wait(app, cond, timeout=600.0):
    t0 = time.time()
    while not cond():
        app.processEvents()
        time.sleep(0.02)
        if time.time() - t0 > timeout:
            raise TimeoutError("the viewer did not get there in time")
    for _ in range(20):
        app.processEvents()
        time.sleep(0.01)


def shot(viewer, app, name):
    for _ in range(10):
        app.processEvents()
    viewer.window.screenshot(str(OUT / name), canvas_only=False, flash=False)
    print("wrote", OUT / name)


def main(argv=None) -> None:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_promptseg._napari.demo import open_demo
    from napari_promptseg.sample import nuclei_image

    p = argparse.ArgumentParser()
    p.add_argument("--model", default=None, help="default: the widget's default model")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--only", choices=("tiles", "tiled_stack"), default=None, help="make one screenshot only")
    args = p.parse_args(argv)
    OUT.mkdir(exist_ok=True)
    if args.only == "tiles":
        tiles_shot(args, QApplication.instance() or QApplication([]))
        return
    if args.only == "tiled_stack":
        tiled_stack_shot(args, QApplication.instance() or QApplication([]))
        return

    viewer = napari.Viewer(title="napari-promptseg")
    viewer.window._qt_window.resize(1400, 850)
    app = QApplication.instance()
    w = open_demo(viewer, args.model, args.checkpoint, "cpu")
    wait(app, lambda: w.ready)
    viewer.reset_view()
    _, truth = nuclei_image()
    sizes = np.bincount(truth.ravel())
    ids = [int(i) for i in np.argsort(-sizes) if i][:6]  # the larger nuclei, as a user would start
    centres = [np.argwhere(truth == i).mean(0) for i in ids]

    w.bridge.points_layer.add(centres[0])  # one click on a nucleus
    wait(app, lambda: not w.scheduler.busy and w.session.preview_plane().any())
    shot(viewer, app, "click.png")

    w.commit()
    for c in centres[1:4]:
        w.bridge.points_layer.add(c)
        wait(app, lambda: not w.scheduler.busy)
        w.commit()
    rows, cols = np.nonzero(truth == ids[4])  # a box drawn around the next nucleus, 4 px margin
    corners = [[rows.min() - 4, cols.min() - 4], [rows.max() + 4, cols.max() + 4]]
    w.bridge.boxes_layer.add_rectangles(np.array([corners], float))
    wait(app, lambda: not w.scheduler.busy and w.session.preview_plane().any())
    shot(viewer, app, "committed_and_box.png")
    viewer.close()
    stack_shot(args, app)
    tiles_shot(args, app)
    tiled_stack_shot(args, app)


def stack_shot(args, app) -> None:
    """The z-stack sample: one click on the middle plane, P, then a plane away from the click."""
    import napari

    from napari_promptseg._napari.demo import open_demo
    from napari_promptseg.sample import STACK_SCALE, nuclei_stack

    viewer = napari.Viewer(title="napari-promptseg")
    viewer.window._qt_window.resize(1400, 850)
    w = open_demo(viewer, args.model, args.checkpoint, "cpu", stack=True)
    wait(app, lambda: w.ready)
    viewer.reset_view()
    _, truth = nuclei_stack()
    z = w.session.plane[0]
    ids, areas = np.unique(truth[z][truth[z] > 0], return_counts=True)
    for i in ids[np.argsort(-areas)][:3]:  # the three largest nuclei of this plane, one box each
        rows, cols = np.nonzero(truth[z] == i)
        r0, c0, r1, c1 = rows.min() - 3, cols.min() - 3, rows.max() + 3, cols.max() + 3
        corners = [[z, r0, c0], [z, r0, c1], [z, r1, c1], [z, r1, c0]]  # nD rectangles: 4 vertices
        w.bridge.boxes_layer.add_rectangles(np.array([corners], float))
    wait(app, lambda: not w.scheduler.busy and w.session.preview_plane((z,)).any())
    w.propagate()
    wait(app, lambda: not w.session.propagating and not w.scheduler.busy)
    step = list(viewer.dims.point)
    step[0] = (z + 3) * STACK_SCALE[0]  # three planes above the prompted one
    viewer.dims.point = step
    wait(app, lambda: w.ready)
    shot(viewer, app, "stack_propagated.png")
    viewer.close()


def tiles_shot(args, app) -> None:
    """A 2560 x 3072 slide: tiled by itself; clicks on nuclei cut by tile borders, then a zoom on
    them (the status line says how many tiles were embedded)."""
    import napari

    from napari_promptseg._napari.demo import WIDGET_NAME
    from napari_promptseg.sample import nuclei_image

    field, lab = nuclei_image((512, 512), n=60, seed=5)
    img = np.tile(field, (5, 6))  # 2560 x 3072: nuclei at the size of the sample image
    copies = np.kron(np.arange(30).reshape(5, 6), np.ones((512, 512), np.int32)).astype(np.int32)
    truth = np.where(np.tile(lab, (5, 6)) > 0, np.tile(lab, (5, 6)) + 1000 * copies, 0)
    viewer = napari.Viewer(title="napari-promptseg")
    viewer.window._qt_window.resize(1400, 850)
    viewer.add_image(img, name="slide", colormap="gray")
    _, w = viewer.window.add_plugin_dock_widget("napari-promptseg", WIDGET_NAME)
    w.set_image(viewer.layers["slide"])
    if args.model is not None or args.checkpoint is not None:
        w.set_model(args.model, checkpoint=args.checkpoint, device="cpu")
    wait(app, lambda: w.ready)
    grid = w.session.stack.cached(()).grid  # the TiledEmbedding's tiles (none embedded yet)
    border = grid.tiles[len(grid.tiles) // 2].core[3]  # a column border between tile cores
    ids = [int(i) for i in np.unique(truth[1100:1400, border - 2:border + 2]) if i]
    cut = ids[:4]  # nuclei that the border between two tiles' cores cuts
    for i in cut:
        w.new_object()
        w.bridge.points_layer.add(np.argwhere(truth == i).mean(0))
        wait(app, lambda: not w.scheduler.busy and not w.session.decoding)
    viewer.camera.center = (1250, border)
    viewer.camera.zoom = 1.6
    shot(viewer, app, "tiles.png")
    viewer.close()



def tiled_stack_shot(args, app) -> None:
    """A z-stack of five 1536 x 2048 planes (tiled plane by plane): clicks on four nuclei of the
    middle plane, P (propagation window by window), then the top plane, zoomed."""
    import napari
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    from napari_promptseg._napari.demo import WIDGET_NAME
    from napari_promptseg.sample import nuclei_image

    field, lab = nuclei_image((512, 512), n=60, seed=5)
    plane = np.tile(field, (3, 4))  # 1536 x 2048
    copies = np.kron(np.arange(12).reshape(3, 4), np.ones((512, 512), np.int32)).astype(np.int32)
    plane_lab = np.where(np.tile(lab, (3, 4)) > 0, np.tile(lab, (3, 4)) + 1000 * copies, 0)
    stack = np.stack([np.roll(plane, 3 * z, axis=1) for z in range(5)])  # drifting 3 px per plane
    truth = np.stack([np.roll(plane_lab, 3 * z, axis=1) for z in range(5)])
    viewer = napari.Viewer(title="napari-promptseg")
    viewer.window._qt_window.resize(1400, 850)
    viewer.add_image(stack, name="tiled stack", colormap="gray", scale=(4, 1, 1))
    _, w = viewer.window.add_plugin_dock_widget("napari-promptseg", WIDGET_NAME)
    w.set_image(viewer.layers["tiled stack"])
    if args.model is not None or args.checkpoint is not None:
        w.set_model(args.model, checkpoint=args.checkpoint, device="cpu")
    step = list(viewer.dims.point)
    step[0] = 2 * 4  # the middle plane
    viewer.dims.point = step
    wait(app, lambda: w.ready)
    ids = [int(i) for i in np.unique(truth[2][650:850, 950:1250]) if i]
    for i in ids[:4]:  # the nuclei around the view's centre
        w.new_object()
        w.bridge.points_layer.add([2, *np.argwhere(truth[2] == i).mean(0)])
        wait(app, lambda: not w.scheduler.busy and not w.session.decoding)
    QTest.keyClick(viewer.window._qt_viewer.canvas.native, Qt.Key_P)  # the key, as a person presses it
    wait(app, lambda: not w.session.propagating and not w.scheduler.busy)
    step[0] = 4 * 4  # the top plane, two planes from the clicks
    viewer.dims.point = step
    wait(app, lambda: not w.scheduler.busy)
    viewer.camera.center = (740, 950)
    viewer.camera.zoom = 2.2
    shot(viewer, app, "tiled_stack.png")
    viewer.close()


if __name__ == "__main__":
    main()
