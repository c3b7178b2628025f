"""Duplicate proposals: two outlines of one object, found on the polygons themselves (boxes miss a
fragment outlined inside its object, whose boxes overlap little)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import shapely

DUPLICATE_IOU = 0.5  # polygon IoU above this: one object
NESTED_SHARE = 0.6  # or this share of the smaller polygon inside the larger: a fragment of it


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
    geoms = np.empty(n, dtype=object)
    geoms[:] = [shapely.Polygon(p) if len(p) >= 3 else shapely.Polygon() for p in polygons]
    geoms = shapely.make_valid(geoms)
    areas = shapely.area(geoms)
    a, b = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    pair = (a < b) & (areas[a] > 0) & (areas[b] > 0)
    a, b = a[pair], b[pair]
    inter = shapely.area(shapely.intersection(geoms[a], geoms[b]))
    union = areas[a] + areas[b] - inter
    same = (inter > iou * union) | (inter > nested * np.minimum(areas[a], areas[b]))
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
