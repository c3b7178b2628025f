"""Checking a parsed COCO file before anything is computed from it (``parse_coco``).

Types of every field, finite coordinates within ``MAX_COORD``, polygons of at least 3 vertices,
RLE strings well formed and matching the size of their image: a hostile file gives one
``InstannoError`` naming the file, the annotation and what is wrong, and pycocotools is never
handed something that could crash it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import shapely
from shapely.affinity import translate
from shapely.geometry import MultiPolygon, Polygon

from ..errors import InstannoError
from ..geometry import Geometry, make_geometry, mask_to_geometry, parts_of
from ..instances import STATUSES

MAX_COORD = 1e6  # |x|, |y| limit in pixels: beyond it a file is taken as corrupt
MAX_SIDE = 1_000_000  # image height / width limit
MAX_RLE_PIXELS = 1 << 28  # an RLE mask decodes to one byte per pixel
STANDARD_KEYS = {"id", "image_id", "category_id", "segmentation", "area", "bbox", "iscrowd",
                 "score", "status", "instanno_rings"}


class _Bad(Exception):
    """What is wrong with one field; the caller adds the file and the annotation."""


def _int(v: Any, what: str, low: int = -(1 << 62), high: int = 1 << 62) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
        raise _Bad(f"{what} must be an integer between {low} and {high}, not {_show(v)}")
    return v


def _number(v: Any, what: str, limit: float = math.inf) -> float:
    try:
        f = math.nan if isinstance(v, bool) or not isinstance(v, int | float) else float(v)
    except OverflowError:  # an integer beyond any float
        f = math.nan
    if not math.isfinite(f) or abs(f) > limit:
        bound = "a finite number" if limit == math.inf else f"a number within ±{limit:g}"
        raise _Bad(f"{what} must be {bound}, not {_show(v)}")
    return f


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _flat_ring(v: Any, what: str) -> np.ndarray:
    """A flat [x0, y0, ...] list as an (N, 2) (x, y) array, checked."""
    if not isinstance(v, list):
        raise _Bad(f"{what} must be a list of numbers, not {_show(v)}")
    if len(v) % 2 or len(v) < 6:
        raise _Bad(f"{what} has {len(v)} numbers; a polygon needs an even count of at least 6 "
                   "(3 vertices)")
    try:  # one vectorised check; the slow one below only to say which value is wrong
        xy = (np.asarray(v, dtype=np.float64) if all(type(x) in (int, float) for x in v)
              else np.full(1, np.nan))
    except OverflowError:
        xy = np.full(1, np.nan)
    if not (np.abs(xy) <= MAX_COORD).all():
        for x in v:
            _number(x, f"{what}'s coordinates", MAX_COORD)
    return xy.reshape(-1, 2)


def _parts(parts: list[Polygon]) -> Geometry:
    """Parts as one geometry; overlapping valid parts (COCO paints their union) are merged."""
    geom = make_geometry(parts)
    if isinstance(geom, MultiPolygon) and not geom.is_valid and all(p.is_valid for p in parts):
        geom = make_geometry(parts_of(shapely.union_all(parts)))
    return geom


def _rle_counts(counts: str, what: str) -> list[int]:
    """The run lengths of a compressed COCO RLE string, checked as pycocotools would not."""
    out: list[int] = []
    p, n = 0, len(counts)
    while p < n:
        x = k = 0
        more = True
        while more:
            if p >= n or k >= 7:
                raise _Bad(f"{what} is a truncated or corrupt RLE string")
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                raise _Bad(f"{what} holds {counts[p]!r}, which is not an RLE character")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        if not 0 <= x < 1 << 32:
            raise _Bad(f"{what} decodes to a negative or huge run length; the RLE is corrupt")
        out.append(x)
    return out


def _rle_geometry(seg: dict, size: tuple[int, int]) -> Geometry | None:
    """The geometry of a checked RLE (None when its mask is empty)."""
    from pycocotools import mask as mask_utils

    h, w = size
    rle = seg
    if isinstance(seg["counts"], list):
        rle = mask_utils.frPyObjects(seg, h, w)
    else:
        rle = {"size": [h, w], "counts": seg["counts"].encode("ascii")}
    mask = mask_utils.decode(rle)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return None
    r0, c0 = rows[0], cols[0]
    return translate(mask_to_geometry(mask[r0:rows[-1] + 1, c0:cols[-1] + 1]), c0, r0)


def _check_rle(seg: dict, image_size: tuple[int, int] | None) -> tuple[int, int]:
    """Check an RLE dict; returns its (height, width)."""
    size, counts = seg.get("size"), seg.get("counts")
    if not isinstance(size, list) or len(size) != 2:
        raise _Bad(f"RLE 'size' must be [height, width], not {_show(size)}")
    h, w = (_int(v, "RLE 'size'", 1, MAX_SIDE) for v in size)
    if image_size is not None and (h, w) != image_size:
        raise _Bad(f"RLE 'size' {[h, w]} does not match its image's [height, width] "
                   f"{list(image_size)}")
    if h * w > MAX_RLE_PIXELS:
        raise _Bad(f"RLE mask of {h} x {w} is too large to decode (limit {MAX_RLE_PIXELS} pixels)")
    if isinstance(counts, str):
        runs = _rle_counts(counts, "RLE 'counts'")
    elif isinstance(counts, list):
        runs = [_int(v, "RLE 'counts'", 0, (1 << 32) - 1) for v in counts]
    else:
        raise _Bad(f"RLE 'counts' must be a string or a list of integers, not {_show(counts)}")
    if sum(runs) != h * w:
        raise _Bad(f"RLE 'counts' cover {sum(runs)} pixels, not the {h} x {w} of its 'size'")
    return h, w


def _check_extent(seg: Any, image_size: tuple[int, int]) -> None:
    """Polygon coordinates may leave the image, but by no more than its size: pycocotools'
    rasteriser allocates memory in proportion to the outline's length."""
    if not isinstance(seg, list):
        return
    h, w = image_size
    for k, ring in enumerate(seg):
        xy = _flat_ring(ring, f"segmentation polygon {k}")
        if (xy < [-w, -h]).any() or (xy > [2 * w, 2 * h]).any():
            raise _Bad(f"segmentation polygon {k} reaches far outside its {h} x {w} image "
                       f"(x {xy[:, 0].min():g}..{xy[:, 0].max():g}, y {xy[:, 1].min():g}.."
                       f"{xy[:, 1].max():g}); are the coordinates in another unit?")


def _geometry(ann: dict, image_size: tuple[int, int] | None) -> Geometry | None:
    """The checked geometry of an annotation (None when it has only a box)."""
    seg = ann.get("segmentation")
    geom = None
    if image_size is not None:
        _check_extent(seg, image_size)
    if isinstance(seg, list):
        parts = [Polygon(_flat_ring(s, f"segmentation polygon {k}")) for k, s in enumerate(seg)]
        geom = _parts(parts) if parts else None
    elif isinstance(seg, dict):
        geom = _rle_geometry(seg, _check_rle(seg, image_size))
        if geom is None:
            raise _Bad("its RLE mask is empty")
    elif seg is not None:
        raise _Bad(f"'segmentation' must be a list of polygons or an RLE dict, not {_show(seg)}")
    rings = ann.get("instanno_rings")
    if rings is not None:
        if not isinstance(rings, list) or not rings or not all(isinstance(p, list) and p
                                                              for p in rings):
            raise _Bad("'instanno_rings' must be a non-empty list of parts, each a list of rings")
        geom = make_geometry([
            Polygon(_flat_ring(p[0], f"instanno_rings part {k} exterior"),
                    [_flat_ring(r, f"instanno_rings part {k} hole {j}") for j, r in enumerate(p[1:])])
            for k, p in enumerate(rings)])
    return geom


def _bbox(v: Any) -> list[float]:
    if not isinstance(v, list) or len(v) != 4:
        raise _Bad(f"'bbox' must be [x, y, width, height], not {_show(v)}")
    x, y, w, h = (_number(c, "'bbox'", MAX_COORD) for c in v)
    if w < 0 or h < 0:
        raise _Bad(f"'bbox' has a negative width or height: {v}")
    return [x, y, w, h]


def _annotation(ann: Any, image_size: tuple[int, int] | None) -> dict[str, Any]:
    """A checked, completed annotation: its geometry, xyxy box, score, category and status."""
    if not isinstance(ann, dict):
        raise _Bad(f"must be an object, not {_show(ann)}")
    geom = _geometry(ann, image_size)
    bbox = _bbox(ann["bbox"]) if "bbox" in ann else None
    if geom is None:
        if bbox is None:
            raise _Bad("has neither a segmentation nor a 'bbox'")
        x, y, w, h = bbox
        geom = Polygon([(x, y), (x + w, y), (x + w, y + h), (x, y + h)])
    if bbox is None:
        x0, y0, x1, y1 = geom.bounds
        bbox = [x0, y0, x1 - x0, y1 - y0]
    status = ann.get("status", "proposed")
    if status not in STATUSES:
        raise _Bad(f"'status' must be one of {STATUSES}, not {_show(status)}")
    if "area" in ann:
        _number(ann["area"], "'area'")
    return {"geometry": geom, "bbox": bbox, "status": status,
            "score": _number(ann.get("score", 1.0), "'score'"),
            "category_id": _int(ann.get("category_id", 1), "'category_id'"),
            "image_id": _int(ann.get("image_id", 1), "'image_id'"),
            "iscrowd": _int(ann.get("iscrowd", 0), "'iscrowd'", 0, 1),
            "extra": {k: v for k, v in ann.items() if k not in STANDARD_KEYS}}


def _images(data: dict) -> list[dict]:
    images = data.get("images")
    if images is None:
        return []
    if not isinstance(images, list):
        raise _Bad(f"'images' must be a list, not {_show(images)}")
    for k, img in enumerate(images):
        if not isinstance(img, dict):
            raise _Bad(f"image {k} must be an object, not {_show(img)}")
        _int(img.get("id"), f"image {k}'s 'id'")
        for key in ("height", "width"):
            if key in img:
                _int(img[key], f"image {img['id']}'s {key!r}", 0, MAX_SIDE)
        if "file_name" in img and not isinstance(img["file_name"], str):
            raise _Bad(f"image {img['id']}'s 'file_name' must be a string")
        if "plane" in img:
            _int(img["plane"], f"image {img['id']}'s 'plane'", 0)
    ids = [img["id"] for img in images]
    if len(set(ids)) != len(ids):
        raise _Bad("'images' has two images with the same 'id'")
    return images


def _categories(data: dict) -> dict[int, str]:
    cats = data.get("categories") or []
    if not isinstance(cats, list):
        raise _Bad(f"'categories' must be a list, not {_show(cats)}")
    out: dict[int, str] = {}
    for k, c in enumerate(cats):
        if not isinstance(c, dict) or not isinstance(c.get("name"), str):
            raise _Bad(f"category {k} must be an object with an integer 'id' and a string 'name'")
        cid = _int(c.get("id"), f"category {k}'s 'id'")
        if cid in out:
            raise _Bad(f"two categories have the id {cid}")
        out[cid] = c["name"]
    return out


def parse_coco(data: Any, source: str = "COCO file") -> tuple[list[dict], dict[int, str], list[dict]]:
    """Check a parsed COCO dataset (or results list): (images, categories, checked annotations).

    Every failure is an ``InstannoError`` naming ``source``, the annotation and what is wrong.
    """
    if isinstance(data, list):  # results list
        data = {"annotations": data}
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise InstannoError(f"{source} is not a COCO file: it has no 'annotations' list")
    try:
        images = _images(data)
        categories = _categories(data)
    except _Bad as err:
        raise InstannoError(f"{source}: {err}") from None
    sizes = {img["id"]: (img.get("height", 0), img.get("width", 0)) for img in images}
    anns, seen = [], set()
    for k, ann in enumerate(data["annotations"]):
        has_id = isinstance(ann, dict) and "id" in ann
        name = f"annotation {_show(ann['id'])}" if has_id else f"annotation #{k}"
        try:
            if has_id:
                if _int(ann["id"], "'id'") in seen:
                    raise _Bad("its 'id' is used twice")
                seen.add(ann["id"])
            image_id = _int(ann.get("image_id", 1), "'image_id'") if isinstance(ann, dict) else 1
            if images and image_id not in sizes:
                raise _Bad(f"refers to image {_show(image_id)}, which is not in 'images'")
            h, w = sizes.get(image_id, (0, 0))
            anns.append(_annotation(ann, (h, w) if h > 0 and w > 0 else None))
        except _Bad as err:
            raise InstannoError(f"{source}: {name} {err}") from None
        except (ValueError, TypeError, shapely.errors.GEOSException) as err:  # shapely on odd rings
            raise InstannoError(f"{source}: {name} has a malformed geometry ({err})") from None
    return images, categories, anns
