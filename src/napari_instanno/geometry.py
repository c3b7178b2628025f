"""Polygon geometry in the project's one coordinate frame.

Polygons are (K, 2) float arrays of (row, col) vertices in *pixel-corner* coordinates: pixel
(r, c) covers [r, r+1) x [c, c+1), so swapping the columns gives COCO / QuPath (x, y) directly.
Boxes are (x0, y0, x1, y1) in the same frame (torchvision's order).

Whole instances (holes, several parts) are shapely ``Polygon`` / ``MultiPolygon`` geometries in
(x, y) = (col, row) of the same frame, so their coordinates are COCO's and GeoJSON's pixels as
they are. Rings are kept exactly as given (no reorientation, no closing vertex added to ours).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon
from skimage.draw import polygon as draw_polygon
from skimage.measure import find_contours

Geometry = Polygon | MultiPolygon


def polygon_area(poly: np.ndarray) -> float:
    """Area of a (K, 2) polygon (0 with fewer than 3 vertices)."""
    return float(ring_geometry(poly).area)


def ring_geometry(poly: np.ndarray) -> Polygon:
    """A (row, col) polygon as a shapely Polygon in (x, y); empty with fewer than 3 vertices."""
    p = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
    return Polygon(p[:, ::-1]) if len(p) >= 3 else Polygon()


def polygons_to_geometries(polys: Sequence[np.ndarray]) -> np.ndarray:
    """An object array of shapely Polygons, one per (row, col) polygon, built in one call."""
    out = np.empty(len(polys), dtype=object)
    ok = [i for i, p in enumerate(polys) if len(p) >= 3]
    out[:] = [Polygon()] * len(polys)
    if ok:
        rings = [np.vstack([polys[i][:, ::-1], polys[i][:1, ::-1]]) for i in ok]
        ends = np.cumsum([len(r) for r in rings])
        made = shapely.from_ragged_array(shapely.GeometryType.POLYGON, np.concatenate(rings),
                                         (np.concatenate([[0], ends]), np.arange(len(ok) + 1)))
        out[ok] = made
    return out


def parts_of(geom: Geometry) -> list[Polygon]:
    """The polygons of a Polygon or MultiPolygon (none when empty)."""
    if geom.is_empty:
        return []
    return list(geom.geoms) if isinstance(geom, MultiPolygon) else [geom]


def rings_of(part: Polygon) -> list[np.ndarray]:
    """A polygon's rings as (row, col) arrays without the closing vertex: exterior, then holes."""
    return [np.asarray(r.coords)[:-1, ::-1] for r in (part.exterior, *part.interiors)]


def outer_ring(geom: Geometry) -> np.ndarray:
    """The (row, col) exterior ring of the largest part, without the closing vertex."""
    parts = parts_of(geom)
    if not parts:
        return np.zeros((0, 2))
    return rings_of(max(parts, key=lambda p: p.area))[0]


def has_holes(geom: Geometry) -> bool:
    """Whether any part of ``geom`` has an interior ring."""
    return any(len(p.interiors) for p in parts_of(geom))


def make_geometry(parts: Sequence[Polygon]) -> Geometry:
    """One Polygon, or a MultiPolygon when there are several parts (empty when none)."""
    parts = [p for p in parts if not p.is_empty]
    if not parts:
        return Polygon()
    return parts[0] if len(parts) == 1 else MultiPolygon(parts)


def geometry_to_mask(geom: Geometry, shape: tuple[int, int]) -> np.ndarray:
    """Boolean mask of the pixels whose centre lies inside ``geom`` (holes left out)."""
    mask = np.zeros(shape, dtype=bool)
    for part in parts_of(geom):
        rings = rings_of(part)
        inside = polygon_to_mask(rings[0], shape)
        for hole in rings[1:]:
            inside &= ~polygon_to_mask(hole, shape)
        mask |= inside
    return mask


def mask_to_geometry(mask: np.ndarray, tolerance: float = 0.0) -> Geometry | None:
    """Every region of ``mask`` with its holes, as a Polygon or MultiPolygon (None if empty).

    Boundaries are traced between pixel centres (``find_contours`` at 0.5); outer boundaries come
    out counter-clockwise in (x, y), holes clockwise, and each hole goes to the smallest region
    around it. ``tolerance`` > 0 simplifies the result (shapely, topology kept).
    """
    m = np.pad(np.asarray(mask, dtype=np.float32), 1)
    outers, holes = [], []
    for c in find_contours(m, 0.5):
        ring = Polygon(c[:-1, ::-1] - 0.5)  # undo padding, centre -> corner frame
        if ring.area > 0:
            (outers if ring.exterior.is_ccw else holes).append(ring)
    if not outers:
        return None
    outers.sort(key=lambda p: p.area)
    inner: list[list] = [[] for _ in outers]
    for hole in holes:
        owner = next((k for k, o in enumerate(outers) if o.covers(hole)), None)
        if owner is not None:
            inner[owner].append(hole.exterior.coords)
    geom = make_geometry([Polygon(o.exterior.coords, h) for o, h in
                          sorted(zip(outers, inner, strict=True), key=lambda oh: -oh[0].area)])
    if tolerance > 0:
        geom = geom.simplify(tolerance, preserve_topology=True)
    return geom


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
    geom = mask_to_geometry(mask)
    if geom is None:
        return None
    poly = outer_ring(geom)
    if tolerance > 0:
        poly = simplify([poly], tolerance)[0]
    return poly if len(poly) >= 3 else None


def simplify(polys: Sequence[np.ndarray], tolerance: float) -> list[np.ndarray]:
    """Douglas-Peucker at ``tolerance`` (pixels) on closed polygons, all at once; each keeps >= 3 vertices."""
    polys = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in polys]
    if tolerance <= 0 or not polys:
        return polys
    rings = shapely.simplify(shapely.linearrings(polys), tolerance, preserve_topology=False)
    out = [shapely.get_coordinates(r)[:-1] for r in rings]
    return [q if len(q) >= 3 else p for p, q in zip(polys, out, strict=True)]


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


def fit_to_box(poly: np.ndarray, box: np.ndarray) -> np.ndarray:
    """``poly`` (row, col) stretched along each axis so that its bounds are the (x0, y0, x1, y1)
    ``box``."""
    p = np.asarray(poly, dtype=np.float64)
    lo, hi = p.min(axis=0), p.max(axis=0)
    x0, y0, x1, y1 = np.asarray(box, dtype=np.float64)
    return (p - lo) / np.maximum(hi - lo, 1e-9) * (y1 - y0, x1 - x0) + (y0, x0)


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
