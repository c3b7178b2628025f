"""Training-free baselines, kept selectable and in the benchmarks.

Matchers: normalised cross-correlation template matching (``ncc``) and cosine similarity of
ImageNet MobileNetV2 features (``cosine``). Outliners: the ellipse inscribed in the box
(``ellipse``) and Otsu's threshold inside the box (``otsu``; its refine snaps each vertex to
the nearest strong edge).
"""

from __future__ import annotations

import numpy as np
from skimage.feature import match_template, peak_local_max

from ..geometry import (
    ellipse_polygon,
    mask_to_polygon,
    nms,
    polygon_box,
    polygon_to_mask,
    resample_polygon,
)
from .components import warn_if_capped

MAX_DETECTIONS = 2000
SNAP_VERTICES = 64  # the classical refine works on a ring of this many vertices
SNAP_REACH = 3.0  # px a vertex may move along its normal


def _peaks_to_boxes(score_map: np.ndarray, ref_w: float, ref_h: float, stride: float,
                    threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Local maxima of a score map as reference-sized boxes around each peak, after NMS."""
    min_dist = max(1, int(min(ref_w, ref_h) / stride / 2))
    peaks = peak_local_max(score_map, min_distance=min_dist, threshold_abs=threshold,
                           num_peaks=MAX_DETECTIONS, exclude_border=False)
    warn_if_capped(len(peaks), MAX_DETECTIONS, "template")
    if len(peaks) == 0:
        return np.zeros((0, 4)), np.zeros(0)
    cy = (peaks[:, 0] + 0.5) * stride
    cx = (peaks[:, 1] + 0.5) * stride
    boxes = np.stack([cx - ref_w / 2, cy - ref_h / 2, cx + ref_w / 2, cy + ref_h / 2], axis=1)
    scores = score_map[peaks[:, 0], peaks[:, 1]].astype(np.float64)
    keep = nms(boxes, scores, 0.3)
    return boxes[keep], np.clip(scores[keep], 0, 1)


class NCCMatcher:
    """Normalised cross-correlation of the reference crop over the grayscale image."""

    def __init__(self, threshold: float = 0.2, **_: object) -> None:
        self.threshold = threshold
        self.gray: np.ndarray | None = None

    def set_image(self, rgb: np.ndarray) -> None:
        self.gray = rgb.mean(axis=2)

    def embed_reference(self, ref_box: np.ndarray) -> np.ndarray:
        x0, y0, x1, y1 = np.round(ref_box).astype(int)
        return self.gray[y0:y1, x0:x1].copy()

    def find(self, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        th, tw = reference.shape
        if th < 2 or tw < 2 or reference.std() == 0 or th > self.gray.shape[0] \
                or tw > self.gray.shape[1]:
            return np.zeros((0, 4)), np.zeros(0)
        score = match_template(self.gray, reference, pad_input=True, mode="edge")
        # pad_input centres the match: peak (r, c) is the template's centre pixel
        return _peaks_to_boxes(score, tw, th, 1.0, self.threshold)


class CosineMatcher:
    """Cosine similarity of the reference's ImageNet MobileNetV2 stride-8 feature patch to every
    same-sized window of the image's features (template matching in feature space)."""

    stride = 8

    def __init__(self, threshold: float = 0.5, device: str = "cpu", **_: object) -> None:
        import torch

        from ..models.backbone import Backbone

        self.threshold = threshold
        self.device = device
        self.net = Backbone(strides=(8,)).eval().to(device)
        self.feats: torch.Tensor | None = None

    def set_image(self, rgb: np.ndarray) -> None:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None].to(self.device)
            self.feats = self.net(x)[8]

    def embed_reference(self, ref_box: np.ndarray) -> tuple[object, float, float]:
        _, _, h, w = self.feats.shape
        x0, y0, x1, y1 = np.asarray(ref_box) / self.stride
        r0 = min(int(np.floor(y0)), h - 1)
        c0 = min(int(np.floor(x0)), w - 1)
        r1, c1 = max(int(np.ceil(y1)), r0 + 1), max(int(np.ceil(x1)), c0 + 1)
        patch = self.feats[:, :, r0:r1, c0:c1].clone()
        return patch, float(ref_box[2] - ref_box[0]), float(ref_box[3] - ref_box[1])

    def find(self, reference: tuple[object, float, float]) -> tuple[np.ndarray, np.ndarray]:
        import torch
        import torch.nn.functional as F

        patch, bw, bh = reference
        _, _, th, tw = patch.shape
        _, _, h, w = self.feats.shape
        if th > h or tw > w:
            return np.zeros((0, 4)), np.zeros(0)
        with torch.inference_mode():
            pad = (tw // 2, tw - 1 - tw // 2, th // 2, th - 1 - th // 2)
            f = F.pad(self.feats, pad)
            dot = F.conv2d(f, patch)
            norm = F.conv2d(f.pow(2).sum(1, keepdim=True), torch.ones_like(patch[:, :1])).sqrt()
            score = (dot / (norm * patch.norm() + 1e-8))[0, 0].cpu().numpy()
        return _peaks_to_boxes(score, bw, bh, self.stride, self.threshold)


class EllipseOutliner:
    """The ellipse inscribed in each box."""

    def __init__(self, vertices: int = 32, **_: object) -> None:
        self.vertices = vertices

    def set_image(self, rgb: np.ndarray) -> None:
        """The ellipse needs no image."""

    def outline(self, boxes: np.ndarray) -> list[np.ndarray]:
        return [ellipse_polygon(b, self.vertices) for b in np.asarray(boxes).reshape(-1, 4)]

    def refine(self, polygons: list[np.ndarray]) -> list[np.ndarray]:
        return self.outline(np.array([polygon_box(p) for p in polygons]))


class OtsuOutliner:
    """Otsu's threshold in the box (the object is the class covering the box centre best)."""

    def __init__(self, **_: object) -> None:
        self.gray: np.ndarray | None = None
        self.ellipse = EllipseOutliner()

    def set_image(self, rgb: np.ndarray) -> None:
        self.gray = rgb.mean(axis=2)

    def _one(self, box: np.ndarray) -> np.ndarray:
        from scipy.ndimage import binary_fill_holes, label
        from skimage.filters import threshold_otsu

        ih, iw = self.gray.shape
        x0, y0 = max(int(np.floor(box[0])), 0), max(int(np.floor(box[1])), 0)
        x1, y1 = min(int(np.ceil(box[2])), iw), min(int(np.ceil(box[3])), ih)
        crop = self.gray[y0:y1, x0:x1]
        fallback = self.ellipse.outline(box[None])[0]
        if crop.size < 4 or crop.min() == crop.max():
            return fallback
        fg = crop > threshold_otsu(crop)
        h, w = fg.shape  # the object covers the box's centre: the middle half decides polarity
        centre = ellipse_polygon(np.array([w / 4, h / 4, 3 * w / 4, 3 * h / 4]), 32)
        core = polygon_to_mask(centre, fg.shape)
        if (fg & core).sum() < (~fg & core).sum():
            fg = ~fg
        labels, n = label(fg)
        if n == 0:
            return fallback
        counts = np.bincount(labels[core].ravel(), minlength=n + 1)
        counts[0] = 0
        region = binary_fill_holes(labels == counts.argmax()) if counts.max() else None
        poly = mask_to_polygon(region) if region is not None else None
        return fallback if poly is None else poly + [y0, x0]

    def outline(self, boxes: np.ndarray) -> list[np.ndarray]:
        return [self._one(b) for b in np.asarray(boxes, dtype=np.float64).reshape(-1, 4)]

    def refine(self, polygons: list[np.ndarray]) -> list[np.ndarray]:
        """Move each vertex along its normal, by up to ``SNAP_REACH`` px, to the strongest edge."""
        from scipy.ndimage import map_coordinates, uniform_filter1d
        from skimage.filters import gaussian, sobel

        edges = sobel(gaussian(self.gray, 1.0))
        steps = np.arange(-SNAP_REACH, SNAP_REACH + 0.5, 0.5)
        out = []
        for p in polygons:
            ring = resample_polygon(p, SNAP_VERTICES)
            tangent = np.roll(ring, -1, axis=0) - np.roll(ring, 1, axis=0)
            normal = np.stack([tangent[:, 1], -tangent[:, 0]], 1)
            normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-9
            probes = ring[:, None, :] + steps[None, :, None] * normal[:, None, :]
            strength = map_coordinates(edges, (probes - 0.5).reshape(-1, 2).T, order=1,
                                       mode="nearest").reshape(len(ring), len(steps))
            strength -= 1e-3 * np.abs(steps)  # ties go to the smallest move
            move = uniform_filter1d(steps[strength.argmax(axis=1)], 3, mode="wrap")
            out.append(ring + move[:, None] * normal)
        return out
