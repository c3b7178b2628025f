"""Built-in sample images (no napari needed), each with a preset reference box (x0, y0, x1, y1)."""

from __future__ import annotations

import json
from importlib.resources import as_file, files

import numpy as np

COINS_REF_BOX = (184.0, 103.0, 228.0, 146.0)  # one mid-sized coin
CATEGORIES = {"nuclei": "nucleus", "coins": "coin"}  # what each sample's instances are called


def nuclei_sample() -> tuple[np.ndarray, np.ndarray]:
    """The shipped 256x256 fluorescence nuclei image (dsb2018 / BBBC038, CC0) and its reference."""
    from .image import xywh_to_xyxy
    from .io.images import read_image_file

    folder = files("napari_instanno").joinpath("sample_data")
    with as_file(folder.joinpath("nuclei.png")) as path:
        image = read_image_file(path)
    meta = json.loads(folder.joinpath("nuclei.json").read_text())
    return image, xywh_to_xyxy(meta["ref_box_xywh"])


def coins_sample() -> tuple[np.ndarray, np.ndarray]:
    """scikit-image's coins (public domain) and a reference box around one coin."""
    from skimage.data import coins

    return coins(), np.array(COINS_REF_BOX)
