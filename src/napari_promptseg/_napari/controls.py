"""The dock's controls and their layout (Qt Designer's ``setupUi`` pattern, written by hand).

:func:`setup_ui` makes the controls as attributes of the dock widget and lays them out in a
scroll area, so that no row is squeezed when the window is short; the widget wires them.
"""

from __future__ import annotations

from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_promptseg._napari import layers as L
from napari_promptseg._napari.find_row import FindRow
from napari_promptseg._napari.keys import KEYS
from napari_promptseg.models.registry import REGISTRY
from napari_promptseg.session.settings import CommitSettings, PropagationSettings

__all__ = ["LOCAL_CHECKPOINT", "METHODS", "NEW_LABELS", "BUTTONS", "SCOPES", "EVERYTHING_PARAMS",
           "setup_ui", "items", "set_items", "timer", "values",
           "set_values", "axis_choices"]

LOCAL_CHECKPOINT = "local checkpoint…"
METHODS = {"memory (SAM 2)": "memory", "prompt (box + mask)": "prompt"}  # label -> session.method
NEW_LABELS = "(new) " + L.LABELS_NAME
BUTTONS = [("commit", "Commit (K)"), ("clear", "Clear (Q)"), ("next_mask", "Next mask (J)"),
           ("new_object", "New object (O)"), ("undo", "Undo (U)"), ("redo", "Redo (Shift-U)"),
           ("refine_from_preview", "Refine (G)"), ("propagate", "Propagate (P)"),
           ("mark_end", "Ends here (H)"), ("cancel", "Cancel")]
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
WIDTH = 440  # the dock's maximum width (napari's canvas keeps the rest)


def setup_ui(w: QWidget) -> None:
    """Make the controls as attributes of ``w`` (``model_combo``, ``status``, ``buttons``, ...)
    and lay them out in a vertical scroll area filling ``w``."""
    w.image_combo, w.model_combo, w.device_combo = QComboBox(), QComboBox(), QComboBox()
    w.model_combo.addItems([*REGISTRY, LOCAL_CHECKPOINT])  # sam3: the Find row (concepts) shows
    w.device_combo.addItems(["auto", "cpu", "cuda", "mps"])
    w.load_button = QPushButton("Load model")
    w.embeddings_button = _tip(QPushButton("Load embeddings…"), "read the planes from an embeddings store "
                               "(a .zarr folder made by `promptseg embed`) instead of embedding them; a "
                               "store beside the image's file is used by itself")
    w.labels_combo = QComboBox()
    w.overwrite_check = QCheckBox("overwrite other objects")
    w.undo_spin = _tip(QSpinBox(), "memory kept for undo (U); the oldest steps go beyond it")
    w.undo_spin.setRange(1, 65536)
    w.undo_spin.setSingleStep(64)
    w.undo_spin.setSuffix(" MB")
    w.undo_spin.setValue(int(CommitSettings.undo_mb))
    w.negative_check = QCheckBox("negative points (N)")
    w.object_spin = _tip(QSpinBox(), "new points and boxes belong to this object; O starts a new one")
    w.object_spin.setRange(1, 2**31 - 1)
    w.axis_combo, w.method_combo = QComboBox(), QComboBox()
    w.method_combo.addItems(list(METHODS))
    _tip(w.method_combo, "memory: SAM 2 tracks each object with its memory of the frames seen so far; "
         "prompt: each plane is prompted with the previous plane's mask (box + mask logits), for SAM models")
    w.stop_after_spin = _tip(QSpinBox(), "memory tracking: stop an object after this many frames in a row "
                             "without it (SAM 2's object score; 1: a track ends where its object "
                             "does, e.g. a nucleus' end in a z-stack); never: track to the end (an "
                             "object hidden for a while in a video is found again)")
    w.stop_after_spin.setRange(0, 10**6)
    w.stop_after_spin.setSpecialValueText("never")
    w.stop_after_spin.setValue(PropagationSettings.stop_after or 0)
    w.min_score_spin = _spin(PropagationSettings.min_score,
                             "stop an object when its predicted IoU falls below this")
    w.min_overlap_spin = _spin(PropagationSettings.min_overlap, "stop an object when its mask overlaps "
                               "its mask on the previous plane less than this (IoU)")
    w.status = QLabel("Choose a model, then an image.")
    w.status.setWordWrap(True)
    w.restore_button = QPushButton("Restore autosaved labels")
    w.restore_button.setVisible(False)
    w.everything_button = _tip(QPushButton("Segment everything (Shift-E)"), "SAM's automatic mask "
                               "generator: every object, into a new labels layer (committed labels do "
                               "not change)")
    w.scope_combo = QComboBox()
    w.scope_combo.addItems(list(SCOPES))
    w.everything_spins = {name: _param_spin(*spec) for name, spec in EVERYTHING_PARAMS.items()}
    w.buttons = {name: QPushButton(text) for name, text in BUTTONS}
    w.find_row = FindRow()  # SAM 3's concept prompts: shown while the model finds concepts
    for combo in (w.image_combo, w.model_combo, w.device_combo, w.labels_combo, w.axis_combo,
                  w.method_combo, w.scope_combo):  # long names (layers, choices) must not widen the dock
        combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(12)
    _lay_out(w)


def _lay_out(w: QWidget) -> None:
    form = QFormLayout()
    form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
    rows = (("image", w.image_combo), ("model", w.model_combo), ("device", w.device_combo),
            (None, _row(w.load_button, w.embeddings_button)), ("commit to", w.labels_combo),
            ("", w.overwrite_check), ("undo memory", w.undo_spin), ("object", w.object_spin),
            ("", w.negative_check), ("propagate along", w.axis_combo), ("track with", w.method_combo),
            ("stop after missing frames", w.stop_after_spin),
            ("stop below score", w.min_score_spin), ("stop below overlap", w.min_overlap_spin))
    for label, field in rows:  # no label: the row spans the form's width
        form.addRow(field) if label is None else form.addRow(label, field)
    grid = QGridLayout()
    for i, (name, _) in enumerate(BUTTONS):
        grid.addWidget(w.buttons[name], i // 3, i % 3)
    help_text = QLabel(
        "Click: positive point · Shift-click or right-click: negative point · rectangles in "
        "'promptseg boxes': a box per object.\nKeys (on the canvas, with the image or a promptseg "
        "layer active): " + " · ".join(f"{k}: {v[1]}" for k, v in KEYS.items()))
    help_text.setWordWrap(True)
    inner = QWidget()
    # never shorter than its size hint: a short window scrolls instead of squeezing the rows
    inner.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
    col = QVBoxLayout(inner)
    col.addLayout(form)
    col.addLayout(grid)
    col.addLayout(_row(w.everything_button, w.scope_combo))
    for item in (_everything_section(w.everything_spins), w.find_row, w.status, w.restore_button, help_text):
        col.addWidget(item)
    col.addStretch(1)
    scroll = QScrollArea()
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.Shape.NoFrame)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    scroll.setWidget(inner)
    scroll.setMinimumWidth(inner.minimumSizeHint().width() + scroll.verticalScrollBar().sizeHint().width())
    root = QVBoxLayout(w)
    root.setContentsMargins(0, 0, 0, 0)
    root.addWidget(scroll)
    w.setMaximumWidth(WIDTH)


def _everything_section(spins: dict) -> QWidget:
    """The generator's parameters (Meta's names in the tooltips), folded away by default."""
    from superqt import QCollapsible

    box = QCollapsible("Segment everything parameters")
    inner = QWidget()
    form = QFormLayout(inner)
    for name, spin in spins.items():
        spin.setToolTip(f"{EVERYTHING_PARAMS[name][4]} ({name})")
        form.addRow(EVERYTHING_PARAMS[name][0], spin)
    box.addWidget(inner)
    box.collapse(animate=False)
    return box


def _row(*widgets: QWidget) -> QHBoxLayout:
    row = QHBoxLayout()
    for widget in widgets:
        row.addWidget(widget)
    return row


def _tip(widget, tip: str):
    widget.setToolTip(tip)
    return widget


def _spin(value: float, tip: str) -> QDoubleSpinBox:
    box = _tip(QDoubleSpinBox(), tip)
    box.setRange(0.0, 1.0)
    box.setSingleStep(0.05)
    box.setDecimals(2)
    box.setValue(value)
    return box


def _param_spin(label: str, value, lo, hi, tip: str) -> QSpinBox | QDoubleSpinBox:
    if isinstance(value, int):
        box = QSpinBox()
    else:
        box = QDoubleSpinBox()
        box.setDecimals(3)
        box.setSingleStep(0.01)
    box.setRange(lo, hi)
    box.setValue(value)
    return box


def values(spins: dict) -> dict:
    """``{name: the spin box's value}`` (int or float, as the box)."""
    return {name: (int(spin.value()) if isinstance(spin, QSpinBox) else float(spin.value()))
            for name, spin in spins.items()}


def set_values(spins: dict, new: dict) -> None:
    for name, spin in spins.items():
        spin.setValue(new[name])


def axis_choices(labels: list) -> tuple[list[str], str | None]:
    """The axis box's items for the image's leading axes (their viewer ``labels``) and the one
    chosen by default: z, else t, else the last."""
    # napari's default labels are the axes' negative indices ("-3"): say "axis 0" for those
    names = [f"axis {i}" if str(lab).lstrip("-").isdigit() else f"{lab} (axis {i})"
             for i, lab in enumerate(labels)]
    low = [str(lab).lower() for lab in labels]
    default = next((low.index(k) for k in ("z", "t", "time", "frame") if k in low), len(labels) - 1)
    return names, (names[default] if names else None)


def timer(parent, ms: int, slot) -> QTimer:
    """A single-shot timer of ``ms`` milliseconds calling ``slot`` (restarting it debounces)."""
    t = QTimer(parent)
    t.setSingleShot(True)
    t.setInterval(ms)
    t.timeout.connect(slot)
    return t


def items(combo: QComboBox) -> list[str]:
    return [combo.itemText(i) for i in range(combo.count())]


def set_items(combo: QComboBox, names: list[str], current: str | None) -> None:
    """Replace ``combo``'s items (no signals); select ``current`` when it is one of them."""
    combo.blockSignals(True)
    combo.clear()
    combo.addItems(names)
    if current is not None and current in names:
        combo.setCurrentIndex(names.index(current))
    combo.blockSignals(False)
