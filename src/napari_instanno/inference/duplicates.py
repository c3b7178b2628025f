"""Duplicate proposals: two outlines of one object, found on the polygons themselves (boxes miss a
fragment outlined inside its object, whose boxes overlap little)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import shapely

DUPLICATE_IOU = 0.5  # polygon IoU above this: one object
NESTED_SHARE = 0.6  # or this share of the smaller polygon inside the larger: a fragment of it


def _geometries(polygons: Sequence[np.ndarray]) -> np.ndarray:
    """Valid shapely geometries of (K, 2) vertex arrays (empty under 3 vertices)."""
    geoms = np.empty(len(polygons), dtype=object)
    geoms[:] = [shapely.Polygon(p) if len(p) >= 3 else shapely.Polygon() for p in polygons]
    return shapely.make_valid(geoms)


def _same(ga: np.ndarray, gb: np.ndarray, iou: float, nested: float) -> np.ndarray:
    """Whether each pair (ga[k], gb[k]) outlines one object: IoU above ``iou``, or the smaller
    lies inside the other for more than ``nested`` of its area (pairs without area never)."""
    area_a, area_b = shapely.area(ga), shapely.area(gb)
    inter = shapely.area(shapely.intersection(ga, gb))
    union = area_a + area_b - inter
    both = (area_a > 0) & (area_b > 0)
    return both & ((inter > iou * union) | (inter > nested * np.minimum(area_a, area_b)))


def duplicates_suppressed(polygons: Sequence[np.ndarray], scores: np.ndarray,
                          iou: float = DUPLICATE_IOU, nested: float = NESTED_SHARE) -> np.ndarray:
    """Indices to keep, best score first, after greedy suppression of every polygon that overlaps
    a better one with IoU above ``iou`` or lies inside it for more than ``nested`` of its area.

    Polygons are (K, 2) vertex arrays; self-intersecting ones are repaired, and one with fewer
    than 3 vertices is never suppressed (it has no area to compare).
    """
    n = len(polygons)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    if n < 2:
        return order
    geoms = _geometries(polygons)
    a, b = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    a, b = a[a < b], b[a < b]
    same = _same(geoms[a], geoms[b], iou, nested)
    partners: dict[int, list[int]] = {}
    for i, j in zip(a[same].tolist(), b[same].tolist()):
        partners.setdefault(i, []).append(j)
        partners.setdefault(j, []).append(i)
    suppressed = np.zeros(n, dtype=bool)
    keep = []
    for i in order.tolist():
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed[partners.get(i, [])] = True
    return np.array(keep, dtype=np.int64)


def same_object(polygons: Sequence[np.ndarray], others: Sequence[np.ndarray],
                iou: float = DUPLICATE_IOU, nested: float = NESTED_SHARE) -> np.ndarray:
    """For each of ``polygons``, the index of one of ``others`` that outlines the same object (as
    ``duplicates_suppressed`` judges; the most overlapping one), else -1."""
    match = np.full(len(polygons), -1, dtype=np.int64)
    if not len(polygons) or not len(others):
        return match
    new, old = _geometries(polygons), _geometries(others)
    i, j = shapely.STRtree(old).query(new, predicate="intersects")
    same = _same(new[i], old[j], iou, nested)
    i, j = i[same], j[same]
    overlap = shapely.area(shapely.intersection(new[i], old[j]))
    for k in np.argsort(overlap, kind="stable"):  # the largest overlap is written last
        match[i[k]] = j[k]
    return match
