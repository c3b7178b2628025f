"""``Instances``: the one container that travels from the models to the viewer and the files."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .geometry import mask_to_polygon, polygon_area, polygon_box, polygon_to_mask

STATUSES = ("proposed", "accepted", "rejected")


@dataclass
class Instances:
    """Polygons with their boxes, scores, categories, review status and free properties.

    ``polygons[i]`` is a (K, 2) array of (row, col) vertices in pixel-corner coordinates and
    ``boxes[i]`` an (x0, y0, x1, y1) box in the same frame (see ``geometry``). ``categories`` maps
    category ids to names; ``properties`` holds one array per extra per-instance column.
    """

    polygons: list[np.ndarray] = field(default_factory=list)
    boxes: np.ndarray | None = None
    scores: np.ndarray | None = None
    category_ids: np.ndarray | None = None
    categories: dict[int, str] = field(default_factory=lambda: {1: "object"})
    status: np.ndarray | None = None
    properties: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.polygons = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in self.polygons]
        n = len(self.polygons)
        if self.boxes is None:
            self.boxes = (
                np.stack([polygon_box(p) for p in self.polygons]) if n else np.zeros((0, 4))
            )
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        self.scores = _column(self.scores, n, 1.0, np.float64)
        self.category_ids = _column(self.category_ids, n, min(self.categories), np.int64)
        self.status = _column(self.status, n, "proposed", object)
        self.properties = {k: np.asarray(v) for k, v in self.properties.items()}
        bad = {len(self.boxes), *(len(v) for v in self.properties.values())} - {n}
        if bad:
            raise ValueError(f"Instances columns disagree in length with {n} polygons: {bad}")
        unknown = set(self.status.tolist()) - set(STATUSES)
        if unknown:
            raise ValueError(f"unknown status {sorted(unknown)}; use one of {STATUSES}")

    def __len__(self) -> int:
        return len(self.polygons)

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
        )

    @property
    def category_names(self) -> list[str]:
        """The category name of every instance."""
        return [self.categories.get(int(c), str(int(c))) for c in self.category_ids]

    @property
    def areas(self) -> np.ndarray:
        """Polygon areas in square pixels."""
        return np.array([polygon_area(p) for p in self.polygons], dtype=np.float64)

    @classmethod
    def concat(cls, parts: Sequence[Instances]) -> Instances:
        """Join several Instances; categories are merged by name and renumbered when ids clash."""
        categories: dict[int, str] = {}
        by_name: dict[str, int] = {}
        polys, boxes, scores, cids, status = [], [], [], [], []
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
        )

    # --- masks -----------------------------------------------------------------------------
    @classmethod
    def from_label_image(cls, labels: np.ndarray, category: str = "object") -> Instances:
        """One polygon per non-zero label of an integer label image."""
        from scipy.ndimage import find_objects

        polys = []
        for i, sl in enumerate(find_objects(np.asarray(labels)), start=1):
            if sl is None:
                continue
            crop = labels[sl] == i
            poly = mask_to_polygon(crop)
            if poly is not None:
                polys.append(poly + [sl[0].start, sl[1].start])
        return cls(polygons=polys, categories={1: category})

    @classmethod
    def from_masks(cls, masks: Iterable[np.ndarray], category: str = "object") -> Instances:
        """One polygon per boolean mask (its largest region)."""
        polys = [p for p in (mask_to_polygon(m) for m in masks) if p is not None]
        return cls(polygons=polys, categories={1: category})

    def to_masks(self, shape: tuple[int, int]) -> np.ndarray:
        """(N, H, W) boolean masks."""
        out = np.zeros((len(self), *shape), dtype=bool)
        for i, p in enumerate(self.polygons):
            out[i] = polygon_to_mask(p, shape)
        return out

    def to_label_image(self, shape: tuple[int, int]) -> np.ndarray:
        """An int32 label image, instance i painted as i + 1 (later instances on top)."""
        out = np.zeros(shape, dtype=np.int32)
        for i, p in enumerate(self.polygons):
            out[polygon_to_mask(p, shape)] = i + 1
        return out

    # --- formats (thin wrappers, see io/) ----------------------------------------------------
    def to_coco(self, path: str | Path, image: dict | None = None, overwrite: bool = False) -> Path:
        """Write a COCO JSON file holding these instances for one image."""
        from .io.coco import write_coco

        return write_coco(path, [(image or {}, self)], overwrite=overwrite)

    def to_coco_results(self, image_id: int = 1, shape: tuple[int, int] | None = None
                        ) -> list[dict]:
        """COCO results-style entries (RLE segmentation when the image ``shape`` is given)."""
        from .io.coco import to_results

        return to_results(self, image_id, shape)

    def to_geojson(
        self, path: str | Path, transform: Any = None, crs: Any = None, overwrite: bool = False
    ) -> Path:
        """Write a GeoJSON FeatureCollection, in pixels or, with an affine ``transform``, map units."""
        from .io.geojson import write_geojson

        return write_geojson(path, self, transform=transform, crs=crs, overwrite=overwrite)


def _column(values: Any, n: int, default: Any, dtype: Any) -> np.ndarray:
    if values is None:
        return np.full(n, default, dtype=dtype)
    arr = np.asarray(values, dtype=dtype).reshape(-1)
    if dtype is object:
        arr = arr.astype(object)
    return arr
