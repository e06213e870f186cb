"""SAM's training losses: 20 x focal + 1 x dice on mask logits, MSE on the predicted IoU."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["focal_loss", "dice_loss", "mask_iou", "sam_loss", "FOCAL_WEIGHT"]

FOCAL_WEIGHT = 20.0


def focal_loss(logits: Tensor, target: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Sigmoid focal loss averaged over pixels: logits, target ``(N, K, H, W)`` -> ``(N, K)``."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    loss = loss * (alpha * target + (1 - alpha) * (1 - target))
    return loss.flatten(2).mean(-1)


def dice_loss(logits: Tensor, target: Tensor, eps: float = 1.0) -> Tensor:
    """Soft dice loss: ``(N, K, H, W)`` -> ``(N, K)``."""
    p = torch.sigmoid(logits).flatten(2)
    t = target.flatten(2)
    return 1 - (2 * (p * t).sum(-1) + eps) / (p.sum(-1) + t.sum(-1) + eps)


@torch.no_grad()
def mask_iou(logits: Tensor, target: Tensor) -> Tensor:
    """IoU of ``logits > 0`` with the target: ``(N, K, H, W)`` -> ``(N, K)`` (1 when both empty)."""
    pred = logits > 0
    t = target > 0.5
    inter = (pred & t).flatten(2).sum(-1).float()
    union = (pred | t).flatten(2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def sam_loss(logits: Tensor, iou_pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Loss of N prompts with K masks each.

    logits ``(N, K, H, W)``, iou_pred ``(N, K)``, target ``(N, 1, H, W)`` in [0, 1] (soft, area-downsampled
    targets are fine). The mask
    loss is taken for each prompt's min-loss mask (SAM's rule for ambiguous prompts); the IoU
    head learns every mask's true IoU. Returns (total loss, index of the chosen mask ``(N,)``,
    IoU of the chosen masks ``(N,)``).
    """
    target = target.expand_as(logits)
    per_mask = FOCAL_WEIGHT * focal_loss(logits, target) + dice_loss(logits, target)
    best = per_mask.argmin(dim=1)
    rows = torch.arange(len(best), device=logits.device)
    ious = mask_iou(logits, target)
    iou_loss = F.mse_loss(iou_pred.float(), ious)
    return per_mask[rows, best].mean() + iou_loss, best, ious[rows, best]
