"""npe2 writers: a Shapes layer saves as COCO JSON or GeoJSON (File > Save Layers).

What is saved is decided in ``files`` (shared with the widget). napari's save dialog asks before
replacing a file, so these writers replace atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .files import layer_instances, save_instances


def _save(path: str, data: Any, meta: dict, fmt: str) -> list[str]:
    inst = layer_instances(data, meta.get("shape_type", "polygon"), meta.get("features"),
                           meta.get("metadata"))
    name = meta.get("name", Path(path).stem)
    return [str(save_instances(path, inst, meta.get("metadata"), name, fmt))]


def write_coco_layer(path: str, data: Any, meta: dict) -> list[str]:
    """Write a Shapes layer as a COCO JSON file for one image."""
    return _save(path, data, meta, "coco")


def write_geojson_layer(path: str, data: Any, meta: dict) -> list[str]:
    """Write a Shapes layer as a GeoJSON FeatureCollection (pixels, or map units with a CRS)."""
    return _save(path, data, meta, "geojson")
