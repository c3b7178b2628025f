"""COCO JSON: datasets with several images, and results lists that COCOeval accepts.

COCO's (x, y) are our geometries' coordinates (pixel-corner frame). An instance of one or several
parts without holes is written as polygons, one per part, as they are (no rounding); one with
holes, which COCO polygons cannot hold, as an RLE mask (the image's height and width are needed)
plus an ``instanno_rings`` field with the exact rings (``[[exterior, hole, ...], ...]`` per part,
each flat ``[x0, y0, x1, y1, ...]``), which our reader prefers. ``bbox`` and ``area`` come from the
whole geometry. Review status, score and extra properties are extra annotation fields; rejected
instances are left out unless ``include_rejected``. A stack's planes are images of their own
(``plane_items``: one entry per plane, with its ``plane`` index and source file; each annotation
keeps its ``track_id``); ``join_planes`` puts them back into one ``Instances``.

The reader checks everything before it computes (``coco_checks``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import shapely

from ..errors import InstannoError
from ..geometry import Geometry, has_holes, parts_of, rings_of
from ..instances import Instances
from .atomic import read_json, write_json_atomic
from .coco_checks import parse_coco


# --- writing -----------------------------------------------------------------------------------
def _flat(ring: np.ndarray) -> list[float]:
    """A (row, col) ring as COCO's flat [x0, y0, x1, y1, ...] list."""
    return np.asarray(ring, dtype=np.float64)[:, ::-1].reshape(-1).tolist()


def geometry_rle(geom: Geometry, height: int, width: int) -> dict:
    """Compressed RLE of ``geom`` (holes left out) rasterised by pycocotools, as JSON values."""
    from pycocotools import mask as mask_utils

    mask = np.zeros((height, width), dtype=np.uint8)
    for part in parts_of(geom):
        rings = [_flat(r) for r in rings_of(part)]
        inside = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(rings[:1], height, width)))
        if len(rings) > 1:
            holes = mask_utils.merge(mask_utils.frPyObjects(rings[1:], height, width))
            inside &= 1 - mask_utils.decode(holes)
        mask |= inside
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": [int(height), int(width)], "counts": rle["counts"].decode("ascii")}


def _ann(inst: Instances, i: int, size: tuple[int, int] | None) -> dict[str, Any]:
    """The geometry, bbox, area, category and score fields of instance ``i``."""
    geom = inst.geometries[i]
    if not np.isfinite(shapely.get_coordinates(geom)).all() or not np.isfinite(inst.scores[i]):
        raise InstannoError(f"instance {i} has a NaN or infinite coordinate or score; COCO files "
                            "cannot hold it: fix or drop that instance")
    out: dict[str, Any] = {}
    if geom.is_empty:  # fewer than 3 vertices: kept as its box
        x0, y0, x1, y1 = (float(v) for v in inst.boxes[i])
        out["segmentation"], area = [], 0.0
    else:
        x0, y0, x1, y1 = geom.bounds
        area = geom.area
        if not has_holes(geom):
            out["segmentation"] = [_flat(rings_of(p)[0]) for p in parts_of(geom)]
        elif size is None:
            raise InstannoError(f"instance {i} has holes: COCO keeps them as an RLE mask, which "
                                "needs the image height and width; give them in the image info")
        else:
            out["segmentation"] = geometry_rle(geom, *size)
            out["instanno_rings"] = [[_flat(r) for r in rings_of(p)] for p in parts_of(geom)]
    out.update(bbox=[x0, y0, x1 - x0, y1 - y0], area=float(area),
               category_id=int(inst.category_ids[i]), score=float(inst.scores[i]))
    return out


def to_results(inst: Instances, image_id: int = 1, shape: tuple[int, int] | None = None
               ) -> list[dict]:
    """COCO results-style list: ``{image_id, bbox, score, segmentation, category_id}`` and
    every property (``track_id``, ``plane``, ...; COCOeval ignores them, ``read_coco`` keeps them).

    With the image ``shape`` (H, W) the segmentation is compressed RLE, the form COCOeval's
    ``loadRes`` accepts; without it, polygons (an instance with holes then needs ``shape``).
    """
    out = []
    for i in range(len(inst)):
        entry = {"image_id": image_id, **_ann(inst, i, shape)}
        entry.pop("instanno_rings", None)
        if shape is not None and isinstance(entry["segmentation"], list) and entry["segmentation"]:
            entry["segmentation"] = geometry_rle(inst.geometries[i], *shape)
        for key, col in inst.properties.items():
            entry.setdefault(key, _plain(col[i]))
        out.append(entry)
    return out


def annotations_of(inst: Instances, image_id: int, size: tuple[int, int] | None,
                   category_id: Any, first_id: int = 1) -> list[dict]:
    """Dataset annotations of ``inst`` for one image; ``category_id(name)`` gives the file's ids."""
    names = inst.category_names
    anns = []
    for i in range(len(inst)):
        ann = _ann(inst, i, size)
        ann.update(id=first_id + i, image_id=image_id, category_id=category_id(names[i]), iscrowd=0,
                   status=str(inst.status[i]))
        for key, col in inst.properties.items():
            ann.setdefault(key, _plain(col[i]))
        anns.append(ann)
    return anns


def write_coco(path: str | Path, items: list[tuple[dict, Instances]], overwrite: bool = False,
               include_rejected: bool = False) -> Path:
    """Write a COCO dataset: one ``(image_info, instances)`` pair per image.

    ``image_info`` may hold ``file_name``, ``height``, ``width`` and ``id``. Categories are merged
    by name across images. Review status and scores are kept as extra annotation fields; rejected
    instances are left out unless ``include_rejected`` (``Instances.num_rejected`` says how many).
    """
    categories: dict[str, int] = {}
    images, annotations = [], []
    for n, (info, inst) in enumerate(items, start=1):
        image_id = int(info.get("id", n))
        h, w = int(info.get("height", 0)), int(info.get("width", 0))
        images.append({"id": image_id, "file_name": str(info.get("file_name", f"image_{image_id}")),
                       "height": h, "width": w,
                       **({"plane": int(info["plane"])} if "plane" in info else {})})
        annotations += annotations_of(inst.exported(include_rejected), image_id,
                                      (h, w) if h > 0 and w > 0 else None,
                                      lambda name: categories.setdefault(name, len(categories) + 1),
                                      len(annotations) + 1)
    data = {
        "info": {"description": "written by napari-instanno"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": n, "supercategory": n} for n, i in categories.items()],
    }
    return write_json_atomic(path, data, overwrite=overwrite)


def plane_items(inst: Instances, images: list[dict] | None = None) -> list[tuple[dict, Instances]]:
    """``write_coco``'s items for a stack's instances (``properties["plane"]``): one image per
    plane, ``images[k]`` its info (file name, height, width; default ``plane_k``) with the plane
    index added; the plane is said by the image, not repeated in its annotations."""
    plane = np.asarray(inst.properties["plane"], dtype=np.int64)
    count = len(images) if images is not None else int(plane.max()) + 1 if len(plane) else 0
    items = []
    for k in range(count):
        part = inst[plane == k]
        part.properties.pop("plane")
        info = {"file_name": f"plane_{k}", **(images[k] if images is not None else {})}
        items.append(({**info, "id": k + 1, "plane": k}, part))
    return items


def join_planes(items: list[tuple[dict, Instances]]) -> Instances:
    """One ``Instances`` from ``read_coco``'s pairs of a stack: each image's ``plane`` (its index
    in the file when it has none) becomes ``properties["plane"]``; ``track_id`` comes back too."""
    parts = []
    for k, (info, inst) in enumerate(items):
        inst.properties["plane"] = np.full(len(inst), int(info.get("plane", k)), dtype=np.int64)
        parts.append(inst)
    return Instances.concat(parts)


def _to_instances(anns: list[dict], categories: dict[int, str]) -> Instances:
    keys = list(dict.fromkeys(k for a in anns for k in a["extra"]))
    props = {}
    for key in keys:
        col = np.empty(len(anns), dtype=object)
        for i, a in enumerate(anns):
            col[i] = a["extra"].get(key)
        props[key] = col
    return Instances(
        geometries=[a["geometry"] for a in anns],
        boxes=np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
                       ).reshape(-1, 4),
        scores=np.array([a["score"] for a in anns], dtype=np.float64),
        category_ids=np.array([a["category_id"] for a in anns], dtype=np.int64),
        categories=dict(categories),
        status=np.array([a["status"] for a in anns], dtype=object),
        properties=props,
    )


def read_coco(path: str | Path) -> list[tuple[dict, Instances]]:
    """Read a COCO dataset (or a results list) into ``(image_info, Instances)`` pairs.

    ``image_info['path']`` is the image file resolved next to the JSON (it may not exist).
    Without an ``images`` list, one image per ``image_id`` is made up (with no file).
    """
    path = Path(path)
    images, cats, anns = parse_coco(read_json(path, "COCO"), str(path))
    by_image: dict[int, list[dict]] = {}
    for ann in anns:
        by_image.setdefault(ann["image_id"], []).append(ann)
    out = []
    for img in images or [{"id": k} for k in sorted(by_image)]:
        mine = by_image.get(img["id"], [])
        categories = {**{a["category_id"]: str(a["category_id"]) for a in mine}, **cats}
        info = dict(img)
        if "file_name" in img:
            info["path"] = str(path.parent / img["file_name"])
        out.append((info, _to_instances(mine, categories or {1: "object"})))
    return out


def ground_truth(path: str | Path) -> Any:
    """A pycocotools ``COCO`` of a checked dataset, for evaluation: every image has a file name,
    height and width, every annotation a ``bbox``, ``area`` and ``iscrowd`` (filled in from its
    geometry when missing; a box-only one gets its rectangle), so COCOeval and ``annToMask``
    cannot fail on the file. ``has_masks`` says whether any annotation has a segmentation."""
    import contextlib
    import io

    from pycocotools.coco import COCO

    path = Path(path)
    data = read_json(path, "COCO")
    images, cats, anns = parse_coco(data, str(path))
    if not images:
        raise InstannoError(f"{path} has no 'images' list: evaluation needs each image's id, "
                            "file_name, height and width")
    for img in images:
        missing = [k for k in ("file_name", "height", "width") if not img.get(k)]
        if missing:
            raise InstannoError(f"{path}: image {img['id']} has no {' or '.join(missing)}; "
                                "evaluation needs them")
    dataset = {"images": images, "categories": [{"id": i, "name": n} for i, n in cats.items()]
               or [{"id": c, "name": str(c)} for c in sorted({a["category_id"] for a in anns})],
               "annotations": []}
    for k, (raw, ann) in enumerate(zip(data["annotations"], anns, strict=True), start=1):
        seg = raw.get("segmentation")
        if not seg:  # box only: its rectangle
            seg = [np.asarray(ann["geometry"].exterior.coords)[:-1].reshape(-1).tolist()]
        dataset["annotations"].append({
            "id": raw.get("id", k), "image_id": ann["image_id"], "category_id": ann["category_id"],
            "segmentation": seg, "bbox": ann["bbox"], "iscrowd": ann["iscrowd"],
            "area": float(raw.get("area", ann["geometry"].area))})
    gt = COCO()
    gt.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    gt.has_masks = any(raw.get("segmentation") for raw in data["annotations"])
    return gt


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v
