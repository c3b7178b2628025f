"""Stacks: seconds per plane against a single-image run on the same plane, the targets, and
whether re-seeding each plane from its neighbour's confident results helps.

Scenes (``tests/stack_scenes.py``, soft-edged discs, reference on plane 0):
- ``drift``: the issue's target, 12 planes of 20 discs drifting up to 1.5 px a plane;
- ``grow``: the same discs growing 0.5 px a plane in radius (6-8 px to 11.5-13.5 px), where a
  fixed reference drifts off the objects' look and re-seeding could help;
- ``coming``: 16 discs, 6 of them appearing or disappearing part-way.
For each matcher / outliner pair and with re-seeding off and on: the lowest share of discs found
on a plane, the share found on every plane under one track id, extra instances, seconds per
plane of the stack run (whole run / planes: reference, tracks and all), seconds of a
single-image run (``set_image`` + ``find_similar``, the reference embedded on that plane) on
the same planes, and their ratio; timings are the best of ``--repeat`` runs of each, taken in
turns.

    OMP_NUM_THREADS=1 python benchmarks/bench_stacks.py
    OMP_NUM_THREADS=1 python benchmarks/bench_stacks.py --models ncc/otsu --scenes drift
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from napari_instanno.inference.annotator import Annotator  # noqa: E402
from tests.stack_scenes import drifting_discs, reference_box, score  # noqa: E402

SCENES = {
    "drift": {"planes": 12, "n": 20, "drift": 1.5},
    "grow": {"planes": 12, "n": 20, "drift": 1.5, "growth": 0.5, "size": 256},
    "coming": {"planes": 12, "n": 16, "drift": 1.5, "coming_going": 6, "seed": 3},
}
THRESHOLD = 0.3  # the widget's and the CLI's default


def single_seconds(ann: Annotator, stack: np.ndarray, discs: list) -> float:
    """Seconds per plane of single-image runs on every plane (each with its own reference: disc 0
    there, embedded on that plane)."""
    t0 = time.perf_counter()
    for k in range(len(stack)):
        (r, c), rad = discs[0].at(k)
        ann.set_image(stack[k])
        ann.find_similar([c - rad - 2, r - rad - 2, c + rad + 2, r + rad + 2],
                         score_threshold=THRESHOLD)
    return (time.perf_counter() - t0) / len(stack)


def stack_seconds(ann: Annotator, stack: np.ndarray, discs: list, reseed: bool) -> tuple:
    """(seconds per plane of the whole stack run, its instances)."""
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inst = ann.find_similar_stack(stack, reference_box(discs[0]), 0,
                                      score_threshold=THRESHOLD, reseed=reseed)
    return (time.perf_counter() - t0) / len(stack), inst


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["ncc/otsu", "guarded/learned"],
                   help="matcher/outliner pairs")
    p.add_argument("--scenes", nargs="+", default=list(SCENES), choices=list(SCENES))
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeat", type=int, default=2, help="timings: the best of this many runs")
    a = p.parse_args()
    print(f"{'scene':7} {'models':16} {'reseed':6} {'found min':>9} {'one track':>9} "
          f"{'extra':>5} {'s/plane':>8} {'single s':>8} {'ratio':>6}")
    for pair in a.models:
        matcher, outliner = pair.split("/")
        ann = Annotator(matcher=matcher, outliner=outliner, device=a.device)
        ann.set_image(np.zeros((64, 64), np.uint8))  # warm up imports and kernels
        ann.find_similar([8, 8, 24, 24])
        for name in a.scenes:
            stack, discs = drifting_discs(**SCENES[name])
            planes = len(stack)
            for reseed in (False, True):
                single = per_plane = np.inf
                for _ in range(a.repeat):  # interleaved, so that both see the same load
                    single = min(single, single_seconds(ann, stack, discs))
                    seconds, inst = stack_seconds(ann, stack, discs, reseed)
                    per_plane = min(per_plane, seconds)
                s = score(inst, discs, planes)
                print(f"{name:7} {pair:16} {str(reseed):6} {s.found.min():9.3f} "
                      f"{s.one_track:9.3f} {s.extra:5d} {per_plane:8.3f} {single:8.3f} "
                      f"{per_plane / single:6.2f}", flush=True)


if __name__ == "__main__":
    main()
