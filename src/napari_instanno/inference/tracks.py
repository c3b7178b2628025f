"""Linking instances across the planes of a stack into tracks.

Plane by plane, each new instance is matched to a track by Hungarian assignment
(``scipy.optimize.linear_sum_assignment``) on polygon IoU (shapely, candidate pairs from an
``STRtree``): first to the tracks seen on the plane before, then the rest to tracks last seen
``gap`` planes before that (an object missed on one plane keeps its id). Pairs under ``min_iou``
are never linked; an unmatched instance starts a new track.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import shapely
from scipy.optimize import linear_sum_assignment

MIN_IOU = 0.2  # an object moving less than ~ 1/3 of its size between planes keeps its track
MAX_GAP = 1  # planes an object may be missed on and keep its track


def pair_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) IoU of two arrays of shapely geometries (0 where they do not touch)."""
    out = np.zeros((len(a), len(b)))
    if not len(a) or not len(b):
        return out
    i, j = shapely.STRtree(b).query(a, predicate="intersects")
    if len(i):
        inter = shapely.area(shapely.intersection(a[i], b[j]))
        union = shapely.area(a[i]) + shapely.area(b[j]) - inter
        out[i, j] = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
    return out


def _assign(iou: np.ndarray, min_iou: float) -> list[tuple[int, int]]:
    """Row-column pairs of the maximum-IoU assignment with IoU >= ``min_iou``."""
    if not iou.size:
        return []
    rows, cols = linear_sum_assignment(-iou)
    return [(r, c) for r, c in zip(rows.tolist(), cols.tolist()) if iou[r, c] >= min_iou]


def link_tracks(planes: np.ndarray, geometries: Sequence, min_iou: float = MIN_IOU,
                gap: int = MAX_GAP) -> np.ndarray:
    """Track ids (0, 1, ... in order of first appearance) for instances on integer ``planes``.

    ``geometries[i]`` is instance ``i``'s shapely geometry on plane ``planes[i]``; instances of
    one plane never share a track.
    """
    planes = np.asarray(planes, dtype=np.int64).reshape(-1)
    geoms = np.empty(len(planes), dtype=object)
    geoms[:] = list(geometries)
    geoms = shapely.make_valid(geoms) if len(geoms) else geoms
    ids = np.full(len(planes), -1, dtype=np.int64)
    last: dict[int, tuple[int, int]] = {}  # track -> (plane, instance) where it was last seen
    n_tracks = 0
    for p in np.unique(planes).tolist():
        here = np.flatnonzero(planes == p)
        free = list(range(len(here)))
        for back in range(1, gap + 2):
            tracks = [t for t, (q, _) in last.items() if q == p - back]
            if not tracks or not free:
                continue
            prev = np.array([last[t][1] for t in tracks])
            iou = pair_iou(geoms[prev], geoms[here[free]])
            for r, c in _assign(iou, min_iou):
                ids[here[free[c]]] = tracks[r]
            free = [k for k in free if ids[here[k]] < 0]
        for k in free:
            ids[here[k]] = n_tracks
            n_tracks += 1
        for i in here.tolist():
            last[int(ids[i])] = (p, i)
    return ids
