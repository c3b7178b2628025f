"""``Instances`` <-> napari Shapes data, and the few whole-layer edits the widget needs.

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

Every edit here touches the layer in one call (setting data, features or colours for all shapes
at once): per-shape updates are what makes Shapes layers slow past a few thousand shapes.
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
from .proposals import polygon_boxes, replace_proposals

OFFSET = 0.5  # ours - napari
HIDDEN = "instanno_hidden"  # layer.metadata key: shapes below the score threshold
IMAGE_INFO = "instanno_image"  # layer.metadata key: COCO image info (file_name, height, width)
GEOREF = "instanno_georef"  # layer.metadata key: {"transform", "crs"} of a georeferenced image
AREA_TYPES = ("polygon", "rectangle", "ellipse")
GROUP, ROLE = "group", "role"  # feature columns of layers holding holes or several parts
RING_DEFAULTS = {GROUP: -1, ROLE: "part"}  # a shape drawn by hand: an instance of its own
HOLE_FACE = (0.0, 0.0, 0.0, 0.4)
TRACK = "track_id"  # feature column of a stack's shapes (inference.stacks)
OWN_DEFAULTS = {**RING_DEFAULTS, TRACK: -1}  # ... and a shape drawn by hand has no track
PLANE_APART = 1e7  # px: re-runs compare boxes plane by plane, as if the planes lay this far apart


def status_colors(status: Sequence[str]) -> np.ndarray:
    """(N, 4) RGBA edge colours for review statuses (unknown ones drawn as proposed)."""
    table = np.array([STATUS_COLORS[s] for s in STATUSES])
    index = {s: i for i, s in enumerate(STATUSES)}
    return table[[index.get(str(s), 0) for s in status]].reshape(-1, 4)


def show_swatch(layer: Any) -> None:
    """Set the layer's current edge colour, the swatch of its layer controls, to that of its most
    common status (of "accepted", what a shape drawn by hand gets, when it is empty), without
    recolouring the selected shapes."""
    status = layer.features["status"] if "status" in layer.features else ()
    common = str(status.mode().iloc[0]) if len(status) else "accepted"
    with layer.block_update_properties():
        layer.current_edge_color = STATUS_COLORS.get(common, STATUS_COLORS["proposed"])


def keep_status_colours(event: Any) -> None:
    """``layer.events.data`` callback: shapes just added (drawn by hand: whatever the swatch
    shows) get their status's colour."""
    layer = event.source
    if event.action != "added" or "status" not in layer.features:
        return
    want = status_colors(layer.features["status"])
    if len(want) == len(layer.data) and not np.allclose(layer.edge_color, want):
        layer.edge_color = want
    show_swatch(layer)


def georef(metadata: dict) -> dict | None:
    """{"transform", "crs"} from an image layer's metadata (our GeoTIFF reader), else None."""
    transform, crs = metadata.get("transform"), metadata.get("crs")
    return None if transform is None or crs is None else {"transform": transform, "crs": crs}


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


def _planes(inst: Instances, plane: Sequence[float]) -> list[Sequence[float]]:
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
    where = _planes(inst, plane)
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
        out["face_color"] = _faces(roles)
        out["feature_defaults"] = {**features_of(inst).iloc[:1].to_dict("records")[0],
                                   **{k: v for k, v in OWN_DEFAULTS.items() if k in feats}}
    return out


def _faces(roles: Sequence[Any]) -> np.ndarray:
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


# --- whole-layer edits ----------------------------------------------------------------------
def set_features(layer: Any, feats: pd.DataFrame) -> None:
    """Set ``layer.features`` keeping its defaults (napari resets them to the first row); the
    ring and track columns default to "an instance of its own" (``OWN_DEFAULTS``)."""
    defaults = layer.feature_defaults
    layer.features = feats
    kept = defaults.iloc[0].to_dict() if len(defaults.columns) else {}
    kept = {k: v for k, v in kept.items() if k in feats and k not in OWN_DEFAULTS}
    rings = {k: v for k, v in OWN_DEFAULTS.items() if k in feats}
    if kept or rings:
        layer.feature_defaults = {**layer.feature_defaults.iloc[0].to_dict(), **kept, **rings}


def style_rings(layer: Any) -> None:
    """Draw the holes of ``layer`` veiled (``HOLE_FACE``), everything else unfilled, in one call."""
    if ROLE in layer.features and len(layer.data):
        layer.face_color = _faces(layer.features[ROLE].tolist())


def ensure_features(layer: Any, defaults: dict[str, Any]) -> None:
    """Give ``layer`` the feature columns of ``defaults`` (filled with them) and those defaults."""
    feats = layer.features.copy()
    for name, value in defaults.items():
        dtype = object if isinstance(value, str) else type(value)
        if name not in feats:
            feats[name] = pd.Series([value] * len(feats), index=feats.index, dtype=dtype)
        elif not len(feats):
            feats[name] = feats[name].astype(dtype)
    layer.features = feats
    layer.feature_defaults = {**defaults, **{k: v for k, v in OWN_DEFAULTS.items() if k in feats}}


def _set_all(layer: Any, data: list[np.ndarray], types: list[str], feats: pd.DataFrame) -> None:
    """Replace every shape of ``layer`` in one call, colouring edges by status."""
    feats = feats.reset_index(drop=True)
    layer.data = list(zip(data, types, strict=True))
    set_features(layer, feats)
    if len(data):
        layer.edge_color = status_colors(feats["status"])
        style_rings(layer)
    show_swatch(layer)


def _hidden(layer: Any) -> tuple[list[np.ndarray], list[str], pd.DataFrame]:
    return layer.metadata.get(HIDDEN) or ([], [], pd.DataFrame(columns=["score", "category",
                                                                        "status"]))


def all_shapes(layer: Any) -> tuple[list[np.ndarray], list[str], pd.DataFrame]:
    """Shown and hidden shapes of a result layer: (data, shape types, features)."""
    hd, ht, hf = _hidden(layer)
    feats = pd.concat([layer.features, hf], ignore_index=True) if len(hf) else layer.features
    return list(layer.data) + hd, list(layer.shape_type) + ht, feats.reset_index(drop=True)


def _store(layer: Any, data: list[np.ndarray], types: list[str], feats: pd.DataFrame,
           threshold: float) -> int:
    """Show the shapes scoring at least ``threshold``, stash the rest; returns the shown count."""
    show = _scores(feats) >= threshold
    hide = np.flatnonzero(~show)
    layer.metadata[HIDDEN] = ([data[i] for i in hide], [types[i] for i in hide],
                              feats.iloc[hide].reset_index(drop=True))
    idx = np.flatnonzero(show)
    _set_all(layer, [data[i] for i in idx], [types[i] for i in idx], feats.iloc[idx])
    return len(idx)


def _scores(feats: pd.DataFrame) -> np.ndarray:
    if "score" not in feats:
        return np.ones(len(feats))
    return pd.to_numeric(feats["score"], errors="coerce").fillna(1.0).to_numpy()


def apply_threshold(layer: Any, threshold: float) -> int:
    """Show the shapes scoring at least ``threshold``, keep the others hidden; returns shown count.

    Hidden shapes live in ``layer.metadata`` (untouched by edits, not saved by writers) and come
    back when the threshold drops; edits to shown shapes are kept. Only the shapes that cross the
    threshold are removed or added, so small slider moves stay cheap on large layers.
    """
    hd, ht, hf = _hidden(layer)
    feats = layer.features.reset_index(drop=True)
    hide = np.flatnonzero(_scores(feats) < threshold)
    hidden_ok = _scores(hf) >= threshold
    show, stay = np.flatnonzero(hidden_ok), np.flatnonzero(~hidden_ok)
    if not len(hide) and not len(show):
        return len(layer.data)
    data, types = layer.data, layer.shape_type
    layer.metadata[HIDDEN] = (
        [hd[i] for i in stay] + [data[i] for i in hide],
        [ht[i] for i in stay] + [types[i] for i in hide],
        pd.concat([hf.iloc[stay], feats.iloc[hide]], ignore_index=True),
    )
    kept = feats.drop(index=hide)
    if len(hide):
        layer.selected_data = set(hide.tolist())
        layer.remove_selected()
    if len(show):
        layer.add([hd[i] for i in show], shape_type=[ht[i] for i in show],
                  edge_color=status_colors(hf["status"].iloc[show]))
    set_features(layer, pd.concat([kept, hf.iloc[show]], ignore_index=True))
    style_rings(layer)
    return len(layer.data)


def add_instances(layer: Any, inst: Instances, plane: Sequence[float] = (), threshold: float = 0.0,
                  replace_category: str | None = None) -> int:
    """Add ``inst`` to a result layer, rebuilding it in one call; returns how many were added.

    With ``replace_category``, earlier proposals of that category are replaced
    (``proposals.replace_proposals``), on a stack only on the planes ``inst`` goes to, each
    compared with its own plane's shapes. Shapes scoring below ``threshold`` are stashed.
    """
    data, types, feats = all_shapes(layer)
    if replace_category is not None and len(feats):
        old = np.array([float(np.asarray(d)[0, 0]) if len(plane) else 0.0 for d in data])
        new = np.array([float(w[0]) if len(w) else 0.0 for w in _planes(inst, plane)])
        apart = PLANE_APART * np.array([1.0, 0.0, 1.0, 0.0])  # boxes of two planes never meet
        cats = feats["category"].where(np.isin(old, new), None)  # other planes: untouched
        keep_old, keep_new = replace_proposals(
            cats, feats["status"],
            lambda idx: np.stack([rectangle_to_box(data[i]) for i in idx]) + old[idx, None] * apart,
            polygon_boxes(inst) + new[:, None] * apart, replace_category)
        keep = np.flatnonzero(keep_old)
        data, types, feats = [data[i] for i in keep], [types[i] for i in keep], feats.iloc[keep]
        inst = inst[np.flatnonzero(keep_new)]
    used = pd.to_numeric(feats[GROUP], errors="coerce").max() if GROUP in feats and len(feats) else -1
    new = instances_to_shapes(inst, plane, first_group=int(np.nan_to_num(used, nan=-1)) + 1)
    _store(layer, data + new["data"], types + ["polygon"] * len(new["data"]),
           pd.concat([feats, new["features"]], ignore_index=True), threshold)
    return len(inst)


def set_status(layer: Any, indices: Sequence[int], status: str) -> None:
    """Set the review status of the shapes at ``indices`` (and of the other rings of their
    instances) and recolour them."""
    if status not in STATUSES:
        raise ValueError(f"unknown status {status!r}")
    idx = sorted(int(i) for i in indices)
    if not idx:
        return
    feats = layer.features
    if GROUP in feats:
        group = pd.to_numeric(feats[GROUP], errors="coerce").fillna(-1).to_numpy()
        chosen = group[idx]
        idx = sorted(set(idx) | set(np.flatnonzero(np.isin(group, chosen[chosen >= 0])).tolist()))
    feats.loc[idx, "status"] = status
    set_features(layer, feats)
    layer.edge_color = status_colors(feats["status"])


def replace_polygons(layer: Any, indices: Sequence[int], polygons: Sequence[np.ndarray]) -> list[int]:
    """Replace the shapes at ``indices`` by ``polygons`` (corner frame), keeping their features.

    Only those shapes are touched (removed and added again at the end); returns their new indices.
    """
    idx = [int(i) for i in indices]
    if not idx:
        return []
    old = [np.asarray(layer.data[i]) for i in idx]
    moved = layer.features.iloc[idx].reset_index(drop=True)
    layer.selected_data = set(idx)
    layer.remove_selected()
    rest = layer.features.reset_index(drop=True)
    layer.add([to_napari(p, o[0, :-2]) for p, o in zip(polygons, old, strict=True)],
              shape_type="polygon", edge_color=status_colors(moved["status"]))
    set_features(layer, pd.concat([rest, moved], ignore_index=True))
    style_rings(layer)
    return list(range(len(rest), len(rest) + len(idx)))
