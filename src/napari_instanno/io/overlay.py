"""A PNG picture of instances drawn over their image (for the demo, reports and the README)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from skimage.draw import line

from ..image import to_rgb01
from ..instances import Instances
from ..styles import STATUS_COLORS


def render_overlay(image: np.ndarray, instances: Instances, scale: int = 2) -> np.ndarray:
    """RGB uint8 picture of ``image`` (upscaled ``scale`` x) with polygon outlines by status."""
    rgb = (to_rgb01(image) * 255).astype(np.uint8)
    rgb = np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1)
    h, w = rgb.shape[:2]
    for poly, status in zip(instances.polygons, instances.status):
        pts = np.round(np.asarray(poly) * scale).astype(int)
        colour = np.round(np.array(STATUS_COLORS.get(str(status), (1.0, 1.0, 1.0))[:3]) * 255)
        for (r0, c0), (r1, c1) in zip(pts, np.roll(pts, -1, axis=0)):
            rr, cc = line(r0, c0, r1, c1)
            ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
            rgb[rr[ok], cc[ok]] = colour
    return rgb


def save_overlay(path: str | Path, image: np.ndarray, instances: Instances, scale: int = 2
                 ) -> Path:
    """Write ``render_overlay`` as a PNG file."""
    from skimage.io import imsave

    imsave(str(path), render_overlay(image, instances, scale), check_contrast=False)
    return Path(path)
