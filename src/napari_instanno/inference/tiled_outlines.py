"""Outlining a tiled run's stand-ins later, window by window (the slider went down).

``find_similar_tiled(..., outline_threshold=)`` outlines only what a viewer shows first; the
others wait as stand-ins (``stand_ins``). ``outline_tiled`` outlines those scoring at least a new
threshold without loading the image: they are grouped by the tile core holding their centre,
each group's window (the core, its halo, and every box whole) is read once and outlined.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..image import to_rgb01
from ..instances import Instances
from .policy import TILE_SIZE, default_halo
from .seams import plan_tiles
from .sources import as_source
from .stand_ins import finished, waiting


def outline_tiled(outliner: Any, image: Any, inst: Instances, min_score: float = 0.0, *,
                  level: int = 0, value_range: Any = None,
                  progress: Callable[[int, int], None] | None = None,
                  cancel: Callable[[], bool] | None = None) -> Instances:
    """``inst`` (a tiled run's, on ``image``: the same image, level and value range) with its
    stand-ins scoring at least ``min_score`` outlined by ``outliner``; duplicates then dropped
    (``stand_ins.finished``). ``progress(done, total)`` after each window; ``cancel()`` is
    checked between windows and keeps what is outlined so far."""
    todo = waiting(inst, min_score)
    if not len(todo):
        return inst
    source = as_source(image, level)
    if value_range is None:
        value_range = source.value_range()
    value_range = (np.asarray(value_range[0], np.float32), np.asarray(value_range[1], np.float32))
    h, w = source.shape[:2]
    boxes = inst.boxes[todo]
    sides = np.max(boxes[:, 2:] - boxes[:, :2], axis=1)
    tiles = plan_tiles((h, w), TILE_SIZE, default_halo(boxes[int(np.argmax(sides))]))
    cy = np.clip((boxes[:, 1] + boxes[:, 3]) / 2, 0, h - 1)
    cx = np.clip((boxes[:, 0] + boxes[:, 2]) / 2, 0, w - 1)
    inside = [(t, np.flatnonzero((t.core[0] <= cy) & (cy < t.core[1])
                                 & (t.core[2] <= cx) & (cx < t.core[3]))) for t in tiles]
    groups = [(t, g) for t, g in inside if len(g)]
    done: list[np.ndarray] = []
    polygons: list[np.ndarray] = []
    for k, (tile, group) in enumerate(groups):
        if progress is not None:
            progress(k, len(groups))
        if cancel is not None and cancel():
            break
        b = boxes[group]
        y0 = min(tile.window[0], int(np.floor(b[:, 1].min())))
        x0 = min(tile.window[2], int(np.floor(b[:, 0].min())))
        y1 = max(tile.window[1], int(np.ceil(b[:, 3].max())))
        x1 = max(tile.window[3], int(np.ceil(b[:, 2].max())))
        y0, x0, y1, x1 = max(y0, 0), max(x0, 0), min(y1, h), min(x1, w)
        outliner.set_image(to_rgb01(source.read(y0, y1, x0, x1), value_range))
        local = outliner.outline(b - np.array([x0, y0, x0, y0], dtype=np.float64))
        polygons += [np.asarray(p, dtype=np.float64) + [y0, x0] for p in local]
        done.append(todo[group])
    else:
        if progress is not None:
            progress(len(groups), len(groups))
    return finished(inst, np.concatenate(done) if done else np.zeros(0, np.int64), polygons)
