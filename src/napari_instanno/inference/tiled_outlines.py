"""Outlining on an image that is never loaded whole, window by window.

``find_similar_tiled(..., outline_threshold=)`` outlines only what a viewer shows first; the
others wait as stand-ins (``stand_ins``). ``outline_tiled`` outlines those scoring at least a new
threshold; ``outline_boxes`` outlines any boxes (box -> polygon) and ``refine_polygons`` snaps
edited polygons. Boxes are grouped by the tile core holding their centre and each group's
window (the core, its halo, and every box whole) is read once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..geometry import polygon_box
from ..image import check_box, check_polygon, to_rgb01
from ..instances import Instances
from .policy import TILE_SIZE, default_halo
from .seams import box_core, plan_tiles, window
from .sources import Source, as_source
from .stand_ins import finished, waiting

Progress = Callable[[int, int], None] | None


def outline_tiled(outliner: Any, image: Any, inst: Instances, min_score: float = 0.0, *,
                  level: int = 0, value_range: Any = None, progress: Progress = None,
                  cancel: Callable[[], bool] | None = None) -> Instances:
    """``inst`` (a tiled run's, on ``image``: the same image, level and value range) with its
    stand-ins scoring at least ``min_score`` outlined by ``outliner``; duplicates then dropped
    (``stand_ins.finished``). ``progress(done, total)`` after each window; ``cancel()`` is
    checked between windows and keeps what is outlined so far."""
    todo = waiting(inst, min_score)
    if not len(todo):
        return inst
    polys = outline_boxes(outliner, image, inst.boxes[todo], level=level, value_range=value_range,
                          progress=progress, cancel=cancel)
    done = [k for k, p in enumerate(polys) if p is not None]
    return finished(inst, todo[done], [polys[k] for k in done])


def outline_boxes(outliner: Any, image: Any, boxes: np.ndarray, *, level: int = 0,
                  value_range: Any = None, progress: Progress = None,
                  cancel: Callable[[], bool] | None = None) -> list[np.ndarray | None]:
    """One (row, col) polygon per (x0, y0, x1, y1) box of ``image`` (``value_range``: as for
    ``find_similar_tiled``), window by window; None for the boxes a cancel left out."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if not len(boxes):
        return []
    source, vr = _opened(image, level, value_range)
    boxes = np.stack([check_box(b, source.shape[:2]) for b in boxes])
    return _window_by_window(
        outliner, source, vr, boxes,
        lambda group, y0, x0: outliner.outline(boxes[group] - np.array([x0, y0, x0, y0],
                                                                      dtype=np.float64)),
        progress, cancel)


def refine_polygons(outliner: Any, image: Any, polygons: list[np.ndarray], *, level: int = 0,
                    value_range: Any = None, progress: Progress = None,
                    cancel: Callable[[], bool] | None = None) -> list[np.ndarray | None]:
    """Each (row, col) polygon of ``image`` snapped to the object (``Outliner.refine``), in a
    window around it, window by window; None for the polygons a cancel left out."""
    if not polygons:
        return []
    source, vr = _opened(image, level, value_range)
    polygons = [check_polygon(p, source.shape[:2]) for p in polygons]
    return _window_by_window(
        outliner, source, vr, np.stack([polygon_box(p) for p in polygons]),
        lambda group, y0, x0: outliner.refine([polygons[i] - [y0, x0] for i in group]),
        progress, cancel)


def _window_by_window(outliner: Any, source: Source, vr: tuple, boxes: np.ndarray,
                      run: Callable[[np.ndarray, int, int], list[np.ndarray]],
                      progress: Progress, cancel: Callable[[], bool] | None
                      ) -> list[np.ndarray | None]:
    """``run(group, y0, x0)``'s window-local polygons for each ``_by_window`` group of
    ``boxes``, with ``outliner`` on that window, back in image coordinates; progress after each
    window, ``cancel`` checked between them (None for what it left out)."""
    out: list[np.ndarray | None] = [None] * len(boxes)
    groups = _by_window(source, boxes)
    for k, ((y0, y1, x0, x1), group) in enumerate(groups):
        if progress is not None:
            progress(k, len(groups))
        if cancel is not None and cancel():
            return out
        outliner.set_image(to_rgb01(source.read(y0, y1, x0, x1), vr))
        for i, p in zip(group, run(group, y0, x0), strict=True):
            out[i] = np.asarray(p, dtype=np.float64) + [y0, x0]
    if progress is not None:
        progress(len(groups), len(groups))
    return out


def _opened(image: Any, level: int, value_range: Any) -> tuple[Source, tuple]:
    """The image's source and its value range (by default the tiler's: ``Source.float_range``)."""
    source = as_source(image, level)
    return source, source.float_range(value_range)


def _by_window(source: Source, boxes: np.ndarray) -> list[tuple[tuple[int, int, int, int],
                                                                 np.ndarray]]:
    """The boxes grouped by the ``TILE_SIZE`` core holding their centre, with each group's window
    (y0, y1, x0, x1): the core and a halo of the largest box's side, grown to hold every box."""
    h, w = source.shape[:2]
    sides = np.max(boxes[:, 2:] - boxes[:, :2], axis=1)
    tiles = plan_tiles((h, w), TILE_SIZE, default_halo(boxes[int(np.argmax(sides))]))
    cy = np.clip((boxes[:, 1] + boxes[:, 3]) / 2, 0, h - 1)
    cx = np.clip((boxes[:, 0] + boxes[:, 2]) / 2, 0, w - 1)
    out = []
    for t in tiles:
        group = np.flatnonzero((t.core[0] <= cy) & (cy < t.core[1])
                               & (t.core[2] <= cx) & (cx < t.core[3]))
        if not len(group):
            continue
        whole = window(box_core(boxes[group]), 0, (h, w))
        out.append(((min(t.window[0], whole[0]), max(t.window[1], whole[1]),
                     min(t.window[2], whole[2]), max(t.window[3], whole[3])), group))
    return out
