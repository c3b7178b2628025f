"""The evaluation protocols of ``instanno evaluate``.

* ``oneshot``: per image, the reference is the median-area instance not touching the border; every
  prediction is scored with pycocotools COCOeval (bbox and segm AP, AP50, AP75; maxDets 1000).
* ``box2poly``: every ground-truth box, each side jittered by up to ±10 % of its extent (seeded),
  is outlined; mean IoU, boundary F-score at 1 px and 2 px, and the median vertex count after
  Douglas-Peucker simplification at ``SIMPLIFY_TOLERANCE`` px.

The ground truth is read and checked by ``io.coco`` before any model is loaded (a malformed file is
one ``InstannoError``), and handed to pycocotools completed (boxes, areas, box-only instances as
rectangles), so COCOeval never sees a field it could crash on. An image whose size differs from
its ``height`` / ``width`` in the file gets a warning, and predictions are encoded at the file's
size so they still line up with the ground truth.
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..geometry import boundary_f_score, mask_iou, polygon_to_mask, simplify
from ..inference.annotator import Annotator
from ..inference.references import MAX_IMAGE_SHARE, image_share
from ..io.atomic import write_json_atomic
from ..io.coco import ground_truth
from .datasets import CocoFolder, Sample

SIMPLIFY_TOLERANCE = 0.7


def reference_index(boxes: np.ndarray, areas: np.ndarray, shape: tuple[int, int]) -> int | None:
    """Index of the median-area instance whose box does not touch the image border and leaves
    room for others (at most ``references.MAX_IMAGE_SHARE`` of the image, as ``find_similar``
    requires)."""
    h, w = shape
    inner = (boxes[:, 0] > 0) & (boxes[:, 1] > 0) & (boxes[:, 2] < w) & (boxes[:, 3] < h)
    inner &= image_share(boxes, shape) <= MAX_IMAGE_SHARE
    idx = np.flatnonzero(inner)
    if len(idx) == 0:
        return None
    order = idx[np.argsort(areas[idx], kind="stable")]
    return int(order[(len(order) - 1) // 2])


def checked_size(sample: Sample, shape: tuple[int, int]) -> tuple[int, int]:
    """The image size the ground truth is in: its ``height`` / ``width`` (a warning when the image
    file's ``shape`` differs, as predictions then need the file's size to line up)."""
    info = sample.info
    size = (int(info.get("height") or shape[0]), int(info.get("width") or shape[1]))
    if size != tuple(shape):
        warnings.warn(f"{info.get('file_name', 'image ' + str(info.get('id')))} is {shape[0]} x "
                      f"{shape[1]} pixels but the annotations say {size[0]} x {size[1]} (height x "
                      "width); fix the file's height and width", UserWarning, stacklevel=2)
    return size


def _fit(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``mask`` cropped or zero-padded to ``shape``."""
    out = np.zeros(shape, dtype=bool)
    h, w = min(shape[0], mask.shape[0]), min(shape[1], mask.shape[1])
    out[:h, :w] = mask[:h, :w]
    return out


def save_results(path: str | Path, results: dict[str, Any] | list[dict[str, Any]],
                 overwrite: bool = False) -> Path:
    """Write evaluation results as strict JSON, atomically, replacing a file only with
    ``overwrite`` (what ``instanno evaluate --json`` writes)."""
    return write_json_atomic(path, results, overwrite=overwrite)


def _coco_eval(gt: Any, results: list[dict], image_ids: list[int], iou_type: str) -> dict:
    from pycocotools.cocoeval import COCOeval

    if not results:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, iou_type)
        ev.params.imgIds = image_ids
        ev.params.maxDets = [1, 100, 1000]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"AP": float(ev.stats[0]), "AP50": float(ev.stats[1]), "AP75": float(ev.stats[2])}


def evaluate_oneshot(folder: str | Path, matcher: str | None = None, outliner: str | None = None,
                     max_images: int | None = None, device: str | None = None,
                     segm: bool = True, models: str | Path | None = None) -> dict[str, Any]:
    """One-shot episodes on a COCO folder; returns bbox (and segm) AP, AP50, AP75.

    A folder whose ground truth is boxes only (no segmentation) gets bbox metrics only.
    """
    data = CocoFolder(folder)
    gt = ground_truth(data.annotations)
    ann = Annotator(matcher=matcher, outliner=outliner if segm else "ellipse", device=device,
                    models=models)
    segm = segm and gt.has_masks
    results, image_ids, t0 = [], [], time.perf_counter()
    for sample in data.samples[:max_images]:
        inst = sample.instances
        rgb = sample.load_rgb01()
        size = checked_size(sample, rgb.shape[:2])
        ref = reference_index(inst.boxes, inst.areas, rgb.shape[:2])
        if ref is None:
            continue
        ann.set_image(rgb)
        found = ann.find_similar(inst.boxes[ref], category="object")
        found.category_ids[:] = int(inst.category_ids[ref])
        image_ids.append(int(sample.info["id"]))
        results += found.to_coco_results(image_ids[-1], shape=size)
    out: dict[str, Any] = {"images": len(image_ids), "matcher": ann.matcher.name,
                           "outliner": ann.outliner.name}
    out.update({f"bbox_{k}": v for k, v in _coco_eval(gt, results, image_ids, "bbox").items()})
    if segm:
        out.update({f"segm_{k}": v for k, v in _coco_eval(gt, results, image_ids, "segm").items()})
    out["seconds_per_image"] = (time.perf_counter() - t0) / max(len(image_ids), 1)
    return out


def jitter_boxes(boxes: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Move each side of each (x0, y0, x1, y1) box by up to ±``fraction`` of the box's extent."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    size = np.concatenate([b[:, 2:] - b[:, :2]] * 2, axis=1)
    out = b + rng.uniform(-fraction, fraction, b.shape) * size
    out[:, 2:] = np.maximum(out[:, 2:], out[:, :2] + 1.0)
    return out


def evaluate_box2poly(folder: str | Path, outliner: str | None = None, jitter: float = 0.1,
                      seed: int = 0, max_images: int | None = None, device: str | None = None,
                      models: str | Path | None = None) -> dict[str, Any]:
    """Outline every jittered ground-truth box; mean IoU, boundary F@1/2 px, median vertices."""
    data = CocoFolder(folder)
    gt = ground_truth(data.annotations)
    ann = Annotator(matcher="ncc", outliner=outliner, device=device, models=models)
    ann.outliner.tolerance = 0.0  # metrics use the full polygon
    rng = np.random.default_rng(seed)
    ious, f1, f2, nverts = [], [], [], []
    t0 = time.perf_counter()
    for sample in data.samples[:max_images]:
        anns = gt.loadAnns(gt.getAnnIds(imgIds=[sample.info["id"]], iscrowd=None))
        if not anns:
            continue
        rgb = sample.load_rgb01()
        h, w = rgb.shape[:2]
        checked_size(sample, (h, w))
        gt_boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                              a["bbox"][1] + a["bbox"][3]] for a in anns])
        boxes = jitter_boxes(gt_boxes, jitter, rng)
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        valid = (boxes[:, 2] - boxes[:, 0] >= 1) & (boxes[:, 3] - boxes[:, 1] >= 1)
        ann.set_image(rgb)
        polys = ann.boxes_to_polygons(boxes[valid])
        for a, poly in zip([a for a, v in zip(anns, valid) if v], polys):
            g = _fit(gt.annToMask(a).astype(bool), (h, w))
            x, y, bw, bh = a["bbox"]
            m = 3
            r0, c0 = max(int(min(y, poly[:, 0].min())) - m, 0), max(int(min(x, poly[:, 1].min())) - m, 0)
            r1 = min(int(max(y + bh, poly[:, 0].max())) + m, h)
            c1 = min(int(max(x + bw, poly[:, 1].max())) + m, w)
            pm = polygon_to_mask(poly - [r0, c0], (r1 - r0, c1 - c0))
            gm = g[r0:r1, c0:c1]
            ious.append(mask_iou(pm, gm))
            f1.append(boundary_f_score(pm, gm, 1.0))
            f2.append(boundary_f_score(pm, gm, 2.0))
            nverts.append(len(simplify([poly], SIMPLIFY_TOLERANCE)[0]))
        # instances whose jittered box fell outside count as misses
        ious += [0.0] * int((~valid).sum())
    n = max(len(ious), 1)
    return {
        "instances": len(ious), "outliner": ann.outliner.name,
        "mIoU": float(np.mean(ious)) if ious else 0.0,
        "F1px": float(np.mean(f1)) if f1 else 0.0, "F2px": float(np.mean(f2)) if f2 else 0.0,
        "median_vertices": float(np.median(nverts)) if nverts else 0.0,
        "ms_per_instance": 1000 * (time.perf_counter() - t0) / n,
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of metric dicts (same keys in every row)."""
    if not rows:
        return ""
    keys = list(rows[0])
    fmt = [f"{v:.3f}" if isinstance(v, float) else str(v) for r in rows for v in r.values()]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for i in range(len(rows)):
        lines.append("| " + " | ".join(fmt[i * len(keys):(i + 1) * len(keys)]) + " |")
    return "\n".join(lines)
