"""Synthetic exemplar scenes: copies of one object pasted onto a background, with distractors.

``cut_object`` cuts an object out of its image (its mask, or the crop of a box for box-only data);
``warp_cutout`` makes one transformed copy (scale, rotation, flips); ``paste_scene`` pastes several
to dozens of copies, touching or partly covering each other, onto a background, and returns the
boxes of every copy that stays visible (the episode's targets). ``episodes.EpisodeSampler`` mixes
these scenes with real episodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from ..geometry import polygon_to_mask

if TYPE_CHECKING:
    from .episodes import EpisodeConfig

@dataclass
class Cutout:
    """An object to paste: RGB uint8 (h, w, 3), its alpha (h, w) in [0, 1], and where the object
    itself is (h, w) bool: its mask, or its box inside a feathered margin (box-only data)."""

    rgb: np.ndarray
    alpha: np.ndarray
    inside: np.ndarray
    rigid: bool = False  # a box crop: only 90-degree rotations keep its box tight


def _is_box_ring(poly: np.ndarray, box: np.ndarray) -> bool:
    """Whether a (row, col) ring is just its box (the polygons of box-only data)."""
    x0, y0, x1, y1 = box
    on_x = np.isclose(poly[:, 1], x0, atol=0.5) | np.isclose(poly[:, 1], x1, atol=0.5)
    on_y = np.isclose(poly[:, 0], y0, atol=0.5) | np.isclose(poly[:, 0], y1, atol=0.5)
    return bool((on_x & on_y).all())


def cut_object(img: np.ndarray, polygon: np.ndarray, box: np.ndarray, margin: float = 0.15
               ) -> Cutout | None:
    """The object of ``box`` (x0, y0, x1, y1) in a uint8 (H, W, 3) image: masked by ``polygon``
    (row, col), or, when the polygon is only its box, the box with a feathered margin of
    ``margin`` times its sides. None when too small."""
    h, w = img.shape[:2]
    x0, y0, x1, y1 = (float(v) for v in box)
    if min(x1 - x0, y1 - y0) < 3:
        return None
    if len(polygon) >= 3 and not _is_box_ring(polygon, box):
        c0, r0 = max(int(np.floor(x0)) - 2, 0), max(int(np.floor(y0)) - 2, 0)
        c1, r1 = min(int(np.ceil(x1)) + 2, w), min(int(np.ceil(y1)) + 2, h)
        mask = polygon_to_mask(polygon - [r0, c0], (r1 - r0, c1 - c0))
        if mask.sum() < 9:
            return None
        from scipy.ndimage import gaussian_filter
        alpha = gaussian_filter(mask.astype(np.float32), 0.6)  # a soft edge, as optics give
        return Cutout(img[r0:r1, c0:c1].copy(), alpha, mask)
    mx, my = max(margin * (x1 - x0), 1.0), max(margin * (y1 - y0), 1.0)
    c0, r0 = max(int(np.floor(x0 - mx)), 0), max(int(np.floor(y0 - my)), 0)
    c1, r1 = min(int(np.ceil(x1 + mx)), w), min(int(np.ceil(y1 + my)), h)
    yy, xx = np.mgrid[r0:r1, c0:c1] + 0.5
    dx = np.maximum(np.maximum(x0 - xx, xx - x1), 0) / mx
    dy = np.maximum(np.maximum(y0 - yy, yy - y1), 0) / my
    alpha = np.clip(1 - np.hypot(dx, dy), 0, 1).astype(np.float32)
    return Cutout(img[r0:r1, c0:c1].copy(), alpha, (dx == 0) & (dy == 0), rigid=True)


def warp_cutout(cut: Cutout, size: float, angle: float, k: int, fx: bool, fy: bool
                ) -> torch.Tensor:
    """(5, H, W) RGB [0, 1], alpha, inside: the cutout scaled so that the object's longer side is
    ``size``, flipped, rotated by ``k`` * 90 and then ``angle`` degrees."""
    x = torch.from_numpy(np.concatenate(
        [cut.rgb.astype(np.float32) / 255, cut.alpha[..., None], cut.inside[..., None]], 2)
    ).permute(2, 0, 1)
    rows, cols = np.nonzero(cut.inside.any(1))[0], np.nonzero(cut.inside.any(0))[0]
    f = size / max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)
    hw = (max(round(x.shape[1] * f), 1), max(round(x.shape[2] * f), 1))
    x = F.interpolate(x[None], hw, mode="bilinear", align_corners=False, antialias=f < 1)[0]
    if fx:
        x = x.flip(2)
    if fy:
        x = x.flip(1)
    x = torch.rot90(x, k % 4, (1, 2))
    if angle % 360:
        a = np.deg2rad(angle)
        c, s = abs(np.cos(a)), abs(np.sin(a))
        h, w = x.shape[1:]
        ho, wo = int(np.ceil(h * c + w * s)), int(np.ceil(w * c + h * s))
        # output offsets (pixels) -> input offsets: rotation by -angle; both normalised
        rot = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
        theta = np.diag([2 / w, 2 / h]) @ rot @ np.diag([wo / 2, ho / 2])
        theta = torch.tensor(np.concatenate([theta, np.zeros((2, 1))], 1), dtype=torch.float32)
        grid = F.affine_grid(theta[None], [1, 5, ho, wo], align_corners=False)
        x = F.grid_sample(x[None], grid, mode="bilinear", padding_mode="zeros",
                          align_corners=False)[0]
    return x


@dataclass
class Scene:
    """A pasted scene: the image (3, S, S), the boxes of the copies still visible (the targets),
    the index of the reference among them, and every copy's box and visible fraction."""

    image: torch.Tensor
    boxes: np.ndarray
    ref: int
    copies: np.ndarray
    visible: np.ndarray


def _overlap(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Intersection of ``box`` with each of ``others`` over the smaller box's area."""
    if len(others) == 0:
        return np.zeros(0)
    ix = (np.minimum(others[:, 2], box[2]) - np.maximum(others[:, 0], box[0])).clip(min=0)
    iy = (np.minimum(others[:, 3], box[3]) - np.maximum(others[:, 1], box[1])).clip(min=0)
    area = np.prod(others[:, 2:] - others[:, :2], 1)
    return ix * iy / np.minimum(area, np.prod(box[2:] - box[:2])).clip(min=1)


def _place(canvas: torch.Tensor, top: torch.Tensor, piece: torch.Tensor, label: int,
           avoid: np.ndarray, max_overlap: float, rng: np.random.Generator,
           colour: bool = True) -> np.ndarray | None:
    """Paste a warped piece (5, h, w) at a random place whose object box overlaps each box of
    ``avoid`` by at most ``max_overlap``; marks its object pixels ``label`` in ``top``.
    Returns the object's box in the canvas, or None when no place was found."""
    s = canvas.shape[-1]
    h, w = piece.shape[1:]
    inside = piece[4] > 0.5
    if h > s or w > s or not inside.any():
        return None
    rows, cols = torch.nonzero(inside.any(1)).flatten(), torch.nonzero(inside.any(0)).flatten()
    local = np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float64)
    for _try in range(10):
        y, x = int(rng.integers(0, s - h + 1)), int(rng.integers(0, s - w + 1))
        box = local + [x, y, x, y]
        if (_overlap(box, avoid) <= max_overlap).all():
            break
    else:
        return None
    rgb, alpha = piece[:3], piece[3:4]
    if colour:  # mild per-copy changes: contrast, brightness, blur
        rgb = ((rgb - 0.5) * float(np.exp(rng.uniform(-0.15, 0.15))) + 0.5
               + float(rng.uniform(-0.06, 0.06))).clamp(0, 1)
        if rng.random() < 0.3 and min(h, w) >= 3:
            from torchvision.transforms.functional import gaussian_blur
            rgb = gaussian_blur(rgb, 3, float(rng.uniform(0.3, 1.0)))
    region = canvas[:, y:y + h, x:x + w]
    canvas[:, y:y + h, x:x + w] = region * (1 - alpha) + rgb * alpha
    top[y:y + h, x:x + w][inside] = label
    return box


def paste_scene(background: torch.Tensor, obj: Cutout, ref_side: float, cfg: EpisodeConfig,
                rng: np.random.Generator, distractors: list[Cutout] = (),
                rival: Cutout | None = None) -> Scene:
    """Paste ``cfg.copies`` transformed copies of ``obj`` (the first, the reference, with its
    longer side ``ref_side``; the others ``cfg.copy_scale`` times that) and then the distractors
    (0.5-2x the reference's size) on a (3, S, S) background. A ``rival`` (an object of another
    kind) is pasted as many times as a target would be, in the same way: repetition and pasting
    alone must not tell a target. A copy is a target while at least ``cfg.min_visible_copy`` of
    its object pixels are visible."""
    canvas = background.clone()
    s = canvas.shape[-1]
    top = torch.full((s, s), -1, dtype=torch.int32)
    n = int(rng.integers(cfg.copies[0], cfg.copies[1] + 1))
    boxes, areas = [], []

    def piece(cut: Cutout, size: float) -> torch.Tensor:
        angle = 0.0 if cut.rigid or rng.random() < 0.3 else float(rng.uniform(0, 360))
        return warp_cutout(cut, size, angle, int(rng.integers(4)), bool(rng.random() < 0.5),
                           bool(rng.random() < 0.5))

    for k in range(n):
        size = ref_side * (1.0 if k == 0 else float(np.exp(rng.uniform(*np.log(cfg.copy_scale)))))
        p = piece(obj, size)
        box = _place(canvas, top, p, len(boxes), np.array(boxes).reshape(-1, 4), cfg.max_overlap,
                     rng)
        if box is not None:
            boxes.append(box)
            areas.append(int((p[4] > 0.5).sum()))
    copies = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    if rival is not None:
        rival_side = ref_side * float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
        for _ in range(int(rng.integers(cfg.copies[0], cfg.copies[1] + 1))):
            size = rival_side * float(np.exp(rng.uniform(*np.log(cfg.copy_scale))))
            _place(canvas, top, piece(rival, size), -2, copies, 0.2, rng)
    for d in distractors:
        size = ref_side * float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
        _place(canvas, top, piece(d, size), -2, copies, 0.2, rng)
    if rng.random() < 0.3:  # sensor noise
        canvas = (canvas + torch.randn(canvas.shape, generator=torch.Generator().manual_seed(
            int(rng.integers(2 ** 31)))) * float(rng.uniform(0.005, 0.03))).clamp(0, 1)
    counts = torch.bincount((top.flatten() + 2).long(), minlength=len(boxes) + 2)[2:].numpy()
    visible = counts / np.maximum(areas, 1) if boxes else np.zeros(0)
    keep = np.flatnonzero(visible >= cfg.min_visible_copy)
    ref = 0 if len(keep) and keep[0] == 0 else (int(np.argmax(visible[keep])) if len(keep) else -1)
    return Scene(canvas, copies[keep].astype(np.float32), ref, copies, visible)
