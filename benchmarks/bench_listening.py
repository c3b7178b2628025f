"""Does the matcher listen to the reference? The same image, a reference of each of two kinds.

    python benchmarks/bench_listening.py [--models DIR] [--matchers learned guarded ncc]
        [--scenes 40] [--coco-images 60] [--json out.json]

A matcher that returns the same detections whatever the reference has learned objectness, not
similarity. On images holding two kinds, each kind's reference is run on the same image; the
overlap is the share of one run's detections (score >= 0.3) that the other run also returns (box
IoU >= 0.5), averaged over both directions: low is good. ``hit`` is the share of a run's
detections that are instances of the reference's kind (box IoU >= 0.5 with one), ``cross`` the
share that are instances of the other kind. Images: ``coco128`` images with two categories (the
two with most instances; the reference of each is its median-area instance not touching the
border), and pasted scenes: copies of two objects from two different training folders on a
background from a third (``training.synthetic.paste_scene``, seeded). Training folders only,
except coco128, which is also in training: these measure listening, not accuracy on unseen data.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

SCORE = 0.3
SAME = 0.5
SCENE_FOLDERS = ["dsb2018/train", "crowdai-buildings/train", "airbus-aircraft/train", "coco128",
                 "usiigaci-phase/train", "neon-trees"]


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over both directions of the share of one set's boxes the other set also holds."""
    from napari_instanno.geometry import box_iou

    if len(a) == 0 or len(b) == 0:
        return 0.0
    iou = box_iou(a, b)
    return float(((iou.max(1) >= SAME).mean() + (iou.max(0) >= SAME).mean()) / 2)


def share(found: np.ndarray, gt: np.ndarray) -> float:
    """Share of ``found`` boxes that match a ``gt`` box (0 when nothing was found)."""
    from napari_instanno.geometry import box_iou

    if len(found) == 0 or len(gt) == 0:
        return 0.0
    return float((box_iou(found, gt).max(1) >= SAME).mean())


def coco_pairs(limit: int):
    """(image, {kind: (reference box, boxes)}) for coco128 images with two kinds."""
    from napari_instanno.training.datasets import CocoFolder, shared_folder
    from napari_instanno.training.evaluate import reference_index

    for sample in CocoFolder(shared_folder("coco128")).samples:
        inst = sample.instances
        cats, counts = np.unique(inst.category_ids, return_counts=True)
        if len(cats) < 2:
            continue
        rgb = sample.load_rgb01()
        kinds = {}
        for c in cats[np.argsort(-counts, kind="stable")]:
            idx = np.flatnonzero(inst.category_ids == c)
            ref = reference_index(inst.boxes[idx], inst.areas[idx], rgb.shape[:2])
            if ref is not None and min(inst.boxes[idx[ref]][2:] - inst.boxes[idx[ref]][:2]) >= 8:
                kinds[int(c)] = (inst.boxes[idx[ref]], inst.boxes[idx])
            if len(kinds) == 2:
                break
        if len(kinds) == 2:
            yield rgb, kinds
            limit -= 1
            if limit <= 0:
                return


def pasted_pairs(n: int, seed: int = 0):
    """(image, {kind: (reference box, boxes)}) for scenes of two pasted kinds."""
    from napari_instanno.geometry import box_iou
    from napari_instanno.models.matcher import MatcherConfig
    from napari_instanno.training.datasets import shared_folder
    from napari_instanno.training.episodes import EpisodeConfig, EpisodeSampler
    from napari_instanno.training.synthetic import paste_scene

    sampler = EpisodeSampler({f: shared_folder(f) for f in SCENE_FOLDERS}, MatcherConfig())
    cfg = EpisodeConfig(crop=384, copies=(3, 8), max_overlap=0.0)
    rng = np.random.default_rng(seed)
    made = 0
    while made < n:
        (na, _, _, a), (nb, _, _, b) = sampler._cutout(rng), sampler._cutout(rng)
        rest = [f for f in SCENE_FOLDERS if f not in (na, nb)]
        if na == nb or not rest:
            continue
        bg = sampler._background(rest[rng.integers(len(rest))], rng)
        side = float(rng.uniform(30, 60))
        first = paste_scene(bg, a, side, cfg, rng)
        second = paste_scene(first.image, b, side, cfg, rng)
        # kind a's copies that kind b's covered are no longer visible: drop them
        keep = (box_iou(first.boxes, second.copies).max(1) < 0.1 if len(second.copies)
                else np.ones(len(first.boxes), bool))
        if keep.sum() < 2 or len(second.boxes) < 2 or not keep[first.ref]:
            continue
        rgb = second.image.permute(1, 2, 0).numpy()
        kinds = {0: (first.boxes[first.ref], first.boxes[keep]),
                 1: (second.boxes[second.ref], second.boxes)}
        made += 1
        yield np.ascontiguousarray(rgb, dtype=np.float32), kinds


def run(matcher: str, pairs: list) -> dict:
    from napari_instanno.inference.annotator import Annotator

    ann = Annotator(matcher=matcher, outliner="ellipse", device="cpu")
    overlaps, hits, cross = [], [], []
    for rgb, kinds in pairs:
        ann.set_image(rgb)
        found = {}
        for k, (ref, _) in kinds.items():
            inst = ann.find_similar(ref, score_threshold=SCORE)
            found[k] = inst.boxes
        (ka, (_, ga)), (kb, (_, gb)) = kinds.items()
        overlaps.append(overlap(found[ka], found[kb]))
        hits += [share(found[ka], ga), share(found[kb], gb)]
        cross += [share(found[ka], gb), share(found[kb], ga)]
    return {"matcher": matcher, "images": len(pairs), "overlap": round(float(np.mean(overlaps)), 3),
            "hit": round(float(np.mean(hits)), 3), "cross": round(float(np.mean(cross)), 3)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=None, help="folder of weights (INSTANNO_MODELS)")
    parser.add_argument("--matchers", nargs="+", default=["learned", "guarded", "ncc"])
    parser.add_argument("--scenes", type=int, default=40)
    parser.add_argument("--coco-images", type=int, default=60)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.models:
        os.environ["INSTANNO_MODELS"] = str(Path(args.models).resolve())
    import torch

    torch.set_num_threads(1)
    sets = {"coco128 (two categories)": list(coco_pairs(args.coco_images)),
            "pasted scenes (two kinds)": list(pasted_pairs(args.scenes))}
    rows = []
    for name, pairs in sets.items():
        for m in args.matchers:
            rows.append({"set": name, **run(m, pairs)})
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
