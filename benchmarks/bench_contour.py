"""Box -> polygon speed: ms per instance, learned outliner vs the Otsu / ellipse baselines.

    python benchmarks/bench_contour.py [--folder dsb2018/val] [--images 5] [--threads 2]

Every outliner outlines the same ground-truth boxes (jittered ±10 %, seeded) in one batched call per
image; the time excludes ``set_image``. Printed as ratios to the baselines (no assertions).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from napari_instanno.inference.baselines import EllipseOutliner, OtsuOutliner
from napari_instanno.inference.learned_outliner import LearnedOutliner
from napari_instanno.training.datasets import CocoFolder, shared_folder
from napari_instanno.training.evaluate import jitter_boxes


def time_outliner(outliner, images: list[tuple[np.ndarray, np.ndarray]], repeats: int) -> float:
    """Best-of-``repeats`` ms per instance over all images."""
    best = np.inf
    for _ in range(repeats):
        total, count = 0.0, 0
        for rgb, boxes in images:
            outliner.set_image(rgb)
            t0 = time.perf_counter()
            outliner.outline(boxes)
            total += time.perf_counter() - t0
            count += len(boxes)
        best = min(best, 1000 * total / count)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--folder", default="dsb2018/val")
    ap.add_argument("--images", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    data = CocoFolder(shared_folder(args.folder))
    images = []
    for sample in data.samples[: args.images]:
        rgb = sample.load_rgb01()
        images.append((rgb, jitter_boxes(sample.instances.boxes, 0.1, rng)))
    n = sum(len(b) for _, b in images)
    learned = LearnedOutliner()
    learned.set_image(images[0][0])
    learned.outline(images[0][1][:8])  # warm-up
    times = {
        "learned": time_outliner(learned, images, args.repeats),
        "learned (tolerance 0)": time_outliner(LearnedOutliner(tolerance=0.0), images,
                                               args.repeats),
        "otsu": time_outliner(OtsuOutliner(), images, args.repeats),
        "ellipse": time_outliner(EllipseOutliner(), images, args.repeats),
    }
    print(f"{args.folder}: {len(images)} images, {n} instances, {args.threads} torch threads")
    for name, ms in times.items():
        print(f"  {name:24s} {ms:7.3f} ms / instance")
    print(f"  learned / otsu    = {times['learned'] / times['otsu']:.2f}x")
    print(f"  learned / ellipse = {times['learned'] / times['ellipse']:.2f}x")
    print(f"  target <= 5 ms / instance: {'met' if times['learned'] <= 5 else 'not met'}")


if __name__ == "__main__":
    main()
