"""Polygon geometry in the project's one coordinate frame.

Polygons are (K, 2) float arrays of (row, col) vertices in *pixel-corner* coordinates: pixel
(r, c) covers [r, r+1) x [c, c+1), so swapping the columns gives COCO / QuPath (x, y) directly.
Boxes are (x0, y0, x1, y1) in the same frame (torchvision's order).
"""

from __future__ import annotations

import numpy as np
from skimage.draw import polygon as draw_polygon
from skimage.measure import approximate_polygon, find_contours


def polygon_area(poly: np.ndarray) -> float:
    """Shoelace area of a (K, 2) polygon."""
    p = np.asarray(poly, dtype=np.float64)
    if len(p) < 3:
        return 0.0
    r, c = p[:, 0], p[:, 1]
    return float(abs(np.dot(r, np.roll(c, -1)) - np.dot(c, np.roll(r, -1))) / 2.0)


def polygon_box(poly: np.ndarray) -> np.ndarray:
    """(x0, y0, x1, y1) bounds of a (row, col) polygon."""
    p = np.asarray(poly, dtype=np.float64)
    return np.array([p[:, 1].min(), p[:, 0].min(), p[:, 1].max(), p[:, 0].max()])


def polygon_to_mask(poly: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Boolean mask of the pixels whose centre lies inside the polygon."""
    p = np.asarray(poly, dtype=np.float64)
    mask = np.zeros(shape, dtype=bool)
    if len(p) >= 3:
        rr, cc = draw_polygon(p[:, 0] - 0.5, p[:, 1] - 0.5, shape)
        mask[rr, cc] = True
    return mask


def mask_to_polygon(mask: np.ndarray, tolerance: float = 0.0) -> np.ndarray | None:
    """Outer boundary of the largest connected region of ``mask`` as a polygon (None if empty).

    ``tolerance`` > 0 simplifies it with Douglas-Peucker (in pixels).
    """
    m = np.pad(np.asarray(mask, dtype=np.float32), 1)
    contours = find_contours(m, 0.5)
    if not contours:
        return None
    best = max(contours, key=polygon_area)
    best = best[:-1] if len(best) > 1 and np.allclose(best[0], best[-1]) else best
    poly = best - 1.0 + 0.5  # undo padding, centre -> corner frame
    if tolerance > 0:
        poly = simplify(poly, tolerance)
    return poly if len(poly) >= 3 else None


def simplify(poly: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas-Peucker simplification of a closed polygon, keeping at least 3 vertices."""
    p = np.asarray(poly, dtype=np.float64)
    closed = np.vstack([p, p[:1]])
    out = approximate_polygon(closed, tolerance)[:-1]
    return out if len(out) >= 3 else p


def resample_polygon(poly: np.ndarray, n: int) -> np.ndarray:
    """``n`` points equally spaced along the closed polygon's perimeter, starting at vertex 0."""
    p = np.asarray(poly, dtype=np.float64)
    closed = np.vstack([p, p[:1]])
    seg = np.linalg.norm(np.diff(closed, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    if cum[-1] <= 0:
        return np.repeat(p[:1], n, axis=0)
    t = np.linspace(0, cum[-1], n, endpoint=False)
    return np.stack([np.interp(t, cum, closed[:, i]) for i in range(2)], axis=1)


def ellipse_polygon(box: np.ndarray, n: int) -> np.ndarray:
    """``n`` vertices of the ellipse inscribed in an (x0, y0, x1, y1) box, as (row, col)."""
    x0, y0, x1, y1 = np.asarray(box, dtype=np.float64)
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    rows = (y0 + y1) / 2 - (y1 - y0) / 2 * np.cos(t)
    cols = (x0 + x1) / 2 + (x1 - x0) / 2 * np.sin(t)
    return np.stack([rows, cols], axis=1)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (N, 4) and (M, 4) xyxy boxes."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best score first (torchvision.ops.nms)."""
    import torch
    from torchvision.ops import nms as tv_nms

    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    keep = tv_nms(
        torch.as_tensor(np.asarray(boxes), dtype=torch.float32),
        torch.as_tensor(np.asarray(scores), dtype=torch.float32),
        iou_threshold,
    )
    return keep.numpy()


def boundary_f_score(pred: np.ndarray, gt: np.ndarray, tolerance: float) -> float:
    """Boundary F-score of two masks: boundary pixels matched within ``tolerance`` pixels."""
    from scipy.ndimage import binary_erosion, distance_transform_edt

    def edge(m: np.ndarray) -> np.ndarray:
        return m & ~binary_erosion(m, border_value=0)

    pe, ge = edge(pred.astype(bool)), edge(gt.astype(bool))
    if not pe.any() and not ge.any():
        return 1.0
    if not pe.any() or not ge.any():
        return 0.0
    dist_to_g = distance_transform_edt(~ge)
    dist_to_p = distance_transform_edt(~pe)
    precision = float((dist_to_g[pe] <= tolerance).mean())
    recall = float((dist_to_p[ge] <= tolerance).mean())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
