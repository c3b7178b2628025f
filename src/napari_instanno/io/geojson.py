"""GeoJSON FeatureCollections of Polygons, as QuPath reads and writes them.

Pixel coordinates by default: x right, y down, origin at the top-left corner of the full-resolution
image. With an affine ``transform`` (rasterio / affine convention: map = transform * (x, y)) the
coordinates are in map units and the raster's CRS is written in the legacy ``crs`` member.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InstannoError
from ..instances import Instances
from .atomic import read_json, write_json_atomic

_PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60)]


def _affine(transform: Any) -> np.ndarray | None:
    """A 2x3 matrix from an ``affine.Affine``, a GDAL 6-tuple or a 2x3 / 3x3 array."""
    if transform is None:
        return None
    if hasattr(transform, "a") and hasattr(transform, "f"):
        t = transform
        return np.array([[t.a, t.b, t.c], [t.d, t.e, t.f]], dtype=np.float64)
    arr = np.asarray(transform, dtype=np.float64)
    if arr.shape == (6,):
        return arr.reshape(2, 3)
    if arr.shape in ((2, 3), (3, 3)):
        return arr[:2]
    raise InstannoError(f"transform of shape {arr.shape} is not an affine transform")


def _crs_member(crs: Any) -> dict | None:
    if crs is None:
        return None
    epsg = getattr(crs, "to_epsg", lambda: None)()
    name = f"urn:ogc:def:crs:EPSG::{epsg}" if epsg else str(crs)
    return {"type": "name", "properties": {"name": name}}


def to_feature_collection(inst: Instances, transform: Any = None, crs: Any = None) -> dict:
    """The GeoJSON dict for ``inst`` (see module docstring for coordinates)."""
    m = _affine(transform)
    names = inst.category_names
    features = []
    for i, poly in enumerate(inst.polygons):
        xy = np.asarray(poly)[:, ::-1]
        if m is not None:
            xy = xy @ m[:, :2].T + m[:, 2]
        ring = np.vstack([xy, xy[:1]]).round(6).tolist()
        colour = _PALETTE[(int(inst.category_ids[i]) - 1) % len(_PALETTE)]
        props = {
            "objectType": "annotation",
            "classification": {"name": names[i], "color": list(colour)},
            "category_id": int(inst.category_ids[i]),
            "score": float(inst.scores[i]),
            "status": str(inst.status[i]),
        }
        for key, col in inst.properties.items():
            v = col[i]
            props.setdefault(key, v.item() if isinstance(v, np.generic) else v)
        features.append({"type": "Feature", "properties": props,
                         "geometry": {"type": "Polygon", "coordinates": [ring]}})
    out: dict[str, Any] = {"type": "FeatureCollection", "features": features}
    crs_member = _crs_member(crs)
    if crs_member:
        out["crs"] = crs_member
    return out


def write_geojson(path: str | Path, inst: Instances, transform: Any = None, crs: Any = None,
                  overwrite: bool = False) -> Path:
    """Write ``inst`` as a GeoJSON file (atomic, never silently overwriting)."""
    return write_json_atomic(path, to_feature_collection(inst, transform, crs), overwrite)


def from_feature_collection(data: Any, transform: Any = None, source: str = "GeoJSON"
                            ) -> Instances:
    """Instances from a GeoJSON dict; with ``transform``, map coordinates go back to pixels."""
    if not isinstance(data, dict) or data.get("type") != "FeatureCollection":
        raise InstannoError(f"{source} is not a GeoJSON FeatureCollection")
    m = _affine(transform)
    inv = None
    if m is not None:
        full = np.vstack([m, [0, 0, 1]])
        inv = np.linalg.inv(full)[:2]
    polys, scores, names, status = [], [], [], []
    for k, feat in enumerate(data.get("features") or []):
        geom = (feat or {}).get("geometry") or {}
        gtype, coords = geom.get("type"), geom.get("coordinates")
        try:
            if gtype == "Polygon":
                rings = [coords[0]]
            elif gtype == "MultiPolygon":
                rings = [p[0] for p in coords]
            else:
                continue
            for ring in rings:
                xy = np.asarray(ring, dtype=np.float64)[:, :2]
                if len(xy) > 1 and np.allclose(xy[0], xy[-1]):
                    xy = xy[:-1]
                if len(xy) < 3:
                    continue
                if inv is not None:
                    xy = xy @ inv[:, :2].T + inv[:, 2]
                props = feat.get("properties") or {}
                cls = props.get("classification") or {}
                names.append(str(cls.get("name") if isinstance(cls, dict) else cls or "object"))
                scores.append(float(props.get("score", 1.0)))
                status.append(props.get("status", "proposed"))
                polys.append(xy[:, ::-1])
        except (TypeError, ValueError, IndexError) as err:
            raise InstannoError(f"{source}: feature {k} has a malformed geometry ({err})") from err
    categories = {i + 1: n for i, n in enumerate(dict.fromkeys(names))} or {1: "object"}
    ids = {n: i for i, n in categories.items()}
    return Instances(polygons=polys, scores=np.array(scores), categories=categories,
                     category_ids=np.array([ids[n] for n in names], dtype=np.int64),
                     status=np.array(status, dtype=object))


def read_geojson(path: str | Path, transform: Any = None) -> Instances:
    """Read a GeoJSON file written by us, QuPath or a GIS (see ``from_feature_collection``)."""
    return from_feature_collection(read_json(path, "GeoJSON"), transform, source=str(path))
