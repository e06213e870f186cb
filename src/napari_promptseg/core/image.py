"""Turn any 2D image into the uint8 RGB array the models take.

Rules (the user guide's "One intensity window for the whole stack"; :func:`stack_window` for stacks):

- ``(H, W)`` gray and ``(H, W, 1)`` are repeated to RGB; ``(H, W, 4)`` drops alpha.
- uint8 RGB(A) passes unchanged, so results equal the official predictors'; so does uint8 gray
  unless ``contrast_limits`` other than ``(0, 255)`` are given (a dim 8-bit fluorescence image
  then reaches the model with the stretch the user sees in napari).
- Every other real dtype maps to uint8 through ONE window ``(lo, hi)`` for all pixels and
  channels: ``contrast_limits`` when given (napari's layer contrast limits), else robust
  percentiles of the finite values. NaN and -inf map to 0, +inf to 255. bool maps to 0/255.
"""

from __future__ import annotations

import numpy as np

__all__ = ["to_rgb_uint8", "intensity_window", "stack_window", "image_plane", "sampled_planes",
           "check_limits", "DEFAULT_PERCENTILES"]

DEFAULT_PERCENTILES = (0.5, 99.5)
_MAX_SAMPLES = 1 << 20
_SAMPLED_PLANES = 16  # planes read for a stack's window and content key


def _check_array(image) -> np.ndarray:
    if hasattr(image, "__array__") or isinstance(image, (list, tuple)):
        arr = np.asarray(image)
    else:
        raise TypeError(f"image must be an array, got {type(image).__name__}")
    if arr.dtype.kind == "c":
        raise ValueError(
            "complex images are not supported; pass np.abs(image) or image.real explicitly"
        )
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"image dtype {arr.dtype} is not a real numeric type")
    if arr.size == 0:
        raise ValueError(f"image is empty (shape {arr.shape})")
    return arr


def _channels_last(arr: np.ndarray) -> np.ndarray:
    """Return (H, W, C) with C in {1, 3, 4}; raise for anything it cannot identify."""
    if arr.ndim == 2:
        return arr[..., None]
    if arr.ndim == 3 and arr.shape[-1] in (1, 3, 4):
        return arr
    if arr.ndim == 3 and arr.shape[-1] == 2:
        raise ValueError(
            f"image of shape {arr.shape} has 2 channels; pick one (image[..., 0]) or make an RGB "
            "composite (H, W, 3) first"
        )
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4):
        raise ValueError(
            f"image of shape {arr.shape} is either channel-first (then pass np.moveaxis(image, 0, -1) "
            "so that the 1, 3 or 4 channels come last) or a stack of slices (then embed one at a "
            "time, e.g. image[0])"
        )
    if arr.ndim == 3:
        raise ValueError(
            f"image of shape {arr.shape} has no channel axis of size 1, 3 or 4 last; for a "
            "z-stack or time series embed one slice at a time, e.g. image[z]"
        )
    raise ValueError(
        f"image must be 2D (H, W) or (H, W, 1|3|4), got {arr.ndim}D shape {arr.shape}; "
        "select one plane of a stack first"
    )


def intensity_window(
    image: np.ndarray, percentiles: tuple[float, float] = DEFAULT_PERCENTILES
) -> tuple[float, float]:
    """Robust ``(lo, hi)`` from the finite values of ``image`` (subsampled beyond 1M pixels).

    Use the window of a whole stack for each of its slices so that intensities do not jump.
    """
    arr = np.asarray(image)
    # Sample whole pixels (a stride over the flat array could hit one channel only).
    channels = arr.shape[-1] if arr.ndim == 3 and arr.shape[-1] in (3, 4) else 1
    pixels = arr.reshape(-1, channels)
    if pixels.shape[0] > _MAX_SAMPLES:
        pixels = pixels[:: pixels.shape[0] // _MAX_SAMPLES + 1]
    flat = pixels.reshape(-1)
    flat = flat[np.isfinite(flat)] if flat.dtype.kind == "f" else flat
    if flat.size == 0:
        raise ValueError("image has no finite values (all NaN or inf); nothing to segment")
    lo, hi = np.percentile(flat.astype(np.float64), percentiles)
    return float(lo), float(hi)


def sampled_planes(lead: tuple[int, ...], k: int = _SAMPLED_PLANES) -> list[tuple[int, ...]]:
    """Indices of at most ``k`` evenly spaced planes of a stack whose plane axes have the sizes
    ``lead`` (all of them when there are no more; ``[()]`` for a single 2D image)."""
    n = int(np.prod(lead)) if lead else 1
    picks = np.unique(np.linspace(0, n - 1, min(n, k)).round().astype(int))
    return [tuple(int(v) for v in np.unravel_index(int(i), lead)) for i in picks]


def image_plane(arr, lead_axes: tuple[int, ...], idx: tuple[int, ...]) -> np.ndarray:
    """Plane ``idx`` of ``arr`` (numpy, zarr, dask, a memory map): the coordinates ``idx`` on the
    axes ``lead_axes``, every other axis whole. Only that plane's pixels are read."""
    key: list = [slice(None)] * arr.ndim
    for a, i in zip(lead_axes, idx, strict=True):
        key[a] = int(i)
    return np.asarray(arr[tuple(key)])


def stack_window(stack, rgb: bool = False, lead_axes: tuple[int, ...] | None = None
                 ) -> tuple[float, float] | None:
    """One robust ``(lo, hi)`` window for a whole stack (None for uint8/bool): the one window
    every plane of a stack is embedded with, so intensities do not jump between planes.

    stack: array-like ``(..., H, W[, C])`` (``rgb``: a colour axis last); lead_axes: the axes
    that index its planes (default: all but the last two non-channel axes). Samples up to 16
    evenly spaced planes, read one at a time, so a lazy (dask / zarr) stack is not read whole.
    """
    dtype = np.dtype(stack.dtype)
    if dtype in (np.uint8, np.bool_):
        return None
    spatial = stack.ndim - (1 if rgb else 0)
    lead_axes = tuple(range(spatial - 2)) if lead_axes is None else tuple(int(a) for a in lead_axes)
    lead = tuple(int(stack.shape[a]) for a in lead_axes)
    planes = np.stack([image_plane(stack, lead_axes, idx) for idx in sampled_planes(lead)])
    return intensity_window(planes.reshape(-1, 1, planes.shape[-1]) if rgb else planes)


def to_rgb_uint8(
    image, contrast_limits: tuple[float, float] | None = None
) -> np.ndarray:
    """Return a C-contiguous ``(H, W, 3)`` uint8 copy or view of ``image``.

    ``contrast_limits``: the ``(lo, hi)`` window; values ``<= lo`` map to 0 and ``>= hi`` to 255.
    Applied to every dtype but bool (always 0/255) and uint8 RGB(A) (always unchanged, for parity
    with the official predictors). uint8 gray ``(H, W)``/``(H, W, 1)`` passes unchanged when
    ``contrast_limits`` is None or ``(0, 255)``, else goes through the window like other dtypes.
    None for other dtypes: robust percentiles (:func:`intensity_window`).
    """
    arr = _channels_last(_check_array(image))
    if arr.shape[0] < 2 or arr.shape[1] < 2:
        raise ValueError(f"image of shape {arr.shape[:2]} is too small; need at least 2x2 pixels")
    if arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.dtype == np.uint8 and (arr.shape[-1] != 1 or contrast_limits is None):
        out = arr
    elif arr.dtype == np.uint8:  # gray with explicit limits: the stretch the user sees
        lo, hi = check_limits(contrast_limits)
        out = arr if (lo, hi) == (0.0, 255.0) else _apply_window(arr, lo, hi)
    elif arr.dtype == np.bool_:
        out = arr.astype(np.uint8) * 255
    else:
        if contrast_limits is None:
            lo, hi = intensity_window(arr)
        else:
            lo, hi = check_limits(contrast_limits)
        out = _apply_window(arr, lo, hi)
    if out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return np.ascontiguousarray(out)


def check_limits(limits) -> tuple[float, float]:
    """``(lo, hi)`` floats from user ``contrast_limits``; ValueError unless two finite numbers, lo <= hi."""
    try:
        lo, hi = (float(v) for v in limits)
    except (TypeError, ValueError):
        raise ValueError(f"contrast_limits must be two numbers (lo, hi), got {limits!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"contrast_limits must be finite, got {limits!r}")
    if hi < lo:
        raise ValueError(f"contrast_limits must satisfy lo <= hi, got {limits!r}")
    return lo, hi


def _apply_window(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map through the window in float64 (exact for large offsets), a band of rows at a time."""
    out = np.empty(arr.shape, np.uint8)
    rows = max(1, (1 << 22) // max(1, arr[0].size))
    for r in range(0, arr.shape[0], rows):
        x = arr[r : r + rows].astype(np.float64)
        if hi > lo:
            x -= lo
            x *= 255.0
            x /= hi - lo  # after the product: window edges and midpoints land exactly
        else:  # flat window: a threshold at lo
            x = np.where(x > lo, 255.0, 0.0)
        np.nan_to_num(x, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
        np.clip(x, 0, 255, out=x)
        out[r : r + rows] = np.rint(x)
    return out
