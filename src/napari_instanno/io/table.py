"""A columnar table of instances (parquet) written batch by batch, for runs with millions of
objects; and GeoJSON / COCO files streamed from it without holding everything in memory.

Columns: ``x0 y0 x1 y1`` (box), ``score``, ``category``, ``status``, ``polygon`` (flat
``[x0, y0, x1, y1, ...]`` in pixel-corner coordinates, the COCO order: the outer ring of the
largest part), ``geometry`` (the whole geometry, holes and parts, as WKB: GeoParquet's
encoding) and ``properties`` (the instance's other properties, such as ``plane``, ``track_id``
or ``outlined``, as a JSON object). Tables without ``geometry`` (older files) are read from
``polygon``, and without ``properties`` have none. Exports to
GeoJSON / COCO leave rejected instances out unless ``include_rejected``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import shapely

from ..errors import InstannoError
from ..instances import Instances
from .atomic import atomic_text_file, check_target, new_temp_beside, to_json


def _pyarrow() -> Any:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as err:
        raise InstannoError("writing a parquet table needs pyarrow: pip install pyarrow") from err
    return pa, pq


class TableWriter:
    """Append ``Instances`` to a parquet file as row groups; ``close()`` finishes the file.

    The file appears (atomically) only on ``close``; a crash leaves no half-written table. An
    existing regular file at ``path`` is replaced (never a symlink or special file).
    """

    def __init__(self, path: str | Path) -> None:
        self.pa, pq = _pyarrow()
        self.path = Path(path)
        fd, self._tmp = new_temp_beside(self.path, check_target(self.path, overwrite=True))
        os.close(fd)
        schema = self.pa.schema([
            *(self.pa.field(k, self.pa.float64()) for k in ("x0", "y0", "x1", "y1", "score")),
            self.pa.field("category", self.pa.string()),
            self.pa.field("status", self.pa.string()),
            self.pa.field("polygon", self.pa.list_(self.pa.float64())),
            self.pa.field("geometry", self.pa.binary()),
            self.pa.field("properties", self.pa.string()),
        ])
        self._writer = pq.ParquetWriter(self._tmp, schema)
        self.count = 0

    def write(self, inst: Instances) -> None:
        """Append one batch."""
        if not len(inst):
            return
        pa = self.pa
        b = inst.boxes
        lengths = np.array([len(p) * 2 for p in inst.polygons], dtype=np.int32)
        flat = np.concatenate([np.asarray(p)[:, ::-1].reshape(-1) for p in inst.polygons])
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        cols = {k: pa.array(b[:, i]) for i, k in enumerate(("x0", "y0", "x1", "y1"))}
        cols["score"] = pa.array(inst.scores.astype(np.float64))
        cols["category"] = pa.array(inst.category_names)
        cols["status"] = pa.array([str(s) for s in inst.status])
        cols["polygon"] = pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))
        cols["geometry"] = pa.array(shapely.to_wkb(inst.geometries).tolist(), pa.binary())
        props = inst.properties
        cols["properties"] = pa.array([to_json({k: v[i] for k, v in props.items()}, self.path)
                                       for i in range(len(inst))], pa.string())
        self._writer.write_table(pa.table(cols, schema=self._writer.schema))
        self.count += len(inst)

    def close(self) -> Path:
        """Finish the file and move it into place."""
        self._writer.close()
        os.replace(self._tmp, self.path)
        return self.path


def iter_table(path: str | Path, batch_size: int = 65536) -> Iterator[Instances]:
    """The table's instances, ``batch_size`` at a time."""
    _, pq = _pyarrow()
    path = Path(path)
    if not path.is_file():
        raise InstannoError(f"table {path} does not exist")
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
        poly = batch.column("polygon")
        offsets = poly.offsets.to_numpy() // 2
        flat = poly.values.to_numpy(zero_copy_only=False).reshape(-1, 2)[:, ::-1]
        polygons = np.split(flat, offsets[1:-1] - offsets[0]) if len(batch) else []
        names_col = batch.column("category").to_pylist()
        ids = {n: i + 1 for i, n in enumerate(dict.fromkeys(names_col))} or {"object": 1}
        geoms = (shapely.from_wkb(batch.column("geometry").to_numpy(zero_copy_only=False))
                 if "geometry" in batch.schema.names else None)
        yield Instances(
            polygons=polygons,
            geometries=geoms,
            boxes=np.stack([batch.column(k).to_numpy() for k in ("x0", "y0", "x1", "y1")], 1),
            scores=batch.column("score").to_numpy(),
            category_ids=[ids[n] for n in names_col],
            categories={i: n for n, i in ids.items()},
            status=batch.column("status").to_pylist(),
            properties=_properties(batch),
        )


def _properties(batch: Any) -> dict[str, list]:
    """The ``properties`` column's objects as one list per key (None where a row lacks it)."""
    if "properties" not in batch.schema.names:
        return {}
    rows = [json.loads(t) if t else {} for t in batch.column("properties").to_pylist()]
    keys = dict.fromkeys(k for r in rows for k in r)
    return {k: [r.get(k) for r in rows] for k in keys}


def count_rows(path: str | Path) -> int:
    """How many instances the table holds (from its metadata)."""
    _, pq = _pyarrow()
    return pq.ParquetFile(path).metadata.num_rows


def read_table(path: str | Path) -> Instances:
    """The whole table as one Instances."""
    parts = list(iter_table(path))
    return Instances.concat(parts) if parts else Instances()


def table_to_geojson(table: str | Path, path: str | Path, transform: Any = None, crs: Any = None,
                     overwrite: bool = False, include_rejected: bool = False) -> Path:
    """Stream the table into a GeoJSON FeatureCollection (pixels or map units)."""
    from .geojson import _crs_member, to_feature_collection

    head = {"type": "FeatureCollection"}
    member = _crs_member(crs)
    if member:
        head["crs"] = member
    return _stream_json(path, overwrite, head, "features",
                        (f for part in iter_table(table)
                         for f in to_feature_collection(part.exported(include_rejected),
                                                        transform)["features"]))


def table_to_coco(table: str | Path, path: str | Path, image: dict | None = None,
                  overwrite: bool = False, include_rejected: bool = False) -> Path:
    """Stream the table into a COCO file holding one image."""
    from .coco import annotations_of

    info = dict(image or {})
    image_id = int(info.get("id", 1))
    h, w = int(info.get("height", 0)), int(info.get("width", 0))
    categories: dict[str, int] = {}

    def annotations() -> Iterator[dict]:
        n = 0
        for part in iter_table(table):
            anns = annotations_of(part.exported(include_rejected), image_id,
                                  (h, w) if h > 0 and w > 0 else None,
                                  lambda name: categories.setdefault(name, len(categories) + 1),
                                  n + 1)
            n += len(anns)
            yield from anns

    head = {
        "info": {"description": "written by napari-instanno"},
        "images": [{"id": image_id, "file_name": str(info.get("file_name", "image")),
                    "height": h, "width": w}],
    }
    def tail() -> dict:
        return {"categories": [{"id": i, "name": n, "supercategory": n}
                               for n, i in categories.items()]}

    return _stream_json(path, overwrite, head, "annotations", annotations(), tail)


def _stream_json(path: str | Path, overwrite: bool, head: dict, key: str, items: Iterator[Any],
                 tail: Any = None) -> Path:
    """Write ``{**head, key: [items...], **tail()}`` item by item, atomically."""
    with atomic_text_file(path, overwrite) as fh:
        fh.write(to_json(head, path)[:-1] + f', "{key}": [')
        for n, item in enumerate(items):
            fh.write(("," if n else "") + to_json(item, path))
        fh.write("]")
        for k, v in (tail() if tail else {}).items():
            fh.write(f", {json.dumps(k)}: {to_json(v, path)}")
        fh.write("}")
    return Path(path)
