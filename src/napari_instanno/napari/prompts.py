"""What a widget action works on: the displayed image plane, and the boxes drawn in the
"reference" Shapes layer that the matcher starts from."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InstannoError
from ..inference.policy import fits_in_memory
from ._sample_data import REFERENCE
from .shapes_data import rectangle_to_box

NO_REFERENCE = "no reference box: draw one around an object"  # short: a toast shows it whole


def reference_layer(viewer: Any, image_layer: Any) -> Any:
    """The reference layer (created for ``image_layer`` if missing), selected, rectangle tool on."""
    layers = viewer.layers
    if REFERENCE in layers:
        ref = layers[REFERENCE]
    else:
        ref = viewer.add_shapes(
            ndim=image_layer.ndim, name=REFERENCE, edge_color="cyan", face_color="transparent",
            edge_width=1.5, scale=image_layer.scale, translate=image_layer.translate)
    layers.selection.active = ref
    ref.mode = "add_rectangle"
    return ref


def selected_rectangles(viewer: Any) -> tuple[Any, list[int]]:
    """The reference layer (or None) and the indices of its selected rectangles."""
    ref = viewer.layers[REFERENCE] if REFERENCE in viewer.layers else None
    if ref is None:
        return None, []
    return ref, [i for i in sorted(ref.selected_data) if ref.shape_type[i] == "rectangle"]


def reference_box(viewer: Any) -> np.ndarray:
    """The reference (x0, y0, x1, y1): the selected rectangle, else the last one drawn."""
    ref, selected = selected_rectangles(viewer)
    rects = [] if ref is None else [i for i, t in enumerate(ref.shape_type) if t == "rectangle"]
    if not rects:
        raise InstannoError(NO_REFERENCE)
    return rectangle_to_box(ref.data[(selected or rects)[-1]])


def reference_boxes(viewer: Any) -> np.ndarray:
    """The positives of a run as (k, 4) (x0, y0, x1, y1): the selected rectangles of the
    reference layer, else every rectangle there."""
    ref, selected = selected_rectangles(viewer)
    rects = [] if ref is None else [i for i, t in enumerate(ref.shape_type) if t == "rectangle"]
    rects = selected or rects
    if not rects:
        raise InstannoError(NO_REFERENCE)
    return np.stack([rectangle_to_box(ref.data[i]) for i in rects])


def displayed_plane(viewer: Any, layer: Any) -> tuple[Any, tuple[int, ...]]:
    """The displayed 2D plane (or RGB plane) of an image layer and its plane indices."""
    data = layer.data[0] if layer.multiscale else layer.data
    lead = layer.ndim - 2
    if lead <= 0:
        return data, ()
    point = layer.world_to_data(viewer.dims.point)
    plane = tuple(int(np.clip(round(p), 0, n - 1)) for p, n in zip(point[:lead], data.shape))
    return data[plane], plane


def runs_tiled(layer: Any, plane: Any) -> bool:
    """Whether a plane goes through the tiler: lazy (multiscale, dask, zarr) or too large to load."""
    return layer.multiscale or not isinstance(plane, np.ndarray) or not fits_in_memory(plane.shape)
