"""The dock widget: a thin view over an :class:`~napari_promptseg.session.AnnotationSession`.

The session holds the segmentation state and logic (no Qt); :class:`~.bridge.LayerBridge` maps
napari layers to it; :class:`~.workers.WorkerScheduler` runs its slow jobs in napari workers.
This module holds the controls, the status line, the keys and the model loading.

Scripting::

    dock, widget = viewer.window.add_plugin_dock_widget("napari-promptseg", "Segment Anything")
    widget.set_model(ps.load_model("vit_b", checkpoint="sam_vit_b.pth"))
    widget.set_image(viewer.layers["cells"])
    widget.session.add_point((120, 340)); widget.session.commit()    # or click and press K
"""

from __future__ import annotations

import weakref

from qtpy.QtCore import QEvent, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_promptseg._napari import layers as L
from napari_promptseg._napari.bridge import LayerBridge, disconnect
from napari_promptseg._napari.keys import KEYS, KeyBinder
from napari_promptseg._napari.workers import WorkerScheduler
from napari_promptseg.session import AnnotationSession, Job
from napari_promptseg.session.settings import PropagationSettings
from napari_promptseg.session.text import model_note

__all__ = ["PromptSegWidget", "KEYS"]

LOCAL_CHECKPOINT = "local checkpoint…"
METHODS = {"memory (SAM 2)": "memory", "prompt (box + mask)": "prompt"}  # label -> session.method
NEW_LABELS = "(new) " + L.LABELS_NAME
BUTTONS = [("commit", "Commit (K)"), ("clear", "Clear (Q)"), ("next_mask", "Next mask (J)"),
           ("new_object", "New object (O)"), ("undo", "Undo (U)"), ("redo", "Redo (Shift-U)"),
           ("refine_from_preview", "Refine (G)"), ("propagate", "Propagate (P)"), ("cancel", "Cancel")]
SCOPES = {"this plane": "plane", "every plane along the axis": "line"}  # label -> session scope
#: segment-everything parameters shown: name -> (label, default, minimum, maximum, tooltip)
EVERYTHING_PARAMS = {
    "points_per_side": ("points per side", 32, 1, 256, "a grid of this many x this many point prompts"),
    "pred_iou_thresh": ("min predicted IoU", 0.88, -1.0, 1.0, "drop masks the model scores below this"),
    "stability_score_thresh": ("min stability", 0.95, 0.0, 1.0,
                               "drop masks that change more than this when the threshold moves"),
    "box_nms_thresh": ("box NMS IoU", 0.7, 0.0, 1.0, "of two masks whose boxes overlap this much, keep "
                       "the better one"),
    "crop_n_layers": ("crop layers", 0, 0, 3, "also run on 2x2, 4x4, ... crops of the plane (small objects; "
                      "each crop is embedded)"),
    "min_mask_region_area": ("min region area (px)", 0, 0, 10**7,
                             "fill holes and drop islands smaller than this"),
    "points_per_batch": ("points per batch", 64, 1, 1024, "prompts decoded at once (memory)"),
}


class PromptSegWidget(QWidget):
    """Interactive Segment Anything for one napari viewer (see the module docstring)."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        # napari hands plugins a public-only proxy; keep the real viewer (layers compare by identity)
        self.viewer = getattr(napari_viewer, "__wrapped__", napari_viewer)
        self.scheduler = WorkerScheduler()
        self.session = AnnotationSession(scheduler=self.scheduler, disk=_disk_cache())
        self.bridge = LayerBridge(self.viewer, self.session)
        self.keys = KeyBinder(self)
        self.bridge.layers_made = self._bind_layer_keys
        # napari has no public "window closing" event: watch its Qt main window (see eventFilter)
        main = getattr(getattr(self.viewer, "window", None), "_qt_window", None)
        self._main_window = weakref.ref(main) if main is not None else (lambda: None)
        if main is not None:
            main.installEventFilter(self)
        self.closed = self._had_parent = self._in_batch = False
        self._load_job: Job | None = None
        self._download = {"done": 0, "total": 0, "label": ""}
        self._build_ui()
        ev = self.session.events
        ev.status.connect(self._set_status)
        ev.current_object.connect(self._show_object)
        ev.restorable.connect(self._offer_restore)
        ev.target.connect(lambda _: QTimer.singleShot(0, self._refresh_layer_choices))
        self._reembed = _timer(self, 800, self._window_changed)
        self._download_timer = _timer(self, 200, self._show_download, single=False)
        for emitter, cb in self._viewer_callbacks():
            emitter.connect(cb)
        self.keys.bind_viewer(self.viewer)
        self._refresh_layer_choices()
        self._auto_image()
        self._load_default_model()

    def _viewer_callbacks(self) -> list:
        lev = self.viewer.layers.events
        return [(lev.inserted, self._refresh_layer_choices), (lev.removed, self._on_layer_removed),
                (lev.reordered, self._refresh_layer_choices),
                (lev.begin_batch, self._on_batch), (lev.end_batch, self._on_batch),
                (self.viewer.dims.events.axis_labels, self._refresh_axis_choices)]

    # ---------------------------------------------------------------- UI
    def _build_ui(self) -> None:
        from napari_promptseg.models.registry import REGISTRY

        self.image_combo, self.model_combo, self.device_combo = QComboBox(), QComboBox(), QComboBox()
        self.model_combo.addItems([*REGISTRY, LOCAL_CHECKPOINT])
        self.device_combo.addItems(["auto", "cpu", "cuda", "mps"])
        self.load_button = QPushButton("Load model")
        self.embeddings_button = QPushButton("Load embeddings…")
        self.embeddings_button.setToolTip("read the planes from an embeddings store (a .zarr folder made "
                                          "by `promptseg embed`) instead of embedding them; a store "
                                          "beside the image's file is used by itself")
        self.labels_combo = QComboBox()
        self.overwrite_check = QCheckBox("overwrite other objects")
        self.negative_check = QCheckBox("negative points (N)")
        self.object_spin = QSpinBox()
        self.object_spin.setRange(1, 2**31 - 1)
        self.object_spin.setToolTip("new points and boxes belong to this object; O starts a new one")
        self.axis_combo = QComboBox()
        self.method_combo = QComboBox()
        self.method_combo.addItems(list(METHODS))
        self.method_combo.setToolTip("memory: SAM 2 tracks each object with its memory of the frames seen "
                                     "so far; prompt: each plane is prompted with the previous plane's mask "
                                     "(box + mask logits), for SAM models")
        self.stop_after_spin = QSpinBox()
        self.stop_after_spin.setRange(0, 10**6)
        self.stop_after_spin.setSpecialValueText("never")
        self.stop_after_spin.setToolTip("memory tracking: stop an object after this many frames in a row "
                                        "without it (SAM 2's occlusion score); never: track to the end")
        self.min_score_spin = _spin(PropagationSettings.min_score,
                                    "stop an object when its predicted IoU falls below this")
        self.min_overlap_spin = _spin(PropagationSettings.min_overlap,
                                      "stop an object when its mask overlaps its mask on "
                                      "the previous plane less than this (IoU)")
        self.status = QLabel("Choose a model, then an image.")
        self.status.setWordWrap(True)
        self.restore_button = QPushButton("Restore autosaved labels")
        self.restore_button.setVisible(False)
        self.everything_button = QPushButton("Segment everything (Shift-E)")
        self.everything_button.setToolTip("SAM's automatic mask generator: every object, into a new labels "
                                          "layer (committed labels do not change)")
        self.scope_combo = QComboBox()
        self.scope_combo.addItems(list(SCOPES))
        self.everything_spins = {name: _param_spin(*spec) for name, spec in EVERYTHING_PARAMS.items()}

        form = QFormLayout()
        obj_row = QHBoxLayout()
        obj_row.addWidget(self.object_spin)
        obj_row.addWidget(self.negative_check)
        load_row = QHBoxLayout()
        load_row.addWidget(self.load_button)
        load_row.addWidget(self.embeddings_button)
        rows = (("image", self.image_combo), ("model", self.model_combo), ("device", self.device_combo),
                ("", load_row), ("commit to", self.labels_combo), ("", self.overwrite_check),
                ("object", obj_row), ("propagate along", self.axis_combo), ("track with", self.method_combo),
                ("stop after missing frames", self.stop_after_spin),
                ("stop below score", self.min_score_spin), ("stop below overlap", self.min_overlap_spin))
        for label, w in rows:
            form.addRow(label, w)
        self.buttons = {}
        grid = QGridLayout()
        for i, (name, text) in enumerate(BUTTONS):
            b = QPushButton(text)
            b.clicked.connect(getattr(self, name))
            grid.addWidget(b, i // 3, i % 3)
            self.buttons[name] = b
        help_text = QLabel(
            "Click: positive point · Shift-click or right-click: negative point · rectangles in "
            "'promptseg boxes': a box per object.\nKeys (on the canvas, with the image or a promptseg "
            "layer active): " + " · ".join(f"{k}: {v[1]}" for k, v in KEYS.items()))
        help_text.setWordWrap(True)
        self.setMaximumWidth(440)
        root = QVBoxLayout(self)
        for item in (form, grid):
            root.addLayout(item)
        every = QHBoxLayout()
        every.addWidget(self.everything_button)
        every.addWidget(self.scope_combo)
        root.addLayout(every)
        root.addWidget(self._everything_section())
        for w in (self.status, self.restore_button, help_text):
            root.addWidget(w)
        root.addStretch(1)
        self.image_combo.activated.connect(self._on_image_chosen)
        self.labels_combo.currentIndexChanged.connect(self._on_target_chosen)
        self.model_combo.activated.connect(self._on_model_chosen)
        self.load_button.clicked.connect(self._on_load_clicked)
        self.embeddings_button.clicked.connect(lambda *_: self.load_embeddings())
        self.negative_check.toggled.connect(self.bridge.set_negative)
        self.object_spin.valueChanged.connect(lambda v: v != self.session.current_object
                                              and self.session.select_object(v))
        self.overwrite_check.toggled.connect(lambda v: self.session.configure(overwrite=bool(v)))
        self.min_score_spin.valueChanged.connect(lambda v: self.session.configure(min_score=float(v)))
        self.min_overlap_spin.valueChanged.connect(lambda v: self.session.configure(min_overlap=float(v)))
        self.restore_button.clicked.connect(self.restore_autosave)
        self.everything_button.clicked.connect(self.segment_everything)
        self.method_combo.activated.connect(self._on_method_chosen)
        self.stop_after_spin.valueChanged.connect(lambda v: self.session.configure(stop_after=int(v) or None))
        self._sync_method()

    def _everything_section(self) -> QWidget:
        """The generator's parameters (Meta's names in the tooltips), folded away by default."""
        from superqt import QCollapsible

        box = QCollapsible("Segment everything parameters")
        inner = QWidget()
        form = QFormLayout(inner)
        for name, spin in self.everything_spins.items():
            spin.setToolTip(f"{EVERYTHING_PARAMS[name][4]} ({name})")
            form.addRow(EVERYTHING_PARAMS[name][0], spin)
        box.addWidget(inner)
        box.collapse(animate=False)
        return box

    @property
    def everything_params(self) -> dict:
        """The generator parameters set in the dock (Meta's names)."""
        return {name: (int(spin.value()) if isinstance(spin, QSpinBox) else float(spin.value()))
                for name, spin in self.everything_spins.items()}

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
        _set_items(self.method_combo, list(METHODS), next(k for k, v in METHODS.items() if v == used))
        for name, w in (("method", self.method_combo), ("min_score", self.min_score_spin),
                        ("min_overlap", self.min_overlap_spin), ("stop_after", self.stop_after_spin)):
            w.setEnabled(s.setting_applies(name))

    def _set_status(self, text: str) -> None:
        if not self.closed:
            self.status.setText(text)
            self.viewer.status = f"promptseg: {text}"

    def _show_object(self, oid: int) -> None:
        if self.object_spin.value() != oid:
            self.object_spin.setValue(oid)

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
        if self.bridge.image_layer is not None and self.session.lead_shape:
            self.bridge.sync_plane()
        self.session.propagate(self.propagation_axis)

    def segment_everything(self) -> None:
        """Every object on the displayed plane (or every plane along the axis) into a new labels layer."""
        if self.bridge.image_layer is not None and self.session.lead_shape:
            self.bridge.sync_plane()
        scope = SCOPES[self.scope_combo.currentText()]
        try:
            self.session.segment_everything(scope, self.propagation_axis, **self.everything_params)
        except (TypeError, ValueError) as err:
            self._set_status(f"segment everything: {err}")

    def cancel(self) -> None:
        if self._load_job is not None:
            self._load_job.token.cancel()
        self.session.cancel()

    def toggle_negative(self) -> None:
        self.negative_check.setChecked(not self.negative_check.isChecked())
        negative = self.bridge.negative
        self._set_status("new points are " + ("negative (background)." if negative else "positive."))

    def restore_autosave(self) -> None:
        if self.session.target is None and self.labels_combo.currentText() != NEW_LABELS:
            self._on_target_chosen()
        self.session.restore_autosave()
        self.restore_button.setVisible(False)

    def load_embeddings(self, path=None) -> bool:
        """Read the image's planes from the embeddings store at ``path`` (None: choose its folder)
        instead of embedding them; a store that does not fit is refused with its message."""
        if path is None:
            import os

            source = getattr(getattr(self.bridge.image_layer, "source", None), "path", None)
            start = os.path.dirname(source) if source else ""
            path = QFileDialog.getExistingDirectory(self, "Embeddings store (a .zarr folder)", start)
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
        for t in (self._reembed, self._download_timer):
            t.stop()
        if self._load_job is not None:
            self._load_job.token.cancel()
        self.session.close()
        self.scheduler.close()
        self.keys.unbind_all(self.viewer)
        self.bridge.close()
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
        _set_items(self.image_combo, images, b.image_layer.name if b.image_layer is not None else None)
        _set_items(self.labels_combo, [NEW_LABELS, *labels],
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
        self.restore_button.setVisible(self.session.store is not None and self.session.store.exists())
        self._bind_layer_keys()
        self._refresh_layer_choices()
        self._refresh_axis_choices()

    def _bind_layer_keys(self) -> None:
        b = self.bridge
        self.keys.bind_layers([b.image_layer, b.points_layer, b.boxes_layer, b.preview_layer])

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
            if b.image_layer is not None and not self._in_batch and (
                    b.points_layer is None or b.boxes_layer is None):
                b.ensure_prompt_layers()  # the prompts went with the layer: the session follows
                b.push_prompts()
            self._bind_layer_keys()
        self._refresh_layer_choices()

    def _on_batch(self, event) -> None:
        """Prompt layers removed in a batch (``layers.clear()``, closing the viewer) come back at
        its end if the image is still there; at once, clear() would remove each new one for ever."""
        self._in_batch, b = event.type == "begin_batch", self.bridge
        if not self._in_batch and not self.closed and b.image_layer is not None and (
                b.points_layer is None or b.boxes_layer is None):
            b.ensure_prompt_layers()
            b.push_prompts()
            self._bind_layer_keys()

    def _refresh_axis_choices(self, event=None) -> None:
        """List the image's leading axes by the viewer's axis labels; default z, else t."""
        n = len(self.session.lead_shape) if self.bridge.image_layer is not None else 0
        labels = list(self.viewer.dims.axis_labels)[-(n + 2):][:n] if n else []
        names = [f"{lab} (axis {i})" for i, lab in enumerate(labels)]
        low = [str(lab).lower() for lab in labels]
        default = next((low.index(k) for k in ("z", "t", "time", "frame") if k in low), n - 1)
        _set_items(self.axis_combo, names, names[default] if names else None)
        self.axis_combo.setEnabled(n > 1)
        self.buttons["propagate"].setEnabled(n > 0)
        self.scope_combo.setEnabled(n > 0)

    # ---------------------------------------------------------------- model
    def set_model(self, model, checkpoint=None, device: str | None = None) -> None:
        """Use ``model``: a loaded model (``ps.load_model``) at once; a registry name (or a local
        ``checkpoint``) is loaded, downloaded once if needed, in a worker. The image is embedded again."""
        if isinstance(model, str) or model is None:
            self._load_model(model, checkpoint, device or self.device_combo.currentText())
            return
        if self._load_job is not None:  # a load still running must not replace this model
            self._load_job.token.cancel()
            self._load_job = None
            self._download_timer.stop()
        _set_items(self.model_combo, _items(self.model_combo), model.name)
        s = self.session
        found = self.bridge.store_beside(model) if s.embeddings_store is None else None
        s.set_model(model, embeddings=found)  # a store beside the image's file, made by this model
        self._sync_method()
        defaults = model.everything_defaults  # Meta's, or what these weights need
        for name, spin in self.everything_spins.items():
            spin.setValue(defaults[name])
        note = model_note(model)
        said = self.status.text() if found else s.describe()  # the store's note, or why it was refused
        self._set_status(f"model {model.name} on {model.device}{note}. " + said)

    def _load_default_model(self) -> None:
        """Load the default model when it needs no download: a registry model already in the
        cache, else the demo model shipped in the package (offline)."""
        from napari_promptseg.models.registry import get_spec
        from napari_promptseg.models.weights import available_locally, default_model_name

        name = default_model_name()
        _set_items(self.model_combo, _items(self.model_combo), name)
        if available_locally(get_spec(name)):
            self._load_model(name, None, self.device_combo.currentText())

    def _on_model_chosen(self, *args) -> None:
        """A local model loads at once; a download waits for 'Load model' (it can be gigabytes)."""
        from napari_promptseg.models.registry import get_spec
        from napari_promptseg.models.weights import available_locally

        name = self.model_combo.currentText()
        if name == LOCAL_CHECKPOINT:
            self._on_load_clicked()
        elif available_locally(get_spec(name)):
            self._load_model(name, None, self.device_combo.currentText())
        else:
            size = get_spec(name).size_mb
            self._set_status(f"press 'Load model' to download {name} ({size:.0f} MB, once).")

    def _on_load_clicked(self, *args) -> None:
        name, checkpoint = self.model_combo.currentText(), None
        if name == LOCAL_CHECKPOINT:
            path, _ = QFileDialog.getOpenFileName(self, "SAM checkpoint", "", "Checkpoints (*.pth *.pt)")
            if not path:
                return
            name, checkpoint = None, path  # the architecture is read from the file, in the worker
        self._load_model(name, checkpoint, self.device_combo.currentText())

    def _load_model(self, name: str | None, checkpoint, device: str) -> None:
        import napari_promptseg as ps
        from napari_promptseg.core.cancel import check_cancelled

        label = name or str(checkpoint)
        dl = self._download
        dl.update(done=0, total=0, label=label)

        def on_bytes(done, total):  # in the worker: the UI polls these numbers
            dl.update(done=done, total=total or 0)
            check_cancelled()

        def work():
            arch = name if name is not None else _guess_registry_name(checkpoint)
            return ps.load_model(arch, checkpoint=checkpoint, device=device, progress=on_bytes)

        def done(model) -> None:
            if job is self._load_job and not self.closed:
                self._load_job = None
                self._download_timer.stop()
                self.set_model(model)

        def failed(err: BaseException) -> None:
            if job is self._load_job and not self.closed:
                self._load_job = None
                self._download_timer.stop()
                self._set_status(f"could not load {label}: {'cancelled' if job.token.cancelled else err}")

        if self._load_job is not None:
            self._load_job.token.cancel()
        job = self._load_job = Job("load", work, done, failed, label=f"loading {label}")
        self._set_status(f"loading {label}…")
        self._download_timer.start()
        self.scheduler(job)

    def _show_download(self) -> None:
        dl = self._download
        if self._load_job is not None and dl["done"]:
            done, total = dl["done"] / 1e6, dl["total"] / 1e6
            self._set_status(f"downloading {dl['label']}: {done:.0f} / {total:.0f} MB")


def _timer(parent, ms: int, slot, single: bool = True) -> QTimer:
    t = QTimer(parent)
    t.setSingleShot(single)
    t.setInterval(ms)
    t.timeout.connect(slot)
    return t


def _spin(value: float, tip: str) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setRange(0.0, 1.0)
    box.setSingleStep(0.05)
    box.setDecimals(2)
    box.setValue(value)
    box.setToolTip(tip)
    return box


def _param_spin(label: str, value, lo, hi, tip: str):
    if isinstance(value, int):
        box = QSpinBox()
    else:
        box = QDoubleSpinBox()
        box.setDecimals(3)
        box.setSingleStep(0.01)
    box.setRange(lo, hi)
    box.setValue(value)
    return box


def _items(combo: QComboBox) -> list[str]:
    return [combo.itemText(i) for i in range(combo.count())]


def _set_items(combo: QComboBox, items: list[str], current: str | None) -> None:
    combo.blockSignals(True)
    combo.clear()
    combo.addItems(items)
    if current is not None and current in items:
        combo.setCurrentIndex(items.index(current))
    combo.blockSignals(False)


def _disk_cache():
    """The shared on-disk embedding cache (``PROMPTSEG_EMBED_CACHE_GB=0`` turns it off)."""
    import os

    from napari_promptseg.embed.cache import DiskCache

    if os.environ.get("PROMPTSEG_EMBED_CACHE_GB", "").strip() in ("0", "0.0"):
        return None
    return DiskCache()


def _guess_registry_name(path: str) -> str:
    """The registry architecture that fits a local checkpoint (by its encoder width)."""
    from napari_promptseg.models.checkpoint import read_state_dict
    from napari_promptseg.models.registry import REGISTRY
    from napari_promptseg.models.sam.model import arch_of
    from napari_promptseg.models.sam2.model import sam2_arch_of

    state = read_state_dict(path)
    arch = sam2_arch_of(state) or arch_of(state)
    return next((name for name, spec in REGISTRY.items() if spec.arch == arch), "vit_b")
