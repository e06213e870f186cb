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
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..commits import CommitHistory, commit_labels, next_free_id
from ..embeddings import EmbeddingCache
from ..interactive import bounding_box, decode_objects, group_prompts
from ..prompts import inside_image
from ..propagate import MIN_OVERLAP, MIN_SCORE
from . import layers as L
from .decoding import LatestOnlyRunner
from .plane_state import SliceState, compose, fmt, ids_in, object_ids, planes_of, signature
from .propagation import PropagationMixin

__all__ = ["PromptSegWidget", "KEYS"]

LOCAL_CHECKPOINT = "local checkpoint…"
NEW_LABELS = "(new) " + L.LABELS_NAME
#: J skips candidate masks whose predicted IoU is below this (the model itself calls them wrong;
#: e.g. the untrained second and third outputs of promptseg_demo); the best one is always kept
MIN_CANDIDATE_SCORE = 0.1

#: key -> (method name, help text); bound on the viewer while the widget is open
KEYS = {
    "K": ("commit", "commit (keep) the object"),
    "Q": ("clear", "clear the prompts"),
    "J": ("next_mask", "next candidate mask"),
    "N": ("toggle_negative", "toggle negative points"),
    "G": ("refine_from_preview", "refine from the painted preview"),
    "U": ("undo", "undo the last commit"),
    "Shift-U": ("redo", "redo"),
    "P": ("propagate", "propagate through the stack"),
}


class PromptSegWidget(PropagationMixin, QWidget):
    """Interactive Segment Anything for one napari viewer (see the module docstring)."""

    PREFETCH = 4  # planes embedded ahead in the direction the user moves through a stack

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        # napari hands plugins a public-only proxy; keep the real viewer so that layers from its
        # events and from the user compare by identity
        self.viewer = _unwrap(napari_viewer)
        self.model = None
        self.embedding = None  # of the displayed plane
        self.image_layer = None
        self.points_layer = None
        self.boxes_layer = None
        self.preview_layer = None
        self._stack = None  # StackEmbeddings of the image (a 2D image is a stack of one plane)
        self._slice: tuple[int, ...] = ()  # the displayed plane's index (leading axes)
        self._move = (0, 1)  # (leading axis, direction) the user last moved along: prefetch that way
        self._states: dict[tuple[int, ...], SliceState] = {}  # decoded prompts per plane
        self._active: tuple[int, ...] = ()  # plane prompted last: J and the status line act on it
        self._propagation = None  # the running propagation worker
        self._linked: set[tuple[int, ...]] = set()  # planes a propagation seeded or wrote
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
        self._disk = None  # DiskCache, created on first use
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
        self.axis_combo = QComboBox()
        self.min_score_spin = _spin(MIN_SCORE, "stop an object when its predicted IoU falls below this")
        self.min_overlap_spin = _spin(MIN_OVERLAP, "stop an object when its mask overlaps its mask on "
                                      "the previous plane less than this (IoU)")
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
        form.addRow("propagate along", self.axis_combo)
        form.addRow("stop below score", self.min_score_spin)
        form.addRow("stop below overlap", self.min_overlap_spin)

        self.buttons = {}
        grid = QGridLayout()
        specs = [("commit", "Commit (K)"), ("clear", "Clear (Q)"), ("next_mask", "Next mask (J)"),
                 ("undo", "Undo (U)"), ("redo", "Redo (Shift-U)"), ("refine_from_preview", "Refine (G)"),
                 ("propagate", "Propagate (P)"), ("cancel", "Cancel")]
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
        self.viewer.dims.events.point.connect(self._on_dims)
        self.viewer.dims.events.axis_labels.connect(self._refresh_axis_choices)
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
        self.cancel_propagation()
        for key in KEYS:
            self.viewer.bind_key(key, None, overwrite=True)
        _disconnect(self.viewer.dims.events.point, self._on_dims)
        _disconnect(self.viewer.dims.events.axis_labels, self._refresh_axis_choices)
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
        """Pick the active (else the first) image layer when none is chosen yet."""
        import napari.layers

        if self.image_layer is not None or self._closed:
            return
        active = self.viewer.layers.selection.active
        candidates = ([active] if active is not None else []) + list(self.viewer.layers)
        for ly in candidates:
            if isinstance(ly, napari.layers.Image) and len(L.image_plane_shape(ly)) >= 2:
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
        """Segment ``layer``: a napari Image layer, 2D or a stack ``(..., Y, X)`` (z-stack, time
        series, T x Z), gray or RGB(A). The displayed plane is embedded at once, its neighbours
        in the background; prompts belong to the plane they were placed on."""
        import napari.layers

        layer = _unwrap(layer)
        if not isinstance(layer, napari.layers.Image):
            raise TypeError(f"set_image needs a napari Image layer, got {type(layer).__name__}")
        plane = L.image_plane_shape(layer)
        if len(plane) < 2:
            raise ValueError(f"layer {layer.name!r} of shape {plane} has no 2D plane to segment")
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
        self._slice = self._displayed_slice()
        self._refresh_axis_choices()
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
        """The image, window or model changed: every embedding and decoded state is void."""
        if self._propagating:
            self.cancel_propagation()
            self._set_status("propagation stopped: the image, its contrast limits or the model changed; "
                             "press P again when the planes are decoded.")
        self._stack = None
        self.embedding = None
        self._embed_token = None
        self._linked.clear()
        self._generation += 1  # any decode in flight is now stale
        self._states.clear()
        self._commit_after_decode = False
        self.cancel_propagation()

    @property
    def n_lead(self) -> int:
        """Number of leading (non-plane) axes of the image: 0 for 2D, 1 for Z or T, 2 for T x Z."""
        return len(L.image_plane_shape(self.image_layer)) - 2 if self.image_layer is not None else 0

    def _displayed_slice(self) -> tuple[int, ...]:
        """The image's plane index shown in the viewer (from the dims point through the layer's
        transform, so a scale of (4, 1, 1) maps world z 28 to plane 7)."""
        n = self.n_lead
        if n == 0:
            return ()
        shape = L.image_plane_shape(self.image_layer)
        data = np.asarray(self.image_layer.world_to_data(self.viewer.dims.point), float)
        return tuple(int(np.clip(np.round(v), 0, s - 1)) for v, s in zip(data[:n], shape[:n], strict=True))

    def _plane_view(self) -> bool:
        """True when the viewer shows the image's planes: a 2D view of its last two axes (in
        either order; a rolled stack would put clicks on planes the user does not see)."""
        dims = self.viewer.dims
        if self.image_layer is None:
            return True
        if dims.ndisplay != 2:
            return False
        return self.n_lead == 0 or set(dims.displayed) == {dims.ndim - 2, dims.ndim - 1}

    def _on_dims(self, event=None) -> None:
        if self._closed or self.image_layer is None or self.n_lead == 0:
            return
        new = self._displayed_slice()
        if new == self._slice:
            return
        old, self._slice = self._slice, new
        moved = [i for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b]
        if moved:
            self._move = (moved[0], 1 if new[moved[0]] > old[moved[0]] else -1)
        self.embedding = self._stack.cached(new) if self._stack is not None else None
        if self._stack is None:
            return
        if self.embedding is None:
            self._request_current()
        else:
            self._set_status(self._plane_status())
            self._prefetch()

    def _plane_status(self) -> str:
        """The status line for the displayed plane: its prompts' masks, or what propagation put there."""
        ly = self.preview_layer
        if self._slice and self._slice not in self._states and ly is not None and ly in self.viewer.layers:
            n = len(ids_in(np.asarray(ly.data[self._slice])))
            if n:
                return (f"plane {fmt(self._slice)}: {n} propagated object{'s' * (n > 1)} in the preview. "
                        "Correct a plane with points and press P again; K commits.")
        return self._describe()

    def _on_contrast(self, event=None) -> None:
        data = self.image_layer.data[0] if self.image_layer.multiscale else self.image_layer.data
        if np.dtype(data.dtype) != np.uint8:  # uint8 goes to the model unchanged
            self._reembed_timer.start()

    def _on_image_data(self, event=None) -> None:
        self._forget_embedding()
        self._ensure_layers(reset=True)
        self._slice = self._displayed_slice()
        self._refresh_axis_choices()
        self._start_embedding()

    def _on_transform(self, event=None) -> None:
        for ly in (self.points_layer, self.boxes_layer, self.preview_layer):
            if ly is not None:
                L.copy_transform(self.image_layer, ly)

    def _start_embedding(self) -> None:
        """A new image, window or model: plane embeddings start again, the displayed one first.
        One window (the layer's contrast limits) serves every plane of a stack."""
        from ..stack import StackEmbeddings

        if self.model is None or self.image_layer is None or self._closed:
            if self.image_layer is not None and self.model is None:
                self._set_status("choose a model: the image is embedded as soon as one is loaded.")
            return
        layer = self.image_layer
        data = layer.data[0] if layer.multiscale else layer.data
        limits = tuple(float(v) for v in layer.contrast_limits)
        self._forget_embedding()
        self._stack = StackEmbeddings(self.model, data, limits, rgb=layer.rgb, cache=self._cache,
                                      disk=self._disk_cache())
        self._request_current()

    def _disk_cache(self):
        """The shared on-disk embedding cache (``PROMPTSEG_EMBED_CACHE_GB=0`` turns it off)."""
        import os

        from ..embeddings import DiskCache

        if os.environ.get("PROMPTSEG_EMBED_CACHE_GB", "").strip() in ("0", "0.0"):
            return None
        if self._disk is None:
            self._disk = DiskCache()
        return self._disk

    def _request_current(self) -> None:
        """Embed the displayed plane (a pending prefetch is replaced: the displayed plane first)."""
        from napari.utils import progress

        layer, model, stack, idx = self.image_layer, self.model, self._stack, self._slice
        emb = stack.cached(idx)
        if emb is not None:
            self._embed_token = None
            self._embedded(emb)
            return
        token = self._embed_token = ("current", object(), layer, model, stack, idx)
        self._close_pbar()
        where = f" plane {fmt(idx)}" if idx else ""
        self._embed_pbar = progress(total=0, desc=f"promptseg: embedding {layer.name}{where}")
        self._set_status(f"embedding {layer.name}{where} with {model.name}{_note(model)}…")
        # a request not started yet is replaced, so encoders never pile up
        self._embedder.submit(token, lambda: stack.get(idx))

    def _prefetch(self) -> None:
        """Embed the next planes in the direction the user moves, one at a time, while idle."""
        stack = self._stack
        if (stack is None or self.n_lead == 0 or self._closed or self._propagating
                or (self._embed_token is not None and self._embed_token[0] == "current")):
            return
        order = stack.prefetch_order(self._slice, *self._move, count=self.PREFETCH)
        if not order:
            return
        idx = order[0]
        token = self._embed_token = ("prefetch", object(), self.image_layer, self.model, stack, idx)
        self._embedder.submit(token, lambda: stack.get(idx))

    def _on_embedded(self, token, result, error) -> None:
        if token is not self._embed_token:
            return  # the image, window, model or plane changed meanwhile: drop
        self._embed_token = None
        kind, _, layer, model, stack, idx = token
        if kind == "current":
            self._close_pbar()
        if layer is not self.image_layer or model is not self.model or stack is not self._stack:
            return
        if error is not None:
            self._set_status(f"could not embed {layer.name}: {error}")
            return
        if idx == self._slice:
            self._embedded(result)
        else:
            self._prefetch()

    def _embedded(self, emb) -> None:
        self.embedding = emb
        where = f" plane {fmt(self._slice)}" if self._slice else ""
        self._set_status(f"{self.image_layer.name}{where}: ready ({self.model.name}{_note(self.model)}). "
                         "Click on an object.")
        self.request_decode()
        self._prefetch()

    def _close_pbar(self) -> None:
        if self._embed_pbar is not None:
            self._embed_pbar.close()
            self._embed_pbar = None

    def cancel(self) -> None:
        """Cancel a download/model load, a propagation, and drop an embedding in progress."""
        self._cancel_load = True
        self._load_token = None
        self.cancel_propagation()
        if self._embed_token is not None and self.embedding is None:
            self._embed_token = None
            self._close_pbar()
        self._set_status("cancelled.")

    @property
    def ready(self) -> bool:
        """True when the displayed plane's embedding is ready for prompts."""
        return self.embedding is not None

    # ---------------------------------------------------------------- layers
    def _ensure_layers(self, reset: bool = False) -> None:
        """(Re)create the prompt and preview layers, aligned with the image."""
        if self.image_layer is None or self._closed:
            return
        v, img = self.viewer, self.image_layer
        shape = L.image_plane_shape(img)
        if self.points_layer is not None and self.points_layer.ndim != len(shape):  # another image's
            self._drop_prompt_layers()
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

    def _drop_prompt_layers(self) -> None:
        """Remove prompt layers made for an image of another dimensionality."""
        for ly in (self.points_layer, self.boxes_layer):
            if ly is not None:
                _disconnect(ly.events.data, self._on_points if ly is self.points_layer else self._on_boxes)
                if ly in self.viewer.layers:
                    self.viewer.layers.remove(ly)
        self.points_layer = self.boxes_layer = None

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
            self._states.clear()  # a new preview decodes every prompted plane again
            self.cancel_propagation()
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
            self._drop_logits()  # a point moved or removed: the old mask is no longer this prompt's
        self.request_decode()

    def _on_boxes(self, event=None) -> None:
        action = str(getattr(event, "action", "changed"))
        if action.endswith("ing") or "ING" in action:
            return
        self._drop_logits()
        self.request_decode()

    def _drop_logits(self) -> None:
        for st in self._states.values():
            st.logits.clear()

    def _on_paint(self, event=None) -> None:
        self._generation += 1  # the user painted the preview: a decode in flight must not overwrite it
        self._shown = self._generation

    @property
    def predictions(self) -> list:
        """The last shown Prediction per object of the plane prompted last."""
        st = self._states.get(self._active)
        return list(st.preds) if st is not None else []

    @property
    def choices(self) -> list[int]:
        """The mask index shown per object of the plane prompted last."""
        st = self._states.get(self._active)
        return list(st.choices) if st is not None else []

    def _plane_prompts(self) -> dict[tuple[int, ...], tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Points ``(N, 2)``, labels ``(N,)`` and boxes ``(B, 4)`` per image plane (``()`` for 2D).

        A point or box belongs to the plane given by its own coordinates (through the layers'
        transforms), never to a global counter. Points off the image and boxes that do not
        overlap it are left out."""
        if self.image_layer is None or self.points_layer is None or self.boxes_layer is None:
            return {}
        shape = L.image_plane_shape(self.image_layer)
        n, (h, w) = len(shape) - 2, shape[-2:]
        pts, labels = L.points_in_image(self.points_layer, self.image_layer)
        keep = inside_image(pts[:, -2:], (h, w)) if len(pts) else np.zeros(0, bool)
        boxes, box_lead = L.boxes_in_image(self.boxes_layer, self.image_layer, with_lead=True)
        lo = np.maximum(boxes[:, :2], -0.5)
        hi = np.minimum(boxes[:, 2:], [h - 0.5, w - 0.5])
        bkeep = ((hi - lo) > 0).all(1)
        p_planes, keep = planes_of(pts[:, :n], shape[:n], keep)
        b_planes, bkeep = planes_of(box_lead[:, :n], shape[:n], bkeep)
        out = {}
        used = {p_planes[i] for i in np.flatnonzero(keep)} | {b_planes[i] for i in np.flatnonzero(bkeep)}
        for plane in sorted(used):
            pm = keep & np.array([q == plane for q in p_planes], bool).reshape(-1)
            bm = bkeep & np.array([q == plane for q in b_planes], bool).reshape(-1)
            out[plane] = (pts[pm][:, -2:], labels[pm], boxes[bm])
        return out

    def objects_by_plane(self) -> dict[tuple[int, ...], list]:
        """The objects the prompts describe, per image plane (see :meth:`_plane_prompts`);
        objects are grouped per plane as in ``interactive.group_prompts``. A plane with only
        negative points has no object (``[]``): the user says the objects are not there."""
        return {plane: group_prompts(pts, labels, boxes)
                for plane, (pts, labels, boxes) in self._plane_prompts().items()}

    def current_objects(self):
        """The objects prompted on the displayed plane."""
        return self.objects_by_plane().get(self._slice, [])

    def request_decode(self) -> None:
        """Decode the prompts of every plane whose prompts changed, in the background; the
        preview updates when it is done. Planes without prompts keep their preview (e.g. a
        propagation) unless their prompts were all removed."""
        if self._closed:
            return
        self._ensure_layers()
        self._generation += 1
        gen = self._generation
        stack = self._stack
        if stack is None:
            return
        if not self._plane_view():
            self._set_status("prompts work in a 2D view of the image's last two axes (Y, X): switch "
                             "to 2D (ndisplay) and do not roll or transpose them.")
            return
        prompts = self._plane_prompts()  # once per request: every point goes through the transforms
        by_plane = {plane: group_prompts(*v) for plane, v in prompts.items()}
        sigs = {p: signature(objs) for p, objs in by_plane.items()}
        changed = {p: o for p, o in by_plane.items()
                   if p not in self._states or self._states[p].sig != sigs[p]}
        removed = [p for p in self._states if p not in by_plane]
        if not changed and not removed:
            self._shown = gen
            return
        if (self._slice in changed and stack.cached(self._slice) is None and self._embed_token is not None
                and self._embed_token[0] == "current"):
            self._set_status("still embedding: your prompts are used as soon as it is ready.")
            self._submitted = gen  # a commit or propagation waits for these prompts' masks
            return  # _embedded() decodes them
        model = self.model
        plane_shape = L.image_plane_shape(self.image_layer)[-2:]
        mask_inputs = {p: dict(self._states[p].logits) if p in self._states else {} for p in changed}
        # (ids of earlier decodes, propagated objects left); a negative point removes the one under it
        bases = {p: self._base(p, prompts[p][0][prompts[p][1] == 0]) for p in changed}

        def work():
            out = {}
            for p, objs in changed.items():
                emb = stack.get(p) if objs else None
                preds = decode_objects(model, emb, objs, mask_inputs[p]) if objs else []
                choices = [q.best for q in preds]
                hint, kept = bases[p]
                ids = object_ids(objs, hint, kept)
                masks = [q.mask(c) for q, c in zip(preds, choices, strict=True)]
                plane = compose(masks, ids, kept, plane_shape)
                out[p] = SliceState(sigs[p], emb, preds, choices, {}, plane, ids, kept)
            return out, removed

        self._submit(gen, stack, work)

    def _base(self, p: tuple[int, ...], negatives: np.ndarray) -> tuple[list[int] | None, np.ndarray | None]:
        """For decoding plane ``p``: the preview ids its objects had, and the propagated objects
        on it that prompts there do not replace (a correction on a propagated plane edits the
        object it lands on and keeps the others; a negative point ``(row, col)`` in
        ``negatives`` removes the propagated object under it)."""
        st = self._states.get(p)
        hint, kept = (st.ids, st.kept) if st is not None else (None, None)
        ly = self.preview_layer
        if st is None and p and p in self._linked and ly is not None and ly in self.viewer.layers:
            kept = np.array(ly.data[p])
        if kept is not None and len(negatives):
            rc = np.clip(np.round(negatives).astype(int), 0, np.array(kept.shape) - 1)
            kept = np.where(np.isin(kept, kept[rc[:, 0], rc[:, 1]][kept[rc[:, 0], rc[:, 1]] > 0]), 0, kept)
        return hint, (kept if kept is not None and kept.any() else None)

    def _submit(self, gen: int, stack, work) -> None:
        self._submitted = gen
        self._runner.submit((gen, stack), work)

    def _on_decoded(self, token, result, error) -> None:
        gen, stack = token
        if self._closed or gen != self._generation or stack is not self._stack:
            return  # stale: the prompts, image or model changed since
        if error is not None:
            self._commit_after_decode = False
            self._set_status(f"decode failed: {error}")
            return
        states, removed = result
        for p in removed:
            self._states.pop(p, None)
            self._write_planes({p: None})
        for p, st in states.items():
            st.logits = {i: q.logits[c] for i, (q, c) in enumerate(zip(st.preds, st.choices, strict=True))}
            self._states[p] = st
        self._write_planes({p: st.plane for p, st in states.items()})
        if states:
            self._active = self._slice if self._slice in states else max(states)
        self._shown = gen
        self._set_status(self._describe())
        preds = [q for st in states.values() for q in st.preds]
        if any(len(_offered(q, q.best)) > 1 for q in preds):  # J's other candidates, off the UI thread
            threading.Thread(target=_candidates, args=(preds,), daemon=False).start()
        if self._commit_after_decode:
            self._commit_after_decode = False
            self.commit()

    def _write_planes(self, planes: dict) -> None:
        """Write ``{plane index: (H, W) preview or None (= empty)}`` into the preview layer."""
        ly = self.preview_layer
        if ly is None or ly not in self.viewer.layers or not planes:
            return
        if () in planes:  # 2D: a new array is the fastest update
            p = planes[()]
            ly.data = p if p is not None else np.zeros_like(ly.data)
            return
        data = ly.data
        for p, plane in planes.items():
            data[p] = 0 if plane is None else plane
        ly.refresh()

    def _describe(self) -> str:
        preds, choices = self.predictions, self.choices
        if not preds:
            model = f" ({self.model.name}{_note(self.model)})" if self.model is not None else ""
            where = f" on plane {fmt(self._slice)}" if self._slice else ""
            return f"ready{model}{where}: click on an object (Shift-click: background) or draw a box."
        parts = []
        for p, c in zip(preds, choices, strict=True):
            offered = _offered(p, c)  # the candidates J cycles through
            if len(offered) > 1:
                parts.append("masks " + " ".join(
                    (f"[{p.scores[i]:.2f}]" if i == c else f"{p.scores[i]:.2f}") for i in offered
                ) + " (J: next)")
            else:
                parts.append(f"score {p.scores[c]:.2f}")
        n = len(preds)
        where = f" on plane {fmt(self._active)}" if self._active else ""
        return f"{n} object{'s' * (n > 1)}{where}: " + "; ".join(parts) + ". K: commit."

    def next_mask(self) -> None:
        """Show the next candidate mask (by score) of each ambiguous object of the plane
        prompted last."""
        st = self._states.get(self._active)
        orders = [] if st is None else [_offered(p, c) for p, c in zip(st.preds, st.choices, strict=True)]
        if not any(len(o) > 1 for o in orders):
            low = st is not None and any(len(p.scores) > 1 for p in st.preds)
            why = (f"the other candidate masks score below {MIN_CANDIDATE_SCORE}" if low
                   else "only one candidate mask")
            self._set_status(f"{why}: add a point or a box to change the mask.")
            return
        choices = [int(o[(o.index(c) + 1) % len(o)]) for o, c in zip(orders, st.choices, strict=True)]
        # not a new prompt state: a decode in flight for newer prompts still lands
        st.choices = choices
        st.logits = {i: q.logits[c] for i, (q, c) in enumerate(zip(st.preds, choices, strict=True))}
        masks = [q.mask(c) for q, c in zip(st.preds, choices, strict=True)]
        st.plane = compose(masks, st.ids, st.kept, st.plane.shape)
        self._write_planes({self._active: st.plane})
        self._set_status(self._describe())

    def refine_from_preview(self) -> None:
        """Use each object of the displayed plane's (painted) preview as a mask prompt, with its
        bounding box and the points inside that box (all points when there is one object)."""
        if self.embedding is None or self.preview_layer is None or self._closed:
            return
        p = self._slice
        preview = np.array(self.preview_layer.data[p] if p else self.preview_layer.data)
        ids = ids_in(preview)
        if not ids:
            self._set_status("the preview is empty: paint the object into it first.")
            return
        masks = [preview == i for i in ids]
        boxes = np.array([bounding_box(m) for m in masks])
        pts, labels, _ = self._plane_prompts().get(p, (np.zeros((0, 2)), np.zeros(0, np.int32), None))
        objects = group_prompts(pts, labels, boxes)
        self._generation += 1
        model, emb, stack = self.model, self.embedding, self._stack
        sig = signature(self.current_objects())

        def work():
            mask_inputs = {i: model.mask_prompt(emb, m) for i, m in enumerate(masks)}
            preds = decode_objects(model, emb, objects, mask_inputs)
            st = SliceState(sig, emb, preds, [0] * len(preds), {},
                             compose([q.mask(0) for q in preds], ids, None, preview.shape), ids, None)
            return {p: st}, []

        self._submit(self._generation, stack, work)

    # ---------------------------------------------------------------- commit, undo, clear
    def _clear_prompts(self) -> None:
        if self.points_layer is not None and len(self.points_layer.data):
            self.points_layer.data = np.zeros((0, self.points_layer.ndim))
        if self.boxes_layer is not None and len(self.boxes_layer.data):
            self.boxes_layer.data = []
        self.cancel_propagation()
        self._states.clear()
        self._linked.clear()
        self._commit_after_decode = False
        self._generation += 1
        self._shown = self._generation
        if self.preview_layer is not None and self.preview_layer in self.viewer.layers:
            if self.preview_layer.data.any():
                self.preview_layer.data = np.zeros_like(self.preview_layer.data)
        self._set_status(self._describe())

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
        if self._propagating:
            self._set_status("a propagation is running: wait for it or press Cancel, then commit.")
            return ()
        if self._submitted == self._generation and self._shown != self._generation:
            self._commit_after_decode = True  # commit what the newest prompts give, not older
            self._set_status("committing as soon as the decode finishes…")
            return ()
        preview = np.ascontiguousarray(self.preview_layer.data)
        h, w = preview.shape[-2:]
        planes = preview.reshape(-1, h, w)  # a view: one row per plane of the stack
        used = np.flatnonzero(planes.reshape(len(planes), -1).any(1))
        if not len(used):
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
            z0, z1 = int(used[0]), int(used[-1]) + 1  # only the block of planes with objects
            groups = self._commit_groups(planes[z0:z1], z0)
            block = target.data.reshape(-1, h, w)[z0:z1]
            c = commit_labels(block, groups, overwrite=overwrite, first_id=next_free_id(target.data),
                              offset=z0 * h * w)
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

    def _commit_groups(self, block: np.ndarray, z0: int) -> np.ndarray:
        """One group per object to commit, for planes ``z0:`` (flat plane numbers) of the preview.

        Planes linked by a propagation share ids (a propagated object is one 3D label); on any
        other plane each object is its own label, so two cells clicked on two planes never merge.
        """
        lead = L.image_plane_shape(self.image_layer)[:-2]
        linked = {int(np.ravel_multi_index(p, lead)) for p in self._linked} if lead else set()
        groups = np.zeros(block.shape, np.int32)
        nxt = 256  # preview ids are < 256 (uint8): linked objects keep theirs, the others count up
        for k in range(len(block)):
            if z0 + k in linked:
                groups[k] = block[k]
                continue
            for i in ids_in(block[k]):
                groups[k][block[k] == i] = nxt
                nxt += 1
        return groups

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


def _spin(value: float, tip: str) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setRange(0.0, 1.0)
    box.setSingleStep(0.05)
    box.setDecimals(2)
    box.setValue(value)
    box.setToolTip(tip)
    return box


def _note(model) -> str:
    from ..models.registry import DEMO_MODEL

    return ", the offline demo model: pick another and 'Load model' for real work" if (
        model.name == DEMO_MODEL) else ""


def _offered(pred, chosen: int) -> list[int]:
    """Candidate indices that J cycles through, best score first: those scoring at least
    :data:`MIN_CANDIDATE_SCORE`, plus the best and the one shown."""
    order = [int(k) for k in np.argsort(-pred.scores)]
    return [k for k in order if k in (order[0], chosen) or pred.scores[k] >= MIN_CANDIDATE_SCORE]


def _candidates(preds) -> None:
    for p in preds:
        for i in _offered(p, p.best):  # not the ones J skips
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
