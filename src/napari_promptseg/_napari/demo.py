"""``napari-promptseg-demo``: napari on a sample image, segmented by a SAM model from our library.

Loading the model (downloading it once) and embedding the image run in a worker with napari's
progress bar, so the viewer stays responsive. Then every edit of the "prompts" Points layer
re-decodes against the cached embedding and the best mask is shown in the "mask" Labels layer.
(The full interactive widget is a separate contribution; this is the end-to-end demo.)
"""

from __future__ import annotations

import argparse

import numpy as np

from napari_promptseg.prompts import inside_image

__all__ = ["DemoSession", "main"]


class DemoSession:
    """Wires a viewer's image, prompt and mask layers to a model.

    ``model_factory`` returns a loaded model (called in the worker: it may download).
    """

    def __init__(self, viewer, image: np.ndarray, model_factory, point=None):
        from napari.qt.threading import thread_worker

        self.viewer = viewer
        self.image_layer = viewer.add_image(image, name="sample", colormap="gray")
        self.mask_layer = viewer.add_labels(np.zeros(image.shape[:2], np.int32), name="mask")
        pts = [] if point is None else [point]
        self.points_layer = viewer.add_points(
            np.asarray(pts, float).reshape(-1, 2), name="prompts", face_color="lime", size=12
        )
        self.points_layer.mode = "add"  # a click adds a point right away
        self.model = None
        self.embedding = None

        @thread_worker(progress={"total": 2, "desc": "Loading model and embedding image"})
        def _prepare():
            # Errors are yielded, not raised: superqt swallows a RuntimeError raised in a
            # worker (it assumes a deleted Qt object), and WeightsError is one.
            try:
                model = model_factory()
                yield ("model", model)
                limits = tuple(self.image_layer.contrast_limits)
                yield ("embedding", model.embed(image, contrast_limits=limits))
            except Exception as err:  # noqa: BLE001 - shown to the user
                yield ("error", err)

        self.worker = _prepare()
        self.worker.yielded.connect(self._on_yielded)
        self.points_layer.events.data.connect(self._on_points)
        self.worker.start()

    def _on_yielded(self, item):
        kind, value = item
        if kind == "error":
            self._on_error(value)
            return
        setattr(self, kind, value)
        if kind == "model":
            self.viewer.status = f"promptseg: {value.name} loaded, embedding the image..."
        else:
            self.viewer.status = "promptseg: ready. Add points to the 'prompts' layer."
            self.update()

    def _on_error(self, err):
        from napari.utils.notifications import show_error

        self.viewer.status = f"promptseg: {err}"
        show_error(f"promptseg could not prepare the model: {err}")

    def _on_points(self, event=None):
        if getattr(event, "action", "changed") in ("adding", "removing", "changing"):
            return  # wait for the past-tense event
        self.update()

    def update(self) -> None:
        """Decode the current points; show the best mask (or clear it when there is none)."""
        if self.embedding is None:
            return
        data = np.asarray(self.points_layer.data)
        if len(data) == 0:
            self.mask_layer.data = np.zeros_like(self.mask_layer.data)
            return
        rc = np.stack([self.image_layer.world_to_data(p) for p in data])
        inside = inside_image(rc, self.image_layer.data.shape[:2])
        if not inside.any():
            return
        pred = self.model.predict(self.embedding, points=rc[inside])
        self.mask_layer.data = pred.masks[pred.best].astype(np.int32)
        self.viewer.status = "promptseg: scores " + ", ".join(f"{s:.2f}" for s in pred.scores)


def main(argv=None) -> None:
    import napari

    import napari_promptseg as ps
    from napari_promptseg.sample import nuclei_image

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="vit_b", help="registry name (default vit_b)")
    p.add_argument("--checkpoint", default=None, help="local checkpoint file: no download")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    args = p.parse_args(argv)
    image, labels = nuclei_image()
    ys, xs = np.nonzero(labels == labels.max())
    viewer = napari.Viewer(title="napari-promptseg demo")
    DemoSession(
        viewer, image,
        lambda: ps.load_model(args.model, checkpoint=args.checkpoint, device=args.device),
        point=(float(ys.mean()), float(xs.mean())),
    )
    napari.run()


if __name__ == "__main__":
    main()
