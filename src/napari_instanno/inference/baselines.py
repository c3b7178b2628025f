"""Training-free baselines, kept selectable and in the benchmarks.

Matchers: normalised cross-correlation template matching (``ncc``) and cosine similarity of
ImageNet MobileNetV2 features (``cosine``). Outliners: the ellipse inscribed in the box
(``ellipse``) and Otsu's threshold inside the box (``otsu``, refining with an active contour).
"""

from __future__ import annotations

import numpy as np
from skimage.feature import match_template, peak_local_max

from ..geometry import ellipse_polygon, mask_to_polygon, nms, polygon_box, polygon_to_mask

MAX_DETECTIONS = 2000


def _peaks_to_boxes(score_map: np.ndarray, ref_w: float, ref_h: float, stride: float,
                    threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Local maxima of a score map as reference-sized boxes around each peak, after NMS."""
    min_dist = max(1, int(min(ref_w, ref_h) / stride / 2))
    peaks = peak_local_max(score_map, min_distance=min_dist, threshold_abs=threshold,
                           num_peaks=MAX_DETECTIONS, exclude_border=False)
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
    """Cosine similarity of ImageNet MobileNetV2 stride-8 features to the reference's mean feature."""

    stride = 8

    def __init__(self, threshold: float = 0.5, device: str = "cpu", **_: object) -> None:
        from ..models.backbone import Backbone

        self.threshold = threshold
        self.device = device
        self.net = Backbone(strides=(8,)).eval().to(device)
        self.feats: np.ndarray | None = None

    def set_image(self, rgb: np.ndarray) -> None:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None].to(self.device)
            f = self.net(x)[8][0]
            f = torch.nn.functional.normalize(f, dim=0)
        self.feats = f.cpu().numpy()

    def embed_reference(self, ref_box: np.ndarray) -> tuple[np.ndarray, float, float]:
        c, h, w = self.feats.shape
        x0, y0, x1, y1 = np.asarray(ref_box) / self.stride
        r0, r1 = int(np.floor(y0)), max(int(np.ceil(y1)), int(np.floor(y0)) + 1)
        c0, c1 = int(np.floor(x0)), max(int(np.ceil(x1)), int(np.floor(x0)) + 1)
        ref = self.feats[:, min(r0, h - 1):min(r1, h), min(c0, w - 1):min(c1, w)].reshape(c, -1)
        q = ref.mean(axis=1)
        q /= np.linalg.norm(q) + 1e-8
        return q, float(ref_box[2] - ref_box[0]), float(ref_box[3] - ref_box[1])

    def find(self, reference: tuple[np.ndarray, float, float]) -> tuple[np.ndarray, np.ndarray]:
        q, bw, bh = reference
        score = np.tensordot(q, self.feats, axes=(0, 0))
        return _peaks_to_boxes(score, bw, bh, self.stride, self.threshold)


class EllipseOutliner:
    """The ellipse inscribed in each box."""

    def __init__(self, vertices: int = 32, **_: object) -> None:
        self.vertices = vertices

    def set_image(self, rgb: np.ndarray) -> None:
        self.shape = rgb.shape[:2]

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

        h, w = self.gray.shape
        x0, y0 = max(int(np.floor(box[0])), 0), max(int(np.floor(box[1])), 0)
        x1, y1 = min(int(np.ceil(box[2])), w), min(int(np.ceil(box[3])), h)
        crop = self.gray[y0:y1, x0:x1]
        fallback = self.ellipse.outline(box[None])[0]
        if crop.size < 4 or crop.min() == crop.max():
            return fallback
        fg = crop > threshold_otsu(crop)
        centre = ellipse_polygon(np.array([0, 0, fg.shape[1], fg.shape[0]]), 32)
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
        from skimage.filters import gaussian
        from skimage.segmentation import active_contour

        smooth = gaussian(self.gray, 1.0)
        out = []
        for p in polygons:
            snake = active_contour(smooth, np.asarray(p) - 0.5, alpha=0.01, beta=0.1,
                                   gamma=0.01, max_num_iter=100, boundary_condition="periodic")
            out.append(snake + 0.5)
        return out
