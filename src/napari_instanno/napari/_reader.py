"""npe2 readers: a COCO JSON or GeoJSON file opens as a Shapes layer (one per image in a COCO file);
a georeferenced GeoTIFF opens as an Image layer whose metadata holds its rasterio ``transform`` and
``crs`` (plain TIFFs are left to napari's own reader)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InstannoError
from ..io.atomic import read_json
from .files import annotation_kind
from .shapes_data import instances_to_shapes

LayerData = tuple[Any, dict, str]


def _kind(path: Path) -> str | None:
    """"coco", "geojson" or None (not ours) for a .json / .geojson file."""
    if path.suffix.lower() == ".geojson":
        return "geojson"
    if path.suffix.lower() != ".json" or not path.is_file():
        return None
    try:
        return annotation_kind(read_json(path, "JSON"))
    except InstannoError:
        return None


def get_reader(path: str | list[str]) -> Callable[[str], list[LayerData]] | None:
    """The reader for ``path`` if it is a COCO or GeoJSON file, else None (napari tries others)."""
    if isinstance(path, list):
        return None
    kind = _kind(Path(path))
    if kind is None:
        return None
    return read_coco_layers if kind == "coco" else read_geojson_layer


def _layer(inst: Any, name: str) -> LayerData:
    """A Shapes layer of ``inst``; a stack's instances (``plane``) each at its plane, in 3D."""
    kwargs = instances_to_shapes(inst, (0,) if "plane" in inst.properties else ())
    return kwargs.pop("data"), {**kwargs, "name": name}, "shapes"


def read_coco_layers(path: str) -> list[LayerData]:
    """One polygon Shapes layer per image of a COCO file, named after the image; a stack's
    file (images with a ``plane``) is one layer, each shape at its plane."""
    from ..io.coco import join_planes, read_coco

    entries = read_coco(path)
    stem = Path(path).stem
    if any("plane" in info for info, _ in entries):
        return [_layer(join_planes(entries), stem)]
    return [_layer(inst, Path(info["file_name"]).stem if "file_name" in info else stem)
            for info, inst in entries]


def read_geojson_layer(path: str) -> list[LayerData]:
    """A GeoJSON FeatureCollection (pixel coordinates) as one Shapes layer."""
    from ..io.geojson import read_geojson

    return [_layer(read_geojson(path), Path(path).stem)]


def get_geotiff_reader(path: str | list[str]) -> Callable[[str], list[LayerData]] | None:
    """The reader for a GeoTIFF that rasterio finds a CRS in, else None (napari's reader opens it)."""
    from ..io.images import TIFF_SUFFIXES, open_image

    if isinstance(path, list) or not str(path).lower().endswith(TIFF_SUFFIXES):
        return None
    try:
        opened = open_image(path)
    except InstannoError:
        return None
    if opened.crs is None or opened.transform is None:
        return None
    return lambda p: [_geotiff_layer(opened, Path(p).stem)]


def _geotiff_layer(opened: Any, name: str) -> LayerData:
    """Bands as stored: 3 or 4 as an RGB(A) layer, other counts on a slider (band, row, column)."""
    from ..image import channel_range
    from ..inference.policy import fits_in_memory

    data = opened.data
    if fits_in_memory(data.shape):
        data = np.asarray(data)
    rgb = data.ndim == 3 and data.shape[2] in (3, 4)
    meta: dict[str, Any] = {"name": name, "rgb": rgb,
                            "metadata": {"transform": opened.transform, "crs": opened.crs}}
    if data.ndim == 3 and not rgb:
        data = data.transpose(2, 0, 1)
    elif rgb and isinstance(data, np.ndarray):  # napari scales RGB by the dtype's range otherwise
        lo, hi = channel_range(data)
        meta["contrast_limits"] = [float(lo.min()), float(hi.max())]
    return data, meta, "image"
