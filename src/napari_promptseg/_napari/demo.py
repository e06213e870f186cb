"""``napari-promptseg-demo``: napari with the nuclei sample and the Segment Anything widget docked.

The model loads (downloads once) and embeds the image in workers; click a nucleus to segment it.
"""

from __future__ import annotations

import argparse

__all__ = ["WIDGET_NAME", "open_demo", "main"]

WIDGET_NAME = "Segment Anything"


def open_demo(viewer, model: str | None = None, checkpoint=None, device: str = "auto",
              stack: bool = False, video: bool = False):
    """Open the sample in ``viewer`` (``stack``: the z-stack sample, ``video``: the time-lapse),
    dock the widget, load ``model`` (default: the widget's default, a cached registry model or
    else the offline demo model); return the widget."""
    key, name = (("nuclei_timelapse", "nuclei timelapse") if video else
                 ("nuclei_stack", "nuclei stack") if stack else ("nuclei", "nuclei"))
    viewer.open_sample("napari-promptseg", key)
    if stack or video:
        viewer.dims.axis_labels = ("t" if video else "z", "y", "x")
        viewer.dims.set_point(0, viewer.dims.range[0].stop / 2)  # the middle plane
    _, widget = viewer.window.add_plugin_dock_widget("napari-promptseg", WIDGET_NAME)
    widget.set_image(viewer.layers[name])
    viewer.reset_view()  # the dock narrowed the canvas
    if model is not None or checkpoint is not None or device != "auto":
        from napari_promptseg.models.weights import default_model_name

        if model is None and checkpoint is None:
            model = default_model_name()
        widget.set_model(model, checkpoint=checkpoint, device=device)  # no name: read from the file
    return widget


def main(argv=None) -> None:
    try:
        import napari
    except ImportError:
        raise SystemExit("napari is not installed: pip install \"napari-promptseg[qt]\" (napari and "
                         "a Qt binding; a plain install is headless)") from None

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None,
                   help="registry name (default: a model already downloaded, else the offline demo model)")
    p.add_argument("--checkpoint", default=None, help="local checkpoint file: no download")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    p.add_argument("--stack", action="store_true", help="open the z-stack sample (propagation: P)")
    p.add_argument("--video", action="store_true",
                   help="open the time-lapse sample (tracking: P; SAM 2 models track with memory)")
    args = p.parse_args(argv)
    viewer = napari.Viewer(title="napari-promptseg demo")
    open_demo(viewer, args.model, args.checkpoint, args.device, stack=args.stack, video=args.video)
    napari.run()


if __name__ == "__main__":
    main()
