"""The dock widget: a thin view over an :class:`~napari_promptseg.session.AnnotationSession`.

The session holds the segmentation state and logic (no Qt); :class:`~.bridge.LayerBridge` maps
napari layers to it; :class:`~.workers.WorkerScheduler` runs its slow jobs (and the session's
:class:`~napari_promptseg.session.models.ModelLoader`'s) in napari workers; :mod:`.controls` makes
the controls. This module wires them: controls, status line, keys, layer choices.

Scripting::

    dock, widget = viewer.window.add_plugin_dock_widget("napari-promptseg", "Segment Anything")
    widget.set_model(ps.load_model("vit_b", checkpoint="sam_vit_b.pth"))
    widget.set_image(viewer.layers["cells"])
    widget.session.add_point((120, 340)); widget.session.commit()    # or click and press K
"""

from __future__ import annotations

import os
import weakref

from qtpy.QtCore import QEvent, QTimer
from qtpy.QtWidgets import QFileDialog, QWidget

from napari_promptseg._napari import layers as L
from napari_promptseg._napari.bridge import LayerBridge, disconnect
from napari_promptseg._napari.controls import (
    LOCAL_CHECKPOINT,
    METHODS,
    NEW_LABELS,
    SCOPES,
    axis_choices,
    items,
    set_items,
    set_values,
    setup_ui,
    timer,
    values,
)
from napari_promptseg._napari.keys import KEYS, KeyBinder
from napari_promptseg._napari.workers import WorkerScheduler
from napari_promptseg.session import AnnotationSession
from napari_promptseg.session.models import ModelLoader, default_disk_cache, use_model

__all__ = ["PromptSegWidget", "KEYS"]


class PromptSegWidget(QWidget):
    """Interactive Segment Anything for one napari viewer (see the module docstring)."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        # napari hands plugins a public-only proxy; keep the real viewer (layers compare by identity)
        self.viewer = getattr(napari_viewer, "__wrapped__", napari_viewer)
        self.scheduler = WorkerScheduler()
        self.session = AnnotationSession(scheduler=self.scheduler, disk=default_disk_cache())
        self.loader = ModelLoader(self.scheduler, self._loaded, self._set_status)
        self.bridge = LayerBridge(self.viewer, self.session)
        self.keys = KeyBinder(self)
        self.bridge.layers_made = self._bind_layer_keys
        # napari has no public "window closing" event: watch its Qt main window (see eventFilter)
        main = getattr(getattr(self.viewer, "window", None), "_qt_window", None)
        self._main_window = weakref.ref(main) if main is not None else (lambda: None)
        if main is not None:
            main.installEventFilter(self)
        self.closed = self._had_parent = self._in_batch = False
        setup_ui(self)
        self._connect_controls()
        self.find_row.attach(self)
        ev = self.session.events
        ev.status.connect(self._set_status)
        spin = self.object_spin  # follows the session's current object
        ev.current_object.connect(lambda oid: oid != spin.value() and spin.setValue(oid))
        ev.restorable.connect(self._offer_restore)
        ev.target.connect(lambda _: QTimer.singleShot(0, self._refresh_layer_choices))
        self._reembed = timer(self, 800, self._window_changed)
        for emitter, cb in self._viewer_callbacks():
            emitter.connect(cb)
        self.keys.bind_viewer(self.viewer)
        self._refresh_layer_choices()
        self._auto_image()
        set_items(self.model_combo, items(self.model_combo), self.loader.load_default(self._device()))

    def _viewer_callbacks(self) -> list:
        lev = self.viewer.layers.events
        return [(lev.inserted, self._refresh_layer_choices), (lev.removed, self._on_layer_removed),
                (lev.reordered, self._refresh_layer_choices),
                (lev.begin_batch, self._on_batch), (lev.end_batch, self._on_batch),
                (self.viewer.dims.events.axis_labels, self._refresh_axis_choices)]

    # ---------------------------------------------------------------- UI
    def _connect_controls(self) -> None:
        s = self.session
        for name, button in self.buttons.items():
            button.clicked.connect(getattr(self, name))
        self.image_combo.activated.connect(self._on_image_chosen)
        self.labels_combo.currentIndexChanged.connect(self._on_target_chosen)
        self.model_combo.activated.connect(self._on_model_chosen)
        self.load_button.clicked.connect(self._on_load_clicked)
        self.embeddings_button.clicked.connect(lambda *_: self.load_embeddings())
        self.negative_check.toggled.connect(self.bridge.set_negative)
        self.object_spin.valueChanged.connect(lambda v: v != s.current_object and s.select_object(v))
        self.overwrite_check.toggled.connect(lambda v: s.configure(overwrite=bool(v)))
        self.undo_spin.valueChanged.connect(lambda v: s.configure(undo_mb=float(v)))
        self.min_score_spin.valueChanged.connect(lambda v: s.configure(min_score=float(v)))
        self.min_overlap_spin.valueChanged.connect(lambda v: s.configure(min_overlap=float(v)))
        self.restore_button.clicked.connect(self.restore_autosave)
        self.everything_button.clicked.connect(self.segment_everything)
        self.method_combo.activated.connect(self._on_method_chosen)
        self.stop_after_spin.valueChanged.connect(lambda v: s.configure(stop_after=int(v) or None))
        self._sync_method()

    @property
    def everything_params(self) -> dict:
        """The generator parameters set in the dock (Meta's names)."""
        return values(self.everything_spins)

    def _on_method_chosen(self, *args) -> None:
        self.session.configure(method=METHODS[self.method_combo.currentText()])
        self._sync_method()

    def _sync_method(self) -> None:
        """The method box follows the model: memory only for SAM 2 (chosen by default), prompt for
        SAM; the score and overlap limits belong to the prompt method."""
        s = self.session
        if not s.setting_applies("method"):
            s.configure(method="auto")
        used = s.propagation_method
        set_items(self.method_combo, list(METHODS), next(k for k, v in METHODS.items() if v == used))
        for name, w in (("method", self.method_combo), ("min_score", self.min_score_spin),
                        ("min_overlap", self.min_overlap_spin), ("stop_after", self.stop_after_spin)):
            w.setEnabled(s.setting_applies(name))

    def _set_status(self, text: str) -> None:
        if not self.closed:
            self.status.setText(text)
            self.viewer.status = f"promptseg: {text}"

    def _offer_restore(self, summary: str) -> None:
        self.restore_button.setVisible(True)
        self._set_status(f"autosaved labels found for this image ({summary}): press 'Restore autosaved "
                         "labels' to bring them back.")

    # ---------------------------------------------------------------- actions (buttons and keys)
    def commit(self) -> None:
        self.session.commit()

    def clear(self) -> None:
        self.session.clear()

    def next_mask(self) -> None:
        self.session.next_mask()

    def new_object(self) -> None:
        self.session.new_object()

    def refine_from_preview(self) -> None:
        self.session.refine_from_preview()

    def undo(self) -> None:
        self.session.undo()

    def redo(self) -> None:
        self.session.redo()

    def propagate(self) -> None:
        """Propagate the objects from the displayed plane's prompts along :attr:`propagation_axis`."""
        self.bridge.sync_plane()  # the plane shown now, whatever the dims events said so far
        self.session.propagate(self.propagation_axis)

    def mark_end(self) -> None:
        """H: the current object ends here (it is absent from the displayed plane; again: unmark)."""
        self.bridge.sync_plane()
        self.session.mark_end()

    def segment_everything(self) -> None:
        """Every object on the displayed plane (or every plane along the axis) into a new labels layer."""
        self.bridge.sync_plane()
        scope = SCOPES[self.scope_combo.currentText()]
        try:
            self.session.segment_everything(scope, self.propagation_axis, **self.everything_params)
        except (TypeError, ValueError) as err:
            self._set_status(f"segment everything: {err}")

    def cancel(self) -> None:
        self.loader.cancel()
        self.session.cancel()

    def toggle_negative(self) -> None:
        self.negative_check.setChecked(not self.negative_check.isChecked())
        self._set_status(f"new points are {'negative (background)' if self.bridge.negative else 'positive'}.")

    def restore_autosave(self) -> None:
        if self.session.target is None and self.labels_combo.currentText() != NEW_LABELS:
            self._on_target_chosen()
        self.session.restore_autosave()
        self.restore_button.setVisible(False)

    def load_embeddings(self, path=None) -> bool:
        """Read the image's planes from the embeddings store at ``path`` (None: choose its folder)
        instead of embedding them; a store that does not fit is refused with its message."""
        if path is None:
            source = L.source_path(self.bridge.image_layer)
            path = QFileDialog.getExistingDirectory(self, "Embeddings store (a .zarr folder)",
                                                    os.path.dirname(source) if source else "")
            if not path:
                return False
        return self.session.use_embeddings(path)

    @property
    def ready(self) -> bool:
        """True when the displayed plane's embedding is ready for prompts."""
        return self.session.ready

    @property
    def propagation_axis(self) -> int:
        """The leading axis (0 = first) along which objects are propagated."""
        return max(0, self.axis_combo.currentIndex())

    # ---------------------------------------------------------------- lifecycle
    def event(self, e) -> bool:  # noqa: D102 - Qt override
        # napari closes a dock widget by taking it out of the dock (setParent(None)), without a closeEvent
        if e.type() == QEvent.Type.ParentChange:
            if self.parent() is not None:
                self._had_parent = True
            elif self._had_parent:
                self.close_session()
        return super().event(e)

    def eventFilter(self, obj, e) -> bool:  # noqa: N802 - Qt name
        # closing napari's window (its X, or viewer.close()) ends the session before Qt deletes us
        if e.type() == QEvent.Type.Close and obj is self._main_window():
            self.close_session()
        return False

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt name
        self.close_session()
        super().closeEvent(event)

    def close_session(self) -> None:
        """Stop every job (an encoder stops at its next block), unbind the keys, disconnect from
        the viewer. The layers stay, with their data."""
        if self.closed:
            return
        self.closed = True
        main = self._main_window()
        if main is not None:
            main.removeEventFilter(self)
        self._reembed.stop()
        self.loader.drop()
        self.session.close()
        self.scheduler.close()
        self.keys.unbind_all(self.viewer)
        self.bridge.close()
        self.find_row.close()
        for emitter, cb in self._viewer_callbacks():
            disconnect(emitter, cb)
        if self.bridge.image_layer is not None:
            disconnect(self.bridge.image_layer.events.contrast_limits, self._on_contrast)

    # ---------------------------------------------------------------- layers and image
    def _refresh_layer_choices(self, event=None) -> None:
        import napari.layers

        if self.closed:
            return
        for ly in self.viewer.layers:  # a renamed layer must show its new name
            ly.events.name.connect(self._refresh_layer_choices)
        b = self.bridge
        images = [ly.name for ly in self.viewer.layers if isinstance(ly, napari.layers.Image)]
        labels = [ly.name for ly in self.viewer.layers
                  if isinstance(ly, napari.layers.Labels) and ly is not b.preview_layer]
        set_items(self.image_combo, images, b.image_layer.name if b.image_layer is not None else None)
        set_items(self.labels_combo, [NEW_LABELS, *labels],
                   b.target_layer.name if b.target_layer is not None else NEW_LABELS)
        if b.image_layer is None and images and event is not None:
            QTimer.singleShot(0, self._auto_image)  # not inside napari's layer event

    def _auto_image(self) -> None:
        """Pick the active (else the first) image layer when none is chosen yet."""
        import napari.layers

        if self.bridge.image_layer is not None or self.closed:
            return
        active = self.viewer.layers.selection.active
        for ly in ([active] if active is not None else []) + list(self.viewer.layers):
            if isinstance(ly, napari.layers.Image) and len(L.image_plane_shape(ly)) >= 2:
                self.set_image(ly)
                return

    def set_image(self, layer) -> None:
        """Segment ``layer``: a napari Image layer, 2D or a stack ``(..., Y, X)`` (z-stack, time
        series, T x Z), gray or RGB(A). The displayed plane is embedded at once, its neighbours
        in the background; prompts belong to the plane they were placed on."""
        import napari.layers

        layer = getattr(layer, "__wrapped__", layer)
        if not isinstance(layer, napari.layers.Image):
            raise TypeError(f"set_image needs a napari Image layer, got {type(layer).__name__}")
        if len(L.image_plane_shape(layer)) < 2:
            raise ValueError(f"layer {layer.name!r} of shape {L.image_plane_shape(layer)} has no 2D plane")
        if self.bridge.image_layer is not None:
            disconnect(self.bridge.image_layer.events.contrast_limits, self._on_contrast)
        self.bridge.set_image(layer)  # keeps the chosen labels layer when it fits the new image
        layer.events.contrast_limits.connect(self._on_contrast)
        store = self.session.annotation_store  # an autosave of this image to offer
        self.restore_button.setVisible(store is not None and store.exists())
        self._bind_layer_keys()
        self._refresh_layer_choices()
        self._refresh_axis_choices()
        self.find_row.sync()

    def _bind_layer_keys(self) -> None:
        b = self.bridge
        self.keys.bind_layers([b.image_layer, b.points_layer, b.boxes_layer, b.preview_layer,
                               self.find_row.layer])

    def _on_image_chosen(self, *args) -> None:
        name = self.image_combo.currentText()
        if name in self.viewer.layers and self.viewer.layers[name] is not self.bridge.image_layer:
            try:
                self.set_image(self.viewer.layers[name])
            except (TypeError, ValueError) as err:
                self._set_status(str(err))

    def _on_contrast(self, event=None) -> None:
        self._reembed.start()  # debounced: dragging the slider re-embeds once

    def _window_changed(self) -> None:
        if self.bridge.image_layer is not None and not self.closed:
            self.session.set_window(self.bridge.window())

    def _on_target_chosen(self, *args) -> None:
        name = self.labels_combo.currentText()
        layer = self.viewer.layers[name] if name in self.viewer.layers else None
        if layer is not self.bridge.target_layer:
            self.bridge.use_target(layer)

    def target_labels(self):
        """The Labels layer that receives commits (None until the first commit makes one)."""
        return self.bridge.target_layer

    def _on_layer_removed(self, event) -> None:
        layer, b = event.value, self.bridge
        if self.closed:
            return
        if layer is b.image_layer:
            b.forget(layer)
            self._set_status(f"image {layer.name!r} was removed.")
        elif layer in (b.points_layer, b.boxes_layer, b.preview_layer, b.target_layer):
            b.forget(layer)
            if not self._in_batch:
                b.restore_prompt_layers()  # the prompts went with the layer: the session follows
            self._bind_layer_keys()
        self._refresh_layer_choices()

    def _on_batch(self, event) -> None:
        """Prompt layers removed in a batch (``layers.clear()``, closing the viewer) come back at
        its end if the image is still there; at once, clear() would remove each new one for ever."""
        self._in_batch = event.type == "begin_batch"
        if not self._in_batch and not self.closed:
            self.bridge.restore_prompt_layers()

    def _refresh_axis_choices(self, event=None) -> None:
        """List the image's leading axes by the viewer's axis labels; default z, else t."""
        n = len(self.session.lead_shape) if self.bridge.image_layer is not None else 0
        set_items(self.axis_combo, *axis_choices(list(self.viewer.dims.axis_labels)[-(n + 2):][:n]))
        self.axis_combo.setEnabled(n > 1)
        self.buttons["propagate"].setEnabled(n > 0)
        self.buttons["mark_end"].setEnabled(n > 0)
        self.scope_combo.setEnabled(n > 0)

    # ---------------------------------------------------------------- model
    def set_model(self, model, checkpoint=None, device: str | None = None) -> None:
        """Use ``model``: a loaded model (``ps.load_model``) at once; a registry name (or a local
        ``checkpoint``, with ``model`` None: the registry model the file fits) is loaded,
        downloaded once if needed, in a worker. The image is embedded again."""
        if isinstance(model, str) or model is None:
            self.loader.load(model, checkpoint, device or self._device())
            return
        self.loader.drop()  # a load still running must not replace this model
        names = items(self.model_combo)  # a model outside the registry is listed by its own name
        set_items(self.model_combo, names if model.name in names else [*names, model.name], model.name)
        found = self.bridge.store_beside(model) if self.session.embeddings_store is None else None
        stopped = [what for what, running in (("propagation", self.session.propagating),
                                              ("segment everything", self.session.segmenting_everything),
                                              ("Find", self.session.finding))
                   if running]
        said = use_model(self.session, model, found)  # a store beside the image's file, made by it
        if stopped:  # the new model's results never mix with a run of the previous one
            said += (f" The {' and '.join(stopped)} of the previous model was stopped (what it finished "
                     f"stays); run it again to use {model.name}.")
        self._sync_method()
        self.find_row.sync()  # shown for a model that finds concepts (SAM 3)
        set_values(self.everything_spins, model.everything_defaults)  # Meta's, or what these weights need
        # "auto" says where it put the model (cpu, cuda, mps)
        self.device_combo.setItemText(0, f"auto ({torch_device_type(model.device)})")
        self._set_status(said)

    def _loaded(self, model) -> None:
        if not self.closed:
            self.set_model(model)

    def _device(self) -> str:
        return self.device_combo.currentText().split(" ")[0]  # "auto (cpu)" -> "auto"

    def _on_model_chosen(self, *args) -> None:
        """A local model loads at once; a download waits for 'Load model' (it can be gigabytes)."""
        if self.model_combo.currentText() == LOCAL_CHECKPOINT:
            self._on_load_clicked()
        else:
            self.loader.choose(self.model_combo.currentText(), self._device())

    def _on_load_clicked(self, *args) -> None:
        name, checkpoint = self.model_combo.currentText(), None
        if name == LOCAL_CHECKPOINT:
            path, _ = QFileDialog.getOpenFileName(self, "SAM checkpoint", "", "Checkpoints (*.pth *.pt)")
            if not path:
                return
            name, checkpoint = None, path  # the architecture is read from the file, in the worker
        self.loader.load(name, checkpoint, self._device())


def torch_device_type(device) -> str:
    """``"cpu"``, ``"cuda"`` or ``"mps"`` of a torch device or its name (``"cuda:1"`` -> ``"cuda"``)."""
    return str(getattr(device, "type", device)).split(":")[0]
