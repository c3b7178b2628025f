"""What runs for each tile (or batch of tiles): read the window, match, outline, keep what it owns.
A window of one value only (no-data) is not matched (``blank``).

A task never raises: every error comes back in its ``Outcome`` so the run can carry on and report
it. Out of memory, a batch is redone one tile at a time, a tile is split in four (down to
``MIN_SPLIT``), and a tile that still does not fit runs on the CPU (``oom``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from ..image import clip_boxes, to_rgb01
from .checkpoint import TileResult
from .components import upscale_factor
from .duplicates import duplicates_suppressed
from .engine import borrow, give_back_memory
from .oom import on_cpu, with_oom_fallback
from .policy import reference_grid, tiling_plan
from .references import decide_looks, pools_by_look, smallest
from .seams import Tile, box_core, owned, window
from .sources import Source
from .stand_ins import stand_ins

MIN_SPLIT = 64  # an out-of-memory tile is split in four down to cores of this size
READ_THREADS = 8  # parallel window reads per batch

Core = tuple[int, int, int, int]  # (y0, y1, x0, x1)
Bounds = tuple[float, float, float, float]  # an ownership rectangle, (y0, y1, x0, x1)


@dataclass
class TileJob:
    """Everything a tile task needs; pickled once per worker on a cluster.

    ``outline_threshold``: outline only detections scoring at least this (None: all); the
    others get stand-ins (``stand_ins``).
    ``warm_models``: a copy of the components that already holds the reference image's features
    (the first task in this process borrows it); never pickled.
    """

    token: str
    components: tuple[Any, Any]
    source: Source
    reference: Any
    value_range: tuple[np.ndarray, np.ndarray]
    score_threshold: float
    margin: float
    halo: int
    outline_threshold: float | None = None
    warm_models: Any = field(default=None, repr=False)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "warm_models": None}


@dataclass
class Outcome:
    """One tile's result, or the error it ended with, and notes to show the user."""

    index: int
    result: TileResult | None = None
    error: BaseException | None = None
    notes: list[str] = field(default_factory=list)


def embed_reference(job: TileJob, tiles: list[Tile], box: np.ndarray) -> Any:
    """The matcher's reference, embedded in the window of the tile owning the box's centre, or
    in the window its ``reference_extent`` asks for around the box (as on the whole image)."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    matcher = job.warm_models[0]
    if hasattr(matcher, "reference_extent"):
        half, grid = matcher.reference_extent(box), reference_grid(upscale_factor(matcher, box))
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
    as_whole = getattr(getattr(matcher, "learned", matcher), "views_as_for", None)
    with (as_whole(float(job.source.shape[0]) * float(job.source.shape[1])) if as_whole
          else nullcontext()):  # the views the whole image would get (``views_for``)
        return matcher.embed_reference(box - np.array([x0, y0, x0, y0]))


def decide_tiled_looks(job: TileJob, boxes: np.ndarray) -> None:
    """``references.decide_looks`` for ``job.reference``: from what each positive finds in the
    window holding every positive box (plus the halo), when the matcher takes that window
    whole (``policy.tiling_plan``); else each positive stays its own look."""
    if not pools_by_look(boxes):
        return
    y0, y1, x0, x1 = window(box_core(boxes), job.halo, job.source.shape[:2])
    matcher = job.warm_models[0]
    if tiling_plan((y1 - y0, x1 - x0), smallest(boxes), matcher).tiled:
        return
    matcher.set_image(to_rgb01(job.source.read(y0, y1, x0, x1), job.value_range))
    offset = np.array([x0, y0, x0, y0], dtype=np.float64)
    single = getattr(matcher, "inner", matcher)  # each positive alone, not the pooled set

    def find(i: int) -> tuple[np.ndarray, np.ndarray]:
        b, s = single.find(job.reference.positives[i])
        return np.asarray(b, np.float64).reshape(-1, 4) + offset, s

    decide_looks(job.reference, find)


def run_tiles(job: TileJob, tiles: list[Tile]) -> list[Outcome]:
    """The tiles' outcomes: matched in one batched pass when the matcher has ``find_batch``."""
    try:
        with borrow(job.token, job.components, job.warm_models) as comps:
            if len(tiles) > 1 and hasattr(comps[0], "find_batch"):
                def one_by_one(_: BaseException) -> list[Outcome]:
                    outs = [_tile_outcome(job, comps, t) for t in tiles]
                    outs[0].notes.insert(0, f"a batch of {len(tiles)} tiles ran out of memory; "
                                            "running them one at a time")
                    return outs

                return with_oom_fallback(lambda: _batch_outcomes(job, comps, tiles), one_by_one)
            return [_tile_outcome(job, comps, t) for t in tiles]
    except Exception as err:  # reported by the caller with the tiles' indices
        return [Outcome(t.index, error=err) for t in tiles]
    finally:
        give_back_memory()


def _batch_outcomes(job: TileJob, comps: tuple[Any, Any], tiles: list[Tile]) -> list[Outcome]:
    """Tiles with windows of one shape read in parallel and matched in one batched pass, then
    outlined one by one (a tile whose outlining runs out of memory is redone on its own)."""
    windows = [window(t.core, job.halo, job.source.shape) for t in tiles]
    with ThreadPoolExecutor(min(len(tiles), READ_THREADS)) as pool:
        rgbs = list(pool.map(partial(_read, job), windows))
    outs = [Outcome(t.index, _nothing(job, t.index)) for t, rgb in zip(tiles, rgbs, strict=True)
            if blank(rgb)]
    kept = [k for k, rgb in enumerate(rgbs) if not blank(rgb)]
    tiles, windows, rgbs = ([x[k] for k in kept] for x in (tiles, windows, rgbs))
    found = comps[0].find_batch(rgbs, job.reference) if rgbs else []
    for tile, win, rgb, (boxes, scores) in zip(tiles, windows, rgbs, found, strict=True):
        def outlined(tile: Tile = tile, win: Core = win, rgb: np.ndarray = rgb,
                     boxes: np.ndarray = boxes, scores: np.ndarray = scores) -> Outcome:
            return Outcome(tile.index, _outlined(job, comps[1], tile.index, win, rgb, boxes,
                                                 scores, _owner(job, tile.core)))
        try:
            outs.append(with_oom_fallback(outlined, lambda _, t=tile: _tile_outcome(job, comps, t)))
        except Exception as err:
            outs.append(Outcome(tile.index, error=err))
    return outs


def _tile_outcome(job: TileJob, comps: tuple[Any, Any], tile: Tile) -> Outcome:
    """One tile's outcome, errors included."""
    out = Outcome(tile.index)
    try:
        out.result = _tile_result(job, comps, tile.index, tile.core, _owner(job, tile.core),
                                  out.notes)
    except Exception as err:
        out.error = err
    return out


def _owner(job: TileJob, core: Core) -> Bounds:
    """The rectangle a tile's detections must be centred in: its core grown by the margin."""
    y0, y1, x0, x1 = core
    return y0 - job.margin, y1 + job.margin, x0 - job.margin, x1 + job.margin


def _tile_result(job: TileJob, comps: tuple[Any, Any], index: int, core: Core, own: Bounds,
                 notes: list[str]) -> TileResult:
    """Detections owned by ``core`` (ownership rectangle ``own``), smaller or on the CPU on OOM."""
    def smaller(err: BaseException) -> TileResult:
        y0, y1, x0, x1 = core
        if max(y1 - y0, x1 - x0) > MIN_SPLIT:
            notes.append(f"tile {index} ran out of memory; retrying it as four smaller tiles")
            parts = [_tile_result(job, comps, index, sub, sub_own, notes)
                     for sub, sub_own in _split(core, own)]
            return TileResult(index, np.concatenate([p.boxes for p in parts]),
                              np.concatenate([p.scores for p in parts]),
                              [q for p in parts for q in p.polygons],
                              sum(p.touched for p in parts),
                              None if job.outline_threshold is None
                              else np.concatenate([p.outlined for p in parts]))
        if any(hasattr(c, "to") for c in comps):
            notes.append(f"tile {index} ran out of memory even when split; retrying it on the CPU")
            with on_cpu(comps, notes):
                return _detect(job, comps, index, core, own)
        raise err

    return with_oom_fallback(lambda: _detect(job, comps, index, core, own), smaller)


def _split(core: Core, own: Bounds) -> list[tuple[Core, Bounds]]:
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


def _read(job: TileJob, win: Core) -> np.ndarray:
    return to_rgb01(job.source.read(*win), job.value_range)


def blank(rgb: np.ndarray) -> bool:
    """Whether a window holds one value only (no-data, a chunk never written, saturation):
    nothing in it can look like a reference, so it is not matched."""
    return bool(rgb.size) and float(rgb.max()) == float(rgb.min())


def _nothing(job: TileJob, index: int) -> TileResult:
    """A tile's result with no detections."""
    return TileResult(index, np.zeros((0, 4)), np.zeros(0), [], 0,
                      None if job.outline_threshold is None else np.zeros(0, bool))


def _detect(job: TileJob, comps: tuple[Any, Any], index: int, core: Core, own: Bounds
            ) -> TileResult:
    matcher, outliner = comps
    win = window(core, job.halo, job.source.shape)
    rgb = _read(job, win)
    if blank(rgb):
        return _nothing(job, index)
    matcher.set_image(rgb)
    boxes, scores = matcher.find(job.reference)
    return _outlined(job, outliner, index, win, rgb, boxes, scores, own)


def _outlined(job: TileJob, outliner: Any, index: int, win: Core, rgb: np.ndarray,
              boxes: np.ndarray, scores: np.ndarray, own: Bounds) -> TileResult:
    """The window's detections that the tile owns, in image coordinates, with their polygons (of
    two outlines of one object, the better one: ``duplicates``); with ``job.outline_threshold``
    those scoring less get stand-ins (``stand_ins``) and ``outlined`` False."""
    h, w = job.source.shape
    y0, y1, x0, x1 = win
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    shift = np.array([x0, y0, x0, y0], dtype=np.float64)
    glob = clip_boxes(np.asarray(boxes, dtype=np.float64).reshape(-1, 4) + shift, (x0, y0, x1, y1))
    keep = (scores >= job.score_threshold) & owned(glob, own, 0.0)
    keep &= (glob[:, 2] > glob[:, 0]) & (glob[:, 3] > glob[:, 1])
    glob, scores = glob[keep], scores[keep]
    later = (np.zeros(len(glob), bool) if job.outline_threshold is None
             else scores < job.outline_threshold)
    rest, rest_scores = glob[later], scores[later]
    glob, scores = glob[~later], scores[~later]
    polygons: list[np.ndarray] = []
    touched = 0
    if len(glob):
        outliner.set_image(rgb)
        local = outliner.outline(glob - shift)
        polygons = [np.asarray(p, dtype=np.float64) + [y0, x0] for p in local]
        keep = np.sort(duplicates_suppressed(polygons, scores))
        glob, scores, polygons = glob[keep], scores[keep], [polygons[i] for i in keep]
        touched = sum(_touches(p, win, (h, w)) for p in polygons)
    if job.outline_threshold is None:
        return TileResult(index, glob, scores, polygons, touched)
    return TileResult(index, np.concatenate([glob, rest]), np.concatenate([scores, rest_scores]),
                      polygons + stand_ins(rest), touched,
                      np.arange(len(glob) + len(rest)) < len(glob))


def _touches(polygon: np.ndarray, win: Core, shape: tuple[int, int]) -> bool:
    """Whether ``polygon`` reaches an edge of window ``win`` that lies inside the image."""
    y0, y1, x0, x1 = win
    lo, hi = polygon.min(axis=0), polygon.max(axis=0)
    return bool((y0 > 0 and lo[0] <= y0 + 0.5) or (y1 < shape[0] and hi[0] >= y1 - 0.5)
                or (x0 > 0 and lo[1] <= x0 + 0.5) or (x1 < shape[1] and hi[1] >= x1 - 0.5))
