"""Candidates whose outline waits: their stand-in polygons, and putting the outlines in later.

A run that outlines only what a viewer shows first (``outline_threshold``) gives each other
candidate its box's ellipse as a stand-in and ``properties["outlined"]`` False. ``waiting``
says which stand-ins a lower threshold needs; ``finished`` puts their outlines in and drops the
ones that then duplicate a better outline, so the result is what outlining all at once gives.
The whole image does the outlining in ``Annotator.outline``, a tiled run in ``tiled_outlines``.
"""

from __future__ import annotations

import numpy as np

from ..geometry import ellipse_polygon
from ..instances import Instances
from .duplicates import duplicates_suppressed

STAND_IN_VERTICES = 16  # the ellipse standing in for a candidate not outlined yet
FLAG = "outlined"  # the properties column: False for a stand-in


def stand_ins(boxes: np.ndarray) -> list[np.ndarray]:
    """The stand-in polygons ((row, col) ellipses) of (x0, y0, x1, y1) ``boxes``."""
    return [ellipse_polygon(b, STAND_IN_VERTICES) for b in np.asarray(boxes).reshape(-1, 4)]


def waiting(inst: Instances, min_score: float = 0.0) -> np.ndarray:
    """Indices of ``inst``'s stand-ins scoring at least ``min_score``, best first."""
    flag = inst.properties.get(FLAG)
    if flag is None:
        return np.zeros(0, dtype=np.int64)
    todo = np.flatnonzero(~flag.astype(bool) & (inst.scores >= min_score))
    return todo[np.argsort(-inst.scores[todo], kind="stable")]


def finished(inst: Instances, todo: np.ndarray, polygons: list[np.ndarray]) -> Instances:
    """``inst`` with the stand-ins ``todo`` replaced by their outlines ``polygons`` and the
    outlines that then duplicate a better one dropped (``duplicates``), best first."""
    if not len(todo):
        return inst
    polys = list(inst.polygons)
    for i, poly in zip(todo, polygons, strict=True):
        polys[i] = poly
    done = inst.properties[FLAG].astype(bool).copy()
    done[todo] = True
    outlined = np.flatnonzero(done)
    keep = outlined[duplicates_suppressed([polys[i] for i in outlined], inst.scores[outlined])]
    idx = np.concatenate([keep, np.flatnonzero(~done)])
    idx = idx[np.argsort(-inst.scores[idx], kind="stable")]
    return Instances(polygons=[polys[i] for i in idx], boxes=inst.boxes[idx],
                     scores=inst.scores[idx], category_ids=inst.category_ids[idx],
                     categories=dict(inst.categories), status=inst.status[idx],
                     properties={**{k: v[idx] for k, v in inst.properties.items()},
                                 FLAG: done[idx]})
