"""Saving and loading annotation files for napari: one code path for the widget's buttons and
the npe2 reader / writer (File > Open, File > Save Layers).

What a result layer saves: its shown shapes (those hidden by the score threshold are not), or,
shown through ``LevelOfDetail``, its whole set above the threshold, edits included. GeoJSON is in
map coordinates with the CRS when the layer belongs to a georeferenced image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InstannoError
from ..instances import Instances
from ..io.atomic import read_json
from .large_layers import LOD_KEY
from .layers import GEOREF, IMAGE_INFO
from .shapes_data import shapes_to_instances

GEOJSON_SUFFIXES = (".geojson", ".geo.json")


def annotation_kind(data: Any) -> str | None:
    """"coco", "geojson" or None (not an annotation file) for parsed JSON ``data``."""
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        return "geojson"
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        return "coco"
    if isinstance(data, list) and data and isinstance(data[0], dict) and "bbox" in data[0]:
        return "coco"  # a results list
    return None


def format_for(path: str | Path, fmt: str | None = None) -> str:
    """``fmt``, or the format the file name asks for (.geojson: GeoJSON, else COCO)."""
    return fmt or ("geojson" if str(path).lower().endswith(GEOJSON_SUFFIXES) else "coco")


def layer_instances(data: Any, shape_type: Any, features: Any, metadata: dict | None) -> Instances:
    """What a result layer saves (see the module docstring), from its data and metadata."""
    lod = (metadata or {}).get(LOD_KEY)
    if lod is not None:
        return lod.kept()
    return shapes_to_instances(data, shape_type, features)


def save_instances(path: str | Path, inst: Instances, metadata: dict | None, name: str,
                   fmt: str | None = None, include_rejected: bool = False) -> Path:
    """Write ``inst`` as COCO JSON (one image, from the layer's ``IMAGE_INFO``; a stack's layer:
    one per plane) or GeoJSON (map coordinates when the layer's ``GEOREF`` says so); atomic,
    replacing ``path``. Rejected instances are left out (``inst.num_rejected`` of them) unless
    ``include_rejected``."""
    from ..io.coco import plane_items, write_coco
    from ..io.geojson import write_geojson

    meta = metadata or {}
    if format_for(path, fmt) == "geojson":
        return write_geojson(path, inst, overwrite=True, include_rejected=include_rejected,
                             **(meta.get(GEOREF) or {}))
    info = {"file_name": name, **(meta.get(IMAGE_INFO) or {})}
    plane = inst.properties.get("plane")
    items = [(info, inst)] if plane is None or not len(plane) else plane_items(
        inst, [info] * (int(plane.max()) + 1))
    return write_coco(path, items, overwrite=True, include_rejected=include_rejected)


def read_annotations(path: str | Path, georef: dict | None = None,
                     default_category: str = "object") -> list[Instances]:
    """The instances of a COCO file (one entry per image; one for a stack, each instance with
    its ``plane``) or a GeoJSON file; a GeoJSON with a ``crs`` member is read in the map
    coordinates of ``georef``'s image (whose CRS it must match), and refused without one.
    GeoJSON features without a classification get ``default_category``."""
    from ..io.coco import join_planes, read_coco
    from ..io.geojson import from_feature_collection

    data = read_json(path, "annotation file")
    kind = annotation_kind(data)
    if kind is None:
        raise InstannoError(f"{path} is not a COCO or GeoJSON file")
    if kind == "coco":
        items = read_coco(path)
        if any("plane" in info for info, _ in items):  # a stack: each instance on its plane
            return [join_planes(items)]
        return [inst for _, inst in items]
    geo = georef if georef is not None and "crs" in data else {}
    return [from_feature_collection(data, geo.get("transform"), source=str(path), crs=geo.get("crs"),
                                    default_category=default_category)]


def ask_save_path(parent: Any, fmt: str) -> str:
    """A Qt save dialog for a COCO or GeoJSON file; "" when cancelled."""
    from qtpy.QtWidgets import QFileDialog

    ext = ".geojson" if fmt == "geojson" else ".json"
    path, _ = QFileDialog.getSaveFileName(parent, f"Save {fmt}", f"annotations{ext}",
                                          f"{fmt} (*{ext})")
    return path


def ask_load_path(parent: Any) -> str:
    """A Qt open dialog for a COCO or GeoJSON file; "" when cancelled."""
    from qtpy.QtWidgets import QFileDialog

    path, _ = QFileDialog.getOpenFileName(parent, "Load annotations", "",
                                          "COCO / GeoJSON (*.json *.geojson)")
    return path
