"""A simulated user correcting the matcher: does it learn from a few corrections?

Per image, round 0 is the ``evaluate`` protocol's one reference (the median-area instance off the
border). In each later round the simulated user rejects the highest-scoring shown false positive
(score >= 0.3, box IoU < 0.5 with every ground-truth instance), which becomes a negative, and adds
the largest missed instance (no shown detection with IoU >= 0.5; within the references' size
range) as a reference; the tool re-runs with all of them. Once every instance is found the user
stops (no more rejections: the issue counts actions until every instance is found or drawn).
Scores are on the held-out instances: the ground truth never given as a reference in the run (the
same instances in every round), with detections matching any of those references dropped, so
re-finding them earns nothing. Actions per instance: the first reference, every rejection and
addition, and the instances still missed after the last round drawn by hand, over the instances
(drawing every instance with box -> polygon is 1 action per instance).

    python benchmarks/bench_corrections.py --data ../shared/data --max-images 10 --json out.json

``--user no-negatives`` / ``no-additions`` take one kind of correction away (``simulate``), to
see what each kind is worth.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from pathlib import Path

import numpy as np

from napari_instanno.geometry import box_iou
from napari_instanno.inference.annotator import Annotator
from napari_instanno.inference.precision import PRECISIONS
from napari_instanno.inference.references import MAX_SIZE_RATIO, side
from napari_instanno.training.datasets import CocoFolder
from napari_instanno.training.evaluate import reference_index

SHOWN = 0.3  # what the widget shows by default
FOLDERS = ("airbus-aircraft/val", "crowdai-buildings/val", "dsb2018/val", "usiigaci-phase/val")
METHODS = {"learned": ("learned", False), "learned+adapt": ("learned", True),  # the default matcher
           "guarded": ("guarded", False), "ncc": ("ncc", False)}
REPORT_ROUNDS = (0, 1, 3, 5)
USERS = ("both", "no-negatives", "no-additions")  # ``simulate``


def matched(dets: np.ndarray, gt: np.ndarray, iou: float = 0.5) -> np.ndarray:
    """Whether each ground-truth box has a detection with IoU >= ``iou``."""
    if not len(dets) or not len(gt):
        return np.zeros(len(gt), dtype=bool)
    return box_iou(gt, dets).max(1) >= iou


def f1_at_50(gts: list[np.ndarray], dets: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """F1 of the shown detections (score >= SHOWN), one-to-one greedy matching at IoU 0.5."""
    tp = fp = fn = 0
    for gt, (boxes, scores) in zip(gts, dets, strict=True):
        boxes = boxes[scores >= SHOWN]
        free = np.ones(len(gt), dtype=bool)
        iou = box_iou(boxes, gt) if len(boxes) and len(gt) else np.zeros((len(boxes), len(gt)))
        for i in range(len(boxes)):
            cand = np.where(free, iou[i], 0.0)
            if len(cand) and cand.max() >= 0.5:
                free[int(cand.argmax())] = False
                tp += 1
            else:
                fp += 1
        fn += int(free.sum())
    return 2 * tp / max(2 * tp + fp + fn, 1)


def ap50(gts: list[np.ndarray], dets: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """COCO bbox AP at IoU 0.5 (pycocotools, maxDets 1000)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, anns, results = [], [], []
    for k, (gt, (boxes, scores)) in enumerate(zip(gts, dets, strict=True)):
        images.append({"id": k + 1, "width": 1, "height": 1})
        for b in gt:
            anns.append({"id": len(anns) + 1, "image_id": k + 1, "category_id": 1, "iscrowd": 0,
                         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                         "area": float((b[2] - b[0]) * (b[3] - b[1]))})
        results += [{"image_id": k + 1, "category_id": 1, "score": float(s),
                     "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]} for b, s in zip(boxes, scores)]
    if not anns or not results:
        return 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "x"}]}
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.params.maxDets = [1, 100, 1000]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[1])


def simulate(ann: Annotator, rgb: np.ndarray, gt: np.ndarray, ref: int, rounds: int, adapt: bool,
             user: str = "both") -> dict:
    """One image's rounds: detections after each, the references and negatives, the actions.
    ``user`` (``USERS``): "both" is the issue's user; "no-negatives" rejects as it does (the
    rejected stay hidden) but the tool is not given them as negatives; "no-additions" never adds
    a reference (the misses are drawn by hand at the end)."""
    ann.set_image(rgb)
    refs, negs = [ref], []
    out = {"dets": [], "adapt_s": []}
    for r in range(rounds + 1):
        told = negs if user != "no-negatives" else []
        inst = ann.find_similar(gt[refs], np.array(told).reshape(-1, 4), adapt=adapt)
        boxes, scores = np.asarray(inst.boxes).reshape(-1, 4), np.asarray(inst.scores)
        if negs:  # what the user rejected stays rejected
            keep = box_iou(boxes, np.array(negs)).max(1) < 0.5 if len(boxes) else []
            boxes, scores = boxes[keep], scores[keep]
        out["dets"].append((boxes, scores))
        out["adapt_s"].append(ann.last_adaptation.get("seconds", np.nan))
        if r == rounds:
            break
        shown = boxes[scores >= SHOWN]
        found = matched(shown, gt)
        found[refs] = True
        if found.all():  # nothing left to find: the user stops correcting
            out["dets"] += [out["dets"][-1]] * (rounds - r)
            break
        if len(shown):
            false = ~matched(gt, shown) if len(gt) else np.ones(len(shown), dtype=bool)
            if false.any():
                worst = np.flatnonzero(false)[np.argmax(scores[scores >= SHOWN][false])]
                negs.append(shown[worst].tolist())
        sides = side(gt)
        lo, hi = sides[refs].max() / MAX_SIZE_RATIO, sides[refs].min() * MAX_SIZE_RATIO
        missed = np.flatnonzero(~found & (sides >= lo) & (sides <= hi))
        if len(missed) and user != "no-additions":
            refs.append(int(missed[np.argmax(sides[missed])]))
    boxes, scores = out["dets"][-1]
    found = matched(boxes[scores >= SHOWN], gt)
    found[refs] = True
    out.update(refs=refs, negs=negs, actions=len(refs) + len(negs) + int((~found).sum()))
    return out


def run_folder(folder: Path, method: str, rounds: int, max_images: int | None,
               device: str, models: str | None = None, user: str = "both",
               precision: str = "auto") -> dict:
    matcher, adapt = METHODS[method]
    ann = Annotator(matcher=matcher, outliner="ellipse", device=device, models=models,
                    precision=precision)
    runs, t0 = [], time.perf_counter()
    for sample in CocoFolder(folder).samples[:max_images]:
        inst = sample.instances
        rgb = sample.load_rgb01()
        ref = reference_index(inst.boxes, inst.areas, rgb.shape[:2])
        if ref is None:
            continue
        runs.append(simulate(ann, rgb, np.asarray(inst.boxes, float), ref, rounds, adapt, user))
        runs[-1]["n"] = len(inst)
        runs[-1]["gt"] = np.asarray(inst.boxes, float)
    row: dict = {"folder": str(folder), "method": method, "user": user, "precision": precision,
                 "images": len(runs),
                 "instances": int(sum(r["n"] for r in runs))}
    for r in REPORT_ROUNDS:
        if r > rounds:
            continue
        gts, dets = [], []
        for run in runs:
            held = np.setdiff1d(np.arange(run["n"]), run["refs"])
            boxes, scores = run["dets"][r]
            given = run["gt"][run["refs"]]
            keep = box_iou(boxes, given).max(1) < 0.5 if len(boxes) else np.zeros(0, bool)
            gts.append(run["gt"][held])
            dets.append((boxes[keep], scores[keep]))
        row[f"AP50_r{r}"] = ap50(gts, dets)
        row[f"F1_r{r}"] = f1_at_50(gts, dets)
    row["actions_per_instance"] = sum(r["actions"] for r in runs) / max(row["instances"], 1)
    secs = [s for r in runs for s in r["adapt_s"] if np.isfinite(s)]
    row["adapt_seconds_mean"] = float(np.mean(secs)) if secs else None
    row["adapt_seconds_max"] = float(np.max(secs)) if secs else None
    row["seconds"] = time.perf_counter() - t0
    return row


def adapt_timing(device: str, repeats: int = 3) -> dict:
    """Seconds that adaptation adds on a 1024² image (the nuclei sample tiled 4 x 4), with 3
    positives and 2 negatives, features already cached (as after a first run)."""
    from napari_instanno.samples import nuclei_sample

    image, ref = nuclei_sample()
    big = np.tile(image, (4, 4) + (1,) * (image.ndim - 2))
    ann = Annotator(matcher="learned", outliner="ellipse", device=device).set_image(big)
    first = ann.find_similar(ref, score_threshold=SHOWN)
    pos, neg = [ref, *first.boxes[[5, 9]]], first.boxes[[-1, -2]]
    out = []
    for _ in range(repeats):
        ann.find_similar(pos, neg, score_threshold=SHOWN, adapt=True)
        out.append(ann.last_adaptation["seconds"])
    return {"image": list(big.shape[:2]), "adapt_seconds": out}


def table(rows: list[dict]) -> str:
    head = ("| folder | method | user | images | AP50 r0 / r1 / r3 / r5 | F1@50 r0 / r1 / r3 / r5 "
            "| actions / instance | adapt s (mean / max) |")
    lines = [head, "|" + "---|" * 8]
    for row in rows:
        ap = " / ".join(f"{row[f'AP50_r{r}']:.3f}" for r in REPORT_ROUNDS if f"AP50_r{r}" in row)
        f1 = " / ".join(f"{row[f'F1_r{r}']:.3f}" for r in REPORT_ROUNDS if f"F1_r{r}" in row)
        ad = (f"{row['adapt_seconds_mean']:.2f} / {row['adapt_seconds_max']:.2f}"
              if row["adapt_seconds_mean"] is not None else "-")
        lines.append(f"| {row['folder']} | {row['method']} | {row['user']} | {row['images']} "
                     f"| {ap} | {f1} "
                     f"| {row['actions_per_instance']:.2f} | {ad} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--folders", nargs="+", default=list(FOLDERS))
    p.add_argument("--methods", nargs="+", default=["learned", "learned+adapt", "ncc"],
                   choices=list(METHODS))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--max-images", type=int, default=None, help="first N images of each folder")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="also write the rows here")
    p.add_argument("--pooling", choices=["mean", "max", "looks", "blend"], default=None,
                   help="how several positives' scores combine (default: references.POOLING)")
    p.add_argument("--models", default=None, help="a model folder instead of the shipped weights")
    p.add_argument("--user", choices=USERS, default="both",
                   help="both: the issue's user; no-negatives: rejections hidden but not given "
                        "to the tool; no-additions: no reference added")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="the learned models' precision (float32: no int8 layers either)")
    p.add_argument("--adapt-timing", action="store_true",
                   help="only time adaptation on a 1024x1024 image")
    a = p.parse_args()
    import torch

    torch.set_num_threads(1)
    if a.pooling:
        from napari_instanno.inference import references

        references.POOLING = a.pooling
    if a.adapt_timing:
        print(json.dumps(adapt_timing(a.device)))
        return
    rows = []
    for folder in a.folders:
        for method in a.methods:
            rows.append(run_folder(Path(a.data) / folder, method, a.rounds, a.max_images,
                                   a.device, a.models, a.user, a.precision))
            rows[-1]["folder"] = folder
            print(json.dumps(rows[-1]), flush=True)
            if a.json:
                Path(a.json).write_text(json.dumps(rows, indent=1))
    print(table(rows))


if __name__ == "__main__":
    main()
