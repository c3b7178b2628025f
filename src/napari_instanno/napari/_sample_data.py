"""Sample data for napari's File > Open Sample: each image comes with its preset reference box."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..samples import CATEGORIES, coins_sample, nuclei_sample
from .shapes_data import box_to_rectangle

REFERENCE = "reference"
CATEGORY = "instanno_category"  # image layer metadata key: the name its instances get


def _with_reference(image: np.ndarray, name: str, box: Any) -> list[tuple]:
    ref = {"name": REFERENCE, "shape_type": "rectangle", "edge_color": "cyan",
           "face_color": "transparent", "edge_width": 1.5}
    meta = {"name": name, "metadata": {CATEGORY: CATEGORIES[name]}}
    return [(image, meta, "image"), ([box_to_rectangle(box)], ref, "shapes")]


def make_coins() -> list[tuple]:
    """``skimage.data.coins`` with a reference box around one coin."""
    image, box = coins_sample()
    return _with_reference(image, "coins", box)


def make_nuclei() -> list[tuple]:
    """A fluorescence nuclei image with a reference box around one nucleus."""
    image, box = nuclei_sample()
    return _with_reference(image, "nuclei", box)
