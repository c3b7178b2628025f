"""Re-runs and duplicates: which earlier shapes stay and which new ones are added.

One rule for plain result layers (``layers.add_instances``) and ``LevelOfDetail`` alike, on the
polygons' own boxes through an R-tree, so it stays cheap at 100k x 100k.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..geometry import polygon_box
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
