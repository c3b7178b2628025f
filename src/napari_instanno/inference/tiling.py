"""Find similar instances in images of any size, tile by tile, with bounded memory.

``find_similar_tiled`` plans the tiles (``policy`` decides their size and halo, ``seams`` lays
them out), reads the image window by window (``sources``), runs each tile's task
(``tile_task``) with dask (``engine``) and merges the tiles (``merge``): each object is kept by
the one tile that owns its centre and the remaining duplicates across seams are removed.
Finished tiles can be checkpointed (``checkpoint``) so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InstannoError
from ..instances import Instances
from . import references
from .checkpoint import TileStore
from .engine import release, run_tasks
from .guard import label_method
from .merge import merge_tiles, report
from .policy import TILE_SIZE, default_halo, tiling_plan
from .references import (
    PooledMatcher,
    check_references,
    embed_references,
    not_negative,
    shared_box,
    side,
)
from .seams import Tile, plan_tiles
from .sources import SourceError, as_source
from .tile_task import Outcome, TileJob, decide_tiled_looks, embed_reference, run_tiles

log = logging.getLogger(__name__)

GPU_BATCH = 8  # tiles per batched pass on a GPU


class TilingInterrupted(InstannoError):
    """The run stopped (e.g. the image store vanished); ``partial`` holds the finished tiles."""

    def __init__(self, message: str, partial: Instances) -> None:
        super().__init__(message)
        self.partial = partial


def batches(tiles: list[Tile], size: int) -> list[list[Tile]]:
    """The tiles in runs of at most ``size`` whose windows have one shape (so they stack)."""
    groups: dict[tuple[int, int], list[Tile]] = {}
    for t in tiles:
        groups.setdefault((t.window[1] - t.window[0], t.window[3] - t.window[2]), []).append(t)
    size = max(1, int(size))
    return [g[i:i + size] for g in groups.values() for i in range(0, len(g), size)]


def find_similar_tiled(
    annotator: Any,
    image: Any,
    ref_box: Any,
    *,
    negatives: Any = None,
    tile_size: int = TILE_SIZE,
    halo: int | None = None,
    category: str = "object",
    score_threshold: float = 0.0,
    outline_threshold: float | None = None,
    scheduler: Any = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    checkpoint: str | Path | None = None,
    value_range: Any = None,
    level: int = 0,
    workers: int | None = None,
    nms_iou: float = 0.5,
    table: str | Path | None = None,
    collect: bool = True,
    batch_size: int | None = None,
) -> Instances:
    """Every instance similar to the one in ``ref_box``, found tile by tile.

    ``ref_box`` may be several boxes (positives of one kind) and ``negatives`` boxes of things
    not wanted, pooled as on the whole image (``references``).
    ``image``: numpy, dask or zarr array (H, W) or (H, W, C), a multiscale list or OME-Zarr group
    (``level`` picks the level), an image path or a rasterio dataset; never loaded whole.
    ``ref_box`` (x0, y0, x1, y1) is in that level's pixels, as are the results. Tiles have
    ``tile_size`` cores and ``halo`` pixels of context (default: the reference's longest side,
    rounded up to 32); a matcher that upscales small references gets smaller tiles
    (``policy.tiling_plan``).
    ``outline_threshold``: outline only the detections scoring at least this (what a viewer
    shows first); the others get stand-ins and ``properties["outlined"]`` False, for
    ``tiled_outlines.outline_tiled`` to outline later (as ``Annotator.find_similar``).
    ``value_range`` (per-channel low, high) defaults to one computed from a low-resolution
    sample, shared by all tiles. ``scheduler``: None (dask threads, ``workers`` of them:
    ``default_workers``), ``"sync"``, a ``distributed.Client`` or a scheduler address. ``batch_size`` tiles
    whose windows have one shape go through a matcher with ``find_batch`` in one pass, their
    windows read in parallel (default: 8 on a GPU, 1 on the CPU, where batching gains nothing).
    ``progress(done, total)`` is called after every tile; ``cancel()`` is checked between tiles
    (between batches of them) and stops the run cleanly with the finished tiles' results.
    ``checkpoint``: a folder where finished tiles are saved as they finish; rerunning with it
    redoes only the missing tiles.
    ``table``: a parquet file receiving every instance, written tile by tile; with
    ``collect=False`` the instances are not gathered in memory (an empty Instances is returned).
    A tile that fails is reported and skipped (rerun with the checkpoint to retry it); an image
    that becomes unreadable raises ``TilingInterrupted`` carrying the finished tiles' results.
    """
    source = as_source(image, level)
    shape = source.shape
    boxes, neg = check_references(ref_box, negatives, shape)
    box = shared_box(annotator.matcher, boxes)  # the scale every reference is matched at
    if int(tile_size) < 16:
        raise InstannoError(f"tile_size {tile_size} is too small; use at least 16 pixels")
    if halo is not None and int(halo) < 0:
        raise InstannoError(f"halo {halo} is negative")
    if halo is None and len(boxes) > 1:  # the largest positive fits in the halo
        halo = default_halo(boxes[int(np.argmax(side(boxes)))])
    plan = tiling_plan(shape, box, annotator.matcher, tile_size=int(tile_size), halo=halo)
    value_range = source.float_range(value_range)
    tiles = plan_tiles(shape, plan.tile_size, plan.halo)
    margin = max(1.0, float((boxes[:, 2:] - boxes[:, :2]).min()) / 4)
    several = len(boxes) > 1 or len(neg) > 0
    matcher, outliner = annotator.matcher, annotator.outliner
    if several:
        matcher = PooledMatcher(matcher)
    fingerprint = {
        "shape": list(shape), "dtype": str(source.dtype), "tile_size": plan.tile_size,
        "halo": plan.halo, "ref_box": boxes if several else box,
        **({"pooling": references.POOLING} if len(boxes) > 1 else {}),
        **({"negatives": neg} if len(neg) else {}), "score_threshold": float(score_threshold),
        **({} if outline_threshold is None else {"outline_threshold": float(outline_threshold)}),
        "value_range": value_range, "matcher": _describe(matcher),
        "outliner": _describe(outliner), "margin": margin,
    }
    spill = None
    if checkpoint is None and not collect:
        spill = tempfile.TemporaryDirectory(prefix="instanno-tiles-")
    store = TileStore(checkpoint if checkpoint is not None else (spill and spill.name),
                      fingerprint)
    results = {r.index: r for r in store.finished()}
    total = len(tiles)
    if progress is not None:
        progress(len(results), total)
    if results:
        log.info("resuming: %d of %d tiles already done", len(results), total)

    job = TileJob(uuid.uuid4().hex, (matcher, outliner), source, None, value_range,
                  float(score_threshold), margin, plan.halo,
                  None if outline_threshold is None else float(outline_threshold))
    pending = [t for t in tiles if t.index not in results]
    failures: dict[int, str] = {}
    interrupted: str | None = None
    stopped = False
    try:
        if pending:
            job.warm_models = copy.deepcopy((matcher, outliner))
            job.reference = (embed_references(lambda b: embed_reference(job, tiles, b), boxes, neg,
                                              job.warm_models[0], shared=np.inf)
                             if several else embed_reference(job, tiles, box))
            decide_tiled_looks(job, boxes)

            def on_outcomes(outs: list[Outcome]) -> bool:
                nonlocal interrupted
                for out in outs:
                    for note in out.notes:
                        warnings.warn(note, stacklevel=4)
                    if isinstance(out.error, SourceError):
                        interrupted = str(out.error)
                        return True
                    if out.error is not None:
                        failures[out.index] = f"{type(out.error).__name__}: {out.error}"
                        log.warning("tile %d failed: %s", out.index, failures[out.index])
                    else:
                        results[out.index] = store.save(out.result)
                    if progress is not None:
                        progress(len(results), total)
                return False

            on_gpu = "cuda" in str(getattr(annotator, "device", "cpu"))
            if workers is None:
                workers = default_workers(on_gpu, (matcher, outliner))
            if batch_size is None:
                batch_size = GPU_BATCH if on_gpu else 1
            stopped = run_tasks(run_tiles, job, batches(pending, batch_size),
                                scheduler=scheduler, workers=workers, cancel=cancel,
                                on_outcome=on_outcomes)
    finally:
        release(job.token)
    try:
        merged = merge_tiles(tiles, results, store, nms_iou, category, table, collect)
    finally:
        if spill is not None:
            spill.cleanup()
    if len(neg) and len(merged):
        merged = merged[not_negative(merged.boxes, neg)]
    report(results, failures, tiles, plan.halo, stopped and interrupted is None)
    if interrupted is not None:
        where = f"; finished tiles are kept in {checkpoint}" if checkpoint else ""
        raise TilingInterrupted(
            f"stopped after {len(results)} of {total} tiles: {interrupted}{where}", merged)
    return label_method(merged, job.reference)


def default_workers(on_gpu: bool, components: tuple[Any, ...]) -> int:
    """Tiles in flight at once: on a GPU two (one reads its tiles while the other computes); on
    the CPU one per core, except that torch models share the cores between torch's own threads
    (one tile at a time with 2 torch threads on 2 cores: the same speed as two tiles, with one
    tile's memory)."""
    cores = os.cpu_count() or 1
    if on_gpu:
        return 2
    if any(hasattr(c, "to") for c in components):  # torch models (they move between devices)
        import torch

        return max(1, min(cores // max(torch.get_num_threads(), 1), 4))
    return min(cores, 4)


def _describe(component: Any) -> str:
    cls = type(component)
    return f"{cls.__module__}.{cls.__qualname__}:{getattr(component, 'name', '')}"
