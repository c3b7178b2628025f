"""Built-in sample images (no napari needed): coins and a nuclei image with a preset reference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SAMPLES = Path(__file__).parent / "sample_data"


def nuclei_sample() -> tuple[np.ndarray, np.ndarray]:
    """The shipped nuclei image (CC0, BBBC038) and its preset reference box (x0, y0, x1, y1)."""
    from .image import xywh_to_xyxy
    from .io.images import read_image_file

    image = read_image_file(SAMPLES / "nuclei.png")
    meta = json.loads((SAMPLES / "nuclei.json").read_text())
    return image, xywh_to_xyxy(meta["ref_box_xywh"])


def coins_sample() -> tuple[np.ndarray, np.ndarray]:
    """scikit-image's coins (public domain) and a reference box around one coin."""
    from skimage.data import coins

    return coins(), np.array([60.0, 10.0, 110.0, 65.0])
