"""Where ``Annotator.find_similar`` spends its time: cProfile of one dsb2018/val image.

The reference is the evaluate protocol's median-area instance (``training.evaluate``); "new image"
is ``set_image`` + ``find_similar`` on it, "new reference" another instance of the same image
(three places up the area order) on the cached features. Model loading is timed too.

    OMP_NUM_THREADS=1 python benchmarks/profile_find_similar.py --image-id 518 --threads 1
    ... --outline-threshold 0.3     # what the widget asks since #12
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import numpy as np

PHASES = {  # label -> (file suffix, function name) whose cumulative time is reported
    "matcher: backbone features": ("learned_matcher.py", "_compute_features"),
    "matcher: reference + guard": ("guard.py", "embed_reference"),
    "matcher: heads + decode": ("matcher.py", "detect"),
    "outliner: all": ("learned_outliner.py", "outline"),
    "outliner: crops (roi_align)": ("contour.py", "crop"),
    "outliner: crop backbone + fusion": ("contour.py", "features"),
    "outliner: snake iterations": ("contour.py", "evolve"),
    "outliner: simplify": ("geometry.py", "simplify"),
}


def phases(prof: cProfile.Profile) -> dict[str, float]:
    stats = pstats.Stats(prof).stats
    out = dict.fromkeys(PHASES, 0.0)
    for (path, _, name), (_, _, _, cum, _) in stats.items():
        for label, (suffix, fn) in PHASES.items():
            if path.endswith(suffix) and name == fn:
                out[label] += cum
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--folder", default="../shared/data/dsb2018/val")
    p.add_argument("--image-id", type=int, default=518)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--matcher", default=None)
    p.add_argument("--outliner", default=None)
    p.add_argument("--top", type=int, default=0, help="also print the top N cumulative entries")
    p.add_argument("--outline-threshold", type=float, default=None,
                   help="as the widget asks: outline only candidates scoring at least this")
    args = p.parse_args()

    import torch

    from napari_instanno.training.datasets import CocoFolder
    from napari_instanno.training.evaluate import reference_index

    torch.set_num_threads(args.threads)
    sample = next(s for s in CocoFolder(args.folder).samples if int(s.info["id"]) == args.image_id)
    rgb, gt = sample.load_rgb01(), sample.instances
    ref = reference_index(gt.boxes, gt.areas, rgb.shape[:2])
    order = list(np.argsort(gt.areas, kind="stable"))
    other = int(order[min(len(order) - 1, order.index(ref) + 3)])

    from napari_instanno.inference.annotator import Annotator

    t0 = time.perf_counter()
    ann = Annotator(matcher=args.matcher, outliner=args.outliner, device="cpu")
    print(f"image {args.image_id} {rgb.shape[1]}x{rgb.shape[0]}, torch threads {args.threads}, "
          f"matcher {ann.matcher.name}, outliner {ann.outliner.name}")
    print(f"model load: {time.perf_counter() - t0:.2f} s")
    kw = {"outline_threshold": args.outline_threshold}
    runs = [("new image", lambda: ann.set_image(rgb).find_similar(gt.boxes[ref], **kw)),
            ("new reference", lambda: ann.find_similar(gt.boxes[other], **kw))]
    for label, fn in runs:
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        inst = fn()
        prof.disable()
        total = time.perf_counter() - t0
        print(f"{label}: {total:.2f} s, {len(inst)} candidates, "
              f"{int((inst.scores >= 0.3).sum())} scoring >= 0.3")
        for name, sec in phases(prof).items():
            if sec:
                print(f"    {name:<34} {sec:6.2f} s  {100 * sec / total:4.0f} %")
        if args.top:
            pstats.Stats(prof).sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
