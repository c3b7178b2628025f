"""``Instances``: the one container that travels from the models to the viewer and the files.

Each instance is one shapely geometry in ``geometries``: a ``Polygon`` (with optional holes) or a
``MultiPolygon`` (several parts, each with optional holes), in (x, y) = (col, row) pixel-corner
coordinates (see ``geometry``). ``polygons[i]`` is the (row, col) exterior ring of the largest
part of ``geometries[i]``, without the closing vertex: what the models, the tiler and the simple
shape edits work with. Give either: polygons alone make one simple Polygon each (built in one
vectorised call), geometries alone give their polygons; areas and default boxes come from the
whole geometry (holes subtracted, parts added).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.affinity import translate
from shapely.geometry import MultiPolygon, Polygon

from .geometry import (
    geometry_to_mask,
    mask_to_geometry,
    outer_ring,
    polygon_box,
    polygons_to_geometries,
)

STATUSES = ("proposed", "accepted", "rejected")
INT_PROPERTIES = ("plane", "track_id")  # stacks (inference.stacks): integers whenever all are


@dataclass
class Instances:
    """Instances with their boxes, scores, categories, review status and free properties.

    ``polygons[i]`` is a (K, 2) array of (row, col) vertices in pixel-corner coordinates (the outer
    ring of the largest part), ``geometries[i]`` the whole shapely geometry in (x, y) and
    ``boxes[i]`` an (x0, y0, x1, y1) box in the same frame (see the module docstring).
    ``categories`` maps category ids to names; ``properties`` holds one array per extra column;
    a stack's instances have ``plane`` and ``track_id`` (int64 whenever every value is an
    integer, e.g. read back from a file).
    """

    polygons: list[np.ndarray] = field(default_factory=list)
    boxes: np.ndarray | None = None
    scores: np.ndarray | None = None
    category_ids: np.ndarray | None = None
    categories: dict[int, str] = field(default_factory=lambda: {1: "object"})
    status: np.ndarray | None = None
    properties: dict[str, np.ndarray] = field(default_factory=dict)
    geometries: Sequence[Polygon | MultiPolygon] | None = None

    def __post_init__(self) -> None:
        self.polygons = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in self.polygons]
        if self.geometries is None:
            self.geometries = polygons_to_geometries(self.polygons)
        else:
            geoms = np.empty(len(self.geometries), dtype=object)
            geoms[:] = list(self.geometries)
            if any(not isinstance(g, Polygon | MultiPolygon) for g in geoms):
                raise ValueError("Instances geometries must be shapely Polygons or MultiPolygons")
            self.geometries = geoms
            if not self.polygons:
                self.polygons = [outer_ring(g) for g in geoms]
        n = len(self.polygons)
        if len(self.geometries) != n:
            raise ValueError(f"{len(self.geometries)} geometries for {n} polygons")
        if self.boxes is None:
            self.boxes = self._geometry_boxes()
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        self.scores = _column(self.scores, n, 1.0, np.float64)
        self.category_ids = _column(self.category_ids, n, min(self.categories), np.int64)
        self.status = _column(self.status, n, "proposed", object)
        self.properties = {k: _property(k, v) for k, v in self.properties.items()}
        bad = {len(self.boxes), *(len(v) for v in self.properties.values())} - {n}
        if bad:
            raise ValueError(f"Instances columns disagree in length with {n} polygons: {bad}")
        unknown = set(self.status.tolist()) - set(STATUSES)
        if unknown:
            raise ValueError(f"unknown status {sorted(unknown)}; use one of {STATUSES}")

    def __len__(self) -> int:
        return len(self.polygons)

    def _geometry_boxes(self) -> np.ndarray:
        """Bounds of each geometry; a degenerate one (under 3 vertices) uses its vertices."""
        boxes = shapely.bounds(self.geometries).reshape(-1, 4)
        for i in np.flatnonzero(np.isnan(boxes[:, 0])):
            p = self.polygons[i]
            boxes[i] = polygon_box(p) if len(p) else 0.0
        return boxes

    def __getitem__(self, index: Any) -> Instances:
        """A subset, by integer array, slice or boolean mask."""
        idx = np.arange(len(self))[index]
        idx = np.atleast_1d(idx)
        return Instances(
            polygons=[self.polygons[i] for i in idx],
            boxes=self.boxes[idx],
            scores=self.scores[idx],
            category_ids=self.category_ids[idx],
            categories=dict(self.categories),
            status=self.status[idx],
            properties={k: v[idx] for k, v in self.properties.items()},
            geometries=self.geometries[idx],
        )

    @property
    def category_names(self) -> list[str]:
        """The category name of every instance."""
        return [self.categories.get(int(c), str(int(c))) for c in self.category_ids]

    @property
    def areas(self) -> np.ndarray:
        """Areas of the whole geometries (holes subtracted) in square pixels."""
        return shapely.area(self.geometries).astype(np.float64).reshape(-1)

    @property
    def num_rejected(self) -> int:
        """How many instances have the status "rejected"."""
        return int(np.count_nonzero(self.status == "rejected"))

    def exported(self, include_rejected: bool = False) -> Instances:
        """What a file export holds: every instance but the rejected ones, unless
        ``include_rejected`` (a session file that reopens with its review state)."""
        return self if include_rejected or not self.num_rejected else self[self.status != "rejected"]

    @classmethod
    def concat(cls, parts: Sequence[Instances]) -> Instances:
        """Join several Instances; categories are merged by name and renumbered when ids clash."""
        categories: dict[int, str] = {}
        by_name: dict[str, int] = {}
        polys, geoms, boxes, scores, cids, status = [], [], [], [], [], []
        keys = set().union(*(p.properties for p in parts)) if parts else set()
        props: dict[str, list] = {k: [] for k in keys}
        for part in parts:
            remap = {}
            for cid, name in part.categories.items():
                if name not in by_name:
                    new = cid if cid not in categories else max(categories) + 1
                    categories[new] = name
                    by_name[name] = new
                remap[cid] = by_name[name]
            polys += part.polygons
            geoms.append(part.geometries)
            boxes.append(part.boxes)
            scores.append(part.scores)
            cids.append(np.array([remap[int(c)] for c in part.category_ids], dtype=np.int64))
            status.append(part.status)
            for k in keys:
                v = part.properties.get(k)
                props[k].append(v if v is not None else np.full(len(part), None, dtype=object))
        if not polys:
            return cls(categories=categories or {1: "object"})
        return cls(
            polygons=polys,
            boxes=np.concatenate(boxes),
            scores=np.concatenate(scores),
            category_ids=np.concatenate(cids),
            categories=categories,
            status=np.concatenate(status),
            properties={k: np.concatenate(v) for k, v in props.items()},
            geometries=np.concatenate(geoms),
        )

    # --- masks -----------------------------------------------------------------------------
    @classmethod
    def from_label_image(cls, labels: np.ndarray, category: str = "object") -> Instances:
        """One instance per non-zero label of an integer label image, with its holes and parts."""
        from scipy.ndimage import find_objects

        geoms = []
        for i, sl in enumerate(find_objects(np.asarray(labels)), start=1):
            if sl is None:
                continue
            geom = mask_to_geometry(labels[sl] == i)
            if geom is not None:
                geoms.append(translate(geom, sl[1].start, sl[0].start))
        return cls(geometries=geoms, categories={1: category})

    @classmethod
    def from_masks(cls, masks: Iterable[np.ndarray], category: str = "object") -> Instances:
        """One instance per non-empty boolean mask, with its holes and parts."""
        geoms = [g for g in (mask_to_geometry(m) for m in masks) if g is not None]
        return cls(geometries=geoms, categories={1: category})

    def to_masks(self, shape: tuple[int, int]) -> np.ndarray:
        """(N, H, W) boolean masks (holes left out)."""
        out = np.zeros((len(self), *shape), dtype=bool)
        for i, g in enumerate(self.geometries):
            out[i] = geometry_to_mask(g, shape)
        return out

    def to_label_image(self, shape: tuple[int, int]) -> np.ndarray:
        """An int32 label image, instance i painted as i + 1 (later instances on top)."""
        out = np.zeros(shape, dtype=np.int32)
        for i, g in enumerate(self.geometries):
            out[geometry_to_mask(g, shape)] = i + 1
        return out

    # --- formats (thin wrappers, see io/) ----------------------------------------------------
    def to_coco(self, path: str | Path, image: dict | None = None, overwrite: bool = False,
                include_rejected: bool = False) -> Path:
        """Write a COCO JSON file holding these instances for one image (rejected ones left out
        unless ``include_rejected``)."""
        from .io.coco import write_coco

        return write_coco(path, [(image or {}, self)], overwrite=overwrite,
                          include_rejected=include_rejected)

    def to_coco_results(self, image_id: int = 1, shape: tuple[int, int] | None = None
                        ) -> list[dict]:
        """COCO results-style entries (RLE segmentation when the image ``shape`` is given)."""
        from .io.coco import to_results

        return to_results(self, image_id, shape)

    def to_geojson(self, path: str | Path, transform: Any = None, crs: Any = None,
                   overwrite: bool = False, include_rejected: bool = False) -> Path:
        """Write a GeoJSON FeatureCollection, in pixels or, with an affine ``transform``, map units
        (rejected instances left out unless ``include_rejected``)."""
        from .io.geojson import write_geojson

        return write_geojson(path, self, transform=transform, crs=crs, overwrite=overwrite,
                             include_rejected=include_rejected)


def _column(values: Any, n: int, default: Any, dtype: Any) -> np.ndarray:
    if values is None:
        return np.full(n, default, dtype=dtype)
    arr = np.asarray(values, dtype=dtype).reshape(-1)
    if dtype is object:
        arr = arr.astype(object)
    return arr


def _property(key: str, values: Any) -> np.ndarray:
    """A property column; ``INT_PROPERTIES`` read back as Python ints become int64."""
    arr = np.asarray(values)
    if key in INT_PROPERTIES and arr.dtype == object and all(
            isinstance(v, int | np.integer) and not isinstance(v, bool) for v in arr.tolist()):
        arr = arr.astype(np.int64)
    return arr
