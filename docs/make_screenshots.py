"""Make the user guide's screenshots by driving a real napari viewer (run under Xvfb).

    xvfb-run -a -s "-screen 0 1400x1000x24" python docs/make_screenshots.py [--only NAME]
        [--model promptseg_demo] [--checkpoint PATH]

Opens the nuclei sample (and the z-stack and time-lapse samples), docks the widget, loads the
model, clicks like a user would (by adding to the prompt layers' data, which is what a click
does), propagates through the stack, tracks through the time-lapse, segments everything, and
saves PNGs into docs/images/. The samples' shots use the shipped ``promptseg_demo`` unless
``--model`` or ``--checkpoint`` says otherwise; ``video_sam2`` uses a SAM 2.1 tiny with random
weights (made here, nothing is downloaded): it shows the memory tracking's controls, not its quality;
``find_row`` likewise uses a tiny SAM 3 with random weights to show the Find row.
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
    small(OUT / name)
    print("wrote", OUT / name, f"({(OUT / name).stat().st_size // 1024} KB)")


def close(viewer, app) -> None:
    """Close the viewer (the widget stops its jobs), then let its workers end: a worker still in
    Qt's thread pool when the process exits can abort it (its signals already deleted)."""
    from qtpy.QtCore import QThreadPool

    viewer.close()
    QThreadPool.globalInstance().waitForDone(60_000)
    for _ in range(20):
        app.processEvents()


def small(path: Path, max_bytes: int = 400_000) -> None:
    """Rewrite the PNG as RGB, optimised; over ``max_bytes``, with a 256-colour palette (same pixel size)."""
    from PIL import Image

    rgb = Image.open(path).convert("RGB")
    rgb.save(path, optimize=True)
    if path.stat().st_size > max_bytes:
        rgb.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)


def demo_model(args) -> str | None:
    """The model of the samples' shots: ``--model``, else the shipped demo model (None with a
    ``--checkpoint``: its architecture is read from the file)."""
    return args.model or (None if args.checkpoint else "promptseg_demo")


def make_viewer():
    import napari

    viewer = napari.Viewer(title="napari-promptseg")
    viewer.window._qt_window.resize(1400, 850)
    return viewer


def print_ious(w, truth, cells) -> None:
    """How well objects 1, 2, ... of the preview follow the true objects ``cells`` (for the captions)."""
    for j, cell in enumerate(cells, 1):
        ious = []
        for k in range(len(truth)):
            a, b = np.asarray(w.session.preview_plane((k,))) == j, truth[k] == cell
            ious.append(f"{(a & b).sum() / max((a | b).sum(), 1):.2f}" if (a | b).any() else "-")
        print(f"object {j} (true id {cell}), IoU with the truth on planes 0..{len(truth) - 1}:", *ious)


def show_frame(viewer, app, w, k: int) -> None:
    """Display plane (frame) ``k`` of axis 0 and wait until it is embedded and shown."""
    step = list(viewer.dims.point)
    step[0] = k * viewer.layers[w.bridge.image_layer.name].scale[0]
    viewer.dims.point = step
    wait(app, lambda: w.ready and not w.scheduler.busy)


SHOTS = ("clicks", "stack", "everything", "video", "video_sam2", "tiles", "tiled_stack", "find_row",
         "find_track")


def main(argv=None) -> None:
    from qtpy.QtWidgets import QApplication

    p = argparse.ArgumentParser()
    p.add_argument("--model", default=None, help="default: promptseg_demo (clicks: the widget's default)")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--only", choices=SHOTS, default=None, help="make one screenshot (or one pair) only")
    args = p.parse_args(argv)
    OUT.mkdir(exist_ok=True)
    app = QApplication.instance() or QApplication([])
    shots = {"clicks": clicks_shot, "stack": stack_shot, "everything": everything_shot, "video": video_shot,
             "video_sam2": video_sam2_shot, "tiles": tiles_shot, "tiled_stack": tiled_stack_shot,
             "find_row": find_row_shot, "find_track": find_track_shot}
    for name in [args.only] if args.only else SHOTS:
        shots[name](args, app)


def clicks_shot(args, app) -> None:
    """The nuclei sample: one click (click.png), then four committed nuclei and a box
    (committed_and_box.png)."""
    from napari_promptseg._napari.demo import open_demo
    from napari_promptseg.sample import nuclei_image

    viewer = make_viewer()
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
    close(viewer, app)


def stack_shot(args, app) -> None:
    """The realistic z-stack sample (haze, a PSF longer in z, planes 2 px apart): boxes on three
    nuclei of the middle plane, P, then a side view (z across, through the first nucleus) showing
    where each mask stopped against where the nucleus ends."""
    from napari_promptseg._napari.demo import open_demo
    from napari_promptseg.training.fluorescence3d import sample_stack

    viewer = make_viewer()
    w = open_demo(viewer, demo_model(args), args.checkpoint, "cpu", stack=True)
    wait(app, lambda: w.ready)
    viewer.reset_view()
    _, truth, scale = sample_stack()
    z = w.session.plane[0]
    ids, areas = np.unique(truth[z][truth[z] > 0], return_counts=True)
    chosen = list(ids[np.argsort(-areas)][:3])  # the three largest nuclei of this plane, one box each
    for i in chosen:
        rows, cols = np.nonzero(truth[z] == i)
        r0, c0, r1, c1 = rows.min() - 3, cols.min() - 3, rows.max() + 3, cols.max() + 3
        corners = [[z, r0, c0], [z, r0, c1], [z, r1, c1], [z, r1, c0]]  # 4 vertices, layer data coords
        w.bridge.boxes_layer.add_rectangles(np.array([corners], float))
    wait(app, lambda: not w.scheduler.busy and w.session.preview_plane((z,)).any())
    w.propagate()
    wait(app, lambda: not w.session.propagating and not w.scheduler.busy)
    rows, _ = np.nonzero(truth[z] == chosen[0])
    viewer.dims.order = (1, 0, 2)  # look from the side: rows fixed, z down the screen
    viewer.dims.set_point(1, int(rows.mean()))
    viewer.reset_view()
    truth_layer = viewer.add_labels((truth == chosen[0]).astype(np.int32) * 7, name="truth (nucleus 1)",
                                    scale=scale, opacity=1.0)
    truth_layer.contour = 1
    cz, cc = np.nonzero((truth == chosen[0])[:, int(rows.mean())])
    viewer.camera.center = (0, cz.mean() * scale[0], cc.mean())
    viewer.camera.zoom *= 3
    app.processEvents()
    shot(viewer, app, "stack_propagated.png")
    print(w.status.text())
    print_ious(w, truth, chosen)
    close(viewer, app)


def everything_shot(args, app) -> None:
    """The nuclei sample, Shift-E (segment everything on the plane): the new labels layer."""
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    from napari_promptseg._napari.demo import open_demo

    viewer = make_viewer()
    w = open_demo(viewer, demo_model(args), args.checkpoint, "cpu")
    wait(app, lambda: w.ready and w.session.model is not None and not w.scheduler.busy)
    viewer.reset_view()  # the whole image in the canvas the window has now
    viewer.layers.selection.active = w.bridge.image_layer  # the keys work with the image active
    QTest.keyClick(viewer.window._qt_viewer.canvas.native, Qt.Key_E, Qt.KeyboardModifier.ShiftModifier)
    for _ in range(20):
        app.processEvents()
    if not w.session.segmenting_everything and w.bridge.everything_layer is None:
        print("Shift-E did nothing on the canvas: pressing the button instead")
        w.everything_button.click()
    wait(app, lambda: w.bridge.everything_layer is not None and not w.session.segmenting_everything
         and not w.scheduler.busy)
    viewer.layers.selection.active = w.bridge.everything_layer  # its controls in the panel
    shot(viewer, app, "everything.png")
    close(viewer, app)


def _two_nuclei(truth, t: int, later: int) -> list[np.ndarray]:
    """The centres on frame ``t`` of the two largest nuclei that are well inside the field on
    frames ``t`` and ``later`` and do not touch another nucleus there."""
    from scipy import ndimage as ndi

    found = []
    for i in np.argsort(-np.bincount(truth[t].ravel()))[1:]:
        keep = True
        for k in (t, later):
            m = truth[k] == i
            rows, cols = np.nonzero(m)
            ring = ndi.binary_dilation(m, iterations=4) & ~m
            h, w_ = m.shape
            if (not m.any() or rows.min() < 10 or cols.min() < 10 or rows.max() > h - 10
                    or cols.max() > w_ - 10 or (truth[k][ring] > 0).any()):
                keep = False
        if keep:
            found.append(np.argwhere(truth[t] == i).mean(0))
        if len(found) == 2:
            return found
    raise RuntimeError("no two isolated nuclei on these frames")


def _click_and_track(viewer, app, w, t: int, later: int, name: str, key_p: bool = False) -> None:
    """Click two nuclei on frame ``t`` (one object each), P, show frame ``later``, save ``name``."""
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    from napari_promptseg.sample import nuclei_timelapse

    _, truth = nuclei_timelapse()
    show_frame(viewer, app, w, t)
    centres = _two_nuclei(truth, t, later)
    for j, centre in enumerate(centres):
        if j:
            w.new_object()
        w.bridge.points_layer.add([t, *centre])
        wait(app, lambda: not w.scheduler.busy and not w.session.decoding)
    viewer.layers.selection.active = w.bridge.image_layer  # the keys work with the image active
    if key_p:
        QTest.keyClick(viewer.window._qt_viewer.canvas.native, Qt.Key_P)  # the key, as a person presses it
    else:
        w.propagate()
    wait(app, lambda: not w.session.propagating and not w.scheduler.busy)
    show_frame(viewer, app, w, later)
    shot(viewer, app, name)
    print_ious(w, truth, [truth[t][tuple(np.round(c).astype(int))] for c in centres])


def video_shot(args, app) -> None:
    """The time-lapse sample: two nuclei clicked on frame 4, P (prompt method), frame 16 shown."""
    from napari_promptseg._napari.demo import open_demo

    viewer = make_viewer()
    w = open_demo(viewer, demo_model(args), args.checkpoint, "cpu", video=True)
    wait(app, lambda: w.ready and w.session.model is not None)
    viewer.reset_view()
    _click_and_track(viewer, app, w, VIDEO_CLICKED, VIDEO_SHOWN, "video_tracked.png", key_p=True)
    close(viewer, app)


def video_sam2_shot(args, app) -> None:
    """The same clicks with a SAM 2.1 tiny (256 px input) of random weights: *track with* is
    memory (SAM 2). The masks show the mechanism, not SAM 2's quality (no trained weights here)."""
    import os
    import tempfile

    import torch

    import napari_promptseg as ps
    from napari_promptseg._napari.demo import open_demo
    from napari_promptseg.models.registry import ModelSpec
    from napari_promptseg.models.sam2.model import build_sam2_network

    cache_gb = os.environ.get("PROMPTSEG_EMBED_CACHE_GB")
    os.environ["PROMPTSEG_EMBED_CACHE_GB"] = "0"  # random weights' embeddings stay out of the disk cache
    arch = "sam2.1_hiera_t_256"
    spec = ModelSpec(name="sam2.1 tiny, random weights", family="sam2", arch=arch, url="", known_hash="",
                     size_mb=0, params="", description="SAM 2.1 tiny, 256 px, random weights", licence="")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sam2_random.pt"
        torch.save({"model": build_sam2_network(arch).state_dict()}, path)
        model = ps.load_model(spec, checkpoint=path, device="cpu")
    viewer = make_viewer()
    w = open_demo(viewer, video=True)  # the widget's default model loads first; replaced here
    if cache_gb is None:  # the widget has read it: the next shots use the disk cache again
        del os.environ["PROMPTSEG_EMBED_CACHE_GB"]
    else:
        os.environ["PROMPTSEG_EMBED_CACHE_GB"] = cache_gb
    w.set_model(model)
    if w.model_combo.findText(model.name) < 0:  # the box lists registry names only and then shows
        w.model_combo.insertItem(0, model.name)  # its first, vit_b: show the name of the model in use
        w.model_combo.setCurrentIndex(0)
    wait(app, lambda: w.ready and w.session.model is model and not w.scheduler.busy)
    viewer.reset_view()
    _click_and_track(viewer, app, w, VIDEO_CLICKED, VIDEO_SHOWN, "video_sam2.png")
    close(viewer, app)


VIDEO_CLICKED, VIDEO_SHOWN = 4, 16  # the time-lapse frame clicked, the frame shown after tracking


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
    close(viewer, app)



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
    close(viewer, app)


def tiny_sam3_model(detectable: bool = False):
    """A tiny SAM 3 (``sam3_tiny_336``) with random weights, made here (nothing downloaded); its
    scores spread (as tests/test_sam3_parity.py), or raised above Meta's new-instance threshold
    (``detectable``, as tests/test_sam3_video.py) so that its video model tracks something."""
    import torch

    from napari_promptseg.core.devices import resolve_device
    from napari_promptseg.models.registry import ModelSpec
    from napari_promptseg.models.sam3.model import Sam3Model, build_sam3_network

    spec = ModelSpec(name="sam3 tiny, random weights", family="sam3", arch="sam3_tiny_336", url="",
                     known_hash="", size_mb=0, params="", description="SAM 3, 336 px, random weights",
                     licence="")
    torch.manual_seed(0)
    net = build_sam3_network("cpu", "sam3_tiny_336")
    with torch.no_grad():
        scoring = net.dot_prod_scoring
        for p in scoring.parameters():
            p.mul_(3.0)
        if detectable:
            scoring.hs_proj.bias.add_(0.5)
            scoring.prompt_proj.bias.add_(0.5)
            net.transformer.decoder.presence_token_head.layers[-1].bias.add_(5.0)
    return Sam3Model(spec, net, "random", resolve_device("cpu"), resolution=336)


def open_demo_with(viewer, app, model, **kw):
    """The demo (its sample, the widget) with ``model`` set in place of the default model; random
    weights' embeddings stay out of the disk cache."""
    import os

    from napari_promptseg._napari.demo import open_demo

    cache_gb = os.environ.get("PROMPTSEG_EMBED_CACHE_GB")
    os.environ["PROMPTSEG_EMBED_CACHE_GB"] = "0"
    w = open_demo(viewer, **kw)  # the widget's default model loads first; replaced here
    if cache_gb is None:
        del os.environ["PROMPTSEG_EMBED_CACHE_GB"]
    else:
        os.environ["PROMPTSEG_EMBED_CACHE_GB"] = cache_gb
    w.set_model(model)
    if w.model_combo.findText(model.name) < 0:
        w.model_combo.insertItem(0, model.name)
        w.model_combo.setCurrentIndex(0)
    wait(app, lambda: w.ready and w.session.model is model and not w.scheduler.busy)
    viewer.reset_view()
    return w


def find_track_shot(args, app) -> None:
    """Find on the time-lapse with SAM 3's video model (scope 'every frame: detect here, then
    track'), a tiny SAM 3 of random weights raised to detect: "cell" typed and Enter pressed on
    frame 5. The tracks are noise from random weights: the picture shows the controls."""
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest
    from qtpy.QtWidgets import QScrollArea

    viewer = make_viewer()
    w = open_demo_with(viewer, app, tiny_sam3_model(detectable=True), video=True)
    viewer.dims.set_current_step(0, 5)
    wait(app, lambda: w.ready and not w.scheduler.busy)
    row = w.find_row
    row.scope_combo.setCurrentText("every frame: detect here, then track (video)")
    row.text.setText("cell")
    QTest.keyClick(row.text, Qt.Key.Key_Return)
    wait(app, lambda: row.found_layer is not None and not w.session.finding and not w.scheduler.busy)
    scroll = w.findChild(QScrollArea)
    if scroll is not None:
        scroll.ensureWidgetVisible(row)
    shot(viewer, app, "find_track.png")
    close(viewer, app)


def find_row_shot(args, app) -> None:
    """The Find row (SAM 3) on the nuclei sample, with a tiny SAM 3 of random weights made here
    (``sam3_tiny_336``, nothing downloaded): "nucleus" typed, an example box (green) and a
    counter-example box (red), Find, the slider at the score of the tenth best object. The objects
    are noise from random weights: the picture shows the controls, not SAM 3's quality."""
    from qtpy.QtWidgets import QScrollArea

    from napari_promptseg.sample import nuclei_image

    viewer = make_viewer()
    w = open_demo_with(viewer, app, tiny_sam3_model())
    _, truth = nuclei_image()
    big = int(np.argsort(-np.bincount(truth.ravel()))[1])  # the largest nucleus: an example
    rows, cols = np.nonzero(truth == big)
    row = w.find_row
    row.layer.add_rectangles(np.array([[[rows.min() - 4, cols.min() - 4], [rows.max() + 4, cols.max() + 4]]],
                                      float))
    empty = next((r, c) for r in range(0, truth.shape[0] - 60, 20) for c in range(0, truth.shape[1] - 60, 20)
                 if not truth[r:r + 60, c:c + 60].any())  # background: a counter-example
    row.negative_check.setChecked(True)
    row.layer.add_rectangles(np.array([[list(empty), [empty[0] + 60, empty[1] + 60]]], float))
    row.negative_check.setChecked(False)
    row.text.setText("nucleus")
    row.find_button.click()
    wait(app, lambda: row.found_layer is not None and not w.session.finding and not w.scheduler.busy)
    kept = w.session.found.kept[()]

    def shown(step: int) -> tuple[int, bool]:  # objects in sight at a slider step; most of the image free
        lab = kept.labels(step / 100)
        return len(np.unique(lab)) - 1, (lab > 0).mean() < 0.6

    steps = range(int(kept.scores.min() * 100), int(kept.scores.max() * 100) + 1)
    best = max(steps, key=lambda k: (shown(k)[1], shown(k)[0]))
    row.slider.setValue(best)
    wait(app, lambda: not w.scheduler.busy)
    viewer.layers.selection.active = row.layer  # the exemplar boxes' layer, in rectangle mode
    scroll = w.findChild(QScrollArea)
    if scroll is not None:
        scroll.ensureWidgetVisible(row)
    shot(viewer, app, "find_row.png")
    close(viewer, app)


if __name__ == "__main__":
    main()
