"""The few whole-layer edits the widget needs on result Shapes layers (conversion: ``shapes_data``).

Every edit here touches the layer in one call (setting data, features or colours for all shapes
at once): per-shape updates are what makes Shapes layers slow past a few thousand shapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..instances import STATUSES, Instances
from ..styles import STATUS_COLORS
from .proposals import polygon_boxes, replace_proposals
from .shapes_data import (
    GROUP,
    OWN_DEFAULTS,
    ROLE,
    instances_to_shapes,
    rectangle_to_box,
    ring_faces,
    shape_planes,
    status_colors,
    to_napari,
)

HIDDEN = "instanno_hidden"  # layer.metadata key: shapes below the score threshold
IMAGE_INFO = "instanno_image"  # layer.metadata key: COCO image info (file_name, height, width)
GEOREF = "instanno_georef"  # layer.metadata key: {"transform", "crs"} of a georeferenced image
PLANE_APART = 1e7  # px: re-runs compare boxes plane by plane, as if the planes lay this far apart




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
        layer.face_color = ring_faces(layer.features[ROLE].tolist())


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
        new = np.array([float(w[0]) if len(w) else 0.0 for w in shape_planes(inst, plane)])
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
