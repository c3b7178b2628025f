"""COCO JSON: datasets with several images, and results lists that COCOeval accepts.

COCO's (x, y) are our (col, row) in the same pixel-corner frame; ``bbox`` and ``area`` are computed
from the polygon. RLE segmentations (as in dsb2018) are read by decoding them to masks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InstannoError
from ..geometry import mask_to_polygon, polygon_area, polygon_box
from ..instances import Instances
from .atomic import read_json, write_json_atomic


def polygon_to_coco(poly: np.ndarray) -> list[float]:
    """A (row, col) polygon as COCO's flat [x0, y0, x1, y1, ...] list."""
    return np.asarray(poly)[:, ::-1].reshape(-1).round(3).tolist()


def coco_to_polygon(flat: list[float]) -> np.ndarray:
    """COCO's flat (x, y) list as a (row, col) polygon."""
    return np.asarray(flat, dtype=np.float64).reshape(-1, 2)[:, ::-1]


def _annotation_polygon(ann: dict, height: int, width: int) -> np.ndarray | None:
    seg = ann.get("segmentation")
    if isinstance(seg, list) and seg:
        parts = [coco_to_polygon(s) for s in seg if len(s) >= 6]
        return max(parts, key=polygon_area) if parts else None
    if isinstance(seg, dict):
        from pycocotools import mask as mask_utils

        rle = seg
        if isinstance(seg.get("counts"), list):
            rle = mask_utils.frPyObjects(seg, height, width)
        mask = mask_utils.decode(rle)
        x, y, w, h = (int(v) for v in mask_utils.toBbox(rle))
        crop = mask[max(y - 1, 0):y + h + 1, max(x - 1, 0):x + w + 1]
        poly = mask_to_polygon(crop)
        return None if poly is None else poly + [max(y - 1, 0), max(x - 1, 0)]
    return None


def _box_polygon(bbox: list[float]) -> np.ndarray:
    x, y, w, h = bbox
    return np.array([[y, x], [y, x + w], [y + h, x + w], [y + h, x]], dtype=np.float64)


def entries_to_instances(anns: list[dict], categories: dict[int, str], height: int, width: int
                         ) -> Instances:
    """Instances from COCO annotation (or result) dicts; box-only entries become rectangles."""
    polys, boxes, scores, cids, status = [], [], [], [], []
    for ann in anns:
        poly = _annotation_polygon(ann, height, width)
        if poly is None and ann.get("bbox"):
            poly = _box_polygon(ann["bbox"])
        if poly is None:
            continue
        polys.append(poly)
        x, y, w, h = ann.get("bbox") or polygon_to_xywh(poly)
        boxes.append([x, y, x + w, y + h])
        scores.append(ann.get("score", 1.0))
        cids.append(ann.get("category_id", min(categories)))
        status.append(ann.get("status", "proposed"))
    return Instances(
        polygons=polys,
        boxes=np.array(boxes).reshape(-1, 4),
        scores=np.array(scores),
        category_ids=np.array(cids, dtype=np.int64),
        categories=dict(categories),
        status=np.array(status, dtype=object),
    )


def polygon_to_xywh(poly: np.ndarray) -> list[float]:
    """COCO ``bbox`` (x, y, w, h) of a (row, col) polygon."""
    x0, y0, x1, y1 = polygon_box(poly)
    return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]


def _ann(poly: np.ndarray, inst: Instances, i: int) -> dict[str, Any]:
    return {
        "segmentation": [polygon_to_coco(poly)],
        "bbox": [round(v, 3) for v in polygon_to_xywh(poly)],
        "area": round(polygon_area(poly), 3),
        "category_id": int(inst.category_ids[i]),
        "score": float(inst.scores[i]),
    }


def to_results(inst: Instances, image_id: int = 1, shape: tuple[int, int] | None = None
               ) -> list[dict]:
    """COCO results-style list: ``{image_id, bbox, score, segmentation, category_id}``.

    With the image ``shape`` (H, W) the segmentation is compressed RLE, the form COCOeval's
    ``loadRes`` accepts; without it, a polygon.
    """
    out = [{"image_id": image_id, **_ann(p, inst, i)} for i, p in enumerate(inst.polygons)]
    if shape is not None:
        from pycocotools import mask as mask_utils

        h, w = shape
        for entry in out:
            rle = mask_utils.merge(mask_utils.frPyObjects(entry["segmentation"], h, w))
            entry["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    return out


def write_coco(path: str | Path, items: list[tuple[dict, Instances]], overwrite: bool = False
               ) -> Path:
    """Write a COCO dataset: one ``(image_info, instances)`` pair per image.

    ``image_info`` may hold ``file_name``, ``height``, ``width`` and ``id``. Categories are merged
    by name across images. Review status and scores are kept as extra annotation fields.
    """
    categories: dict[str, int] = {}
    images, annotations = [], []
    for n, (info, inst) in enumerate(items, start=1):
        image_id = int(info.get("id", n))
        images.append({
            "id": image_id,
            "file_name": str(info.get("file_name", f"image_{image_id}")),
            "height": int(info.get("height", 0)),
            "width": int(info.get("width", 0)),
        })
        for i, poly in enumerate(inst.polygons):
            name = inst.categories.get(int(inst.category_ids[i]), str(inst.category_ids[i]))
            cid = categories.setdefault(name, len(categories) + 1)
            ann = _ann(poly, inst, i)
            ann.update(id=len(annotations) + 1, image_id=image_id, category_id=cid, iscrowd=0,
                       status=str(inst.status[i]))
            for key, col in inst.properties.items():
                ann.setdefault(key, _plain(col[i]))
            annotations.append(ann)
    data = {
        "info": {"description": "written by napari-instanno"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": n, "supercategory": n} for n, i in categories.items()],
    }
    return write_json_atomic(path, data, overwrite=overwrite)


def read_coco(path: str | Path) -> list[tuple[dict, Instances]]:
    """Read a COCO dataset (or a results list) into ``(image_info, Instances)`` pairs.

    ``image_info['path']`` is the image file resolved next to the JSON (it may not exist).
    """
    path = Path(path)
    data = read_json(path, "COCO")
    if isinstance(data, list):  # results list
        data = {"images": [{"id": i} for i in sorted({d.get("image_id", 1) for d in data})],
                "annotations": data, "categories": []}
    if not isinstance(data, dict) or "annotations" not in data:
        raise InstannoError(f"{path} is not a COCO file: it has no 'annotations'")
    cats = {int(c["id"]): str(c["name"]) for c in data.get("categories", [])}
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(int(ann.get("image_id", 1)), []).append(ann)
    out = []
    for img in data.get("images") or [{"id": k} for k in by_image]:
        anns = by_image.get(int(img["id"]), [])
        used = {int(a.get("category_id", 1)) for a in anns}
        categories = {**{c: str(c) for c in used}, **cats} or {1: "object"}
        info = dict(img)
        if "file_name" in img:
            info["path"] = str(path.parent / img["file_name"])
        out.append((info, entries_to_instances(anns, categories, img.get("height", 0),
                                               img.get("width", 0))))
    return out


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v
