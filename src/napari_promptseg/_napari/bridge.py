"""The layer bridge: napari layers <-> the annotation session.

Reads the prompt layers (points with features ``label`` 1/0 and ``object``; rectangles with
feature ``object``) through the layers' transforms into per-plane, per-object prompts; shows the
session's preview and commits in Labels layers; follows the displayed plane, the image's
transforms, contrast limits and data. It holds no segmentation state of its own.
"""

from __future__ import annotations

import itertools

import numpy as np

from napari_promptseg._napari import layers as L
from napari_promptseg.core.prompts import inside_image
from napari_promptseg.labels.write import level0
from napari_promptseg.session.planes import merge_prompts

__all__ = ["LayerBridge", "disconnect"]

_TRANSFORMS = ("scale", "translate", "rotate", "shear", "affine")


class LayerBridge:
    """Connects ``session`` with ``viewer``'s layers for one image layer at a time."""

    def __init__(self, viewer, session) -> None:
        self.viewer, self.session = viewer, session
        self.image_layer = self.points_layer = self.boxes_layer = self.preview_layer = None
        self.target_layer = self.everything_layer = None
        self.negative = False
        self._syncing = False
        self.layers_made = lambda: None  # called after the bridge (re)made one of its layers
        ev = session.events
        ev.preview.connect(self._on_preview)
        ev.preview_reset.connect(self._on_preview_reset)
        ev.target.connect(self._on_target_created)
        ev.labels.connect(self._on_labels)
        ev.everything.connect(self._on_everything)
        ev.prompts_cleared.connect(self._clear_prompt_layers)
        ev.current_object.connect(self._on_current_object)
        viewer.dims.events.point.connect(self.sync_plane)

    # ------------------------------------------------------------------ image
    def set_image(self, layer) -> None:
        """Segment the Image ``layer`` (2D or a stack, gray or RGB(A)); prompt and preview layers
        are (re)made to match it."""
        if self.image_layer is not None:
            self._disconnect_image()
        self.image_layer = layer
        data = layer.data[0] if layer.multiscale else layer.data
        source = L.source_path(layer)
        self.ensure_prompt_layers()
        self._clear_prompt_layers()  # the session starts the new image without prompts
        found = self.store_beside(self.session.model, data.shape, layer.rgb)
        self.session.set_image(data, rgb=layer.rgb, window=self.window(), source_path=source,
                               embeddings=found, scale=L.voxel_size(layer))
        target = self.target_layer
        if target is not None and target in self.viewer.layers and (
                level0_shape(target) == L.image_plane_shape(layer)):
            self.session.set_target(_array(target))  # the chosen labels still fit: commits go on there
        else:
            self.use_target(None)
        layer.events.data.connect(self._on_image_data)
        for name in _TRANSFORMS:
            getattr(layer.events, name).connect(self._on_transform)
        self._on_transform()
        self.sync_plane()

    def store_beside(self, model, shape=None, rgb=None):
        """The embeddings store beside the image layer's file (a sibling ``*.zarr`` folder) made
        by ``model`` for an image of ``shape`` (default: the session's image), or None."""
        from napari_promptseg.session.stores import find_store

        s, layer = self.session, self.image_layer
        if shape is None:
            if s.image is None:
                return None
            shape, rgb = s.image.shape, s.rgb
        return find_store(L.source_path(layer), model, tuple(shape), bool(rgb)) if layer is not None else None

    def window(self) -> tuple[float, float]:
        return tuple(float(v) for v in self.image_layer.contrast_limits)

    def _disconnect_image(self) -> None:
        ly = self.image_layer
        disconnect(ly.events.data, self._on_image_data)
        for name in _TRANSFORMS:
            disconnect(getattr(ly.events, name), self._on_transform)

    def _on_image_data(self, event=None) -> None:
        self.set_image(self.image_layer)

    def _on_transform(self, event=None) -> None:
        for ly in (self.points_layer, self.boxes_layer, self.preview_layer, self.target_layer):
            if ly is not None and ly.ndim == self.image_layer.ndim - (1 if self.image_layer.rgb else 0):
                L.copy_transform(self.image_layer, ly)

    def displayed_plane(self) -> tuple[int, ...]:
        """The image's plane index shown in the viewer (dims point through the layer's transform,
        so a scale of (4, 1, 1) maps world z 28 to plane 7)."""
        shape = L.image_plane_shape(self.image_layer)
        n = len(shape) - 2
        if n == 0:
            return ()
        data = np.asarray(self.image_layer.world_to_data(self.viewer.dims.point), float)
        return tuple(int(np.clip(np.round(v), 0, s - 1)) for v, s in zip(data[:n], shape[:n], strict=True))

    def plane_view(self) -> bool:
        """True when the viewer shows the image's planes: a 2D view of its last two axes."""
        dims = self.viewer.dims
        if dims.ndisplay != 2:
            return False
        return not self.session.lead_shape or set(dims.displayed) == {dims.ndim - 2, dims.ndim - 1}

    def sync_plane(self, event=None) -> None:
        if self.image_layer is not None and self.session.image is not None:
            self.session.set_plane(self.displayed_plane())

    # ------------------------------------------------------------------ layers
    def restore_prompt_layers(self) -> None:
        """Make the prompt layers again when one was removed and the image is still there; the
        session's prompts follow the (new, empty) layers."""
        if self.image_layer is not None and (self.points_layer is None or self.boxes_layer is None):
            self.ensure_prompt_layers()
            self.push_prompts()

    def ensure_prompt_layers(self) -> None:
        v, img = self.viewer, self.image_layer
        ndim = len(L.image_plane_shape(img))
        for ly in (self.points_layer, self.boxes_layer):
            if ly is not None and ly.ndim != ndim and ly in v.layers:  # made for another image
                v.layers.remove(ly)
        if self.points_layer is None or self.points_layer not in v.layers or self.points_layer.ndim != ndim:
            self.points_layer = L.add_points_layer(v, img)
            self.points_layer.events.data.connect(self._on_prompts)
            self.points_layer.mouse_drag_callbacks.insert(0, self._on_press)
        if self.boxes_layer is None or self.boxes_layer not in v.layers or self.boxes_layer.ndim != ndim:
            self.boxes_layer = L.add_boxes_layer(v, img)
            self.boxes_layer.events.data.connect(self._on_boxes)
        self.set_negative(self.negative)
        self._on_current_object(self.session.current_object)
        v.layers.selection.active = self.points_layer
        self.layers_made()

    def _on_preview_reset(self, array) -> None:
        v = self.viewer
        ly = self.preview_layer
        if ly is not None and ly in v.layers and ly.data.shape == array.shape:
            ly.data = array  # the same image, wider ids
            return
        if ly is not None and ly in v.layers:
            disconnect(self.preview_layer.events.paint, self._on_paint)
            v.layers.remove(self.preview_layer)
        self.preview_layer = L.add_preview_layer(v, self.image_layer, array)
        self.preview_layer.events.paint.connect(self._on_paint)
        self.layers_made()
        if self.points_layer is not None:
            v.layers.selection.active = self.points_layer

    def _on_preview(self, planes) -> None:
        ly = self.preview_layer
        if ly is not None and ly in self.viewer.layers:
            ly.refresh()
        elif self.image_layer is not None:  # the user removed it: show the preview again
            self._on_preview_reset(self.session.preview)

    def _on_paint(self, event=None) -> None:
        n = len(self.session.lead_shape)
        planes = set()
        for indices, *_ in (event.value or []):  # napari's undo atoms: (indices or slices, old, new)
            axes = [range(*ix.indices(s)) if isinstance(ix, slice) else np.unique(np.asarray(ix))
                    for ix, s in zip(indices[:n], self.session.lead_shape, strict=True)]
            planes.update(tuple(int(v) for v in combo) for combo in itertools.product(*axes))
        self.session.preview_edited(planes or {self.session.plane})

    def use_target(self, layer) -> None:
        """Commit into Labels ``layer`` (None: a new layer at the first commit)."""
        if self.target_layer is not None:
            disconnect(self.target_layer.events.data, self._on_target_data)
            disconnect(self.target_layer.events.paint, self._on_target_paint)
        self.target_layer = layer
        self.session.set_target(None if layer is None else _array(layer))
        if layer is not None:
            layer.events.data.connect(self._on_target_data)
            layer.events.paint.connect(self._on_target_paint)

    def _on_target_data(self, event=None) -> None:
        self.session.set_target(_array(self.target_layer))

    def _on_target_paint(self, event=None) -> None:
        """Brush work in the labels: the next commit's ids start above what was painted."""
        new = [np.max(np.asarray(atom[2]), initial=0) for atom in (event.value or [])]
        self.session.labels_edited(int(max(new, default=0)))

    def _on_target_created(self, array) -> None:
        layer = L.add_labels_layer(self.viewer, self.image_layer, array)
        self.use_target(layer)
        if self.points_layer is not None:
            self.viewer.layers.selection.active = self.points_layer

    def _on_everything(self, array, planes) -> None:
        """A segment-everything run wrote ``planes`` of ``array``: its own new Labels layer."""
        ly = self.everything_layer
        if ly is not None and ly in self.viewer.layers and ly.data is array:
            ly.refresh()
            return
        if self.image_layer is None:
            return
        active = self.viewer.layers.selection.active
        self.everything_layer = L.add_everything_layer(self.viewer, self.image_layer, array)
        if active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active  # the keys keep working where they did

    def _on_labels(self, planes) -> None:
        ly = self.target_layer
        if ly is not None and ly in self.viewer.layers:
            ly.refresh()

    def forget(self, layer) -> None:
        """``layer`` was removed from the viewer (the image: its session work stops)."""
        if layer is self.image_layer:
            self._disconnect_image()
            self.image_layer = None
            self.session.forget_image()
            return
        for name in ("points_layer", "boxes_layer", "preview_layer", "target_layer", "everything_layer"):
            if getattr(self, name) is layer:
                setattr(self, name, None)
        if self.target_layer is None:
            self.session.set_target(None)

    # ------------------------------------------------------------------ prompts
    def _on_press(self, layer, event):
        """Shift-click or right-click in add mode adds a negative point (napari adds on release)."""
        if layer.mode == "add":
            negative = self.negative ^ ("Shift" in event.modifiers or event.button == 2)
            layer.feature_defaults["label"] = 0 if negative else 1
            layer.feature_defaults["object"] = self.session.current_object

    def set_negative(self, negative: bool) -> None:
        self.negative = bool(negative)
        if self.points_layer is not None:
            self.points_layer.feature_defaults["label"] = 0 if negative else 1

    def _on_current_object(self, oid: int) -> None:
        for ly in (self.points_layer, self.boxes_layer):
            if ly is not None:
                ly.feature_defaults["object"] = int(oid)

    def _settled(self, event) -> str | None:
        """The action of a past-tense prompt-layer data event (None: ignore this event)."""
        action = str(getattr(event, "action", "changed"))
        if action.endswith("ing") or "ING" in action or self._syncing:
            return None  # wait for the past-tense event; or our own clearing
        return action

    def _on_prompts(self, event=None) -> None:
        if self._settled(event) is not None:
            self.push_prompts()

    def _on_boxes(self, event=None) -> None:
        action = self._settled(event)
        if action is None:
            return
        if "add" in action.lower():
            self._one_box_per_object()
        self.push_prompts()

    def _one_box_per_object(self) -> None:
        """A second box drawn for the current object on the same plane starts a new object (draw
        several boxes: several objects)."""
        ly = self.boxes_layer
        feats = ly.features
        if "object" not in feats or len(feats) < 2:
            return
        _, lead = L.boxes_in_image(ly, self.image_layer, with_lead=True)
        lead = np.round(lead).astype(int)
        objs = np.asarray(feats["object"], int)
        last = len(objs) - 1
        if any(objs[i] == objs[last] and np.array_equal(lead[i], lead[last]) for i in range(last)):
            ly.features.loc[last, "object"] = self.session.new_object()

    def push_prompts(self) -> None:
        """Hand every prompt of the layers to the session (per plane and object)."""
        if self.image_layer is None or self.points_layer is None or self.boxes_layer is None:
            return
        if not self.plane_view():
            self.session.events.status.emit(
                "prompts work in a 2D view of the image's last two axes (Y, X): switch to 2D and do not "
                "roll or transpose them.")
            return
        self.session.set_prompts(self.read_prompts())

    def read_prompts(self) -> dict:
        """``{plane: {object id: ObjectPrompt}}`` from the layers. A point or box belongs to the
        plane given by its own coordinates (through the transforms); points off the image and
        boxes that miss it are left out."""
        shape = L.image_plane_shape(self.image_layer)
        n, (h, w) = len(shape) - 2, shape[-2:]
        pts, labels = L.points_in_image(self.points_layer, self.image_layer)
        pobj = _objects(self.points_layer, len(pts), self.session.current_object)
        boxes, blead = L.boxes_in_image(self.boxes_layer, self.image_layer, with_lead=True)
        bobj = _objects(self.boxes_layer, len(self.boxes_layer.data), self.session.current_object)
        bobj = bobj[[k == "rectangle" for k in self.boxes_layer.shape_type]] if len(bobj) else bobj
        keep = inside_image(pts[:, -2:], (h, w)) if len(pts) else np.zeros(0, bool)
        lo, hi = np.maximum(boxes[:, :2], -0.5), np.minimum(boxes[:, 2:], [h - 0.5, w - 0.5])
        bkeep = ((hi - lo) > 0).all(1)
        pplane, keep = _planes(pts[:, :n], shape[:n], keep)
        bplane, bkeep = _planes(blead[:, :n], shape[:n], bkeep)
        out = {}
        used = {pplane[i] for i in np.flatnonzero(keep)} | {bplane[i] for i in np.flatnonzero(bkeep)}
        for plane in sorted(used):
            pm = keep & np.array([q == plane for q in pplane], bool).reshape(-1)
            bm = bkeep & np.array([q == plane for q in bplane], bool).reshape(-1)
            out[plane] = merge_prompts(pts[pm][:, -2:], labels[pm], pobj[pm], boxes[bm], bobj[bm])
        return out

    def _clear_prompt_layers(self) -> None:
        self._syncing = True
        try:
            if self.points_layer is not None and len(self.points_layer.data):
                self.points_layer.data = np.zeros((0, self.points_layer.ndim))
            if self.boxes_layer is not None and len(self.boxes_layer.data):
                self.boxes_layer.data = []
        finally:
            self._syncing = False

    def close(self) -> None:
        ev = self.session.events
        for sig, cb in ((ev.preview, self._on_preview), (ev.preview_reset, self._on_preview_reset),
                        (ev.target, self._on_target_created), (ev.labels, self._on_labels),
                        (ev.everything, self._on_everything),
                        (ev.prompts_cleared, self._clear_prompt_layers),
                        (ev.current_object, self._on_current_object)):
            disconnect(sig, cb)
        disconnect(self.viewer.dims.events.point, self.sync_plane)
        if self.image_layer is not None:
            self._disconnect_image()
        if self.points_layer is not None:
            disconnect(self.points_layer.events.data, self._on_prompts)
            if self._on_press in self.points_layer.mouse_drag_callbacks:
                self.points_layer.mouse_drag_callbacks.remove(self._on_press)
        if self.boxes_layer is not None:
            disconnect(self.boxes_layer.events.data, self._on_boxes)
        if self.preview_layer is not None:
            disconnect(self.preview_layer.events.paint, self._on_paint)
        if self.target_layer is not None:
            disconnect(self.target_layer.events.data, self._on_target_data)
            disconnect(self.target_layer.events.paint, self._on_target_paint)


def _array(layer):
    """A Labels layer's data as the session's target (a multiscale layer: its list of levels)."""
    return list(layer.data) if layer.multiscale else layer.data


def _objects(layer, n: int, default: int) -> np.ndarray:
    feats = layer.features
    if "object" in feats and len(feats) == n:
        return np.asarray(feats["object"].fillna(default), int).reshape(-1)
    return np.full(n, default, int)


def _planes(lead: np.ndarray, lead_shape, keep: np.ndarray) -> tuple[list[tuple[int, ...]], np.ndarray]:
    """Plane index per row of leading coordinates (rounded); rows outside the stack leave ``keep``."""
    idx = np.round(np.asarray(lead, float)).astype(int).reshape(len(keep), len(lead_shape))
    inside = ((idx >= 0) & (idx < np.asarray(lead_shape, int))).all(1)
    return [tuple(int(v) for v in row) for row in idx], keep & inside


def disconnect(emitter, callback) -> None:
    """Disconnect ``callback`` from a napari/psygnal/Qt emitter; nothing if it was not connected."""
    try:
        emitter.disconnect(callback)
    except (TypeError, ValueError, RuntimeError):
        pass


def level0_shape(layer) -> tuple[int, ...]:
    return tuple(level0(_array(layer)).shape)
