"""Interactive cost of the learned matcher on a 1024 x 1024 image, against the NCC baseline.

    python benchmarks/bench_matcher.py [--size 1024] [--repeats 3] [--threads N]

Prints seconds for a cold run (features + match) and for a new reference on cached features, for
the learned matcher and for NCC measured in the same run, and their ratios, on two scenes: discs of
radius 24-32 px (references of 48 px and more: matched at native scale) and of radius 6-10 px (the
learned matcher upscales the image about 3x, which costs about 9x). No assertion: the targets
(cached <= 0.3 s, cold <= 2 s on the 2-core CPU) are read off the output.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def scene(size: int, radius: tuple[float, float] = (6, 10), seed: int = 0
          ) -> tuple[np.ndarray, np.ndarray]:
    """Bright discs of ``radius`` (low, high) px on a noisy background; the image, one disc's box."""
    rng = np.random.default_rng(seed)
    img = rng.normal(0.1, 0.03, (size, size)).astype(np.float32)
    rr, cc = np.mgrid[:size, :size]
    first, step = None, int(4 * radius[1])
    for r in range(step // 2, size - step // 2, step):
        for c in range(step // 2, size - step // 2, step):
            rad = rng.uniform(*radius)
            img[(rr - r) ** 2 + (cc - c) ** 2 <= rad**2] += 0.8
            first = first if first is not None else np.array([c - rad, r - rad, c + rad, r + rad])
    return np.repeat(img.clip(0, 1)[..., None], 3, axis=2), first


def timed(matcher, rgb: np.ndarray, boxes: list[np.ndarray], repeats: int) -> dict[str, float]:
    cold, cached, found = [], [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        matcher.set_image(rgb)
        b, _ = matcher.find(matcher.embed_reference(boxes[0]))
        cold.append(time.perf_counter() - t0)
        for box in boxes[1:]:
            t0 = time.perf_counter()
            b, _ = matcher.find(matcher.embed_reference(box))
            cached.append(time.perf_counter() - t0)
        found = len(b)
    return {"cold_s": float(np.median(cold)), "cached_s": float(np.median(cached)),
            "found": found}


def main(argv: list[str] | None = None) -> None:
    import torch

    from napari_instanno.inference.baselines import NCCMatcher
    from napari_instanno.inference.learned_matcher import LearnedMatcher

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--weights", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"image {args.size}x{args.size}, torch threads {torch.get_num_threads()}")
    learned = LearnedMatcher(weights=args.weights)
    for radius in ((24, 32), (6, 10)):
        rgb, box = scene(args.size, radius)
        step = int(4 * radius[1])
        boxes = [box, box + [step, 0, step, 0], box + [0, step, 0, step]]
        ncc = timed(NCCMatcher(), rgb, boxes, args.repeats)
        timed(learned, rgb, boxes, 1)  # warm-up
        lm = timed(learned, rgb, boxes, args.repeats)
        print(f"discs of radius {radius[0]}-{radius[1]} px (learned matcher upscales "
              f"{learned.scale_for(box):.2f}x)")
        print(f"  {'':8} {'cold s':>8} {'cached s':>9} {'found':>6}")
        for name, r in (("ncc", ncc), ("learned", lm)):
            print(f"  {name:8} {r['cold_s']:8.3f} {r['cached_s']:9.3f} {r['found']:6d}")
        print(f"  ratio learned/ncc: cold {lm['cold_s'] / ncc['cold_s']:.2f}, "
              f"cached {lm['cached_s'] / ncc['cached_s']:.2f}  (targets: cold <= 2 s, "
              "cached <= 0.3 s)")


if __name__ == "__main__":
    main()
