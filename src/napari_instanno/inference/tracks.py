"""Linking instances across the planes of a stack into tracks.

Plane by plane, each new instance is matched to a track by Hungarian assignment
(``scipy.optimize.linear_sum_assignment``, in each group of overlapping instances, so a plane of
many thousands stays cheap) on polygon IoU (shapely, candidate pairs from an ``STRtree``): first to
the tracks seen on the plane before, then the rest to tracks last seen ``gap`` planes before that
(an object missed on one plane keeps its id). Pairs under ``min_iou`` are never linked; an
unmatched instance starts a new track.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import shapely
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

MIN_IOU = 0.2  # an object moving less than ~ 1/3 of its size between planes keeps its track
MAX_GAP = 1  # planes an object may be missed on and keep its track


def pair_iou(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs (i, j) of geometries ``a[i]``, ``b[j]`` that overlap, and their IoU."""
    if not len(a) or not len(b):
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    i, j = shapely.STRtree(b).query(a, predicate="intersects")
    inter = shapely.area(shapely.intersection(a[i], b[j]))
    union = shapely.area(a[i]) + shapely.area(b[j]) - inter
    return i, j, np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def _assign(i: np.ndarray, j: np.ndarray, iou: np.ndarray, min_iou: float
            ) -> list[tuple[int, int]]:
    """The one-to-one pairs of largest total IoU among pairs (i, j) with IoU >= ``min_iou``: a
    Hungarian assignment in each group of instances joined by such pairs (groups are small
    however many instances a plane holds)."""
    ok = iou >= min_iou
    i, j, iou = i[ok], j[ok], iou[ok]
    if not len(i):
        return []
    rows, ri = np.unique(i, return_inverse=True)
    cols, cj = np.unique(j, return_inverse=True)
    n = len(rows) + len(cols)
    graph = coo_matrix((np.ones(len(i)), (ri, len(rows) + cj)), shape=(n, n))
    group = connected_components(graph, directed=False)[1][ri]
    order = np.argsort(group, kind="stable")
    out = []
    for members in np.split(order, np.flatnonzero(np.diff(group[order])) + 1):
        r, inv_r = np.unique(ri[members], return_inverse=True)
        c, inv_c = np.unique(cj[members], return_inverse=True)
        cost = np.zeros((len(r), len(c)))
        cost[inv_r, inv_c] = iou[members]
        for a, b in zip(*linear_sum_assignment(-cost), strict=True):
            if cost[a, b] >= min_iou:
                out.append((int(rows[r[a]]), int(cols[c[b]])))
    return out


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
            for r, c in _assign(*pair_iou(geoms[prev], geoms[here[free]]), min_iou):
                ids[here[free[c]]] = tracks[r]
            free = [k for k in free if ids[here[k]] < 0]
        for k in free:
            ids[here[k]] = n_tracks
            n_tracks += 1
        for i in here.tolist():
            last[int(ids[i])] = (p, i)
    return ids
