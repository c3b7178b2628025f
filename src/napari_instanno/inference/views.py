"""Dihedral views for the learned matcher: the image flipped and transposed, matched in each view,
the detections mapped back and fused (test-time augmentation).

A view is a name of letters applied in order ``t`` (transpose), ``h`` (flip left-right), ``v``
(flip up-down); ``""`` is the image itself. The matcher is trained on flipped and transposed
episodes, so each view is as good a look as the original, and their errors differ: averaging
the boxes of one object over the views places small objects better (bench_generalisation, model
card). Views are taken of the padded image, so the feature grid stays on the same pixels in every
view, in a tile as in the whole image. How many views a run gets is decided in ``views_for``.
"""

from __future__ import annotations

import numpy as np
import torch

from ..geometry import box_iou, nms
from .references import SAME_PLACE  # detections of all views closer than this are one object

DIHEDRAL = ("", "h", "v", "hv", "t", "th", "tv", "thv")
MOST_VIEWS = len(DIHEDRAL)  # the learned matcher's default cap (``LearnedMatcher(views=)``)
VIEW_PIXELS = 6e6  # views x pixels the matcher sees (after rescaling) at most, per run
FUSE_IOU = 0.55  # a view's box at least this close to a fused place is that object in the view


def views_for(pixels: float, most: int = len(DIHEDRAL)) -> tuple[str, ...]:
    """The views for an image the matcher sees with ``pixels`` pixels: as many as fit in
    ``VIEW_PIXELS`` (1, 2, 4 or 8, at most ``most``)."""
    n = 1
    while 2 * n <= min(most, len(DIHEDRAL)) and 2 * n * pixels <= VIEW_PIXELS:
        n *= 2
    return DIHEDRAL[:n]


def view_image(x: torch.Tensor, view: str) -> torch.Tensor:
    """A (B, C, H, W) batch seen in ``view``."""
    if "t" in view:
        x = x.transpose(-1, -2)
    if "h" in view:
        x = x.flip(-1)
    if "v" in view:
        x = x.flip(-2)
    return x


def view_boxes(boxes: np.ndarray, view: str, shape: tuple[int, int]) -> np.ndarray:
    """Boxes (N, 4) x0y0x1y1 in an image of ``shape`` (H, W), as they are in ``view`` of it."""
    b = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    h, w = shape
    if "t" in view:
        b, (h, w) = b[:, [1, 0, 3, 2]], (w, h)
    if "h" in view:
        b[:, [0, 2]] = w - b[:, [2, 0]]
    if "v" in view:
        b[:, [1, 3]] = h - b[:, [3, 1]]
    return b


def unview_boxes(boxes: np.ndarray, view: str, shape: tuple[int, int]) -> np.ndarray:
    """Boxes found in ``view`` of an image of ``shape`` (H, W) back in the image's frame."""
    b = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    h, w = (shape[1], shape[0]) if "t" in view else shape
    if "v" in view:
        b[:, [1, 3]] = h - b[:, [3, 1]]
    if "h" in view:
        b[:, [0, 2]] = w - b[:, [2, 0]]
    if "t" in view:
        b = b[:, [1, 0, 3, 2]]
    return b


def fuse(found: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """One (boxes, scores), best first, from each view's detections in the image's frame: the
    places are all views' detections after NMS; each place's box is the score-weighted mean of
    the best box of each view there, its score the mean over the views (0 where one has none)."""
    if len(found) == 1:
        return found[0]
    boxes = np.concatenate([np.asarray(b, float).reshape(-1, 4) for b, _ in found])
    scores = np.concatenate([np.asarray(s, float).reshape(-1) for _, s in found])
    if not len(boxes):
        return boxes, scores
    places = boxes[nms(boxes, scores, SAME_PLACE)]
    num, total = np.zeros_like(places), np.zeros(len(places))
    for b, s in found:
        b, s = np.asarray(b, float).reshape(-1, 4), np.asarray(s, float).reshape(-1)
        if not len(b):
            continue
        near = box_iou(places, b) >= FUSE_IOU
        best = np.where(near, s[None], -1.0).argmax(1)
        w = np.where(near.any(1), s[best], 0.0)
        num += b[best] * w[:, None]
        total += w
    seen = total > 0  # (a place scored 0 in every view keeps its own box)
    fused = np.where(seen[:, None], num / np.where(seen, total, 1.0)[:, None], places)
    score = total / len(found)
    order = np.argsort(-score, kind="stable")
    return fused[order], score[order]
