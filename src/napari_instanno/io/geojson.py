"""GeoJSON FeatureCollections of Polygons and MultiPolygons, as QuPath and GIS tools read them.

Pixel coordinates by default: x right, y down, origin at the top-left corner of the full-resolution
image, no ``crs`` member. With an affine ``transform`` (rasterio / affine convention:
map = transform * (x, y)) the coordinates are in map units and the raster's CRS is written in the
legacy ``crs`` member. Each instance is one Feature: a ``Polygon`` (exterior, then holes) or a
``MultiPolygon`` (several parts), rings closed and kept exactly (no rounding).

Reading checks every feature before it computes (types, finite coordinates, rings of at least 3
vertices, score and status); failures are one ``InstannoError`` naming the file and the feature
index. A file with a ``crs`` member is in map units: it is read only with the image's
``transform`` (and, when given, a ``crs`` it must match), never silently as pixels. A feature
without a classification gets ``default_category``. Features of other types (points, lines) and
null geometries are skipped.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import Polygon

from ..errors import InstannoError
from ..geometry import Geometry, make_geometry, parts_of
from ..instances import STATUSES, Instances
from .atomic import read_json, write_json_atomic

MAX_PIXEL = 1e6  # |x|, |y| limit in pixels (after the transform): beyond it a file is corrupt
STANDARD_KEYS = {"objectType", "classification", "category_id", "score", "status"}
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
        m = arr.reshape(2, 3)
    elif arr.shape in ((2, 3), (3, 3)):
        m = arr[:2]
    else:
        raise InstannoError(f"transform of shape {arr.shape} is not an affine transform")
    if not np.isfinite(m).all() or abs(np.linalg.det(m[:, :2])) < 1e-300:
        raise InstannoError("the transform is not invertible or not finite")
    return m


def _crs_member(crs: Any) -> dict | None:
    if crs is None:
        return None
    epsg = getattr(crs, "to_epsg", lambda: None)()
    name = f"urn:ogc:def:crs:EPSG::{epsg}" if epsg else str(crs)
    return {"type": "name", "properties": {"name": name}}


def _crs_key(crs: Any) -> str:
    """A comparable name of a CRS (an EPSG code where one is found, CRS84 as EPSG:4326)."""
    epsg = getattr(crs, "to_epsg", lambda: None)()
    text = f"EPSG:{epsg}" if epsg else str(crs)
    if re.search(r"CRS:?84\b", text, re.I):
        return "EPSG:4326"
    found = re.search(r"EPSG:+(\d+)", text, re.I)
    return f"EPSG:{found.group(1)}" if found else text


def _ring_xy(ring: np.ndarray, m: np.ndarray | None) -> list:
    xy = ring if m is None else ring @ m[:, :2].T + m[:, 2]
    return np.vstack([xy, xy[:1]]).tolist()


def _geometry_json(geom: Geometry, m: np.ndarray | None) -> dict:
    polys = [[_ring_xy(np.asarray(r.coords)[:-1], m) for r in (p.exterior, *p.interiors)]
             for p in parts_of(geom)]
    if len(polys) == 1:
        return {"type": "Polygon", "coordinates": polys[0]}
    return {"type": "MultiPolygon", "coordinates": polys}


def to_feature_collection(inst: Instances, transform: Any = None, crs: Any = None) -> dict:
    """The GeoJSON dict for ``inst`` (see module docstring for coordinates); instances without an
    area (fewer than 3 vertices) are left out."""
    m = _affine(transform)
    names = inst.category_names
    features = []
    for i, geom in enumerate(inst.geometries):
        if geom.is_empty:
            continue
        if not np.isfinite(shapely.get_coordinates(geom)).all() or not np.isfinite(inst.scores[i]):
            raise InstannoError(f"instance {i} has a NaN or infinite coordinate or score; GeoJSON "
                                "cannot hold it: fix or drop that instance")
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
        features.append({"type": "Feature", "properties": props, "geometry": _geometry_json(geom, m)})
    out: dict[str, Any] = {"type": "FeatureCollection", "features": features}
    crs_member = _crs_member(crs)
    if crs_member:
        out["crs"] = crs_member
    return out


def write_geojson(path: str | Path, inst: Instances, transform: Any = None, crs: Any = None,
                  overwrite: bool = False, include_rejected: bool = False) -> Path:
    """Write ``inst`` as a GeoJSON file (atomic, never silently overwriting); rejected instances
    are left out unless ``include_rejected`` (``Instances.num_rejected`` says how many)."""
    return write_json_atomic(path, to_feature_collection(inst.exported(include_rejected),
                                                         transform, crs), overwrite)


# --- reading -----------------------------------------------------------------------------------
class _Bad(Exception):
    """What is wrong with one feature; the caller adds the file and the feature index."""


def _ring(ring: Any, inv: np.ndarray | None, what: str) -> np.ndarray:
    """A GeoJSON ring as (N, 2) pixel (x, y), closing vertex dropped, checked."""
    if not isinstance(ring, list) or not all(isinstance(p, list) and len(p) >= 2 for p in ring):
        raise _Bad(f"{what} must be a list of [x, y] positions")
    bad = next((v for p in ring for v in p if type(v) not in (int, float)), None)
    if bad is not None:
        raise _Bad(f"{what} has a coordinate that is not a number: {bad!r:.40}")
    try:
        xy = np.array([p[:2] for p in ring], dtype=np.float64)
    except OverflowError:  # an integer beyond any float
        xy = np.full((1, 2), np.nan)
    if not np.isfinite(xy).all():
        raise _Bad(f"{what} has a coordinate that is not a finite number")
    if len(xy) > 1 and (xy[0] == xy[-1]).all():
        xy = xy[:-1]
    if len(xy) < 3:
        raise _Bad(f"{what} has {len(xy)} distinct vertices; a ring needs at least 3")
    if inv is not None:
        xy = xy @ inv[:, :2].T + inv[:, 2]
    if not (np.abs(xy) <= MAX_PIXEL).all():
        raise _Bad(f"{what} lies beyond ±{MAX_PIXEL:g} pixels; wrong transform or corrupt file?")
    return xy


def _polygon(rings: Any, inv: np.ndarray | None, what: str) -> Polygon:
    if not isinstance(rings, list) or not rings:
        raise _Bad(f"{what} must be a non-empty list of rings")
    xy = [_ring(r, inv, f"{what} ring {k}") for k, r in enumerate(rings)]
    return Polygon(xy[0], xy[1:])


def _feature_geometry(geom: Any, inv: np.ndarray | None) -> Geometry | None:
    if geom is None:
        return None
    if not isinstance(geom, dict):
        raise _Bad(f"'geometry' must be an object, not {geom!r:.40}")
    gtype, coords = geom.get("type"), geom.get("coordinates")
    if gtype == "Polygon":
        return _polygon(coords, inv, "the polygon")
    if gtype == "MultiPolygon":
        if not isinstance(coords, list) or not coords:
            raise _Bad("the MultiPolygon must have a non-empty list of polygons")
        return make_geometry([_polygon(p, inv, f"part {k}") for k, p in enumerate(coords)])
    if not isinstance(gtype, str):
        raise _Bad("its geometry has no 'type'")
    return None  # points, lines, collections: not instances


def _finite(v: Any) -> float | None:
    """``v`` as a float when it is a finite JSON number (not a bool), else None."""
    if type(v) not in (int, float):
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def _category(props: dict, default: str) -> str:
    cls = props.get("classification")
    if isinstance(cls, dict):
        cls = cls.get("name")
    if cls is None:
        return default
    if not isinstance(cls, str | int | float) or isinstance(cls, bool):
        raise _Bad(f"'classification' must be a name or an object with a 'name', not {cls!r:.40}")
    return str(cls) if str(cls) else default


def from_feature_collection(data: Any, transform: Any = None, source: str = "GeoJSON",
                            crs: Any = None, default_category: str = "object") -> Instances:
    """Instances from a GeoJSON dict; with ``transform``, map coordinates go back to pixels.

    A file with a ``crs`` member needs ``transform``; with ``crs`` too, the file's must match it.
    """
    if not isinstance(data, dict) or data.get("type") != "FeatureCollection":
        raise InstannoError(f"{source} is not a GeoJSON FeatureCollection")
    file_crs = data.get("crs")
    if file_crs is not None:
        name = file_crs.get("properties", {}).get("name") if isinstance(file_crs, dict) else None
        name = name if isinstance(name, str) else str(file_crs)[:60]
        if transform is None:
            raise InstannoError(f"{source} is in map coordinates ({name}), not pixels: open it with "
                                "its georeferenced image, or pass that image's transform")
        if crs is not None and _crs_key(name) != _crs_key(crs):
            raise InstannoError(f"{source} is in {_crs_key(name)} but the image is in "
                                f"{_crs_key(crs)}: reproject the file to the image's CRS first")
    m = _affine(transform)
    inv = None if m is None else np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
    features = data.get("features")
    if not isinstance(features, list):
        raise InstannoError(f"{source}: 'features' must be a list")
    geoms, scores, names, status, extras = [], [], [], [], []
    for k, feat in enumerate(features):
        try:
            if not isinstance(feat, dict):
                raise _Bad(f"must be an object, not {feat!r:.40}")
            geom = _feature_geometry(feat.get("geometry"), inv)
            if geom is None:
                continue
            props = feat.get("properties") or {}
            if not isinstance(props, dict):
                raise _Bad("'properties' must be an object")
            score = _finite(props.get("score", 1.0))
            if score is None:
                raise _Bad(f"'score' must be a finite number, not {props.get('score')!r:.40}")
            st = props.get("status", "proposed")
            if st not in STATUSES:
                raise _Bad(f"'status' must be one of {STATUSES}, not {st!r:.40}")
            names.append(_category(props, default_category))
        except _Bad as err:
            raise InstannoError(f"{source}: feature {k} {err}") from None
        except (ValueError, TypeError, shapely.errors.GEOSException) as err:
            raise InstannoError(f"{source}: feature {k} has a malformed geometry ({err})") from None
        geoms.append(geom)
        scores.append(float(score))
        status.append(st)
        extras.append({key: v for key, v in props.items() if key not in STANDARD_KEYS})
    categories = {i + 1: n for i, n in enumerate(dict.fromkeys(names))} or {1: default_category}
    ids = {n: i for i, n in categories.items()}
    props: dict[str, np.ndarray] = {}
    for key in dict.fromkeys(key for e in extras for key in e):
        col = np.empty(len(extras), dtype=object)
        for i, e in enumerate(extras):
            col[i] = e.get(key)
        props[key] = col
    return Instances(geometries=geoms, scores=np.array(scores, dtype=np.float64),
                     categories=categories,
                     category_ids=np.array([ids[n] for n in names], dtype=np.int64),
                     status=np.array(status, dtype=object), properties=props)


def read_geojson(path: str | Path, transform: Any = None, crs: Any = None,
                 default_category: str = "object") -> Instances:
    """Read a GeoJSON file written by us, QuPath or a GIS (see ``from_feature_collection``)."""
    return from_feature_collection(read_json(path, "GeoJSON"), transform, source=str(path), crs=crs,
                                   default_category=default_category)
