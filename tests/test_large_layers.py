"""Level of detail for huge result sets: overview when zoomed out, visible polygons when in."""

from __future__ import annotations

import numpy as np
import pytest

from napari_instanno.geometry import ellipse_polygon
from napari_instanno.instances import Instances

napari = pytest.importorskip("napari")
from napari.components import ViewerModel  # noqa: E402

from napari_instanno.napari.large_layers import LevelOfDetail, camera, select_visible  # noqa: E402

N, SIDE = 20_000, 4000


def _instances() -> Instances:
    rng = np.random.default_rng(1)
    xy = rng.uniform(10, SIDE - 10, size=(N, 2))
    boxes = np.concatenate([xy - 4, xy + 4], axis=1)
    return Instances(polygons=[ellipse_polygon(b, 12) for b in boxes], boxes=boxes,
                     scores=rng.uniform(0.5, 1, N))


def test_select_visible():
    boxes = np.array([[0, 0, 10, 10], [100, 100, 110, 110], [50, 0, 60, 5.0]])
    assert select_visible(boxes, (0, 20, 0, 20), 5).tolist() == [0]
    assert select_visible(boxes, (0, 200, 0, 200), 5).tolist() == [0, 1, 2]
    assert select_visible(boxes, (0, 200, 0, 200), 2) is None


def test_overview_when_zoomed_out_polygons_when_zoomed_in_and_edits_kept():
    viewer = ViewerModel()
    viewer.add_image(np.zeros((SIDE, SIDE), np.uint8))
    viewer.reset_view()
    lod = LevelOfDetail(viewer, _instances(), max_shapes=2000)
    assert lod.points.visible and not lod.shapes.visible
    assert len(lod.points.data) == N and len(lod.shapes.data) == 0

    camera(viewer).center = (2000, 2000)
    camera(viewer).zoom = 2.0  # a 400 x 300 view
    assert lod.shapes.visible and not lod.points.visible
    shown = len(lod.shapes.data)
    assert 0 < shown <= 2000
    y0, y1, x0, x1 = lod.drawn
    centres = lod.points.data[lod.shown]
    assert ((centres[:, 0] > y0 - 5) & (centres[:, 0] < y1 + 5)).all()

    # edit: move one polygon, delete another, mark a third accepted
    data = list(lod.shapes.data)
    data[0] = data[0] + 3.0
    moved = data[0].copy()
    lod.shapes.data = list(zip(data, ["polygon"] * len(data), strict=True))
    feats = lod.shapes.features.copy()
    feats.loc[2, "status"] = "accepted"
    lod.shapes.features = feats
    lod.shapes.selected_data = {1}
    lod.shapes.remove_selected()

    camera(viewer).center = (500, 500)  # away: the layer is rebuilt, the edits go to the full set
    camera(viewer).zoom = 2.0
    full = lod.instances()
    assert len(full) == N - 1
    assert any(p.shape == moved.shape and np.allclose(p - 0.5, moved) for p in full.polygons)
    assert (full.status == "accepted").sum() == 1
    camera(viewer).zoom = 0.1  # zoomed out again: overview of everything kept
    assert lod.points.visible and len(lod.points.data) == N - 1
    lod.close()


def test_found_before_matches_dense_box_iou():
    from napari_instanno.geometry import box_iou
    from napari_instanno.napari.proposals import overlapping as _found_before

    rng = np.random.default_rng(2)
    old = rng.uniform(0, 200, (300, 2))
    old = np.concatenate([old, old + rng.uniform(2, 12, (300, 2))], axis=1)
    new = np.concatenate([old[:100] + rng.uniform(-1, 1, (100, 4)),
                          rng.uniform(0, 200, (200, 2)).repeat(2, axis=1) + [0, 0, 6, 6]])
    expected = box_iou(new, old).max(axis=1) >= 0.5
    assert 50 < expected.sum() < len(new)
    assert np.array_equal(_found_before(new, old, 0.5), expected)
    assert not _found_before(new, old[:0], 0.5).any()
