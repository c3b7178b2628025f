"""Find similar instances in images of any size, tile by tile, with bounded memory.

``find_similar_tiled`` reads the image window by window (see ``sources``), runs the annotator's
matcher and outliner on each tile with dask (``engine``), keeps each object in the one tile that
owns its centre and removes the remaining duplicates across seams (``seams``). Finished tiles can
be checkpointed (``checkpoint``) so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
import uuid
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InstannoError
from ..image import check_box, to_rgb01
from ..instances import Instances
from .checkpoint import TileResult, TileStore
from .components import upscale_factor
from .engine import borrow, release, run_tasks
from .seams import Tile, near_edge, owned, plan_tiles, seam_nms
from .sources import Source, SourceError, as_source

log = logging.getLogger(__name__)

HALO_MULTIPLE = 32  # halos and tile origins on a multiple of the deepest feature stride
UPSCALED_GRID = 2 * HALO_MULTIPLE  # ... on this one when the matcher upscales by k/4 (k/4 * 64 = 16k)
MIN_SPLIT = 64  # an out-of-memory tile is split in four down to cores of this size
GPU_BATCH = 8  # tiles per batched pass on a GPU
READ_THREADS = 8  # parallel window reads per batch


class TilingInterrupted(InstannoError):
    """The run stopped (e.g. the image store vanished); ``partial`` holds the finished tiles."""

    def __init__(self, message: str, partial: Instances) -> None:
        super().__init__(message)
        self.partial = partial


@dataclass
class _Job:
    """Everything a tile task needs; pickled once per worker on a cluster."""

    token: str
    components: tuple[Any, Any]
    source: Source
    reference: Any
    value_range: tuple[np.ndarray, np.ndarray]
    score_threshold: float
    margin: float
    halo: int
    seed: Any = field(default=None, repr=False)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "seed": None}


@dataclass
class _Outcome:
    index: int
    result: TileResult | None = None
    error: BaseException | None = None
    notes: list[str] = field(default_factory=list)


def default_halo(ref_box: np.ndarray) -> int:
    """At least the reference's longest side, rounded up to a multiple of 32."""
    side = max(ref_box[2] - ref_box[0], ref_box[3] - ref_box[1])
    return int(np.ceil(max(side, 1) / HALO_MULTIPLE) * HALO_MULTIPLE)


def find_similar_tiled(
    annotator: Any,
    image: Any,
    ref_box: Any,
    *,
    tile_size: int = 1024,
    halo: int | None = None,
    category: str = "object",
    score_threshold: float = 0.0,
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

    ``image``: numpy, dask or zarr array (H, W) or (H, W, C), a multiscale list or OME-Zarr group
    (``level`` picks the level), an image path or a rasterio dataset; never loaded whole.
    ``ref_box`` (x0, y0, x1, y1) is in that level's pixels, as are the results. Tiles have
    ``tile_size`` cores and ``halo`` pixels of context (default: the reference's longest side,
    rounded up to 32); a matcher that upscales small references by ``f`` (``scale_for``) gets
    tiles of about ``tile_size / f`` image pixels, and tile sizes and halos on multiples of 64.
    ``value_range`` (per-channel low, high) defaults to one computed from a low-resolution
    sample, shared by all tiles. ``scheduler``: None (dask threads, ``workers`` of them; 2 on a
    GPU), ``"sync"``, a ``distributed.Client`` or a scheduler address. ``batch_size`` tiles
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
    box = check_box(ref_box, shape, "reference box")
    if int(tile_size) < 16:
        raise InstannoError(f"tile_size {tile_size} is too small; use at least 16 pixels")
    tile_size = int(tile_size)
    halo = default_halo(box) if halo is None else int(halo)
    if halo < 0:
        raise InstannoError(f"halo {halo} is negative")
    scale = upscale_factor(annotator.matcher, box)
    if scale > 1.0:  # the matcher upscales: keep the tiles it sees at about tile_size, with
        # origins that stay on its feature grid once upscaled (f = k/4)
        tile_size = max(UPSCALED_GRID, int(np.ceil(tile_size / scale / UPSCALED_GRID)) * UPSCALED_GRID)
        halo = int(np.ceil(halo / UPSCALED_GRID) * UPSCALED_GRID)
    if value_range is None:
        value_range = source.value_range()
    value_range = (np.asarray(value_range[0], np.float32), np.asarray(value_range[1], np.float32))
    tiles = plan_tiles(shape, tile_size, halo)
    margin = max(1.0, float(min(box[2] - box[0], box[3] - box[1])) / 4)
    matcher, outliner = annotator.matcher, annotator.outliner
    fingerprint = {
        "shape": list(shape), "dtype": str(source.dtype), "tile_size": tile_size, "halo": halo,
        "ref_box": box, "score_threshold": float(score_threshold), "value_range": value_range,
        "matcher": _describe(matcher), "outliner": _describe(outliner), "margin": margin,
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

    job = _Job(uuid.uuid4().hex, (matcher, outliner), source, None, value_range,
               float(score_threshold), margin, halo)
    pending = [t for t in tiles if t.index not in results]
    failures: dict[int, str] = {}
    interrupted: str | None = None
    stopped = False
    try:
        if pending:
            job.seed = copy.deepcopy((matcher, outliner))
            job.reference = _embed_reference(job, tiles, box)

            def on_outcomes(outs: list[_Outcome]) -> bool:
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
            if workers is None:  # on a GPU, two: one reads its tiles while the other computes
                workers = 2 if on_gpu else min(os.cpu_count() or 1, 4)
            if batch_size is None:
                batch_size = GPU_BATCH if on_gpu else 1
            stopped = run_tasks(_process_batch, job, batches(pending, batch_size),
                                scheduler=scheduler, workers=workers, cancel=cancel,
                                on_outcome=on_outcomes)
    finally:
        release(job.token)
    try:
        merged = _merge(tiles, results, store, nms_iou, category, table, collect)
    finally:
        if spill is not None:
            spill.cleanup()
    _report(results, failures, tiles, halo, stopped and interrupted is None)
    if interrupted is not None:
        where = f"; finished tiles are kept in {checkpoint}" if checkpoint else ""
        raise TilingInterrupted(
            f"stopped after {len(results)} of {total} tiles: {interrupted}{where}", merged)
    return merged


def _describe(component: Any) -> str:
    cls = type(component)
    return f"{cls.__module__}.{cls.__qualname__}:{getattr(component, 'name', '')}"


def _embed_reference(job: _Job, tiles: list[Tile], box: np.ndarray) -> Any:
    """The matcher's reference, embedded in the window of the tile owning the box's centre, or
    in the window its ``reference_extent`` asks for around the box (as on the whole image)."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    matcher = job.seed[0]
    if hasattr(matcher, "reference_extent"):
        half, grid = matcher.reference_extent(box), UPSCALED_GRID
        h, w = job.source.shape
        y0, y1 = max(int((cy - half) // grid * grid), 0), min(int(np.ceil(cy + half)), h)
        x0, x1 = max(int((cx - half) // grid * grid), 0), min(int(np.ceil(cx + half)), w)
    else:
        tile = next(t for t in tiles if t.core[0] <= cy < t.core[1] and t.core[2] <= cx < t.core[3])
        y0, y1, x0, x1 = tile.window
    # the window must hold the whole box, whatever the halo
    y0, x0 = min(y0, int(np.floor(box[1]))), min(x0, int(np.floor(box[0])))
    y1, x1 = max(y1, int(np.ceil(box[3]))), max(x1, int(np.ceil(box[2])))
    matcher.set_image(to_rgb01(job.source.read(y0, y1, x0, x1), job.value_range))
    return matcher.embed_reference(box - np.array([x0, y0, x0, y0]))


def _process_batch(job: _Job, tiles: list[Tile]) -> list[_Outcome]:
    """The tiles' outcomes; errors are returned, not raised, so the run can carry on."""
    try:
        with borrow(job.token, job.components, job.seed) as comps:
            if len(tiles) > 1 and hasattr(comps[0], "find_batch"):
                try:
                    return _batch_outcomes(job, comps, tiles)
                except SourceError:
                    raise
                except Exception as err:
                    if not _out_of_memory(err):
                        raise
                outs = [_tile_outcome(job, comps, t) for t in tiles]
                outs[0].notes.insert(0, f"a batch of {len(tiles)} tiles ran out of memory; "
                                        "running them one at a time")
                return outs
            return [_tile_outcome(job, comps, t) for t in tiles]
    except Exception as err:  # reported by the caller with the tiles' indices
        return [_Outcome(t.index, error=err) for t in tiles]


def _batch_outcomes(job: _Job, comps: tuple[Any, Any], tiles: list[Tile]) -> list[_Outcome]:
    """Tiles with windows of one shape read in parallel and matched in one batched pass, then
    outlined one by one (a tile whose outlining runs out of memory is redone on its own)."""
    windows = [_window(job, t.core) for t in tiles]
    with ThreadPoolExecutor(min(len(tiles), READ_THREADS)) as pool:
        rgbs = list(pool.map(partial(_read, job), windows))
    found = comps[0].find_batch(rgbs, job.reference)
    outs = []
    for tile, window, rgb, (boxes, scores) in zip(tiles, windows, rgbs, found, strict=True):
        out = _Outcome(tile.index)
        try:
            out.result = _outlined(job, comps[1], tile.index, window, rgb, boxes, scores,
                                   _owner(job, tile.core))
        except Exception as err:
            if isinstance(err, SourceError) or not _out_of_memory(err):
                out.error = err
            else:
                out = _tile_outcome(job, comps, tile)
        outs.append(out)
    return outs


def _tile_outcome(job: _Job, comps: tuple[Any, Any], tile: Tile) -> _Outcome:
    """One tile's outcome, errors included."""
    out = _Outcome(tile.index)
    try:
        out.result = _tile_result(job, comps, tile.index, tile.core, _owner(job, tile.core),
                                  out.notes)
    except Exception as err:
        out.error = err
    return out


def _owner(job: _Job, core: tuple[int, int, int, int]) -> tuple[float, float, float, float]:
    """The rectangle a tile's detections must be centred in: its core grown by the margin."""
    y0, y1, x0, x1 = core
    return y0 - job.margin, y1 + job.margin, x0 - job.margin, x1 + job.margin


def batches(tiles: list[Tile], size: int) -> list[list[Tile]]:
    """The tiles in runs of at most ``size`` whose windows have one shape (so they stack)."""
    groups: dict[tuple[int, int], list[Tile]] = {}
    for t in tiles:
        groups.setdefault((t.window[1] - t.window[0], t.window[3] - t.window[2]), []).append(t)
    size = max(1, int(size))
    return [g[i:i + size] for g in groups.values() for i in range(0, len(g), size)]


def _tile_result(job: _Job, comps: tuple[Any, Any], index: int, core: tuple[int, int, int, int],
                 own: tuple[float, float, float, float], notes: list[str]) -> TileResult:
    """Detections owned by ``core`` (ownership rectangle ``own``), retrying smaller on OOM."""
    try:
        return _detect(job, comps, index, core, own)
    except SourceError:
        raise
    except Exception as err:
        if not _out_of_memory(err):
            raise
        y0, y1, x0, x1 = core
        if max(y1 - y0, x1 - x0) > MIN_SPLIT:
            notes.append(f"tile {index} ran out of memory; retrying it as four smaller tiles")
            parts = [_tile_result(job, comps, index, sub, sub_own, notes)
                     for sub, sub_own in _split(core, own)]
            return TileResult(index, np.concatenate([p.boxes for p in parts]),
                              np.concatenate([p.scores for p in parts]),
                              [q for p in parts for q in p.polygons],
                              sum(p.touched for p in parts))
        if any(hasattr(c, "to") for c in comps):
            notes.append(f"tile {index} ran out of memory even when split; retrying it on the CPU")
            with _on_cpu(comps, notes):
                return _detect(job, comps, index, core, own)
        raise


@contextmanager
def _on_cpu(comps: tuple[Any, Any], notes: list[str]) -> Iterator[None]:
    """Move the components that have ``to(device)`` to the CPU, and back afterwards (where the
    GPU still has no room for them, that copy stays on the CPU and the run says so)."""
    movable = [(c, getattr(c, "device", None)) for c in comps if hasattr(c, "to")]
    for c, _ in movable:
        c.to("cpu")
    try:
        yield
    finally:
        for c, device in movable:
            try:
                c.to(device or "cpu")
            except Exception as err:
                if not _out_of_memory(err):
                    raise
                notes.append("no GPU memory to move a model copy back; it goes on on the CPU")


def _split(core: tuple[int, int, int, int], own: tuple[float, float, float, float]
           ) -> list[tuple[tuple[int, int, int, int], tuple[float, float, float, float]]]:
    """Four sub-cores; each owns its quarter, plus the margin on the parent's outer sides."""
    y0, y1, x0, x1 = core
    ym, xm = (y0 + y1) // 2, (x0 + x1) // 2
    out = []
    for a, b in ((y0, ym), (ym, y1)):
        for c, d in ((x0, xm), (xm, x1)):
            if b > a and d > c:
                sub_own = (own[0] if a == y0 else a, own[1] if b == y1 else b,
                           own[2] if c == x0 else c, own[3] if d == x1 else d)
                out.append(((a, b, c, d), sub_own))
    return out


def _out_of_memory(err: BaseException) -> bool:
    return isinstance(err, MemoryError) or "out of memory" in str(err).lower()


def _window(job: _Job, core: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """The core grown by the halo, clipped to the image: (y0, y1, x0, x1)."""
    h, w = job.source.shape
    return (max(core[0] - job.halo, 0), min(core[1] + job.halo, h),
            max(core[2] - job.halo, 0), min(core[3] + job.halo, w))


def _read(job: _Job, window: tuple[int, int, int, int]) -> np.ndarray:
    return to_rgb01(job.source.read(*window), job.value_range)


def _detect(job: _Job, comps: tuple[Any, Any], index: int, core: tuple[int, int, int, int],
            own: tuple[float, float, float, float]) -> TileResult:
    matcher, outliner = comps
    window = _window(job, core)
    rgb = _read(job, window)
    matcher.set_image(rgb)
    boxes, scores = matcher.find(job.reference)
    return _outlined(job, outliner, index, window, rgb, boxes, scores, own)


def _outlined(job: _Job, outliner: Any, index: int, window: tuple[int, int, int, int],
              rgb: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
              own: tuple[float, float, float, float]) -> TileResult:
    """The window's detections that the tile owns, in image coordinates, with their polygons."""
    h, w = job.source.shape
    y0, y1, x0, x1 = window
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    shift = np.array([x0, y0, x0, y0], dtype=np.float64)
    glob = boxes + shift
    glob[:, [0, 2]] = glob[:, [0, 2]].clip(x0, x1)
    glob[:, [1, 3]] = glob[:, [1, 3]].clip(y0, y1)
    keep = (scores >= job.score_threshold) & owned(glob, own, 0.0)
    keep &= (glob[:, 2] > glob[:, 0]) & (glob[:, 3] > glob[:, 1])
    glob, scores = glob[keep], scores[keep]
    polygons: list[np.ndarray] = []
    touched = 0
    if len(glob):
        outliner.set_image(rgb)
        local = outliner.outline(glob - shift)
        polygons = [np.asarray(p, dtype=np.float64) + [y0, x0] for p in local]
        inner = (y0 > 0, y1 < h, x0 > 0, x1 < w)
        for p in polygons:
            lo, hi = p.min(axis=0), p.max(axis=0)
            touched += int((inner[0] and lo[0] <= y0 + 0.5) or (inner[1] and hi[0] >= y1 - 0.5)
                           or (inner[2] and lo[1] <= x0 + 0.5) or (inner[3] and hi[1] >= x1 - 0.5))
    return TileResult(index, glob, scores, polygons, touched)


def _merge(tiles: list[Tile], results: dict[int, TileResult], store: TileStore, nms_iou: float,
           category: str, table: str | Path | None, collect: bool) -> Instances:
    """Remove duplicates across seams; gather (and/or stream to ``table``) what is kept."""
    done = [results[t.index] for t in tiles if t.index in results]
    empty = Instances(categories={1: category})
    keeps: list[np.ndarray] = []
    if done:
        boxes = np.concatenate([r.boxes for r in done]).reshape(-1, 4)
        scores = np.concatenate([r.scores for r in done])
        tile_of = np.concatenate([np.full(len(r.boxes), r.index) for r in done])
        sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        reach = float(sides.max()) if len(sides) else 0.0
        cand = np.zeros(len(boxes), dtype=bool)
        start = 0
        for r in done:
            n = len(r.boxes)
            cand[start:start + n] = near_edge(r.boxes, tiles[r.index].core, reach)
            start += n
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
                             boxes=r.boxes[k], scores=r.scores[k], categories={1: category})
            if writer is not None:
                writer.write(part)
            if collect:
                parts.append(part)
    finally:
        if writer is not None:
            writer.close()
    if not parts:
        return empty
    merged = Instances.concat(parts)
    return merged[np.argsort(-merged.scores, kind="stable")]


def _report(results: dict[int, TileResult], failures: dict[int, str], tiles: list[Tile],
            halo: int, cancelled: bool) -> None:
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


def tqdm_progress(desc: str = "tiles") -> Callable[[int, int], None]:
    """A ``progress`` callback drawing a tqdm bar with ETA (call ``.close()`` when done)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=0, desc=desc, unit="tile")

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
            bar.n = bar.last_print_n = done  # resumed tiles do not count for the ETA
        bar.update(done - bar.n)

    update.close = bar.close  # type: ignore[attr-defined]
    return update
