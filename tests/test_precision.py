"""Reduced precision: one rule for both learned models, and the outlines it gives."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
import torch

from napari_instanno.errors import InstannoError
from napari_instanno.inference.precision import autocast_dtype, cpu_has_amx
from napari_instanno.models.weights import shipped_path


def test_auto_is_bfloat16_only_on_a_cpu_with_amx_and_names_are_checked() -> None:
    assert autocast_dtype("cpu", "auto") == (torch.bfloat16 if cpu_has_amx() else None)
    assert autocast_dtype("cuda", "auto") is None
    assert autocast_dtype("cpu", "float32") is None
    assert autocast_dtype("cuda:0", "float16") == torch.float16
    with pytest.raises(InstannoError, match="unknown precision 'half'"):
        autocast_dtype("cpu", "half")


@pytest.mark.skipif(shipped_path("contour") is None, reason="the contour weights are not shipped")
def test_bfloat16_outlines_agree_with_float32_ones_and_snake_stays_float32() -> None:
    from napari_instanno.image import to_rgb01
    from napari_instanno.inference.annotator import Annotator
    from napari_instanno.inference.learned_outliner import LearnedOutliner

    image, box = nuclei_boxes()
    rgb = to_rgb01(image)
    outlines = {}
    for precision in ("float32", "bfloat16"):
        o = LearnedOutliner(precision=precision)
        o.set_image(rgb)
        outlines[precision] = o.outline(box)
    ious = [shapely.Polygon(a).intersection(shapely.Polygon(b)).area
            / shapely.Polygon(a).union(shapely.Polygon(b)).area
            for a, b in zip(outlines["float32"], outlines["bfloat16"], strict=True)]
    assert len(ious) >= 30 and np.mean(ious) >= 0.95 and min(ious) >= 0.8
    assert all(p.dtype == np.float64 for p in outlines["bfloat16"])
    assert Annotator(matcher="ncc", device="cpu").outliner.precision == "auto"


def nuclei_boxes() -> tuple[np.ndarray, np.ndarray]:
    """The nuclei sample and the boxes NCC finds on it (> 0.5)."""
    from napari_instanno.inference.annotator import Annotator
    from napari_instanno.samples import nuclei_sample

    image, box = nuclei_sample()
    ann = Annotator(matcher="ncc", outliner="ellipse", device="cpu").set_image(image)
    return image, ann.find_similar(box, score_threshold=0.5).boxes
