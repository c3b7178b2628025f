"""Instances with holes and parts <-> napari Shapes: one shape per ring, grouped, round trips."""

from __future__ import annotations

import numpy as np
import pandas as pd
import shapely
from hypothesis import given
from shapely.geometry import MultiPolygon, Polygon

from napari_instanno import Instances
from napari_instanno.napari.layers import GROUP, ROLE, add_instances, set_status
from napari_instanno.napari.shapes_data import (
    HOLE_FACE,
    instances_to_shapes,
    layer_to_instances,
    shapes_to_instances,
)
from tests.test_formats_fuzz import FAST, instances


def _round_trip(inst: Instances, plane=()) -> Instances:
    kw = instances_to_shapes(inst, plane)
    return shapes_to_instances(kw["data"], kw["shape_type"], kw["features"])


@FAST
@given(inst=instances())
def test_shapes_round_trip_keeps_holes_and_parts(inst):
    for plane in ((), (3.0,)):
        back = _round_trip(inst, plane)
        assert len(back) == len(inst)
        for g, h in zip(inst.geometries, back.geometries, strict=True):
            # same parts, rings and vertex order; only the 0.5 frame shift rounds (1 ulp)
            assert g.geom_type == h.geom_type and shapely.equals_exact(g, h, tolerance=1e-12)
        assert back.status.tolist() == inst.status.tolist()
        assert back.category_names == inst.category_names
        assert np.array_equal(back.scores, inst.scores)


def donut_and_pair() -> Instances:
    donut = Polygon([(10, 10), (50, 10), (50, 50), (10, 50)], [[(20, 20), (30, 20), (30, 30), (20, 30)]])
    pair = MultiPolygon([Polygon([(60, 60), (70, 60), (70, 70)]), Polygon([(80, 80), (90, 80), (90, 90)])])
    square = Polygon([(0, 0), (5, 0), (5, 5), (0, 5)])
    return Instances(geometries=[donut, pair, square], status=["proposed", "accepted", "proposed"])


def test_each_ring_is_a_shape_with_its_instance_and_role():
    from napari.layers import Shapes

    kw = instances_to_shapes(donut_and_pair())
    feats = kw["features"]
    assert feats[GROUP].tolist() == [0, 0, 1, 1, 2] and feats[ROLE].tolist() == [
        "part", "hole", "part", "part", "part"]
    layer = Shapes(kw.pop("data"), **kw)
    assert np.allclose(layer.face_color[1], HOLE_FACE) and layer.face_color[0][3] == 0
    # a hand-drawn shape is an instance of its own, not a ring of the first one
    layer.add([np.array([[100.0, 100], [100, 110], [110, 110]])], shape_type="polygon")
    assert layer.features[GROUP].iloc[-1] == -1
    back = layer_to_instances(layer)
    assert len(back) == 4 and back.areas.tolist()[:3] == [1500.0, 100.0, 25.0]
    # reviewing one ring reviews its whole instance
    set_status(layer, [1], "rejected")
    assert layer.features["status"].tolist()[:2] == ["rejected", "rejected"]
    assert layer_to_instances(layer).status.tolist()[0] == "rejected"


def test_adding_to_a_layer_numbers_new_instances_apart_and_keeps_the_hole_style():
    from napari.layers import Shapes

    layer = Shapes(ndim=2)
    layer.features = pd.DataFrame({"score": [], "category": [], "status": []})
    add_instances(layer, donut_and_pair())
    add_instances(layer, donut_and_pair())
    groups = layer.features[GROUP].tolist()
    assert groups == [0, 0, 1, 1, 2, 3, 3, 4, 4, 5]
    assert np.allclose(layer.face_color[6], HOLE_FACE)
    back = layer_to_instances(layer)
    assert len(back) == 6 and back.geometries[3].equals(donut_and_pair().geometries[0])


def test_a_hole_moved_off_its_part_is_dropped_and_holes_alone_make_nothing():
    kw = instances_to_shapes(donut_and_pair())
    data = list(kw["data"])
    data[1] = data[1] + 500  # the donut's hole dragged far away
    back = shapes_to_instances(data, "polygon", kw["features"])
    assert not back.geometries[0].interiors and back.areas[0] == 1600
    feats = kw["features"].drop(index=0).reset_index(drop=True)  # the donut's exterior deleted
    back = shapes_to_instances(data[1:], "polygon", feats)
    assert len(back) == 2
