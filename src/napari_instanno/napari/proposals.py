"""Re-runs and duplicates: which earlier shapes stay, which new ones are added, and which
reviewed shapes a re-run learns from (accepted: positives, rejected: negatives).

One rule for plain result layers (``layers.add_instances``) and ``LevelOfDetail`` alike, on the
polygons' own boxes through an R-tree, so it stays cheap at 100k x 100k.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..geometry import box_iou, polygon_box
from ..inference.references import CONFLICT_IOU, MAX_SIZE_RATIO, check_references, side
from ..instances import Instances

REPLACE_IOU = 0.5  # a new proposal this close (box IoU) to a reviewed shape is the same instance


def overlapping(new: np.ndarray, old: np.ndarray, iou: float) -> np.ndarray:
    """Whether each ``new`` (x0, y0, x1, y1) box has an IoU >= ``iou`` with an ``old`` one; only
    boxes that meet are compared (an R-tree), so 100k x 100k stays cheap."""
    import shapely

    new, old = np.asarray(new, float).reshape(-1, 4), np.asarray(old, float).reshape(-1, 4)
    hit = np.zeros(len(new), dtype=bool)
    if not len(new) or not len(old):
        return hit
    i, j = shapely.STRtree(shapely.box(*old.T)).query(shapely.box(*new.T), predicate="intersects")
    inter = np.prod(np.clip(np.minimum(new[i, 2:], old[j, 2:])
                            - np.maximum(new[i, :2], old[j, :2]), 0, None), axis=1)
    union = np.prod(new[i, 2:] - new[i, :2], axis=1) + np.prod(old[j, 2:] - old[j, :2], axis=1)
    hit[i[inter / np.maximum(union - inter, 1e-12) >= iou]] = True
    return hit


def replace_proposals(categories: Sequence[str], statuses: Sequence[str],
                      boxes_of: Callable[[np.ndarray], np.ndarray], new_boxes: np.ndarray, category: str,
                      iou: float = REPLACE_IOU) -> tuple[np.ndarray, np.ndarray]:
    """(earlier shapes kept, new shapes added) when a re-run replaces the proposals of ``category``.

    Earlier *proposed* shapes of that category go; reviewed ones stay, and a new shape whose box
    overlaps a staying one of that category (IoU >= ``iou``) is not added twice. ``boxes_of(idx)``
    gives the (k, 4) boxes of earlier shapes ``idx``.
    """
    same = np.asarray(categories, dtype=object) == category
    keep_old = ~(same & (np.asarray(statuses, dtype=object) == "proposed"))
    stay = np.flatnonzero(same & keep_old)
    new_boxes = np.asarray(new_boxes, float).reshape(-1, 4)
    keep_new = ~overlapping(new_boxes, boxes_of(stay) if len(stay) else np.zeros((0, 4)), iou)
    return keep_old, keep_new


def polygon_boxes(inst: Instances) -> np.ndarray:
    """The polygons' own (x0, y0, x1, y1) boxes (a matcher's boxes may differ)."""
    return np.array([polygon_box(p) for p in inst.polygons]).reshape(-1, 4)


MAX_POSITIVES = 8  # references of a re-run (each costs a matcher pass), the drawn ones first
MAX_NEGATIVES = 8


def choose_references(drawn: np.ndarray, accepted: tuple[np.ndarray, np.ndarray],
                      rejected: tuple[np.ndarray, np.ndarray], shape: tuple[int, int]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(positives, negatives) for a re-run ("find more like the accepted").

    Positives: every rectangle ``drawn`` in the reference layer, then accepted shapes (boxes,
    scores): the hand-made ones (score 1) and then the weakest matches first, those the matcher
    was least sure of, within the references' size range (``references.MAX_SIZE_RATIO``), up
    to ``MAX_POSITIVES``. Negatives: rejected shapes, the highest scores first (the most
    confusing), up to ``MAX_NEGATIVES``, leaving out any that is the same object as a positive.
    Checked like any references (``references.check_references``).
    """
    pos = [np.asarray(b, float) for b in np.asarray(drawn, float).reshape(-1, 4)]
    boxes, scores = np.asarray(accepted[0], float).reshape(-1, 4), np.asarray(accepted[1], float)
    for i in np.lexsort((scores, scores < 1.0)):
        if len(pos) >= MAX_POSITIVES:
            break
        sides = side(np.array(pos)) if pos else None
        s = side(boxes[i:i + 1])[0]
        if sides is None or sides.max() / MAX_SIZE_RATIO <= s <= sides.min() * MAX_SIZE_RATIO:
            pos.append(boxes[i])
    pos_arr = np.array(pos).reshape(-1, 4)
    nb, ns = np.asarray(rejected[0], float).reshape(-1, 4), np.asarray(rejected[1], float)
    nb = nb[np.argsort(-ns, kind="stable")]
    if len(nb) and len(pos_arr):
        nb = nb[box_iou(nb, pos_arr).max(1) < CONFLICT_IOU]
    return check_references(pos_arr, nb[:MAX_NEGATIVES], shape)
