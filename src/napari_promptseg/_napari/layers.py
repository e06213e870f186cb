"""The layers the widget creates, and prompt coordinates from world to image pixels.

napari keeps every layer's data in its own coordinates; clicks happen in world coordinates.
Prompts go data (prompt layer) -> world -> data (image layer), through each layer's full
transform (scale, translate, rotate, shear, affine), so any transform of the image is respected.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "POINTS_NAME", "BOXES_NAME", "PREVIEW_NAME", "LABELS_NAME", "EVERYTHING_NAME", "POSITIVE", "NEGATIVE",
    "transform_kwargs", "copy_transform", "image_plane_shape", "source_path", "add_points_layer",
    "add_boxes_layer", "add_preview_layer", "add_labels_layer", "points_in_image", "boxes_in_image",
    "EXEMPLARS_NAME", "add_exemplars_layer", "add_found_layer", "colour_exemplars",
]

POINTS_NAME = "promptseg points"
BOXES_NAME = "promptseg boxes"
PREVIEW_NAME = "promptseg preview"
LABELS_NAME = "promptseg labels"
EVERYTHING_NAME = "promptseg everything"
EXEMPLARS_NAME = "find exemplars"
POSITIVE, NEGATIVE = "lime", "red"


def transform_kwargs(layer) -> dict:
    """The full data-to-world transform of ``layer`` as layer constructor arguments."""
    return {
        "scale": layer.scale, "translate": layer.translate, "rotate": layer.rotate,
        "shear": layer.shear, "affine": layer.affine.affine_matrix,
    }


def copy_transform(src, dst) -> None:
    """Give ``dst`` the same data-to-world transform as ``src`` (same ndim)."""
    for k, v in transform_kwargs(src).items():
        setattr(dst, k, v)


def source_path(layer) -> str | None:
    """The file ``layer`` was opened from (None: made in memory, or no layer)."""
    return getattr(getattr(layer, "source", None), "path", None)


def voxel_size(image_layer) -> tuple[float, ...] | None:
    """The image layer's voxel size over its non-channel axes for the session (``set_image(scale=)``):
    its ``scale``, NaN along axes whose unit is a time; None when every axis is 1 pixel (napari's
    default: the voxel size is unknown, e.g. a video or a stack opened without metadata)."""
    scale = [float(v) for v in image_layer.scale]
    units = list(getattr(image_layer, "units", ()) or ())
    if all(v == 1 for v in scale) and all(str(u) == "pixel" for u in units):
        return None
    for i, u in enumerate(units[:len(scale)]):
        if "[time]" in str(getattr(u, "dimensionality", "")):
            scale[i] = float("nan")
    return tuple(scale)


def image_plane_shape(image_layer) -> tuple[int, ...]:
    """Shape of the image layer's data without the RGB(A) channel axis (level 0 if multiscale)."""
    data = image_layer.data[0] if image_layer.multiscale else image_layer.data
    return tuple(data.shape[:-1]) if image_layer.rgb else tuple(data.shape)


def _size(image_layer) -> float:
    """Prompt markers in data pixels: 2% of the image's side, at most 16 pixels (on a slide of
    thousands of pixels a bigger marker would hide the object it prompts)."""
    return min(16.0, max(3.0, 0.02 * max(image_plane_shape(image_layer)[-2:])))


def add_points_layer(viewer, image_layer):
    """Points for prompts: feature ``label`` 1 (positive, green) or 0 (negative, red)."""
    import warnings

    import pandas as pd

    with warnings.catch_warnings():  # "looks like categorical": it is, on purpose
        warnings.filterwarnings("ignore", "Feature 'label' looks like categorical", RuntimeWarning)
        layer = _add_points(viewer, image_layer, pd)
    # set whole: the layer's current colour follows (it showed red, negative, before the first point)
    layer.feature_defaults = {"label": 1, "object": 1}
    layer.mode = "add"
    return layer


def _add_points(viewer, image_layer, pd):
    return viewer.add_points(
        np.zeros((0, len(image_plane_shape(image_layer)))),
        name=POINTS_NAME,
        features=pd.DataFrame({k: pd.Series([], dtype=np.int64) for k in ("label", "object")}),
        face_color="label",
        face_color_cycle={1: POSITIVE, 0: NEGATIVE},
        border_color="white",
        size=_size(image_layer),
        canvas_size_limits=(6, 40),  # screen pixels: visible zoomed out, never a blot zoomed in
        **transform_kwargs(image_layer),
    )


def add_boxes_layer(viewer, image_layer):
    """Shapes whose rectangles are box prompts (feature ``object``: the object id of each)."""
    import pandas as pd

    layer = viewer.add_shapes(
        ndim=len(image_plane_shape(image_layer)),
        features=pd.DataFrame({"object": pd.Series([], dtype=np.int64)}),
        name=BOXES_NAME,
        edge_color="yellow",
        face_color="transparent",
        edge_width=max(1.0, _size(image_layer) / 4),
        **transform_kwargs(image_layer),
    )
    layer.feature_defaults["object"] = 1
    return layer


def add_preview_layer(viewer, image_layer, data):
    """Labels that show the session's preview ``data`` (uncommitted objects, by object id)."""
    return viewer.add_labels(
        data, name=PREVIEW_NAME, opacity=0.55,
        **transform_kwargs(image_layer),
    )


def add_labels_layer(viewer, image_layer, data):
    """Labels that show the committed objects ``data`` (the session's target array)."""
    return viewer.add_labels(
        data, name=LABELS_NAME,
        **transform_kwargs(image_layer),
    )


def add_everything_layer(viewer, image_layer, data):
    """Labels that show a segment-everything result ``data`` (a new array, never the committed labels)."""
    return viewer.add_labels(
        data, name=EVERYTHING_NAME,
        **transform_kwargs(image_layer),
    )


def add_exemplars_layer(viewer, image_layer):
    """Shapes whose rectangles are Find's exemplar boxes (feature ``label``: 1 an example of the
    concept, drawn green; 0 a counter-example, red), in rectangle mode."""
    import pandas as pd

    layer = viewer.add_shapes(
        ndim=len(image_plane_shape(image_layer)),
        features=pd.DataFrame({"label": pd.Series([], dtype=np.int64)}),
        name=EXEMPLARS_NAME,
        edge_color=POSITIVE,
        face_color="transparent",
        edge_width=max(1.0, _size(image_layer) / 4),
        **transform_kwargs(image_layer),
    )
    layer.feature_defaults["label"] = 1
    layer.mode = "add_rectangle"
    return layer


def colour_exemplars(layer) -> None:
    """Each exemplar box in its colour: green for examples (``label`` 1), red for counter-examples."""
    feats = layer.features
    if len(layer.data) and "label" in feats and len(feats) == len(layer.data):
        layer.edge_color = [POSITIVE if int(v) else NEGATIVE for v in feats["label"].fillna(1)]


def add_found_layer(viewer, image_layer, data, name: str):
    """Labels that show a Find result ``data`` (a new array, never the committed labels)."""
    return viewer.add_labels(data, name=name, **transform_kwargs(image_layer))


def _to_image(coords_in_layer: np.ndarray, layer, image_layer) -> np.ndarray:
    """``(N, D)`` data coordinates of ``layer`` -> ``(N, image ndim)`` image data coordinates."""
    out = [np.asarray(image_layer.world_to_data(layer.data_to_world(p)), float) for p in coords_in_layer]
    return np.asarray(out, float).reshape(len(coords_in_layer), -1)


def points_in_image(points_layer, image_layer) -> tuple[np.ndarray, np.ndarray]:
    """All prompt points as image data coordinates ``(N, ndim)`` and their labels ``(N,)`` (1/0)."""
    data = np.asarray(points_layer.data, float)
    if len(data) == 0:
        return np.zeros((0, len(image_plane_shape(image_layer)))), np.zeros(0, np.int32)
    feats = points_layer.features
    labels = np.asarray(feats["label"], np.int32) if "label" in feats else None
    if labels is None or len(labels) != len(data):
        labels = np.ones(len(data), np.int32)
    return _to_image(data, points_layer, image_layer), labels


def boxes_in_image(shapes_layer, image_layer, with_lead: bool = False):
    """Rectangles of ``shapes_layer`` as ``(B, 4)`` boxes ``(row0, col0, row1, col1)`` in the image's
    last two data axes (the bounding box of the corners when the transforms rotate them).

    with_lead: also return ``(B, ndim - 2)``, each box's leading image coordinates (its plane in
    a stack: the mean over its corners, which all lie on one plane when drawn in napari)."""
    boxes, lead = [], []
    n = len(image_plane_shape(image_layer))
    for verts, kind in zip(shapes_layer.data, shapes_layer.shape_type, strict=True):
        if kind != "rectangle":
            continue
        coords = _to_image(np.asarray(verts, float), shapes_layer, image_layer)
        rc = coords[:, -2:]
        boxes.append([rc[:, 0].min(), rc[:, 1].min(), rc[:, 0].max(), rc[:, 1].max()])
        lead.append(coords[:, : n - 2].mean(0) if n > 2 else np.zeros(0))
    boxes = np.asarray(boxes, float).reshape(-1, 4)
    if with_lead:
        return boxes, np.asarray(lead, float).reshape(len(boxes), max(n - 2, 0))
    return boxes
