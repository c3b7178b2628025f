"""Sample data for napari's File > Open Sample: each image comes with its preset reference box."""

from __future__ import annotations

import json
from importlib.resources import as_file, files
from typing import Any

import numpy as np

from .layers import box_to_rectangle

COINS_REF_BOX = (184.0, 103.0, 228.0, 146.0)  # (x0, y0, x1, y1): one mid-sized coin
REFERENCE = "reference"


def nuclei_ref_box() -> np.ndarray:
    """The preset reference box (x0, y0, x1, y1) of the nuclei sample."""
    x, y, w, h = json.loads(files("napari_instanno").joinpath("sample_data/nuclei.json")
                            .read_text())["ref_box_xywh"]
    return np.array([x, y, x + w, y + h], dtype=float)


def nuclei_image() -> np.ndarray:
    """The 256x256 fluorescence nuclei image (dsb2018 / BBBC038, CC0)."""
    from skimage.io import imread

    with as_file(files("napari_instanno").joinpath("sample_data/nuclei.png")) as path:
        return np.asarray(imread(path))


def _with_reference(image: np.ndarray, name: str, box: Any) -> list[tuple]:
    ref = {"name": REFERENCE, "shape_type": "rectangle", "edge_color": "cyan",
           "face_color": "transparent", "edge_width": 1.5}
    return [(image, {"name": name}, "image"), ([box_to_rectangle(box)], ref, "shapes")]


def make_coins() -> list[tuple]:
    """``skimage.data.coins`` with a reference box around one coin."""
    from skimage.data import coins

    return _with_reference(coins(), "coins", COINS_REF_BOX)


def make_nuclei() -> list[tuple]:
    """A fluorescence nuclei image with a reference box around one nucleus."""
    return _with_reference(nuclei_image(), "nuclei", nuclei_ref_box())
