"""Image checks and normalisation shared by every model.

Every model sees float32 RGB in [0, 1], (H, W, 3). The mapping:

* grayscale (H, W) or (H, W, 1) is repeated over three channels;
* two channels become (c0, c1, mean); three are taken as RGB; with four or more (RGBA or
  multichannel microscopy) the first three are used;
* each channel is scaled linearly from its 1st to its 99.8th percentile onto [0, 1] and clipped,
  whatever the dtype (uint8, uint16, float), so 16-bit and float images need no preparation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import InstannoError

PERCENTILES = (1.0, 99.8)


def as_channels_last(image: np.ndarray) -> np.ndarray:
    """Check a 2D image (H, W) or (H, W, C) and return it as (H, W, C) without copying."""
    arr = np.asarray(image)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InstannoError(
            f"image dtype {arr.dtype} is not numeric; pass an integer or float array"
        )
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise InstannoError(
            f"image has shape {arr.shape}; pass one 2D plane (H, W) or (H, W, C) "
            "(for stacks, pick the displayed plane)"
        )
    if arr.shape[0] < 1 or arr.shape[1] < 1 or arr.shape[2] < 1:
        raise InstannoError(f"image of shape {arr.shape} is empty")
    return arr


def select_rgb(arr: np.ndarray) -> np.ndarray:
    """Map (H, W, C) to three channels as the module docstring says."""
    c = arr.shape[2]
    if c == 1:
        return np.repeat(arr, 3, axis=2)
    if c == 2:
        return np.concatenate([arr, arr.mean(axis=2, keepdims=True).astype(arr.dtype)], axis=2)
    return arr[..., :3]


def channel_range(image: np.ndarray, sample: int = 1_000_000) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (low, high) percentiles of an image, from at most ``sample`` pixels.

    Raises ``InstannoError`` if the image holds NaN or inf.
    """
    arr = select_rgb(as_channels_last(image))
    flat = arr.reshape(-1, 3)
    if flat.shape[0] > sample:
        flat = flat[:: flat.shape[0] // sample + 1]
    flat = flat.astype(np.float32)
    bad = ~np.isfinite(flat)
    if bad.any():
        raise InstannoError(
            f"image holds {int(bad.any(axis=1).sum())} NaN/inf pixels (in the sample checked); "
            "replace them first, e.g. np.nan_to_num(image)"
        )
    lo, hi = np.percentile(flat, PERCENTILES, axis=0)
    return lo.astype(np.float32), hi.astype(np.float32)


def to_rgb01(
    image: np.ndarray, value_range: tuple[Sequence[float], Sequence[float]] | None = None
) -> np.ndarray:
    """Normalise any supported image to float32 RGB in [0, 1], shape (H, W, 3).

    ``value_range`` (per-channel low, high) lets tiles of one large image share the scaling.
    """
    arr = select_rgb(as_channels_last(image)).astype(np.float32)
    if value_range is None:
        value_range = channel_range(arr)
    elif not np.isfinite(arr).all():
        raise InstannoError(
            "image holds NaN/inf pixels; replace them first, e.g. np.nan_to_num(image)"
        )
    lo = np.asarray(value_range[0], np.float32)
    hi = np.asarray(value_range[1], np.float32)
    scale = np.where(hi - lo > 1e-12, hi - lo, 1.0)
    out = (arr - lo) / scale
    return np.clip(out, 0.0, 1.0, out=out)


def check_box(box: Sequence[float], shape: tuple[int, int], what: str = "box") -> np.ndarray:
    """Validate an (x0, y0, x1, y1) box against an image of ``shape`` (H, W); clip it to the image.

    Raises ``InstannoError`` for a malformed, empty, NaN or wholly outside box.
    """
    b = np.asarray(box, dtype=np.float64).reshape(-1)
    if b.size != 4:
        raise InstannoError(f"{what} must have 4 numbers (x0, y0, x1, y1), got {b.size}")
    if not np.isfinite(b).all():
        raise InstannoError(f"{what} {b.tolist()} holds NaN/inf")
    x0, y0, x1, y1 = b
    if x1 - x0 <= 0 or y1 - y0 <= 0:
        raise InstannoError(
            f"{what} {b.tolist()} has zero area; draw a box around one whole instance"
        )
    h, w = shape
    if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
        raise InstannoError(
            f"{what} {b.tolist()} lies outside the {w}x{h} image; draw it on the image"
        )
    clipped = np.array([max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)])
    if clipped[2] - clipped[0] < 1 or clipped[3] - clipped[1] < 1:
        raise InstannoError(f"{what} {b.tolist()} covers less than one pixel of the image")
    return clipped


def check_polygon(polygon: Sequence[Sequence[float]], shape: tuple[int, int]) -> np.ndarray:
    """Validate a (row, col) polygon to refine against an image of ``shape`` (H, W): at least 3
    finite vertices, its bounds on the image (``check_box``); returns it as float64."""
    p = np.asarray(polygon, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2 or len(p) < 3 or not np.isfinite(p).all():
        raise InstannoError("refine needs a polygon of at least 3 finite (row, col) vertices")
    check_box([p[:, 1].min(), p[:, 0].min(), p[:, 1].max(), p[:, 0].max()], shape, "polygon")
    return p


def clip_boxes(boxes: np.ndarray, bounds: Sequence[float]) -> np.ndarray:
    """(N, 4) xyxy boxes clipped to ``bounds`` (x0, y0, x1, y1), as a new float64 array."""
    lo_x, lo_y, hi_x, hi_y = (float(v) for v in bounds)
    out = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    out[:, [0, 2]] = out[:, [0, 2]].clip(lo_x, hi_x)
    out[:, [1, 3]] = out[:, [1, 3]].clip(lo_y, hi_y)
    return out


def xywh_to_xyxy(box: Sequence[float]) -> np.ndarray:
    """Convert (x, y, w, h) to (x0, y0, x1, y1)."""
    x, y, w, h = (float(v) for v in box)
    return np.array([x, y, x + w, y + h])
