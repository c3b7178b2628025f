"""Outlining what a viewer shows first: ``find_similar(..., outline_threshold=)`` then
``Annotator.outline`` gives the same instances as outlining every candidate at once."""

from __future__ import annotations

import numpy as np
import pytest

from napari_instanno.inference.annotator import Annotator
from napari_instanno.models.weights import shipped_path
from napari_instanno.samples import nuclei_sample


def _same(a, b) -> None:
    assert len(a) == len(b)
    oa, ob = np.argsort(-a.scores, kind="stable"), np.argsort(-b.scores, kind="stable")
    np.testing.assert_allclose(a.scores[oa], b.scores[ob])
    np.testing.assert_allclose(a.boxes[oa], b.boxes[ob])
    for i, j in zip(oa, ob, strict=True):
        np.testing.assert_allclose(a.polygons[i], b.polygons[j], atol=1e-3)  # batching: float noise


def _check(ann: Annotator, image: np.ndarray, box: np.ndarray, threshold: float) -> None:
    full = ann.find_similar(box)
    ann.set_image(image)  # forget full's outlines (outline_memo), so the lazy run computes its own
    lazy = ann.find_similar(box, outline_threshold=threshold)
    flag = lazy.properties["outlined"]
    assert flag.any() and not flag.all()  # some candidates wait, so the check means something
    assert (lazy.scores[flag] >= threshold).all() and (lazy.scores[~flag] < threshold).all()
    shown = full[full.scores >= threshold]
    _same(lazy[flag], shown)               # what is shown first is what a full run shows
    half = ann.outline(lazy, min_score=threshold / 2)
    assert (half.properties["outlined"] == (half.scores >= threshold / 2)).all()
    _same(half[half.properties["outlined"]], full[full.scores >= threshold / 2])
    _same(ann.outline(half), full)          # and the rest, later, completes it exactly
    _same(ann.outline(lazy), full)


def test_lazy_outlining_equals_outlining_everything_ncc():
    image, box = nuclei_sample()
    ann = Annotator(matcher="ncc", outliner="otsu", device="cpu").set_image(image)
    _check(ann, image, box, 0.5)


@pytest.mark.skipif(shipped_path("matcher") is None or shipped_path("contour") is None,
                    reason="the learned models are not shipped in this checkout")
def test_lazy_outlining_equals_outlining_everything_learned():
    image, box = nuclei_sample()
    ann = Annotator(matcher="learned", outliner="learned", device="cpu").set_image(image)
    _check(ann, image, box, 0.3)


def test_without_stand_ins_outline_changes_nothing():
    image, box = nuclei_sample()
    ann = Annotator(matcher="ncc", outliner="otsu", device="cpu").set_image(image)
    full = ann.find_similar(box, score_threshold=0.4)
    assert "outlined" not in full.properties and (full.scores >= 0.4).all()
    assert ann.outline(full) is full
