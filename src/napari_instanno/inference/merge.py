"""Gathering finished tiles into one result: duplicates across seams removed, a parquet table
streamed, and what the user should hear about the run (cut objects, failed tiles)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np

from ..instances import Instances
from .checkpoint import TileResult, TileStore
from .seams import Tile, near_edge, seam_nms
from .stand_ins import FLAG

log = logging.getLogger(__name__)


def merge_tiles(tiles: list[Tile], results: dict[int, TileResult], store: TileStore,
                nms_iou: float, category: str, table: str | Path | None, collect: bool
                ) -> Instances:
    """Remove duplicates across seams; gather (and/or stream to ``table``) what is kept."""
    done = [results[t.index] for t in tiles if t.index in results]
    keeps: list[np.ndarray] = []
    if done:
        boxes = np.concatenate([r.boxes for r in done]).reshape(-1, 4)
        scores = np.concatenate([r.scores for r in done])
        tile_of = np.concatenate([np.full(len(r.boxes), r.index) for r in done])
        sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        reach = float(sides.max()) if len(sides) else 0.0
        cand = np.concatenate([near_edge(r.boxes, tiles[r.index].core, reach) for r in done])
        keep = seam_nms(boxes, scores, tile_of, cand, nms_iou)
        keeps = np.split(keep, np.cumsum([len(r.boxes) for r in done])[:-1])
    writer = None
    if table is not None:
        from ..io.table import TableWriter

        writer = TableWriter(table)
    parts = []
    try:
        for r, k in zip(done, keeps, strict=True):
            if not k.any():
                continue
            polys = store.polygons(r.index)
            part = Instances(polygons=[p for p, kk in zip(polys, k, strict=True) if kk],
                             boxes=r.boxes[k], scores=r.scores[k], categories={1: category},
                             properties={} if r.outlined is None else {FLAG: r.outlined[k]})
            if writer is not None:
                writer.write(part)
            if collect:
                parts.append(part)
    finally:
        if writer is not None:
            writer.close()
    if not parts:
        return Instances(categories={1: category})
    merged = Instances.concat(parts)
    return merged[np.argsort(-merged.scores, kind="stable")]


def report(results: dict[int, TileResult], failures: dict[int, str], tiles: list[Tile],
           halo: int, cancelled: bool) -> None:
    """Warn about objects that reached a tile's edge and about failed tiles; log a cancel."""
    touched = sum(r.touched for r in results.values())
    if touched:
        warnings.warn(f"{touched} objects reached a tile's edge and may be cut; pass a larger "
                      f"halo (now {halo} px)", stacklevel=3)
    if failures:
        first = next(iter(failures.items()))
        warnings.warn(f"{len(failures)} of {len(tiles)} tiles failed (tile {first[0]}: "
                      f"{first[1]}); rerun with the same checkpoint to retry them", stacklevel=3)
    if cancelled:
        log.info("cancelled after %d of %d tiles", len(results), len(tiles))
