"""The result layer of one image, whatever its level of detail.

A run's instances live in a Shapes layer named "<image> instances". Up to ``LOD_ABOVE``
instances it is a plain Shapes layer (shapes below the score threshold stashed in its metadata,
``layers``); a run finding more moves them into a ``LevelOfDetail`` (centres when zoomed out,
the visible polygons when zoomed in) whose Shapes layer takes the name and place. ``ResultLayer``
gives both one interface (add, threshold, review, what to save), so the widget never branches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import InstannoError
from ..geometry import polygon_area
from ..inference.duplicates import same_object
from ..instances import Instances
from .files import layer_instances
from .large_layers import INDEX, LOD_KEY, LevelOfDetail
from .layers import (
    GEOREF,
    HIDDEN,
    IMAGE_INFO,
    add_instances,
    all_shapes,
    apply_threshold,
    ensure_features,
    georef,
    keep_status_colours,
    replace_polygons,
    set_status,
    show_swatch,
)
from .proposals import polygon_boxes, replace_proposals
from .shapes_data import OFFSET, rectangle_to_box, shapes_to_instances

UPDATING = "instanno_updating"  # layer.metadata key: set while a run's shapes go in
LOD_ABOVE = 10_000  # runs finding more instances are shown through LevelOfDetail
MIN_AREA = 1.0  # a refined polygon smaller than this (px^2) is a collapse: keep the user's one


def result_name(image_layer: Any) -> str:
    """The name of an image layer's result layer."""
    return f"{image_layer.name} instances"


def result_shapes(viewer: Any, image_layer: Any, plane_shape: tuple[int, ...]) -> Any:
    """The result Shapes layer of ``image_layer``, created if missing (with the image's scale,
    translate, COCO image info and georeferencing; ``plane_shape``: (H, W) of its planes)."""
    if result_name(image_layer) in viewer.layers:
        return viewer.layers[result_name(image_layer)]
    h, w = int(plane_shape[0]), int(plane_shape[1])
    src = getattr(image_layer.source, "path", None)
    info = {"file_name": Path(src).name if src else image_layer.name, "height": h, "width": w}
    return viewer.add_shapes(
        ndim=image_layer.ndim, name=result_name(image_layer), face_color="transparent",
        opacity=1.0, edge_width=max(1.0, max(h, w) / 512), scale=image_layer.scale,
        translate=image_layer.translate,
        metadata={IMAGE_INFO: info, GEOREF: georef(image_layer.metadata)})


def bind_review(layer: Any, keys: dict[str, Callable[[], Any]], category: str) -> None:
    """Bind review ``keys`` on ``layer``; shapes drawn by hand there get ``category``, score 1,
    status accepted; every shape added takes its status's colour (``layers.keep_status_colours``)
    and the edge-colour swatch shows that of most shapes (``layers.show_swatch``)."""
    for key, action in keys.items():
        layer.bind_key(key, lambda _, act=action: act(), overwrite=True)
    defaults = {"score": 1.0, "category": category, "status": "accepted"}
    if LOD_KEY in layer.metadata:
        defaults[INDEX] = -1  # a hand-drawn shape, new to the full set
    ensure_features(layer, defaults)
    layer.events.data.connect(keep_status_colours)  # the same callback is connected only once
    layer.events.data.connect(accept_edited)
    show_swatch(layer)


def accept_edited(event: Any) -> None:
    """``layer.events.data`` callback: a proposed shape the user reshapes or moves becomes
    accepted, so a re-run keeps it (``proposals.replace_proposals``) and learns from it."""
    layer = event.source
    if event.action != "changed" or layer.metadata.get(UPDATING) or LOD_KEY in layer.metadata \
            or "status" not in layer.features:
        return
    status = layer.features["status"].to_numpy()
    idx = [int(i) for i in event.data_indices if 0 <= int(i) < len(status)]
    idx = [i for i in idx if status[i] == "proposed"]
    if idx:
        set_status(layer, idx, "accepted")


class ResultLayer:
    """One interface over a result Shapes layer, plain or shown through ``LevelOfDetail``.

    ``bind(layer)`` is called on every Shapes layer this one comes to use (review keys, default
    features); ``recreate()`` gives a fresh result layer when the user deleted this one while a
    job ran.
    """

    def __init__(self, viewer: Any, layer: Any, bind: Callable[[Any], None],
                 recreate: Callable[[], Any] | None = None) -> None:
        self.viewer, self.layer = viewer, layer
        self._bind, self._recreate = bind, recreate
        bind(layer)

    @property
    def lod(self) -> LevelOfDetail | None:
        """The ``LevelOfDetail`` showing the layer, if any."""
        return self.layer.metadata.get(LOD_KEY)

    def add(self, inst: Instances, plane: Sequence[float] = (), threshold: float = 0.0,
            replace_category: str | None = None) -> int:
        """Add ``inst`` (see ``layers.add_instances``); returns how many were added.

        More than ``LOD_ABOVE`` instances on a 2D, unscaled layer move it into a ``LevelOfDetail``.
        """
        if self.layer not in self.viewer.layers and self._recreate is not None:
            self.layer = self._recreate()
            self._bind(self.layer)
        lod = self.lod
        if lod is None and len(inst) > LOD_ABOVE and not len(plane) \
                and np.allclose(self.layer.scale, 1) and np.allclose(self.layer.translate, 0):
            lod = self._to_level_of_detail(threshold)
        if lod is not None:
            return lod.add(inst, replace_category=replace_category)
        self.layer.metadata[UPDATING] = True  # not the user's edits (accept_edited)
        try:
            return add_instances(self.layer, inst, plane, threshold,
                                 replace_category=replace_category)
        finally:
            self.layer.metadata.pop(UPDATING, None)

    def reviewed(self, category: str, plane: Sequence[float] = ()
                 ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """((boxes, scores) accepted, (boxes, scores) rejected) of ``category`` on ``plane``,
        hidden shapes included: what a re-run learns from (``proposals.choose_references``)."""
        lod = self.lod
        if lod is not None:
            full = lod.instances()
            boxes, scores = np.asarray(full.boxes, float).reshape(-1, 4), full.scores
            status, cats = full.status, np.asarray(full.category_names, dtype=object)
        else:
            data, _, feats = all_shapes(self.layer)
            on = [i for i, v in enumerate(data)
                  if np.allclose(np.asarray(v)[0, :-2], plane[:np.asarray(v).shape[1] - 2])]
            boxes = np.array([rectangle_to_box(data[i]) for i in on]).reshape(-1, 4)
            pick = feats.iloc[on] if len(feats) else feats
            scores = pd.to_numeric(pick.get("score", pd.Series(1.0, index=pick.index)),
                                   errors="coerce").fillna(1.0).to_numpy()
            status = pick["status"].to_numpy() if "status" in pick else np.array([], object)
            cats = pick["category"].to_numpy() if "category" in pick else np.array([], object)
        same = cats == category
        acc, rej = same & (status == "accepted"), same & (status == "rejected")
        return (boxes[acc], scores[acc]), (boxes[rej], scores[rej])

    def add_more(self, inst: Instances, plane: Sequence[float] = (), threshold: float = 0.0,
                 category: str = "object") -> int:
        """Add more proposals of the last run (outlined later): every earlier shape stays, and a
        new one overlapping a reviewed shape of ``category`` is left out, as ``add`` does."""
        if self.lod is None and self.layer in self.viewer.layers:
            data, _, feats = all_shapes(self.layer)
            if len(feats):
                _, keep_new = replace_proposals(
                    feats["category"], feats["status"],
                    lambda idx: np.stack([rectangle_to_box(data[i]) for i in idx]),
                    polygon_boxes(inst), category)
                inst = inst[np.flatnonzero(keep_new)]
        return self.add(inst, plane, threshold)

    def _to_level_of_detail(self, threshold: float) -> LevelOfDetail:
        layer = self.layer
        old = shapes_to_instances(*all_shapes(layer))
        meta = {k: v for k, v in layer.metadata.items() if k != HIDDEN}
        name, width = layer.name, float(layer.current_edge_width)
        self.viewer.layers.remove(layer)
        lod = LevelOfDetail(self.viewer, old, name=name, edge_width=width, metadata=meta)
        lod.min_score = float(threshold)
        self.layer = lod.shapes
        self._bind(self.layer)
        return lod

    def shown(self) -> int:
        """How many instances pass the threshold (drawn, or in the overview)."""
        lod = self.lod
        return len(lod.kept()) if lod is not None else len(self.layer.data)

    def set_threshold(self, threshold: float) -> int:
        """Hide the instances scoring below ``threshold`` (kept); returns how many are shown."""
        lod = self.lod
        if lod is not None:
            return lod.set_threshold(threshold)
        return apply_threshold(self.layer, threshold)

    def review(self, status: str, indices: Sequence[int] | None = None) -> int:
        """Set ``status`` on ``indices`` of the drawn shapes (default: the selected ones);
        returns how many changed."""
        idx = sorted(self.layer.selected_data) if indices is None else list(indices)
        if idx:
            set_status(self.layer, idx, status)
        return len(idx)

    def review_proposed(self, status: str) -> int:
        """Set ``status`` on every still-proposed instance above the threshold (the whole set,
        not only the drawn part, under a ``LevelOfDetail``); returns how many changed."""
        lod = self.lod
        if lod is not None:
            full = lod.instances()
            idx = np.flatnonzero((full.status == "proposed") & (full.scores >= lod.min_score))
            if len(idx):
                lod.set_status(idx, status)
            return len(idx)
        idx = np.flatnonzero(self.layer.features["status"].to_numpy() == "proposed")
        if len(idx):
            set_status(self.layer, idx, status)
        return len(idx)

    def instances(self) -> Instances:
        """What the layer saves (``files.layer_instances``)."""
        layer = self.layer
        return layer_instances(layer.data, layer.shape_type, layer.features, layer.metadata)

    def outlined_already(self, polygons: Sequence[np.ndarray]) -> np.ndarray:
        """For each (row, col) polygon, the index of a drawn shape outlining the same object
        (``duplicates.same_object``), else -1."""
        drawn = [np.asarray(d, dtype=np.float64)[:, -2:] + OFFSET for d in self.layer.data]
        return same_object(polygons, drawn)

    def replace_refined(self, indices: Sequence[int], before: Sequence[np.ndarray],
                        polygons: Sequence[np.ndarray]) -> tuple[int, int]:
        """Put refined ``polygons`` in place of the shapes at ``indices`` (which held ``before``
        when refining started); collapsed ones keep the user's shape. Returns (replaced,
        collapsed); raises ``InstannoError`` if the shapes changed meanwhile."""
        layer = self.layer
        same = len(layer.data) > max(indices) and all(
            np.array_equal(layer.data[i], v) for i, v in zip(indices, before, strict=True))
        if not same:
            raise InstannoError("shapes changed while refining: refine again")
        keep = [k for k, p in enumerate(polygons) if polygon_area(p) >= MIN_AREA]
        new = replace_polygons(layer, [indices[k] for k in keep], [polygons[k] for k in keep])
        layer.selected_data = set(new)
        return len(keep), len(polygons) - len(keep)
