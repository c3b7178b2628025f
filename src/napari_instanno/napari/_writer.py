"""npe2 writers: a Shapes layer saves as COCO JSON or GeoJSON (File > Save Layers).

The shown shapes are written (shapes hidden by the score threshold are not); a layer shown through
``LevelOfDetail`` writes its whole set (above the threshold, edits included). GeoJSON is in map
coordinates with the CRS when the layer belongs to a georeferenced image. napari's save dialog
asks before replacing a file, so these writers replace atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..io.coco import write_coco
from ..io.geojson import write_geojson
from .large_layers import KEY
from .layers import GEOREF, IMAGE_INFO, shapes_to_instances


def _instances(data: Any, meta: dict) -> Any:
    lod = (meta.get("metadata") or {}).get(KEY)
    if lod is not None:
        return lod.kept()
    return shapes_to_instances(data, meta.get("shape_type", "polygon"), meta.get("features"))


def write_coco_layer(path: str, data: Any, meta: dict) -> list[str]:
    """Write a Shapes layer as a COCO JSON file for one image."""
    info = {"file_name": meta.get("name", Path(path).stem),
            **((meta.get("metadata") or {}).get(IMAGE_INFO) or {})}
    return [str(write_coco(path, [(info, _instances(data, meta))], overwrite=True))]


def write_geojson_layer(path: str, data: Any, meta: dict) -> list[str]:
    """Write a Shapes layer as a GeoJSON FeatureCollection (pixels, or map units with a CRS)."""
    geo = (meta.get("metadata") or {}).get(GEOREF) or {}
    return [str(write_geojson(path, _instances(data, meta), overwrite=True, **geo))]
