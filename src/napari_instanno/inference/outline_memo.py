"""Outlines already computed on the current image, reused by later prompts on it.

A new reference on the same image re-finds mostly the same objects: on the largest dsb2018/val
image, 89 % of the second reference's shown candidates have a box within IoU 0.9 of one the first
reference outlined, and the two outlines of such a pair agree at polygon IoU 0.97 on average (the
outliner's own spread under that much box jitter). Reusing them makes a new reference cost the
matcher's heads, not the outliner (``benchmarks/bench_interactive.py``, "ref click").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ..geometry import box_iou

REUSE_IOU = 0.9  # a candidate boxed like one outlined before (box IoU >= this) reuses its outline


class OutlineMemo:
    """Boxes outlined on one image and their polygons; ``clear`` when the image changes."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self._boxes = np.zeros((0, 4))
        self._polygons: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self._polygons)

    def outline(self, boxes: np.ndarray,
                outline: Callable[[np.ndarray], Sequence[np.ndarray]]) -> list[np.ndarray]:
        """One polygon per box: the remembered one where a box matches a remembered box, else
        ``outline`` of the rest (batched, then remembered)."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        out: list[np.ndarray | None] = [None] * len(boxes)
        todo = np.arange(len(boxes))
        if len(self._boxes) and len(boxes):
            iou = box_iou(boxes, self._boxes)
            best = iou.argmax(1)
            hit = iou[np.arange(len(boxes)), best] >= REUSE_IOU
            for i in np.flatnonzero(hit):
                out[i] = self._polygons[best[i]].copy()  # the caller may edit its copy
            todo = np.flatnonzero(~hit)
        if len(todo):
            new = list(outline(boxes[todo]))
            for i, poly in zip(todo, new, strict=True):
                out[i] = poly
            self._boxes = np.concatenate([self._boxes, boxes[todo]])
            self._polygons.extend(np.array(q, copy=True) for q in new)
        return out  # type: ignore[return-value]
