"""The dock's Find row: SAM 3's concept prompts (a noun phrase, exemplar boxes) -> every instance
in a new labels layer, a score slider that shows more or fewer at once (no model call), and the
'find exemplars' Shapes layer for example and counter-example boxes.

Shown only while the loaded model finds concepts (``supports_concepts``). The session does the
work (:meth:`~napari_promptseg.session.AnnotationSession.find`, a job with progress and Cancel);
this row reads the controls and the exemplar boxes (through the layers' transforms, so boxes are
``(row0, col0, row1, col1)`` image pixels) and shows the results.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSlider,
    QVBoxLayout,
)

from napari_promptseg._napari import layers as L
from napari_promptseg._napari.bridge import disconnect

__all__ = ["FindRow", "FIND_SCOPES", "FOUND_PREFIX"]

FIND_SCOPES = {"this plane": "plane", "every plane along the axis": "line",  # label -> session scope
               "every frame: detect here, then track (video)": "track"}
FOUND_PREFIX = "found: "
BOX_TIP = (f"Exemplar boxes: draw rectangles in the '{L.EXEMPLARS_NAME}' layer around instances of "
           "the concept (green). Hold Alt while you start a box, or tick this, for a counter-example "
           "(red): something that is not an instance. Boxes are used on every plane searched.")


class FindRow(QGroupBox):
    """The Find controls; :meth:`attach` wires them to the dock widget."""

    def __init__(self) -> None:
        super().__init__("Find (SAM 3)")
        self.text = QLineEdit()
        self.text.setPlaceholderText("a noun phrase, e.g. nucleus (Enter finds)")
        self.text.setToolTip("every instance of this concept, into a new labels layer; with boxes too: "
                             "both together")
        self.find_button = QPushButton("Find")
        self.find_button.setToolTip("find the concept (text and/or exemplar boxes) into a new labels layer")
        self.scope_combo = QComboBox()
        self.scope_combo.addItems(list(FIND_SCOPES))
        self.scope_combo.setToolTip("a z-stack or a video: this plane; every plane along the axis (found "
                                    "on each, one id per instance by overlap); or SAM 3's video model: "
                                    "detect on this frame, then track each instance through the others "
                                    "(one box at most; needs the full sam3.pt)")
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setRange(0, 100)
        self.slider.setValue(50)
        self.slider.setToolTip("show the objects scoring at least this; moving it filters the objects "
                               "found, without running the model again")
        self.score_label = QLabel()
        self.negative_check = QCheckBox("negative boxes (Alt)")
        self.negative_check.setToolTip(BOX_TIP)
        self.clear_button = QPushButton("Clear boxes")
        self.clear_button.setToolTip(f"remove every box of the '{L.EXEMPLARS_NAME}' layer")
        self._lay_out()
        self._on_slider(self.slider.value(), apply=False)
        self.layer = None  # the exemplar boxes' Shapes layer
        self.found_layer = None  # the last Find's Labels layer
        self._w = None
        self.setVisible(False)

    def _lay_out(self) -> None:
        col = QVBoxLayout(self)
        for widgets in ((self.text, self.find_button), (self.scope_combo,),
                        (self.score_label, self.slider), (self.negative_check, self.clear_button)):
            row = QHBoxLayout()
            for widget in widgets:
                row.addWidget(widget)
            col.addLayout(row)
        self.scope_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.scope_combo.setMinimumContentsLength(12)

    def attach(self, w) -> None:
        """Wire the row to the dock widget ``w`` (its session, bridge and viewer)."""
        self._w = w
        w.session.events.found.connect(self._on_found)
        self.text.returnPressed.connect(self.find)
        self.find_button.clicked.connect(self.find)
        self.slider.valueChanged.connect(self._on_slider)
        self.clear_button.clicked.connect(self.clear_boxes)
        self.negative_check.toggled.connect(self._on_negative)

    # ------------------------------------------------------------------ controls
    @property
    def threshold(self) -> float:
        """The slider's score threshold, 0..1."""
        return self.slider.value() / 100

    @property
    def scope(self) -> str:
        """``"plane"`` or ``"line"`` (a 2D image: always the plane)."""
        return FIND_SCOPES[self.scope_combo.currentText()] if self.scope_combo.isEnabled() else "plane"

    def _on_slider(self, value: int, apply: bool = True) -> None:
        self.score_label.setText(f"score ≥ {value / 100:.2f}")
        if apply and self._w is not None:
            self._w.session.set_find_threshold(value / 100)

    def sync(self) -> None:
        """Shown while the model finds concepts, with the exemplar layer made for the image; the
        scope choice only for stacks."""
        w = self._w
        if w is None or w.closed:
            return
        on = bool(getattr(w.session.model, "supports_concepts", False))
        self.setVisible(on)
        image = w.bridge.image_layer
        self.scope_combo.setEnabled(image is not None and len(L.image_plane_shape(image)) > 2)
        if on and image is not None:
            self.ensure_layer()

    # ------------------------------------------------------------------ exemplar boxes
    def ensure_layer(self):
        """The exemplar boxes' Shapes layer of the image (made, or made again for another image)."""
        w = self._w
        v, image = w.viewer, w.bridge.image_layer
        ndim = len(L.image_plane_shape(image))
        ly = self.layer
        if ly is not None and ly in v.layers and ly.ndim == ndim:
            return ly
        if ly is not None:
            self._forget_layer()
            if ly in v.layers:
                v.layers.remove(ly)
        active = v.layers.selection.active
        ly = self.layer = L.add_exemplars_layer(v, image)
        ly.events.data.connect(self._on_boxes)
        ly.mouse_drag_callbacks.insert(0, self._on_press)
        self._on_negative(self.negative_check.isChecked())
        if active is not None and active in v.layers:
            v.layers.selection.active = active  # the keys and clicks keep working where they did
        w._bind_layer_keys()
        return ly

    def _forget_layer(self) -> None:
        ly, self.layer = self.layer, None
        if ly is not None:
            disconnect(ly.events.data, self._on_boxes)
            if self._on_press in ly.mouse_drag_callbacks:
                ly.mouse_drag_callbacks.remove(self._on_press)

    def _on_press(self, layer, event) -> None:
        """Alt held as a box is started: a counter-example (the checkbox flips the default)."""
        if "rectangle" in str(layer.mode):
            negative = self.negative_check.isChecked() ^ ("Alt" in event.modifiers)
            layer.feature_defaults["label"] = 0 if negative else 1

    def _on_negative(self, negative: bool) -> None:
        if self.layer is not None:
            self.layer.feature_defaults["label"] = 0 if negative else 1

    def _on_boxes(self, event=None) -> None:
        action = str(getattr(event, "action", "changed"))
        if not (action.endswith("ing") or "ING" in action):
            L.colour_exemplars(self.layer)

    def boxes(self) -> tuple[np.ndarray, np.ndarray]:
        """The exemplar rectangles as ``(N, 4)`` image boxes ``(row0, col0, row1, col1)`` (from
        any plane) and ``(N,)`` bool: True for an example, False for a counter-example."""
        w, ly = self._w, self.layer
        if ly is None or ly not in w.viewer.layers or w.bridge.image_layer is None:
            return np.zeros((0, 4)), np.zeros(0, bool)
        boxes = L.boxes_in_image(ly, w.bridge.image_layer)
        rect = np.array([k == "rectangle" for k in ly.shape_type], bool)
        feats = ly.features
        labels = (np.asarray(feats["label"].fillna(1), int) if "label" in feats and len(feats) == len(rect)
                  else np.ones(len(rect), int))
        return boxes, labels[rect] == 1

    def clear_boxes(self) -> None:
        if self.layer is not None and len(self.layer.data):
            self.layer.data = []

    # ------------------------------------------------------------------ find and its results
    def find(self) -> None:
        """Find the text and/or boxes on this plane or every plane, into a new labels layer."""
        w = self._w
        if w is None or w.closed:
            return
        w.bridge.sync_plane()
        boxes, positive = self.boxes()
        if w.bridge.image_layer is not None:
            self.ensure_layer()  # removed by the user: there again for the next boxes
        text = self.text.text().strip() or None
        try:
            w.session.find(text, boxes[positive], boxes[~positive], self.scope, w.propagation_axis,
                           self.threshold)
        except (TypeError, ValueError):
            pass  # the session said why in the status line

    def _on_found(self, array, planes) -> None:
        """Find wrote ``planes`` of ``array``: refresh its layer, or make one for a new array."""
        w = self._w
        v, ly = w.viewer, self.found_layer
        if ly is not None and ly.data is array:
            if ly in v.layers:
                ly.refresh()
            return
        if w.bridge.image_layer is None or w.session.found is None:
            return
        active = v.layers.selection.active
        ly = self.found_layer = L.add_found_layer(v, w.bridge.image_layer, array,
                                                  FOUND_PREFIX + w.session.found.query.name)
        ly.events.paint.connect(self._on_found_paint)
        b = w.bridge  # below the prompt layers: boxes, points and the preview stay visible on it
        ours = [v.layers.index(x) for x in (self.layer, b.points_layer, b.boxes_layer, b.preview_layer)
                if x is not None and x in v.layers]
        if ours and min(ours) < v.layers.index(ly):
            v.layers.move(v.layers.index(ly), min(ours))
        if active is not None and active in v.layers:
            v.layers.selection.active = active

    def _on_found_paint(self, event=None) -> None:
        if self._w is not None and self.found_layer is not None and self._w.session.found is not None \
                and self.found_layer.data is self._w.session.found.target:
            self._w.session.found_edited()

    def close(self) -> None:
        """Disconnect from the session and the layers (the layers stay)."""
        if self._w is not None:
            disconnect(self._w.session.events.found, self._on_found)
        self._forget_layer()
        if self.found_layer is not None:
            disconnect(self.found_layer.events.paint, self._on_found_paint)
