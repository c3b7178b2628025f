"""Whether a run works on the whole image or in tiles, and with which tiles: decided here only.

The Annotator, the CLI, the widget and the napari reader all ask these functions, so one image is
handled the same way whichever door it comes in by.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .components import upscale_factor

IN_MEMORY_PIXELS = 4096 * 4096  # images up to this size are read whole; larger ones stay lazy, tiled
MAX_MATCH_PIXELS = 3072 * 3072  # an in-memory image the matcher would see larger (upscaled) is tiled
TILE_SIZE = 1024  # tile core side in the pixels the matcher sees
HALO_MULTIPLE = 32  # halos and tile origins on a multiple of the deepest feature stride
UPSCALED_GRID = 2 * HALO_MULTIPLE  # ... on this one when the matcher upscales by k/4 (k/4 * 64 = 16k)


@dataclass(frozen=True)
class TilingPlan:
    """``tiled``: whether to go tile by tile; tiles have ``tile_size`` cores and ``halo`` context."""

    tiled: bool
    tile_size: int
    halo: int


def fits_in_memory(shape: tuple[int, ...]) -> bool:
    """Whether an image of ``shape`` (H, W[, C]) is read into memory whole."""
    return int(shape[0]) * int(shape[1]) <= IN_MEMORY_PIXELS


def default_halo(box: np.ndarray) -> int:
    """At least the reference's longest side, rounded up to a multiple of ``HALO_MULTIPLE``."""
    side = max(box[2] - box[0], box[3] - box[1])
    return int(np.ceil(max(side, 1) / HALO_MULTIPLE) * HALO_MULTIPLE)


def tiling_plan(shape: tuple[int, ...], box: np.ndarray, matcher: Any, *, lazy: bool = False,
                tile_size: int | None = None, halo: int | None = None) -> TilingPlan:
    """How to run ``matcher`` with reference ``box`` on an image of ``shape``.

    Tiled when the image is ``lazy`` (not in memory), larger than ``IN_MEMORY_PIXELS``, the
    matcher would see more than ``MAX_MATCH_PIXELS`` once it rescales for the reference, or a
    ``tile_size`` is asked for. A matcher that upscales by ``f`` gets tiles of about
    ``tile_size / f`` image pixels whose origins stay on its feature grid (multiples of 64); one
    that downscales by 1/2 or 1/4 gets origins on multiples of 64 or 128.
    """
    h, w = int(shape[0]), int(shape[1])
    scale = upscale_factor(matcher, box)
    tiled = (lazy or tile_size is not None or not fits_in_memory(shape)
             or scale ** 2 * h * w > MAX_MATCH_PIXELS)
    size = TILE_SIZE if tile_size is None else int(tile_size)
    margin = default_halo(box) if halo is None else int(halo)
    if scale > 1.0:
        size = max(UPSCALED_GRID, int(np.ceil(size / scale / UPSCALED_GRID)) * UPSCALED_GRID)
        margin = int(np.ceil(margin / UPSCALED_GRID) * UPSCALED_GRID)
    elif scale < 1.0:  # downscaled by 1/2 or 1/4: origins on multiples of 32 / scale
        grid = reference_grid(scale)
        size = max(grid, int(np.ceil(size / grid)) * grid)
        margin = int(np.ceil(margin / grid) * grid)
    return TilingPlan(tiled, size, margin)


def reference_grid(scale: float) -> int:
    """The grid (image pixels) that windows start on for a matcher scaling the image by ``scale``."""
    return max(UPSCALED_GRID, int(round(HALO_MULTIPLE / scale)))
