"""Decoding many one-point prompts (segment everything): the score filter and the batch loop
that every family's ``decode_points`` shares. Torch inside, numpy out."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

__all__ = ["passing", "decode_in_batches"]


def passing(iou: torch.Tensor, min_score: float | None) -> torch.Tensor:
    """``(B, K)`` bool: the masks whose predicted IoU is > ``min_score`` (every mask when None)."""
    return iou > min_score if min_score is not None else torch.ones_like(iou, dtype=torch.bool)


def decode_in_batches(n: int, batch: int, step: Callable[[int, int], tuple], k: int,
                      low_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run ``step(start, stop)`` for the prompts ``start:stop`` of ``n``, ``batch`` at a time; each
    returns ``(iou (b, K), keep (m, 2) (prompt in the batch, mask), low (m, h, w))`` tensors.

    Returns numpy: scores ``(n, K)`` float32, keep ``(M, 2)`` int64 (prompt, mask) over all
    prompts, low ``(M, h, w)`` float32 logits (``k`` = K and ``low_shape`` shape the empty case)."""
    scores, keeps, lows = [], [], []
    for s in range(0, n, batch):
        iou, keep, low = step(s, min(s + batch, n))
        scores.append(iou.float().cpu())
        keeps.append(keep.cpu() + torch.tensor([s, 0]))
        lows.append(low.float().cpu())
    scores_t = torch.cat(scores) if scores else torch.zeros((0, k))
    keep_t = torch.cat(keeps) if keeps else torch.zeros((0, 2), dtype=torch.long)
    low_t = torch.cat(lows) if lows else torch.zeros((0, *low_shape))
    return scores_t.numpy(), keep_t.numpy().astype(np.int64, copy=False), low_t.numpy()
