"""Keeping tens or hundreds of thousands of instances usable in napari.

A Shapes layer slows down with its shape count (every shape is triangulated and drawn), so
``LevelOfDetail`` keeps the full ``Instances`` in memory and shows

* zoomed in: only the polygons in (and around) the visible region, as an editable Shapes layer
  rebuilt in one call when the view moves far enough;
* zoomed out (more than ``max_shapes`` would be visible): a Points layer of the centres, which
  napari draws in one batch whatever the count, and no polygons.

Edits made to the shown polygons (vertices moved, shapes deleted or added, status changed) are
written back to the full set before the shown subset changes and by ``instances()``. A score
threshold hides instances from both views without dropping them. The Shapes layer's metadata
holds the ``LevelOfDetail`` (key ``LOD_KEY``) so widgets and writers reach the full set.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..instances import Instances
from .layers import GROUP, ensure_features, style_rings
from .proposals import polygon_boxes, replace_proposals
from .shapes_data import (
    AREA_TYPES,
    OFFSET,
    instances_to_shapes,
    layer_to_instances,
    shape_counts,
    status_colors,
)

INDEX = "instance"  # Shapes feature column: the shape's index in the full Instances (-1: new)
LOD_KEY = "instanno_lod"  # Shapes layer metadata key: its LevelOfDetail


def camera(viewer: Any) -> Any:
    """The viewer's camera (``viewer.scene.camera`` since napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None and hasattr(scene, "camera") else viewer.camera


def visible_region(viewer: Any) -> tuple[float, float, float, float]:
    """(y0, y1, x0, x1) of the data visible on the canvas (world = data coordinates)."""
    cam = camera(viewer)
    cy, cx = cam.center[-2:]
    h, w = viewer.canvas.size
    zoom = max(float(cam.zoom), 1e-9)
    return cy - h / 2 / zoom, cy + h / 2 / zoom, cx - w / 2 / zoom, cx + w / 2 / zoom


def select_visible(boxes: np.ndarray, region: tuple[float, float, float, float],
                   limit: int) -> np.ndarray | None:
    """Indices of the (x0, y0, x1, y1) boxes meeting ``region``, or None if more than ``limit``."""
    y0, y1, x0, x1 = region
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) - OFFSET  # napari frame
    hit = np.flatnonzero((b[:, 2] >= x0) & (b[:, 0] <= x1) & (b[:, 3] >= y0) & (b[:, 1] <= y1))
    return None if len(hit) > limit else hit


class LevelOfDetail:
    """Shows ``instances`` in ``viewer`` as described in the module docstring.

    ``max_shapes`` caps the polygons in the Shapes layer; the region drawn is the visible one
    grown by ``pad`` (a fraction of its size) so small pans do not rebuild the layer.
    """

    def __init__(self, viewer: Any, instances: Instances, name: str = "instances",
                 max_shapes: int = 3000, pad: float = 0.5, edge_width: float = 1.0,
                 metadata: dict | None = None) -> None:
        self.viewer = viewer
        self.full = instances
        self.max_shapes = max_shapes
        self.pad = pad
        self.edge_width = edge_width
        self.min_score = 0.0
        self.closed = False
        self.shown = np.zeros(0, dtype=np.int64)
        self.drawn: tuple[float, float, float, float] | None = None
        centres = _centres(instances.boxes)
        self.points = viewer.add_points(centres, name=f"{name} (overview)",
                                        size=_size(instances.boxes),
                                        face_color=status_colors(instances.status)
                                        if len(instances) else "yellow",
                                        border_width=0, visible=False)
        self.shapes = viewer.add_shapes(name=name, face_color="transparent",
                                        edge_width=edge_width,
                                        metadata={**(metadata or {}), LOD_KEY: self})
        camera(viewer).events.zoom.connect(self.update)
        camera(viewer).events.center.connect(self.update)
        self.update()

    def __deepcopy__(self, memo: dict) -> LevelOfDetail:
        return self  # layer metadata may be deep-copied; the viewer and layers must not be

    def close(self) -> None:
        """Stop following the camera."""
        if not self.closed:
            camera(self.viewer).events.zoom.disconnect(self.update)
            camera(self.viewer).events.center.disconnect(self.update)
        self.closed = True

    def update(self, event: Any = None) -> None:
        """Redraw for the current view if it left the drawn region (called on camera moves)."""
        if self.shapes not in self.viewer.layers:  # the user deleted the result layer
            self.close()
            if self.points in self.viewer.layers:
                self.viewer.layers.remove(self.points)
            return
        y0, y1, x0, x1 = visible_region(self.viewer)
        if self.drawn is not None and self.shapes.visible:
            d = self.drawn
            if d[0] <= y0 and y1 <= d[1] and d[2] <= x0 and x1 <= d[3]:
                return  # still inside the drawn polygons
        self._sync_back()
        py, px = (y1 - y0) * self.pad, (x1 - x0) * self.pad
        region = (y0 - py, y1 + py, x0 - px, x1 + px)
        kept = np.flatnonzero(self.full.scores >= self.min_score)
        idx = select_visible(self.full.boxes[kept], region, self.max_shapes)
        if idx is None:
            region = (y0, y1, x0, x1)
            idx = select_visible(self.full.boxes[kept], region, self.max_shapes)
        if idx is None:  # too many to draw: the overview
            self._show(np.zeros(0, dtype=np.int64))
            self.shapes.visible, self.points.visible = False, True
            self.drawn = None
            return
        self._show(kept[idx])
        self.shapes.visible, self.points.visible = True, False
        self.drawn = region

    def instances(self) -> Instances:
        """All instances, with the edits made to the shown polygons."""
        self._sync_back()
        self._show(self.shown)  # fresh indices after additions / deletions
        return self.full

    def kept(self) -> Instances:
        """The instances scoring at least the threshold (what is shown and saved), edits included."""
        full = self.instances()
        return full[full.scores >= self.min_score]

    def set_threshold(self, threshold: float) -> int:
        """Hide instances scoring below ``threshold`` (kept, back when it drops); returns kept."""
        self._sync_back()
        self.min_score = float(threshold)
        self._redraw()
        return int((self.full.scores >= self.min_score).sum())

    def set_status(self, indices: np.ndarray, status: str) -> None:
        """Set the review status of instances ``indices`` of ``instances()``."""
        self._sync_back()
        self.full.status[np.asarray(indices, dtype=np.int64)] = status
        self._redraw()

    def add(self, inst: Instances, replace_category: str | None = None) -> int:
        """Add ``inst`` as ``layers.add_instances`` does (``replace_category``: see
        ``layers.replace_proposals``); returns how many."""
        full = self.instances()
        if replace_category is not None:
            keep_old, keep_new = replace_proposals(
                full.category_names, full.status, lambda idx: polygon_boxes(full[idx]),
                polygon_boxes(inst), replace_category)
            full, inst = full[keep_old], inst[keep_new]
        self.full = Instances.concat([full, inst])
        self.shown = np.zeros(0, dtype=np.int64)
        self._redraw()
        return len(inst)

    def _redraw(self) -> None:
        """Rebuild both views from ``full`` (after it changed outside the Shapes layer)."""
        self._show(self.shown[self.shown < len(self.full)])
        self._refresh_points()
        self.drawn = None
        self.update()

    def _show(self, idx: np.ndarray) -> None:
        """Put instances ``idx`` in the Shapes layer, in one call."""
        sub = self.full[idx]
        kw = instances_to_shapes(sub, edge_width=self.edge_width)
        feats = kw["features"]
        feats[INDEX] = np.repeat(np.asarray(idx, dtype=np.int64), shape_counts(sub))  # per ring
        layer = self.shapes
        layer.data = list(zip(kw["data"], ["polygon"] * len(kw["data"]), strict=True))
        layer.features = feats
        ensure_features(layer, {"score": 1.0, "category": _default_category(self.full),
                                "status": "accepted", INDEX: -1})  # hand-drawn: accepted
        if len(sub):
            layer.edge_color = kw["edge_color"]
            style_rings(layer)
        self.shown = np.asarray(idx, dtype=np.int64)

    def _sync_back(self) -> None:
        """Merge the Shapes layer's current content (edits, deletions, additions) into ``full``."""
        layer = self.shapes
        if INDEX not in layer.features:
            return
        edited = layer_to_instances(layer)  # the area shapes, in layer order
        area = [i for i, t in enumerate(layer.shape_type)
                if t in AREA_TYPES and len(layer.data[i]) >= 3]
        index = layer.features[INDEX].fillna(-1).to_numpy(np.int64)[area]
        simple = GROUP not in layer.features  # rings: compared after merging, not shape by shape
        if simple and np.array_equal(index, self.shown) and list(self.full.status[index]) == [
                str(s) for s in edited.status] and all(
                self.full.polygons[j].shape == edited.polygons[k].shape
                and np.allclose(self.full.polygons[j], edited.polygons[k], atol=1e-6)
                for k, j in enumerate(index)):
            return  # nothing changed
        old = self.full[np.setdiff1d(np.arange(len(self.full)), self.shown)]
        self.full = Instances.concat([old, edited])
        self.shown = np.arange(len(old), len(self.full))
        self._refresh_points()

    def _refresh_points(self) -> None:
        """The overview's centres, sizes, colours and visibility from ``full``."""
        self.points.data = _centres(self.full.boxes)
        self.points.size = _size(self.full.boxes)
        self.points.face_color = status_colors(self.full.status)
        self.points.shown = self.full.scores >= self.min_score


def _centres(boxes: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack([(b[:, 1] + b[:, 3]) / 2, (b[:, 0] + b[:, 2]) / 2], axis=1) - OFFSET


def _size(boxes: np.ndarray) -> float:
    """The overview's point size: the median box side (5 when there are none)."""
    sides = np.max(boxes[:, 2:] - boxes[:, :2], axis=1) if len(boxes) else [5.0]
    return max(float(np.median(sides)), 1.0)


def _default_category(inst: Instances) -> str:
    return next(iter(inst.categories.values()), "object")
