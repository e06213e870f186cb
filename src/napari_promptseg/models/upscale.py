"""Low-resolution mask logits -> full-resolution boolean masks, equal to SAM's post-processing.

SAM's ``postprocess_masks`` resizes logits ``(K, 256, 256)`` bilinearly to the padded model input
``(S, S)``, crops the valid ``input_size`` and resizes bilinearly again to the image's
``original_size``; a mask is ``logits > 0``. Both resizes are linear and separable, so the whole
chain is ``R @ L @ C.T`` with a row operator ``R (H, 256)`` and a column operator ``C (W, 256)``,
each with a few non-zeros per row. We build R and C by pushing identity matrices through the very
same ``F.interpolate`` calls (so the weights are PyTorch's own), then evaluate the product in
bands of a few output rows, thresholding each band while it is still in L2 cache, and skipping rows
and columns where no contributing logit is positive (bilinear weights are non-negative, so such
pixels cannot be in the mask). On a 2-core CPU, 3 masks at 4096 x 4096 take ~15-30 ms instead of
~150 ms for SAM's interpolate-then-threshold (docs/benchmarks.md).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["resize_operator", "upscale_masks", "upscale_levels", "upscale_pieces"]

_BLOCK_FLOATS = 1 << 16  # CPU: ~256 KB of float32 per band, stays in L2
_DEVICE_BLOCK_FLOATS = 1 << 24  # GPU: 64 MB per band, few kernel launches
# OpenBLAS runs a GEMM on one thread when M * N * K <= 65536 * 4. A multi-threaded band product
# right after a torch op fights torch's still-spinning OpenMP threads for the cores (measured on
# 2 cores: a 1024² SAM 2 mask in 60 ms instead of 8 ms), so CPU bands stay below that size.
_MNK_ONE_THREAD = 200_000


@lru_cache(maxsize=32)
def _operator_cpu(n_low: int, padded: int, valid: int, n_out: int) -> torch.Tensor:
    eye = torch.eye(n_low, dtype=torch.float32)[None, None]  # (1, 1, n_low, n_low)
    x = F.interpolate(eye, (padded, n_low), mode="bilinear", align_corners=False)
    x = x[..., :valid, :]
    x = F.interpolate(x, (n_out, n_low), mode="bilinear", align_corners=False)
    return x[0, 0].contiguous()


@lru_cache(maxsize=32)
def _operator_on(n_low: int, padded: int, valid: int, n_out: int, device: str) -> torch.Tensor:
    return _operator_cpu(n_low, padded, valid, n_out).to(device)


def resize_operator(
    n_low: int, padded: int, valid: int, n_out: int, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """``(n_out, n_low)`` float32 matrix of SAM's resize chain along one axis, on ``device``.

    ``n_low`` -> ``padded`` (bilinear), keep the first ``valid``, -> ``n_out`` (bilinear).
    """
    return _operator_on(int(n_low), int(padded), int(valid), int(n_out), str(device))


def _band(op: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """First and last non-zero column of every row of ``op`` (a CPU tensor)."""
    nz = (op != 0).numpy()
    first = nz.argmax(axis=1)
    last = op.shape[1] - 1 - nz[:, ::-1].argmax(axis=1)
    return first, last


@lru_cache(maxsize=32)
def _bands(n_low: int, padded: int, valid: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    return _band(_operator_cpu(n_low, padded, valid, n_out))


def _columns(low, C, first, last, x0: int, x1: int, width: int = 512) -> torch.Tensor:
    """``low @ C[x0:x1].T`` in bands of ``width`` output columns (C has a few taps per row).

    low: (K, h, w); returns ``(h, K * (x1 - x0))`` laid out (row, mask, column), so that a band
    of output rows is one plain matrix product for all masks at once.
    """
    k, h, _ = low.shape
    M = torch.empty((h, k, x1 - x0), dtype=low.dtype, device=low.device)
    for s in range(x0, x1, width):
        e = min(x1, s + width)
        a, b = int(first[s:e].min()), int(last[s:e].max()) + 1
        M[:, :, s - x0 : e - x0] = torch.matmul(low[:, :, a:b], C[s:e, a:b].t()).transpose(0, 1)
    return M.reshape(h, -1)


def _row_bands(r_first, r_last, pos_rows, H: int, block: int):
    """Yield ``(y0, y1, a, b, live)``: output rows ``y0:y1`` read low-res rows ``a:b``; ``live``
    is False when none of those rows holds a logit above the lowest level (the band is all False)."""
    for y0 in range(0, H, block):
        y1 = min(H, y0 + block)
        a, b = int(r_first[y0:y1].min()), int(r_last[y0:y1].max()) + 1
        yield y0, y1, a, b, pos_rows[b] != pos_rows[a]


def _rows_numpy(R, M, bands, views, levels, x0, x1, block) -> None:
    """CPU: bands of output rows with numpy, whose per-call overhead is ~10x lower than torch's
    for these small products; the band's floats stay in L2 while each level thresholds them."""
    R, M = R.numpy(), M.numpy()
    k = views[0].shape[1]
    buf = np.empty((block, M.shape[1]), dtype=np.float32)
    for y0, y1, a, b, live in bands:
        if not live:
            for view in views:
                view[y0:y1, :, x0:x1] = False
            continue
        vals = buf[: y1 - y0]
        np.matmul(R[y0:y1, a:b], M[a:b], out=vals)
        vals = vals.reshape(y1 - y0, k, -1)
        for view, level in zip(views, levels):
            np.greater(vals, level, out=view[y0:y1, :, x0:x1])


def _rows_torch(R, M, bands, views, levels, x0, x1, block) -> None:
    """Same as :func:`_rows_numpy` with torch ops (cuda, mps): few large bands, since each
    band costs kernel launches; results are assigned, not written through ``out=`` views."""
    k = views[0].shape[1]
    for y0, y1, a, b, live in bands:
        if not live:
            for view in views:
                view[y0:y1, :, x0:x1] = False
            continue
        vals = torch.mm(R[y0:y1, a:b], M[a:b]).reshape(y1 - y0, k, -1)
        for view, level in zip(views, levels):
            view[y0:y1, :, x0:x1] = vals > level


def upscale_levels(
    low: torch.Tensor,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    padded_size: int,
    levels: tuple[float, ...] = (0.0,),
    use_numpy: bool | None = None,
) -> list[np.ndarray]:
    """Threshold SAM's upsampled logits at each of ``levels`` without materialising them.

    low: ``(K, h, w)`` float logits; input_size: ``(h_in, w_in)`` of the resized image inside
    the ``padded_size`` square model input; original_size: ``(H, W)``. Returns one ``(K, H, W)``
    bool array per level, equal to ``postprocess_masks(low) > level`` up to float rounding; the
    resize runs once for all levels (SAM's stability score needs three).
    ``use_numpy``: evaluate the row bands with numpy (default: on CPU) or torch (other devices).
    """
    k, h, w = low.shape
    H, W = original_size
    dev = low.device
    # bilinear weights are non-negative and sum to 1: a pixel is > ``lowest`` only where one of
    # its low-resolution logits is
    pos = low > min(levels)
    rows_any = pos.any(dim=2).any(dim=0).cpu().numpy()
    cols_any = pos.any(dim=1).any(dim=0).cpu().numpy()
    if not rows_any.any():
        return [np.zeros((k, H, W), dtype=bool) for _ in levels]
    R = resize_operator(h, padded_size, input_size[0], H, dev)
    C = resize_operator(w, padded_size, input_size[1], W, dev)
    r_first, r_last = _bands(h, padded_size, input_size[0], H)
    c_first, c_last = _bands(w, padded_size, input_size[1], W)
    # Output columns that can be positive: those touching a low-res column with a positive logit.
    cpos = np.flatnonzero(cols_any)
    x_ok = np.flatnonzero((c_last >= cpos[0]) & (c_first <= cpos[-1]))
    if x_ok.size == 0:  # positive logits only in the padding, which is cropped away
        return [np.zeros((k, H, W), dtype=bool) for _ in levels]
    x0, x1 = int(x_ok[0]), int(x_ok[-1]) + 1
    M = _columns(low.float(), C, c_first, c_last, x0, x1)  # (h, K * W'): L @ C.T, useful columns
    # Prefix sums of positive rows: a band of low-res rows is skipped when it has none.
    pos_rows = np.concatenate([[0], np.cumsum(rows_any)])
    if use_numpy is None:
        use_numpy = dev.type == "cpu"
    block = max(1, (_BLOCK_FLOATS if use_numpy else _DEVICE_BLOCK_FLOATS) // M.shape[1])
    if use_numpy:  # keep each band product under OpenBLAS's threading threshold (see _MNK_ONE_THREAD)
        while block > 1 and block * (block * h // H + 3) * M.shape[1] > _MNK_ONE_THREAD:
            block -= 1
    bands = _row_bands(r_first, r_last, pos_rows, H, block)
    if use_numpy:
        outs = [np.empty((k, H, W), dtype=bool) for _ in levels]  # huge pages: cheap first touch
        views = [o.transpose(1, 0, 2) for o in outs]  # (H, K, W)
    else:
        outs = [torch.empty((k, H, W), dtype=torch.bool, device=dev) for _ in levels]
        views = [o.permute(1, 0, 2) for o in outs]
    for view in views:
        view[:, :, :x0] = False
        view[:, :, x1:] = False
    if use_numpy:
        _rows_numpy(R.cpu(), M.cpu(), bands, views, [float(v) for v in levels], x0, x1, block)
        return outs
    _rows_torch(R, M, bands, views, [float(v) for v in levels], x0, x1, block)
    return [o.cpu().numpy() for o in outs]


def upscale_masks(
    low: torch.Tensor,
    input_size: tuple[int, int],
    original_size: tuple[int, int],
    padded_size: int,
    use_numpy: bool | None = None,
) -> np.ndarray:
    """Threshold SAM's upsampled logits at 0 without materialising them.

    low: ``(K, h, w)`` float logits; input_size: ``(h_in, w_in)`` of the resized image inside
    the ``padded_size`` square model input; original_size: ``(H, W)``.
    Returns ``(K, H, W)`` bool, equal to ``postprocess_masks(low) > 0`` up to float rounding.
    ``use_numpy``: evaluate the row bands with numpy (default: on CPU) or torch (other devices).
    """
    return upscale_levels(low, input_size, original_size, padded_size, (0.0,), use_numpy)[0]


def upscale_pieces(low: torch.Tensor, size: tuple[int, int]) -> list[tuple[tuple[int, ...], np.ndarray]]:
    """Each mask of one bilinear resize of ``low`` ``(K, h, w)`` to ``size`` ``(H, W)``
    (``F.interpolate``, ``align_corners=False``; a pixel is in the mask where the resized logit is
    > 0), as its extent only: ``(window, piece)`` per mask, window ``(row0, col0, row1, col1)``
    with exclusive ends (all 0 for an empty mask) and ``piece`` its ``(row1 - row0, col1 - col0)``
    bool pixels. Only the rows and columns a positive logit reaches are computed (the operators of
    :func:`resize_operator`), so memory follows the objects, not ``K * H * W``."""
    k, h, w = low.shape
    H, W = (int(v) for v in size)
    R = resize_operator(h, h, h, H).numpy()
    C = resize_operator(w, w, w, W).numpy()
    r_first, r_last = _bands(h, h, h, H)
    c_first, c_last = _bands(w, w, w, W)
    lows = low.detach().float().cpu().numpy()
    out = []
    for L in lows:
        pos = L > 0
        rows, cols = np.flatnonzero(pos.any(1)), np.flatnonzero(pos.any(0))
        if not len(rows):
            out.append(((0, 0, 0, 0), np.zeros((0, 0), bool)))
            continue
        ys = np.flatnonzero((r_last >= rows[0]) & (r_first <= rows[-1]))
        xs = np.flatnonzero((c_last >= cols[0]) & (c_first <= cols[-1]))
        y0, y1, x0, x1 = int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1
        a, b = int(r_first[y0:y1].min()), int(r_last[y0:y1].max()) + 1
        c, d = int(c_first[x0:x1].min()), int(c_last[x0:x1].max()) + 1
        piece = (R[y0:y1, a:b] @ L[a:b, c:d] @ C[x0:x1, c:d].T) > 0
        rr, cc = np.flatnonzero(piece.any(1)), np.flatnonzero(piece.any(0))
        if not len(rr):
            out.append(((0, 0, 0, 0), np.zeros((0, 0), bool)))
            continue
        piece = piece[rr[0]:rr[-1] + 1, cc[0]:cc[-1] + 1]
        out.append(((y0 + int(rr[0]), x0 + int(cc[0]), y0 + int(rr[-1]) + 1, x0 + int(cc[-1]) + 1),
                    np.ascontiguousarray(piece)))
    return out
