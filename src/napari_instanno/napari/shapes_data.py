"""``Instances`` <-> napari Shapes data: the pure conversion, no layer is touched here.

Coordinates: ``Instances`` polygons are (row, col) in the pixel-CORNER frame (pixel (r, c) covers
[r, r+1)); napari puts pixel centres on integers, so napari = ours - 0.5. Stacks carry leading
(plane) coordinates in napari: the first one is the instances' ``plane`` property both ways (an
instance with one goes to its own plane); a stack's ``track_id`` is a feature column (-1: none).

Holes and parts: an instance with holes or several parts is several polygon shapes, one per ring
(each part's exterior, then its holes), sharing a ``group`` feature (the instance) and carrying a
``role`` ("part" or "hole"). Holes are drawn filled in ``HOLE_FACE`` (a dark veil: the cut-out)
with their instance's status colour; every ring stays an ordinary polygon to edit, delete or add.
Shapes with no group (-1 or missing: drawn by hand, or from a layer without holes) are instances
of their own. Layers whose instances are all simple polygons have no ``group`` / ``role`` columns.
Reviewing one ring of an instance reviews the whole instance.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from shapely.geometry import Polygon

from ..geometry import ellipse_polygon, make_geometry, parts_of, polygon_box, rings_of
from ..instances import STATUSES, Instances
from ..styles import STATUS_COLORS

OFFSET = 0.5  # ours - napari
AREA_TYPES = ("polygon", "rectangle", "ellipse")
GROUP, ROLE = "group", "role"  # feature columns of layers holding holes or several parts
RING_DEFAULTS = {GROUP: -1, ROLE: "part"}  # a shape drawn by hand: an instance of its own
HOLE_FACE = (0.0, 0.0, 0.0, 0.4)
TRACK = "track_id"  # feature column of a stack's shapes (inference.stacks)
OWN_DEFAULTS = {**RING_DEFAULTS, TRACK: -1}  # ... and a shape drawn by hand has no track


def status_colors(status: Sequence[str]) -> np.ndarray:
    """(N, 4) RGBA edge colours for review statuses (unknown ones drawn as proposed)."""
    table = np.array([STATUS_COLORS[s] for s in STATUSES])
    index = {s: i for i, s in enumerate(STATUSES)}
    return table[[index.get(str(s), 0) for s in status]].reshape(-1, 4)


def features_of(inst: Instances) -> pd.DataFrame:
    """The per-instance features table: score, category, status (and a stack's track id)."""
    feats = pd.DataFrame({
        "score": np.asarray(inst.scores, dtype=float),
        "category": inst.category_names,
        "status": [str(s) for s in inst.status],
    })
    if TRACK in inst.properties:
        feats[TRACK] = pd.to_numeric(pd.Series(inst.properties[TRACK], dtype=object),
                                     errors="coerce").fillna(-1).astype(np.int64).to_numpy()
    return feats


def shape_planes(inst: Instances, plane: Sequence[float]) -> list[Sequence[float]]:
    """Each instance's leading coordinates: ``plane``, its first one the instance's own ``plane``
    property where it has one."""
    own = inst.properties.get("plane")
    if own is None or not len(plane):
        return [plane] * len(inst)
    return [plane if p is None else (float(p), *plane[1:]) for p in own.tolist()]


def _rings(inst: Instances) -> list[list[tuple[np.ndarray, str]]]:
    """Per instance, its (ring, role) shapes: each part's exterior then its holes; a simple
    instance is its polygon alone."""
    out = []
    for poly, geom in zip(inst.polygons, inst.geometries, strict=True):
        parts = parts_of(geom)
        if len(parts) <= 1 and not (parts and parts[0].interiors):
            out.append([(poly, "part")])
        else:
            out.append([(r, "part" if k == 0 else "hole") for p in parts
                        for k, r in enumerate(rings_of(p))])
    return out


def shape_counts(inst: Instances) -> np.ndarray:
    """How many shapes each instance becomes in a Shapes layer (one per ring)."""
    return np.array([len(r) for r in _rings(inst)], dtype=np.int64).reshape(-1)


def to_napari(poly: np.ndarray, plane: Sequence[float] = ()) -> np.ndarray:
    """A (row, col) corner-frame polygon as napari vertices, with ``plane`` coordinates in front."""
    p = np.asarray(poly, dtype=np.float64) - OFFSET
    if len(plane):
        p = np.hstack([np.broadcast_to(np.asarray(plane, float), (len(p), len(plane))), p])
    return p


def box_to_rectangle(box: Sequence[float], plane: Sequence[float] = ()) -> np.ndarray:
    """An (x0, y0, x1, y1) box as napari rectangle vertices."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return to_napari(np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]]), plane)


def rectangle_to_box(vertices: np.ndarray) -> np.ndarray:
    """(x0, y0, x1, y1) in the corner frame of napari shape vertices (last two columns)."""
    return polygon_box(np.asarray(vertices, dtype=np.float64)[:, -2:] + OFFSET)


def instances_to_shapes(inst: Instances, plane: Sequence[float] = (), edge_width: float = 1.0,
                        first_group: int = 0) -> dict[str, Any]:
    """Keyword arguments for ``viewer.add_shapes`` / ``Shapes`` holding ``inst`` as polygons,
    one per ring (see the module docstring); groups are numbered from ``first_group``."""
    rings = _rings(inst)
    counts = np.array([len(r) for r in rings], dtype=np.int64).reshape(-1)
    owner = np.repeat(np.arange(len(inst)), counts)
    roles = [role for r in rings for _, role in r]
    feats = features_of(inst).iloc[owner].reset_index(drop=True)
    where = shape_planes(inst, plane)
    out = {
        "data": [to_napari(ring, where[i]) for i, r in enumerate(rings) for ring, _ in r],
        "shape_type": "polygon",
        "features": feats,
        "edge_color": status_colors(feats["status"]),
        "face_color": "transparent",
        "edge_width": edge_width,
    }
    if len(owner) > len(inst):
        feats[GROUP] = owner + first_group
        feats[ROLE] = roles
        out["face_color"] = ring_faces(roles)
        out["feature_defaults"] = {**features_of(inst).iloc[:1].to_dict("records")[0],
                                   **{k: v for k, v in OWN_DEFAULTS.items() if k in feats}}
    return out


def ring_faces(roles: Sequence[Any]) -> np.ndarray:
    """(N, 4) face colours for ring roles: holes veiled (``HOLE_FACE``), parts unfilled."""
    return np.array([HOLE_FACE if r == "hole" else (0.0, 0.0, 0.0, 0.0) for r in roles]).reshape(-1, 4)


def _groups(feats: pd.DataFrame, keep: list[int]) -> list[list[int]]:
    """The rows of ``keep`` grouped into instances, in order of their first shape."""
    if GROUP not in feats:
        return [[i] for i in keep]
    group = pd.to_numeric(feats[GROUP], errors="coerce").fillna(-1).to_numpy()
    out: dict[Any, list[int]] = {}
    for i in keep:
        out.setdefault(group[i] if group[i] >= 0 else ("own", i), []).append(i)
    return list(out.values())


def _geometry(rows: list[int], rings: dict[int, np.ndarray], roles: list[Any]) -> Any:
    """One instance from its ring shapes: each hole goes to the part it overlaps most."""
    parts = [i for i in rows if roles[i] != "hole"]
    holes: dict[int, list] = {i: [] for i in parts}
    shells = {i: Polygon(rings[i][:, ::-1]) for i in parts}
    for h in (i for i in rows if roles[i] == "hole"):
        hole = Polygon(rings[h][:, ::-1])
        overlap = {i: shells[i].intersection(hole).area if shells[i].is_valid and hole.is_valid
                   else float(shells[i].contains(hole.representative_point())) for i in parts}
        best = max(overlap, key=overlap.get, default=None)
        if best is not None and overlap[best] > 0:
            holes[best].append(rings[h][:, ::-1])
    return make_geometry([Polygon(rings[i][:, ::-1], holes[i]) for i in parts])


def shapes_to_instances(data: Sequence[np.ndarray], shape_types: Sequence[str] | str,
                        features: pd.DataFrame | None = None) -> Instances:
    """``Instances`` from napari Shapes data; lines and paths (no area) are skipped.

    Shapes sharing a ``group`` are one instance (its parts and holes, see the module docstring);
    it takes the features of its first shape. Missing features default to score 1, category
    "object", status "proposed".
    """
    n = len(data)
    types = [shape_types] * n if isinstance(shape_types, str) else list(shape_types)
    feats = features if features is not None and len(features) == n else pd.DataFrame(index=range(n))
    keep = [i for i in range(n) if types[i] in AREA_TYPES and len(data[i]) >= 3]
    rings = {}
    for i in keep:
        p = np.asarray(data[i], dtype=np.float64)[:, -2:] + OFFSET
        rings[i] = ellipse_polygon(polygon_box(p), 32) if types[i] == "ellipse" else p
    roles = _column(feats, ROLE, "part", list(range(n)))
    groups = [g for g in _groups(feats, keep) if any(roles[i] != "hole" for i in g)]  # holes alone: none
    first = [g[0] for g in groups]
    simple = all(len(g) == 1 and roles[g[0]] != "hole" for g in groups)
    names = _column(feats, "category", "object", first)
    cats = {k + 1: name for k, name in enumerate(dict.fromkeys(names))} or {1: "object"}
    ids = {name: k for k, name in cats.items()}
    status = [s if s in STATUSES else "proposed" for s in _column(feats, "status", "proposed", first)]
    scores = pd.to_numeric(pd.Series(_column(feats, "score", 1.0, first), dtype=object),
                           errors="coerce").fillna(1.0)
    shapes = ({"polygons": [rings[i] for i in first]} if simple else
              {"geometries": [_geometry(g, rings, roles) for g in groups]})
    props = {}
    if first and all(np.shape(data[i])[1] > 2 for i in first):  # a stack: each shape's plane
        props["plane"] = np.array([int(round(float(data[i][0][0]))) for i in first])
    if TRACK in feats:
        props[TRACK] = pd.to_numeric(pd.Series(_column(feats, TRACK, -1, first), dtype=object),
                                     errors="coerce").fillna(-1).astype(np.int64).to_numpy()
    return Instances(**shapes, scores=scores.to_numpy(float), categories=cats,
                     category_ids=np.array([ids[c] for c in names], dtype=np.int64),
                     status=np.array(status, dtype=object), properties=props)


def layer_to_instances(layer: Any) -> Instances:
    """The shown shapes of a napari Shapes layer as ``Instances``."""
    return shapes_to_instances(layer.data, layer.shape_type, layer.features)


def _column(feats: pd.DataFrame, name: str, default: Any, rows: list[int]) -> list:
    if name not in feats:
        return [default] * len(rows)
    col = feats[name].iloc[rows].tolist()
    return [default if v is None or (isinstance(v, float) and np.isnan(v)) else v for v in col]
