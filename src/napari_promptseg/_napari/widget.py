"""The dock widget: pick an image and a model, click, see the mask, commit it.

Everything slow runs off the UI thread: the model download/load and the image encoder in napari
workers (progress bar, cancel), decodes in a :class:`~.decoding.LatestOnlyRunner` (newest prompt
state wins, stale results are dropped). The segmentation logic itself lives in the Qt-free core
(:mod:`napari_promptseg.interactive`, :mod:`napari_promptseg.commits`).

Scripting::

    dock, widget = viewer.window.add_plugin_dock_widget("napari-promptseg", "Segment Anything")
    widget.set_model(ps.load_model("vit_b", checkpoint="sam_vit_b.pth"))
    widget.set_image(viewer.layers["cells"])
"""

from __future__ import annotations

import threading
import weakref

import numpy as np
from qtpy.QtCore import QEvent, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..commits import CommitHistory, commit_masks
from ..embeddings import EmbeddingCache, embed_cached
from ..interactive import bounding_box, compose_preview, decode_objects, group_prompts
from ..prompts import inside_image
from . import layers as L
from .decoding import LatestOnlyRunner

__all__ = ["PromptSegWidget", "KEYS"]

LOCAL_CHECKPOINT = "local checkpoint…"
NEW_LABELS = "(new) " + L.LABELS_NAME

#: key -> (method name, help text); bound on the viewer while the widget is open
KEYS = {
    "K": ("commit", "commit (keep) the object"),
    "Q": ("clear", "clear the prompts"),
    "J": ("next_mask", "next candidate mask"),
    "N": ("toggle_negative", "toggle negative points"),
    "G": ("refine_from_preview", "refine from the painted preview"),
    "U": ("undo", "undo the last commit"),
    "Shift-U": ("redo", "redo"),
}


class PromptSegWidget(QWidget):
    """Interactive Segment Anything for one napari viewer (see the module docstring)."""

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        # napari hands plugins a public-only proxy; keep the real viewer so that layers from its
        # events and from the user compare by identity
        self.viewer = _unwrap(napari_viewer)
        self.model = None
        self.embedding = None
        self.image_layer = None
        self.points_layer = None
        self.boxes_layer = None
        self.preview_layer = None
        self.predictions: list = []  # last shown Prediction per object
        self.choices: list[int] = []  # mask index shown per object
        self._logits: dict[int, np.ndarray] = {}  # per object: low-res logits for refinement
        self._negative = False
        self._generation = 0  # bumped by every prompt change: older decode results are stale
        self._submitted = -1  # generation of the newest decode submitted
        self._shown = -1  # generation whose result the preview shows
        self._commit_after_decode = False
        self._embed_token = None
        self._embed_pbar = None
        self._load_token = None
        self._cancel_load = False
        self._target = None  # the Labels layer that receives commits (None: create one)
        self._had_parent = False
        self._closed = False
        self._cache = EmbeddingCache(8)
        self._histories: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._runner = LatestOnlyRunner(self)
        self._runner.finished.connect(self._on_decoded)
        self._embedder = LatestOnlyRunner(self)  # one encoder at a time; the newest request wins
        self._embedder.finished.connect(self._on_embedded)
        self._reembed_timer = QTimer(self)
        self._reembed_timer.setSingleShot(True)
        self._reembed_timer.setInterval(800)
        self._reembed_timer.timeout.connect(self._start_embedding)
        self._build_ui()
        self._connect_viewer()
        self._bind_keys()
        self._refresh_layer_choices()
        self._auto_image()
        self._load_default_model()

    # ---------------------------------------------------------------- UI
    def _build_ui(self) -> None:
        from ..models.registry import REGISTRY

        self.image_combo = QComboBox()
        self.model_combo = QComboBox()
        self.model_combo.addItems([*REGISTRY, LOCAL_CHECKPOINT])
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu", "cuda", "mps"])
        self.load_button = QPushButton("Load model")
        self.labels_combo = QComboBox()
        self.overwrite_check = QCheckBox("overwrite other objects")
        self.negative_check = QCheckBox("negative points (N)")
        self.status = QLabel("Choose a model, then an image.")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("image", self.image_combo)
        form.addRow("model", self.model_combo)
        form.addRow("device", self.device_combo)
        form.addRow("", self.load_button)
        form.addRow("commit to", self.labels_combo)
        form.addRow("", self.overwrite_check)
        form.addRow("", self.negative_check)

        self.buttons = {}
        grid = QGridLayout()
        specs = [("commit", "Commit (K)"), ("clear", "Clear (Q)"), ("next_mask", "Next mask (J)"),
                 ("undo", "Undo (U)"), ("redo", "Redo (Shift-U)"), ("refine_from_preview", "Refine (G)"),
                 ("cancel", "Cancel")]
        for i, (name, text) in enumerate(specs):
            b = QPushButton(text)
            b.clicked.connect(getattr(self, name))
            grid.addWidget(b, i // 3, i % 3)
            self.buttons[name] = b

        help_text = QLabel(
            "Click: positive point · Shift-click or right-click: negative point · "
            "draw rectangles in 'promptseg boxes': one object per box.\n"
            + " · ".join(f"{k}: {v[1]}" for k, v in KEYS.items())
        )
        help_text.setWordWrap(True)

        self.setMaximumWidth(440)  # leave the canvas room; texts wrap
        root = QVBoxLayout(self)
        root.addLayout(form)
        root.addLayout(grid)
        root.addWidget(self.status)
        root.addWidget(help_text)
        root.addStretch(1)

        self.image_combo.activated.connect(self._on_image_chosen)
        self.labels_combo.currentIndexChanged.connect(self._on_target_chosen)
        self.model_combo.activated.connect(self._on_model_chosen)
        self.load_button.clicked.connect(self._on_load_clicked)
        self.negative_check.toggled.connect(self._set_negative)

    def _set_status(self, text: str) -> None:
        self.status.setText(text)
        self.viewer.status = f"promptseg: {text}"

    def _connect_viewer(self) -> None:
        ev = self.viewer.layers.events
        ev.inserted.connect(self._refresh_layer_choices)
        ev.removed.connect(self._on_layer_removed)
        ev.reordered.connect(self._refresh_layer_choices)

    def _bind_keys(self) -> None:
        for key, (method, _) in KEYS.items():
            self.viewer.bind_key(key, self._key_handler(method), overwrite=True)

    def _key_handler(self, method: str):
        ref = weakref.ref(self)

        def handler(viewer):
            w = ref()
            if w is not None and not w._closed:
                getattr(w, method)()

        handler.__name__ = f"promptseg_{method}"
        return handler

    def event(self, e) -> bool:  # noqa: D102 - Qt override
        # napari closes a dock widget by taking it out of the dock (setParent(None)), without a
        # closeEvent: that is when the session ends.
        if e.type() == QEvent.Type.ParentChange:
            if self.parent() is not None:
                self._had_parent = True
            elif self._had_parent:
                self.close_session()
        return super().event(e)

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt name
        self.close_session()
        super().closeEvent(event)

    def close_session(self) -> None:
        """Stop workers, unbind keys, disconnect from the viewer (the dock was closed).
        The layers stay, with their data."""
        if self._closed:
            return
        self._closed = True
        self._runner.close()
        self._embedder.close()
        self._cancel_load = True
        self._close_pbar()
        for key in KEYS:
            self.viewer.bind_key(key, None, overwrite=True)
        ev = self.viewer.layers.events
        for emitter, cb in ((ev.inserted, self._refresh_layer_choices), (ev.removed, self._on_layer_removed),
                            (ev.reordered, self._refresh_layer_choices)):
            _disconnect(emitter, cb)
        if self.image_layer is not None:
            self._disconnect_image(self.image_layer)
        if self.points_layer is not None:
            _disconnect(self.points_layer.events.data, self._on_points)
            if self._on_press in self.points_layer.mouse_drag_callbacks:
                self.points_layer.mouse_drag_callbacks.remove(self._on_press)
        if self.boxes_layer is not None:
            _disconnect(self.boxes_layer.events.data, self._on_boxes)
        if self.preview_layer is not None:
            _disconnect(self.preview_layer.events.paint, self._on_paint)

    def _refresh_layer_choices(self, event=None) -> None:
        import napari.layers

        if self._closed:
            return
        for ly in self.viewer.layers:  # a renamed layer must show its new name
            ly.events.name.connect(self._refresh_layer_choices)
        images = [ly.name for ly in self.viewer.layers if isinstance(ly, napari.layers.Image)]
        labels = [
            ly.name for ly in self.viewer.layers
            if isinstance(ly, napari.layers.Labels) and ly is not self.preview_layer
        ]
        current = self.image_layer.name if self.image_layer is not None else None
        _set_items(self.image_combo, images, current)
        if self._target is not None and self._target not in self.viewer.layers:
            self._target = None
        _set_items(self.labels_combo, [NEW_LABELS, *labels],
                   self._target.name if self._target is not None else NEW_LABELS)
        if self.image_layer is None and images and event is not None:
            QTimer.singleShot(0, self._auto_image)  # not inside napari's layer event

    def _auto_image(self) -> None:
        """Pick the active (else the first) 2D image layer when none is chosen yet."""
        import napari.layers

        if self.image_layer is not None or self._closed:
            return
        active = self.viewer.layers.selection.active
        candidates = ([active] if active is not None else []) + list(self.viewer.layers)
        for ly in candidates:
            if isinstance(ly, napari.layers.Image) and len(L.image_plane_shape(ly)) == 2:
                self.set_image(ly)
                return

    # ---------------------------------------------------------------- model
    def set_model(self, model, checkpoint=None, device: str | None = None) -> None:
        """Use ``model``: a loaded model (from ``ps.load_model``) is used at once; a registry name
        (or a local ``checkpoint`` file) is loaded, downloaded once if needed, in a worker.
        The current image is embedded again."""
        if isinstance(model, str) or model is None:
            self._load_model(model, checkpoint, device or self.device_combo.currentText())
            return
        self._load_token = None  # a load still running must not replace this model
        from ..models.registry import DEMO_MODEL

        self.model = model
        _set_items(self.model_combo, _items(self.model_combo), model.name)
        if model.name == DEMO_MODEL:
            self._set_status(
                f"model {DEMO_MODEL}: the small offline demo model (trained on generated nuclei-like "
                "images). For real work pick vit_b or a microscopy model and press 'Load model'."
            )
        else:
            self._set_status(f"model {model.name} on {model.device}.")
        self._forget_embedding()
        self._start_embedding()

    def _load_default_model(self) -> None:
        """Load the default model when it needs no download: a registry model already in the
        cache, else the demo model shipped in the package (offline)."""
        from ..models.registry import get_spec
        from ..models.weights import available_locally, default_model_name

        name = default_model_name()
        _set_items(self.model_combo, _items(self.model_combo), name)
        if available_locally(get_spec(name)):
            self._load_model(name, None, self.device_combo.currentText())

    def _on_model_chosen(self, *args) -> None:
        """A model picked in the list loads at once when it is local; a download waits for
        'Load model' (it can be gigabytes)."""
        from ..models.registry import get_spec
        from ..models.weights import available_locally

        name = self.model_combo.currentText()
        if name == LOCAL_CHECKPOINT:
            self._on_load_clicked()
        elif available_locally(get_spec(name)):
            self._load_model(name, None, self.device_combo.currentText())
        else:
            spec = get_spec(name)
            self._set_status(f"press 'Load model' to download {name} ({spec.size_mb:.0f} MB, once).")

    def _on_load_clicked(self, *args) -> None:
        name = self.model_combo.currentText()
        checkpoint = None
        if name == LOCAL_CHECKPOINT:
            path, _ = QFileDialog.getOpenFileName(self, "SAM checkpoint", "", "Checkpoints (*.pth *.pt)")
            if not path:
                return
            name, checkpoint = None, path  # the architecture is read from the file, in the worker
        self._load_model(name, checkpoint, self.device_combo.currentText())

    def _load_model(self, name: str | None, checkpoint, device: str) -> None:
        from napari.qt.threading import thread_worker
        from napari.utils import progress

        import napari_promptseg as ps

        self._cancel_load = False
        token = self._load_token = object()
        label = name or str(checkpoint)
        pbar = progress(total=0, desc=f"promptseg: loading {label}")

        def on_bytes(done, total):
            if self._cancel_load or token is not self._load_token:
                raise KeyboardInterrupt("cancelled")
            worker.yielded.emit(("bytes", done, total))

        @thread_worker
        def load():
            try:
                arch = name if name is not None else _guess_registry_name(checkpoint)
                yield ("model", ps.load_model(arch, checkpoint=checkpoint, device=device, progress=on_bytes))
            except BaseException as err:  # noqa: BLE001 - shown to the user (KeyboardInterrupt: cancel)
                yield ("error", err)

        def on_yielded(item):
            if token is not self._load_token or self._closed:
                pbar.close()
                return  # another model was chosen meanwhile
            if item[0] == "bytes":
                _, done, total = item
                if total and pbar.total != total:
                    pbar.total = total
                pbar.n = done
                pbar.refresh()
                self._set_status(f"downloading {label}: {done / 1e6:.0f} / {(total or 0) / 1e6:.0f} MB")
            elif item[0] == "model":
                pbar.close()
                self.set_model(item[1])
            else:
                pbar.close()
                self._load_token = None
                err = "cancelled" if isinstance(item[1], KeyboardInterrupt) else item[1]
                self._set_status(f"could not load {label}: {err}")

        worker = load()
        worker.yielded.connect(on_yielded)
        worker.finished.connect(pbar.close)
        self._set_status(f"loading {label}…")
        worker.start()

    # ---------------------------------------------------------------- image and embedding
    def set_image(self, layer) -> None:
        """Segment ``layer`` (a napari Image layer, 2D gray or RGB(A)); embedding starts at once."""
        import napari.layers

        layer = _unwrap(layer)
        if not isinstance(layer, napari.layers.Image):
            raise TypeError(f"set_image needs a napari Image layer, got {type(layer).__name__}")
        plane = L.image_plane_shape(layer)
        if len(plane) != 2:
            raise ValueError(
                f"layer {layer.name!r} has {len(plane)} spatial axes {plane}; this widget segments 2D "
                "images (gray or RGB). Select one plane, e.g. viewer.add_image(stack[z])"
            )
        if self.image_layer is not None:
            self._disconnect_image(self.image_layer)
        self.image_layer = layer
        self._forget_embedding()
        self._ensure_layers(reset=True)
        layer.events.contrast_limits.connect(self._on_contrast)
        layer.events.data.connect(self._on_image_data)
        for name in _TRANSFORMS:
            getattr(layer.events, name).connect(self._on_transform)
        _set_items(self.image_combo, _items(self.image_combo), layer.name)
        self._start_embedding()

    def _disconnect_image(self, layer) -> None:
        _disconnect(layer.events.contrast_limits, self._on_contrast)
        _disconnect(layer.events.data, self._on_image_data)
        for name in _TRANSFORMS:
            _disconnect(getattr(layer.events, name), self._on_transform)

    def _on_image_chosen(self, *args) -> None:
        name = self.image_combo.currentText()
        if name and name in self.viewer.layers and self.viewer.layers[name] is not self.image_layer:
            try:
                self.set_image(self.viewer.layers[name])
            except (TypeError, ValueError) as err:
                self._set_status(str(err))

    def _forget_embedding(self) -> None:
        self.embedding = None
        self._embed_token = None
        self._generation += 1  # any decode in flight is now stale
        self.predictions, self.choices, self._logits = [], [], {}
        self._commit_after_decode = False

    def _on_contrast(self, event=None) -> None:
        data = self.image_layer.data[0] if self.image_layer.multiscale else self.image_layer.data
        if np.dtype(data.dtype) != np.uint8:  # uint8 goes to the model unchanged
            self._reembed_timer.start()

    def _on_image_data(self, event=None) -> None:
        self._forget_embedding()
        self._ensure_layers(reset=True)
        self._start_embedding()

    def _on_transform(self, event=None) -> None:
        for ly in (self.points_layer, self.boxes_layer, self.preview_layer):
            if ly is not None:
                L.copy_transform(self.image_layer, ly)

    def _start_embedding(self) -> None:
        from napari.utils import progress

        if self.model is None or self.image_layer is None or self._closed:
            if self.image_layer is not None and self.model is None:
                self._set_status("choose a model: the image is embedded as soon as one is loaded.")
            return
        layer, model, cache = self.image_layer, self.model, self._cache
        data = layer.data[0] if layer.multiscale else layer.data
        limits = tuple(float(v) for v in layer.contrast_limits)
        token = self._embed_token = (object(), layer, model)
        self._close_pbar()
        self._embed_pbar = progress(total=0, desc=f"promptseg: embedding {layer.name}")
        self._set_status(f"embedding {layer.name} with {model.name}{_note(model)}…")
        # an embedding request not started yet is replaced, so encoders never pile up
        self._embedder.submit(token, lambda: embed_cached(model, np.asarray(data), limits, cache))

    def _on_embedded(self, token, result, error) -> None:
        if token is not self._embed_token:
            return  # the image, window or model changed meanwhile: drop
        self._close_pbar()
        _, layer, model = token
        if layer is not self.image_layer or model is not self.model:
            return
        if error is not None:
            self._set_status(f"could not embed {layer.name}: {error}")
            return
        self.embedding = result
        self._logits.clear()
        self._set_status(f"{layer.name}: ready ({model.name}{_note(model)}). Click on an object.")
        self.request_decode()

    def _close_pbar(self) -> None:
        if self._embed_pbar is not None:
            self._embed_pbar.close()
            self._embed_pbar = None

    def cancel(self) -> None:
        """Cancel a download/model load and drop an embedding in progress."""
        self._cancel_load = True
        self._load_token = None
        if self._embed_token is not None and self.embedding is None:
            self._embed_token = None
            self._close_pbar()
        self._set_status("cancelled.")

    @property
    def ready(self) -> bool:
        """True when an embedding of the current image is ready for prompts."""
        return self.embedding is not None

    # ---------------------------------------------------------------- layers
    def _ensure_layers(self, reset: bool = False) -> None:
        """(Re)create the prompt and preview layers, aligned with the image."""
        if self.image_layer is None or self._closed:
            return
        v, img = self.viewer, self.image_layer
        shape = L.image_plane_shape(img)
        if self.points_layer is None or self.points_layer not in v.layers:
            self.points_layer = L.add_points_layer(v, img)
            self.points_layer.events.data.connect(self._on_points)
            self.points_layer.mouse_drag_callbacks.insert(0, self._on_press)
            self._set_negative(self._negative)
            v.layers.selection.active = self.points_layer
        if self.boxes_layer is None or self.boxes_layer not in v.layers:
            self.boxes_layer = L.add_boxes_layer(v, img)
            self.boxes_layer.events.data.connect(self._on_boxes)
            v.layers.selection.active = self.points_layer
        if self.preview_layer is None or self.preview_layer not in v.layers or (
            self.preview_layer.data.shape != shape
        ):
            if self.preview_layer is not None and self.preview_layer in v.layers:
                v.layers.remove(self.preview_layer)
            self.preview_layer = L.add_preview_layer(v, img)
            self.preview_layer.events.paint.connect(self._on_paint)
            v.layers.selection.active = self.points_layer
        if reset:
            self._clear_prompts()
            self._on_transform()

    def _on_layer_removed(self, event) -> None:
        layer = event.value
        if layer is self.image_layer:
            self._disconnect_image(layer)
            self.image_layer = None
            self._forget_embedding()
            self._close_pbar()
            self._set_status(f"image {layer.name!r} was removed.")
        elif layer is self.points_layer:
            self.points_layer = None
        elif layer is self.boxes_layer:
            self.boxes_layer = None
        elif layer is self.preview_layer:
            self.preview_layer = None
            self._generation += 1
        self._refresh_layer_choices()

    def _on_target_chosen(self, *args) -> None:
        name = self.labels_combo.currentText()
        self._target = self.viewer.layers[name] if name in self.viewer.layers else None

    def target_labels(self, create: bool = True):
        """The Labels layer that receives commits (created, aligned with the image, if needed)."""
        if self._target is not None and self._target in self.viewer.layers:
            return self._target
        if not create or self.image_layer is None:
            return None
        self._target = L.add_labels_layer(self.viewer, self.image_layer)
        self._refresh_layer_choices()
        self.viewer.layers.selection.active = self.points_layer
        return self._target

    # ---------------------------------------------------------------- prompts and decoding
    def _on_press(self, layer, event):
        """Shift-click or right-click in add mode adds a negative point (napari adds on release)."""
        if layer.mode == "add":
            negative = self._negative ^ ("Shift" in event.modifiers or event.button == 2)
            layer.feature_defaults["label"] = 0 if negative else 1

    def _set_negative(self, negative: bool) -> None:
        self._negative = bool(negative)
        if self.negative_check.isChecked() != self._negative:
            self.negative_check.setChecked(self._negative)
        if self.points_layer is not None:
            self.points_layer.feature_defaults["label"] = 0 if self._negative else 1

    def toggle_negative(self) -> None:
        """New points are negative (background) until toggled back."""
        self._set_negative(not self._negative)
        self._set_status("new points are " + ("negative (background)." if self._negative else "positive."))

    def _on_points(self, event=None) -> None:
        action = str(getattr(event, "action", "changed"))
        if action.endswith("ing") or "ING" in action:
            return  # wait for the past-tense event
        if "add" not in action.lower():
            self._logits.clear()  # a point moved or removed: the old mask is no longer this prompt's
        self.request_decode()

    def _on_boxes(self, event=None) -> None:
        action = str(getattr(event, "action", "changed"))
        if action.endswith("ing") or "ING" in action:
            return
        self._logits.clear()
        self.request_decode()

    def _on_paint(self, event=None) -> None:
        self._generation += 1  # the user painted the preview: a decode in flight must not overwrite it
        self._shown = self._generation

    def current_objects(self):
        """The objects the current prompts describe (see ``interactive.group_prompts``).
        Points off the image and boxes that do not overlap it are left out."""
        if self.image_layer is None or self.points_layer is None or self.boxes_layer is None:
            return []
        h, w = L.image_plane_shape(self.image_layer)[-2:]
        pts, labels = L.points_in_image(self.points_layer, self.image_layer)
        keep = inside_image(pts[:, -2:], (h, w)) if len(pts) else np.zeros(0, bool)
        boxes = L.boxes_in_image(self.boxes_layer, self.image_layer)
        lo = np.maximum(boxes[:, :2], -0.5)
        hi = np.minimum(boxes[:, 2:], [h - 0.5, w - 0.5])
        boxes = boxes[((hi - lo) > 0).all(1)]
        return group_prompts(pts[keep][:, -2:], labels[keep], boxes)

    def request_decode(self) -> None:
        """Decode the current prompts in the background; the preview updates when it is done."""
        if self._closed:
            return
        self._ensure_layers()
        self._generation += 1
        gen = self._generation
        if self.embedding is None:
            if self.image_layer is not None and self.model is not None and self._embed_token is not None:
                self._set_status("still embedding: your prompts are used as soon as it is ready.")
            return
        objects = self.current_objects()
        if not objects:
            self._show([], [], gen)
            return
        model, emb, shape = self.model, self.embedding, tuple(self.embedding.original_size)
        mask_inputs = dict(self._logits)

        def work():
            preds = decode_objects(model, emb, objects, mask_inputs)
            choices = [p.best for p in preds]
            return preds, choices, compose_preview([p.mask(c) for p, c in zip(preds, choices, strict=True)],
                                                   shape)

        self._submit(gen, emb, work)

    def _submit(self, gen: int, emb, work) -> None:
        self._submitted = gen
        self._runner.submit((gen, emb), work)

    def _on_decoded(self, token, result, error) -> None:
        gen, emb = token
        if self._closed or gen != self._generation or emb is not self.embedding:
            return  # stale: the prompts, image or model changed since
        if error is not None:
            self._commit_after_decode = False
            self._set_status(f"decode failed: {error}")
            return
        preds, choices, preview = result
        self._show(preds, choices, gen, preview)
        if any(len(p.scores) > 1 for p in preds):  # the other candidates, for J, off the UI thread
            threading.Thread(target=_candidates, args=(preds,), daemon=True).start()
        if self._commit_after_decode:
            self._commit_after_decode = False
            self.commit()

    def _show(self, preds, choices, gen, preview=None) -> None:
        if self.preview_layer is None or self.preview_layer not in self.viewer.layers:
            return
        self.predictions, self.choices = list(preds), list(choices)
        self._logits = {i: p.logits[c] for i, (p, c) in enumerate(zip(preds, choices, strict=True))}
        if preview is None:
            preview = compose_preview([p.mask(c) for p, c in zip(preds, choices, strict=True)],
                                      self.preview_layer.data.shape)
        self.preview_layer.data = preview
        self._shown = gen
        self._set_status(self._describe())

    def _describe(self) -> str:
        if not self.predictions:
            model = f" ({self.model.name}{_note(self.model)})" if self.model is not None else ""
            return f"ready{model}: click on an object (Shift-click: background) or draw a box."
        parts = []
        for p, c in zip(self.predictions, self.choices, strict=True):
            if len(p.scores) > 1:
                order = np.argsort(-p.scores)
                parts.append("masks " + " ".join(
                    (f"[{p.scores[i]:.2f}]" if i == c else f"{p.scores[i]:.2f}") for i in order
                ) + " (J: next)")
            else:
                parts.append(f"score {p.scores[0]:.2f}")
        n = len(self.predictions)
        return f"{n} object{'s' * (n > 1)}: " + "; ".join(parts) + ". K: commit."

    def next_mask(self) -> None:
        """Show the next candidate mask (by score) of each ambiguous object."""
        if not any(len(p.scores) > 1 for p in self.predictions):
            self._set_status("only one candidate mask: add a point or a box to change it.")
            return
        choices = []
        for p, c in zip(self.predictions, self.choices, strict=True):
            order = list(np.argsort(-p.scores))
            choices.append(int(order[(order.index(c) + 1) % len(order)]))
        # not a new prompt state: a decode in flight for newer prompts still lands
        self._show(self.predictions, choices, self._shown)

    def refine_from_preview(self) -> None:
        """Use each object of the (painted) preview as a mask prompt, with its bounding box and
        the points inside that box (all points when there is one object)."""
        if self.embedding is None or self.preview_layer is None or self._closed:
            return
        preview = np.asarray(self.preview_layer.data)
        ids = _ids(preview)
        if not ids:
            self._set_status("the preview is empty: paint the object into it first.")
            return
        masks = [preview == i for i in ids]
        boxes = np.array([bounding_box(m) for m in masks])
        if self.points_layer is not None and self.image_layer is not None:
            pts, labels = L.points_in_image(self.points_layer, self.image_layer)
            keep = inside_image(pts[:, -2:], preview.shape) if len(pts) else np.zeros(0, bool)
            pts, labels = pts[keep][:, -2:], labels[keep]
        else:
            pts, labels = np.zeros((0, 2)), np.zeros(0, np.int32)
        objects = group_prompts(pts, labels, boxes)
        self._generation += 1
        model, emb = self.model, self.embedding

        def work():
            mask_inputs = {i: model.mask_prompt(emb, m) for i, m in enumerate(masks)}
            preds = decode_objects(model, emb, objects, mask_inputs)
            return preds, [0] * len(preds), compose_preview([p.mask(0) for p in preds], preview.shape)

        self._submit(self._generation, emb, work)

    # ---------------------------------------------------------------- commit, undo, clear
    def _clear_prompts(self) -> None:
        if self.points_layer is not None and len(self.points_layer.data):
            self.points_layer.data = np.zeros((0, self.points_layer.ndim))
        if self.boxes_layer is not None and len(self.boxes_layer.data):
            self.boxes_layer.data = []
        self._logits.clear()
        self._commit_after_decode = False
        self._generation += 1
        self._show([], [], self._generation)

    def clear(self) -> None:
        """Remove the prompts and the preview (nothing committed changes)."""
        self._clear_prompts()
        self._set_status("cleared.")

    def commit(self) -> tuple[int, ...]:
        """Write the preview's objects into the target labels with new ids; clear the prompts.

        Other objects are kept unless "overwrite other objects" is checked. When the newest
        prompts are still being decoded, the commit happens as soon as their mask is shown.
        Returns the new ids (``()`` when nothing was written now).
        """
        if self.preview_layer is None or self.image_layer is None or self._closed:
            return ()
        if self._submitted == self._generation and self._shown != self._generation:
            self._commit_after_decode = True  # commit what the newest prompts give, not older
            self._set_status("committing as soon as the decode finishes…")
            return ()
        preview = np.asarray(self.preview_layer.data)
        ids = _ids(preview)
        if not ids:
            self._set_status("nothing to commit: the preview is empty.")
            return ()
        target = self.target_labels()
        if target.data.shape != preview.shape:
            self._set_status(
                f"cannot commit into {target.name!r}: its shape {target.data.shape} is not the image's "
                f"{preview.shape}; choose another labels layer or '{NEW_LABELS}'."
            )
            return ()
        if not isinstance(target.data, np.ndarray) or not target.data.flags.c_contiguous:
            target.data = np.ascontiguousarray(target.data)
        try:
            overwrite = self.overwrite_check.isChecked()
            c = commit_masks(target.data, [preview == i for i in ids], overwrite=overwrite)
        except (TypeError, ValueError, OverflowError) as err:
            self._set_status(f"cannot commit into {target.name!r}: {err}")
            return ()
        if not c.ids:
            self._set_status("nothing committed: every pixel already belongs to another object "
                             "(check 'overwrite other objects' to replace them).")
            return ()
        self._history(target).record(c, target.data)
        target.refresh()
        self._clear_prompts()
        self._set_status(f"committed object{'s' * (len(c.ids) > 1)} {', '.join(map(str, c.ids))} "
                         f"to {target.name!r}. U: undo.")
        return c.ids

    def _history(self, layer) -> CommitHistory:
        h = self._histories.get(layer)
        if h is None:
            h = self._histories[layer] = CommitHistory()
        return h

    def undo(self) -> None:
        """Undo the last commit into the target labels (exactly restores the earlier values)."""
        self._replay("undo", "undid", " Shift-U: redo.")

    def redo(self) -> None:
        """Redo the last undone commit."""
        self._replay("redo", "redid", "")

    def _replay(self, which: str, verb: str, hint: str) -> None:
        target = self.target_labels(create=False)
        if target is None:
            self._set_status(f"nothing to {which}.")
            return
        h = self._history(target)
        if not h.tracks(target.data):
            h.clear()  # the layer's data was replaced: these commits no longer apply to it
            self._set_status(f"nothing to {which}: the labels' data was replaced since the last commit.")
            return
        c = getattr(h, which)(target.data)
        if c is None:
            self._set_status(f"nothing to {which}.")
            return
        target.refresh()
        self._set_status(f"{verb} object{'s' * (len(c.ids) > 1)} {', '.join(map(str, c.ids))}.{hint}")


_TRANSFORMS = ("scale", "translate", "rotate", "shear", "affine")


def _ids(labels: np.ndarray) -> list[int]:
    """The non-zero ids present in a small-id labels image."""
    return [int(i) + 1 for i in np.flatnonzero(np.bincount(labels.ravel().clip(0))[1:])]


def _note(model) -> str:
    from ..models.registry import DEMO_MODEL

    return ", the offline demo model: pick another and 'Load model' for real work" if (
        model.name == DEMO_MODEL) else ""


def _candidates(preds) -> None:
    for p in preds:
        for i in range(len(p.scores)):
            p.mask(i)  # cached in the Prediction


def _disconnect(emitter, callback) -> None:
    try:
        emitter.disconnect(callback)
    except (TypeError, ValueError, RuntimeError):
        pass


def _unwrap(obj):
    return getattr(obj, "__wrapped__", obj)


def _items(combo: QComboBox) -> list[str]:
    return [combo.itemText(i) for i in range(combo.count())]


def _set_items(combo: QComboBox, items: list[str], current: str | None) -> None:
    combo.blockSignals(True)
    combo.clear()
    combo.addItems(items)
    if current is not None and current in items:
        combo.setCurrentIndex(items.index(current))
    combo.blockSignals(False)


def _guess_registry_name(path: str) -> str:
    """The registry architecture that fits a local checkpoint (by its encoder width)."""
    from ..models.checkpoint import read_state_dict
    from ..models.registry import REGISTRY
    from ..models.sam import arch_of

    arch = arch_of(read_state_dict(path))
    return next((name for name, spec in REGISTRY.items() if spec.arch == arch), "vit_b")
