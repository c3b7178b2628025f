"""The tile grid and the merge across seams.

Tiles have a *core* (the cores partition the image) and a *window* (the core plus a halo, clipped
to the image) that the models see. A tile keeps a detection when the box centre lies in its core
grown by a small ``margin`` (so an object whose centre wobbles across a seam is never lost), and the
halo is large enough that such an object lies whole in the window. Detections kept by two tiles
(only possible near a seam or a corner) are then removed by a greedy NMS across tiles, run only on
the boxes near a core's edge and through a spatial hash, so it stays linear in the object count.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tile:
    """One tile: ``index`` in row-major order; core and window as (y0, y1, x0, x1)."""

    index: int
    core: tuple[int, int, int, int]
    window: tuple[int, int, int, int]


def box_core(boxes: np.ndarray) -> tuple[int, int, int, int]:
    """The whole pixels holding every (x0, y0, x1, y1) box: (y0, y1, x0, x1), for ``window``."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return (int(np.floor(b[:, 1].min())), int(np.ceil(b[:, 3].max())),
            int(np.floor(b[:, 0].min())), int(np.ceil(b[:, 2].max())))


def window(core: tuple[int, int, int, int], halo: int, shape: tuple[int, int]
           ) -> tuple[int, int, int, int]:
    """``core`` grown by ``halo`` on every side, clipped to an image of ``shape``: (y0, y1, x0, x1)."""
    h, w = shape
    return max(core[0] - halo, 0), min(core[1] + halo, h), max(core[2] - halo, 0), min(core[3] + halo, w)


def plan_tiles(shape: tuple[int, int], tile_size: int, halo: int) -> list[Tile]:
    """Row-major tiles with ``tile_size`` cores and ``halo`` pixels of context on each side."""
    h, w = shape
    tiles = []
    for y0 in range(0, h, tile_size):
        for x0 in range(0, w, tile_size):
            core = (y0, min(y0 + tile_size, h), x0, min(x0 + tile_size, w))
            tiles.append(Tile(len(tiles), core, window(core, halo, shape)))
    return tiles


def box_centres(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cx, cy) of (N, 4) xyxy boxes."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2


def owned(boxes: np.ndarray, core: tuple[int, int, int, int], margin: float) -> np.ndarray:
    """Which global boxes have their centre in ``core`` grown by ``margin``."""
    cx, cy = box_centres(boxes)
    y0, y1, x0, x1 = core
    return (cx >= x0 - margin) & (cx < x1 + margin) & (cy >= y0 - margin) & (cy < y1 + margin)


def near_edge(boxes: np.ndarray, core: tuple[int, int, int, int], reach: float) -> np.ndarray:
    """Which boxes have their centre within ``reach`` of the core's edge (or outside it)."""
    cx, cy = box_centres(boxes)
    y0, y1, x0, x1 = core
    inside = (cx >= x0 + reach) & (cx < x1 - reach) & (cy >= y0 + reach) & (cy < y1 - reach)
    return ~inside


def seam_nms(boxes: np.ndarray, scores: np.ndarray, tiles: np.ndarray, candidates: np.ndarray,
             iou_threshold: float) -> np.ndarray:
    """Keep-mask after greedy NMS among ``candidates``, suppressing only across different tiles.

    Deterministic: boxes are visited by descending score, then ascending position in the input.
    Within one tile the matcher's own decisions stand.
    """
    keep = np.ones(len(boxes), dtype=bool)
    idx = np.flatnonzero(candidates)
    if len(idx) < 2:
        return keep
    b = np.asarray(boxes, dtype=np.float64)
    sides = np.maximum(b[idx, 2] - b[idx, 0], b[idx, 3] - b[idx, 1])
    cell = max(float(sides.max()), 1.0)  # overlapping boxes have centres < cell apart per axis
    cx, cy = box_centres(b)
    order = idx[np.lexsort((idx, -np.asarray(scores)[idx]))]
    grid: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i in order.tolist():
        gx, gy = int(cx[i] // cell), int(cy[i] // cell)
        bi = b[i]
        area_i = (bi[2] - bi[0]) * (bi[3] - bi[1])
        hit = False
        for dx in (-1, 0, 1):
            for dy in (-1, 0, 1):
                for j in grid.get((gx + dx, gy + dy), ()):
                    if tiles[j] == tiles[i]:
                        continue
                    bj = b[j]
                    iw = min(bi[2], bj[2]) - max(bi[0], bj[0])
                    ih = min(bi[3], bj[3]) - max(bi[1], bj[1])
                    if iw <= 0 or ih <= 0:
                        continue
                    inter = iw * ih
                    union = area_i + (bj[2] - bj[0]) * (bj[3] - bj[1]) - inter
                    if inter > iou_threshold * union:
                        hit = True
                        break
                if hit:
                    break
            if hit:
                break
        if hit:
            keep[i] = False
        else:
            grid[(gx, gy)].append(i)
    return keep
