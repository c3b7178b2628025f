"""Synthetic time-lapses for the stack tests and ``benchmarks/bench_stacks.py``: soft-edged discs
drifting, growing, appearing and disappearing, with their truth, and how a run scores on them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely

from napari_instanno.geometry import box_iou
from napari_instanno.instances import Instances

EDGE = 0.8  # soft (band-limited) edges, as optics give


@dataclass
class Disc:
    """One disc: centre (row, col) on plane 0, drift (rows, cols) per plane, radius on plane 0 and
    its growth per plane, and the planes [first, last] it is there on."""

    centre: np.ndarray
    drift: np.ndarray
    radius: float
    first: int
    last: int
    growth: float = 0.0

    def at(self, t: int) -> tuple[np.ndarray, float]:
        return self.centre + self.drift * t, self.radius + self.growth * t


def drifting_discs(planes: int = 12, n: int = 20, size: int = 192, drift: float = 1.5,
                   radius: tuple[float, float] = (6.0, 8.0), growth: float = 0.0,
                   coming_going: int = 0, seed: int = 0) -> tuple[np.ndarray, list[Disc]]:
    """A (planes, size, size) uint8 time-lapse of ``n`` soft discs on a jittered grid, each
    drifting at most ``drift`` px a plane along each axis and growing ``growth`` px a plane; the
    last ``coming_going`` discs appear or disappear part-way. Disc 0 is the reference, present on
    every plane."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n)))
    cell = size / side
    discs = []
    for i in range(n):
        centre = (np.array([i // side, i % side]) + 0.5) * cell + rng.uniform(-2, 2, 2)
        first, last = 0, planes - 1
        if i >= n - coming_going:
            cut = int(rng.integers(3, planes - 3))
            first, last = (cut, last) if i % 2 else (first, cut)
        discs.append(Disc(centre, rng.uniform(-drift, drift, 2), float(rng.uniform(*radius)),
                          first, last, growth))
    rr, cc = np.mgrid[:size, :size] + 0.5
    stack = np.zeros((planes, size, size), np.float32)
    for t in range(planes):
        for d in discs:
            if d.first <= t <= d.last:
                (r, c), rad = d.at(t)
                dist = np.sqrt((rr - r) ** 2 + (cc - c) ** 2)
                stack[t] = np.maximum(stack[t], 1 / (1 + np.exp((dist - rad) / EDGE)))
    stack = 20 + 180 * stack + rng.normal(0, 4, stack.shape)
    return np.clip(stack, 0, 255).astype(np.uint8), discs


def reference_box(disc: Disc, pad: float = 2.0) -> np.ndarray:
    """The (x0, y0, x1, y1) box around ``disc`` on plane 0."""
    (r, c), rad = disc.at(0)
    return np.array([c - rad - pad, r - rad - pad, c + rad + pad, r + rad + pad])


@dataclass
class Score:
    """Per plane, the share of the discs there that were found; over the discs, the share that
    were found on each of their planes under one track id; and the false positives."""

    found: np.ndarray
    one_track: float
    extra: int


def score(inst: Instances, discs: list[Disc], planes: int, min_iou: float = 0.5) -> Score:
    """Each disc matched on each plane to the instance there whose outline's box has the highest
    IoU with the disc's (>= ``min_iou``)."""
    plane, track = inst.properties["plane"], inst.properties.get("track_id")
    bounds = shapely.bounds(inst.geometries).reshape(-1, 4)
    found, used = np.zeros(planes), 0
    ids: dict[int, list] = {i: [] for i in range(len(discs))}
    for t in range(planes):
        here = np.flatnonzero(plane == t)
        present = [i for i, d in enumerate(discs) if d.first <= t <= d.last]
        truth = np.array([[x - rad, y - rad, x + rad, y + rad] for (y, x), rad in
                          (discs[i].at(t) for i in present)]).reshape(-1, 4)
        iou = box_iou(truth, bounds[here]) if len(here) else np.zeros((len(present), 0))
        for k, i in enumerate(present):
            j = int(np.argmax(iou[k])) if iou.shape[1] else -1
            if j >= 0 and iou[k, j] >= min_iou:
                found[t] += 1
                ids[i].append(None if track is None else int(track[here[j]]))
        used += len(here)
        found[t] /= max(len(present), 1)
    lengths = {i: d.last - d.first + 1 for i, d in enumerate(discs)}
    one = [len(v) == lengths[i] and len(set(v)) == 1 for i, v in ids.items()]
    matched = sum(len(v) for v in ids.values())
    return Score(found, float(np.mean(one)), used - matched)
