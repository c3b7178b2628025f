"""Outlining what a viewer shows first: ``find_similar(..., outline_threshold=)`` then
``Annotator.outline`` gives the same instances as outlining every candidate at once."""

from __future__ import annotations

import numpy as np
import pytest

from napari_instanno.inference.annotator import Annotator
from napari_instanno.models.weights import shipped_path
from napari_instanno.samples import nuclei_sample


def _same(a, b, min_iou: float | None = None) -> None:
    """Same instances; polygons equal up to float noise (or, with ``min_iou``, overlapping at
    least that much: simplification may then drop a vertex)."""
    assert len(a) == len(b)
    oa, ob = np.argsort(-a.scores, kind="stable"), np.argsort(-b.scores, kind="stable")
    np.testing.assert_allclose(a.scores[oa], b.scores[ob])
    np.testing.assert_allclose(a.boxes[oa], b.boxes[ob])
    for i, j in zip(oa, ob, strict=True):
        if min_iou is None:
            np.testing.assert_allclose(a.polygons[i], b.polygons[j], atol=1e-3)  # batching noise
        else:
            ga, gb = a.geometries[i], b.geometries[j]
            assert ga.intersection(gb).area / ga.union(gb).area >= min_iou


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


def _check_tiled(ann: Annotator, threshold: float, tmp_path) -> None:
    """A tiled run (a lazy image, small tiles) outlining the shown part first, then
    ``outline_tiled``, equals the tiled run outlining every candidate; a checkpoint keeps which
    polygons are stand-ins."""
    import dask.array as da

    from napari_instanno.inference.tiled_outlines import outline_tiled
    from napari_instanno.inference.tiling import find_similar_tiled

    image, box = nuclei_sample()
    lazy_image = da.from_array(image, chunks=64)
    full = find_similar_tiled(ann, lazy_image, box, tile_size=128)
    lazy = find_similar_tiled(ann, lazy_image, box, tile_size=128, outline_threshold=threshold,
                              checkpoint=tmp_path / "ckpt")
    flag = lazy.properties["outlined"]
    assert flag.any() and not flag.all()
    assert (lazy.scores[flag] >= threshold).all() and (lazy.scores[~flag] < threshold).all()
    _same(lazy[flag], full[full.scores >= threshold])
    resumed = find_similar_tiled(ann, lazy_image, box, tile_size=128, outline_threshold=threshold,
                                 checkpoint=tmp_path / "ckpt")  # every tile read back from disk
    np.testing.assert_array_equal(resumed.properties["outlined"], flag)
    half = outline_tiled(ann.outliner, lazy_image, lazy, threshold / 2)
    assert (half.properties["outlined"] == (half.scores >= threshold / 2)).all()
    steps = []
    done = outline_tiled(ann.outliner, lazy_image, half, progress=lambda d, t: steps.append(d))
    assert done.properties["outlined"].all() and steps[-1] == len(steps) - 1 > 0
    _same(done, full, min_iou=0.99)  # outlined in another window: bfloat16 noise (learned)
    cancelled = outline_tiled(ann.outliner, lazy_image, lazy, cancel=lambda: True)
    np.testing.assert_array_equal(cancelled.properties["outlined"], flag)  # nothing lost


def test_tiled_lazy_outlining_equals_outlining_everything_ncc(tmp_path):
    _check_tiled(Annotator(matcher="ncc", outliner="otsu", device="cpu"), 0.5, tmp_path)


@pytest.mark.skipif(shipped_path("matcher") is None or shipped_path("contour") is None,
                    reason="the learned models are not shipped in this checkout")
def test_tiled_lazy_outlining_equals_outlining_everything_learned(tmp_path):
    _check_tiled(Annotator(matcher="learned", outliner="learned", device="cpu"), 0.3, tmp_path)


@pytest.mark.parametrize("names", [("ncc", "otsu"), ("learned", "learned")])
def test_box_to_polygon_and_refine_on_a_lazy_image(names):
    """``outline_boxes`` / ``refine_polygons`` on a dask image, window by window, give what the
    Annotator gives on the whole image; bad input is one clear error."""
    import dask.array as da

    from napari_instanno.errors import InstannoError
    from napari_instanno.inference.tiled_outlines import outline_boxes, refine_polygons

    if names[1] == "learned" and shipped_path("contour") is None:
        pytest.skip("the learned contour model is not shipped in this checkout")
    image, box = nuclei_sample()
    ann = Annotator(matcher=names[0], outliner=names[1], device="cpu").set_image(image)
    boxes = ann.find_similar(box, score_threshold=0.5).boxes[:6]
    lazy = da.from_array(image, chunks=64)
    vr = ((0,) * 3, (255,) * 3)  # the Annotator's uint8 range
    got = outline_boxes(ann.outliner, lazy, boxes, value_range=vr)
    want = ann.boxes_to_polygons(boxes)
    assert len(got) == len(want) == len(boxes) > 3
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=0.05)
    edited = [p + [1.5, -1.0] for p in want[:2]]  # moved a little
    refined = refine_polygons(ann.outliner, lazy, edited, value_range=vr)
    for g, p in zip(refined, edited, strict=True):
        np.testing.assert_allclose(g, ann.refine(p), atol=0.05)
    assert outline_boxes(ann.outliner, lazy, boxes, cancel=lambda: True) == [None] * len(boxes)
    assert refine_polygons(ann.outliner, lazy, edited, cancel=lambda: True) == [None] * 2
    with pytest.raises(InstannoError, match="outside"):
        outline_boxes(ann.outliner, lazy, [[300, 300, 320, 320]])
    with pytest.raises(InstannoError, match="at least 3"):
        refine_polygons(ann.outliner, lazy, [np.array([[1.0, 1.0], [5.0, 5.0]])])
