"""Losses of the contour regressor: ``L = L_vector + L_cos + alpha * Dice`` (pure functions).

Polygons are (B, N, 2) tensors of (row, col) vertices; ``moves`` are the per-vertex displacements
an iteration predicted. Ground truth is resampled to N points, oriented like the prediction and
started at the least-cost cyclic shift (``align_start``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def signed_area(poly: torch.Tensor) -> torch.Tensor:
    """Shoelace signed area of (B, N, 2) polygons (sign = orientation)."""
    r, c = poly[..., 0], poly[..., 1]
    return 0.5 * (r * c.roll(-1, dims=-1) - c * r.roll(-1, dims=-1)).sum(dim=-1)


def align_start(gt: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``gt`` (B, N, 2) oriented like ``ref`` and cyclically shifted to the least summed distance."""
    flip = torch.sign(signed_area(gt)) != torch.sign(signed_area(ref))
    gt = torch.where(flip[:, None, None], gt.flip(1), gt)
    n = gt.shape[1]
    idx = (torch.arange(n, device=gt.device)[:, None] + torch.arange(n, device=gt.device)) % n
    shifted = gt[:, idx]  # (B, shift, N, 2)
    cost = (shifted - ref[:, None]).norm(dim=-1).sum(dim=-1)
    best = cost.argmin(dim=1)
    return shifted[torch.arange(len(gt), device=gt.device), best]


def vector_loss(pred: torch.Tensor, gt: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Smooth-L1 between predicted and aligned ground-truth vertices (mean over coordinates)."""
    return F.smooth_l1_loss(pred, gt, beta=beta)


def cosine_move_loss(move: torch.Tensor, ideal: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``mean(1 - cos(move, ideal))`` per vertex: 0 for a perfect direction, 2 for the opposite."""
    cos = (move * ideal).sum(-1) / (move.norm(dim=-1) * ideal.norm(dim=-1)).clamp(min=eps)
    return (1.0 - cos).mean()


def _pixel_centres(size: int, extent: float, device: torch.device) -> torch.Tensor:
    step = extent / size
    c = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) * step
    rr, cc = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([rr.reshape(-1), cc.reshape(-1)], dim=1)  # (P, 2)


def _inside(points: torch.Tensor, poly: torch.Tensor) -> torch.Tensor:
    """(B, P) even-odd test of points (P, 2) against polygons (B, N, 2)."""
    a, b = poly[:, None], poly.roll(-1, dims=1)[:, None]  # (B, 1, N, 2)
    p = points[None, :, None]  # (1, P, 1, 2)
    straddle = (a[..., 0] > p[..., 0]) != (b[..., 0] > p[..., 0])
    t = (p[..., 0] - a[..., 0]) / (b[..., 0] - a[..., 0]).where(straddle, torch.ones_like(a[..., 0]))
    cross_c = a[..., 1] + t * (b[..., 1] - a[..., 1])
    return ((straddle & (p[..., 1] < cross_c)).sum(dim=-1) % 2) == 1


def rasterize(poly: torch.Tensor, size: int, extent: float) -> torch.Tensor:
    """Hard (B, size, size) mask of pixel centres inside the polygons; the grid spans [0, extent)."""
    pts = _pixel_centres(size, extent, poly.device)
    return _inside(pts, poly.detach().float()).float().view(-1, size, size)


def soft_rasterize(poly: torch.Tensor, size: int, extent: float, tau: float = 0.5
                   ) -> torch.Tensor:
    """Differentiable mask: sigmoid of the signed distance to the polygon's edges over ``tau``."""
    poly = poly.float()
    pts = _pixel_centres(size, extent, poly.device)
    a, b = poly[:, None], poly.roll(-1, dims=1)[:, None]
    p = pts[None, :, None]
    ab = b - a
    t = ((p - a) * ab).sum(-1) / (ab * ab).sum(-1).clamp(min=1e-8)
    closest = a + t.clamp(0, 1)[..., None] * ab
    dist = ((p - closest) ** 2).sum(-1).add(1e-8).sqrt().amin(dim=-1)  # (B, P)
    sign = _inside(pts, poly.detach()).float() * 2 - 1
    return torch.sigmoid(sign * dist / tau).view(-1, size, size)


def dice_loss(prob: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - Dice between (B, H, W) soft predictions and binary targets (mean over the batch)."""
    inter = (prob * target).flatten(1).sum(1)
    total = prob.flatten(1).sum(1) + target.flatten(1).sum(1)
    return (1 - (2 * inter + eps) / (total + eps)).mean()


def contour_loss(polys: list[torch.Tensor], moves: list[torch.Tensor], gt: torch.Tensor,
                 gt_mask: torch.Tensor | None = None, extent: float = 64.0, alpha: float = 1.0,
                 use_cos: bool = True, beta: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """``L_vector + L_cos + alpha * Dice`` over all iterations; ``gt`` must be aligned already.

    ``polys[k]`` is the polygon after iteration k and ``moves[k]`` the move that made it, so the
    ideal move of iteration k is ``gt - (polys[k] - moves[k])``. Dice compares the final polygon,
    soft-rasterised on ``gt_mask``'s grid spanning [0, extent), with ``gt_mask``.
    """
    l_vec = sum(vector_loss(p, gt, beta) for p in polys) / len(polys)
    l_cos = sum(cosine_move_loss(m, gt - (p - m).detach()) for p, m in zip(polys, moves))
    l_cos = l_cos / len(polys)
    total = l_vec + (l_cos if use_cos else 0.0)
    parts = {"vector": float(l_vec.detach()), "cos": float(l_cos.detach())}
    if gt_mask is not None and alpha > 0:
        l_dice = dice_loss(soft_rasterize(polys[-1], gt_mask.shape[-1], extent), gt_mask)
        total = total + alpha * l_dice
        parts["dice"] = float(l_dice.detach())
    parts["total"] = float(total.detach())
    return total, parts
