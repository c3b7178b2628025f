"""The widget's *All planes* on a stack: one result layer with each shape at its plane, track
ids shown, whole tracks reviewed, saved and loaded with their planes and tracks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_instanno.napari.shapes_data import TRACK, box_to_rectangle
from napari_instanno.napari.widgets import FindSimilarWidget

from .stack_scenes import drifting_discs

pytestmark = pytest.mark.gui
PLANES, REF_PLANE = 6, 2


@pytest.fixture
def run_all_planes(make_napari_viewer, qtbot):
    stack, discs = drifting_discs(planes=PLANES, n=20, drift=1.5)
    viewer = make_napari_viewer()
    viewer.add_image(stack, name="cells")
    viewer.dims.set_current_step(0, REF_PLANE)
    widget = FindSimilarWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget._matcher.value, widget._outliner.value = "ncc", "otsu"
    (r, c), rad = discs[0].at(REF_PLANE)
    box = [c - rad - 2, r - rad - 2, c + rad + 2, r + rad + 2]
    viewer.layers["reference"].add_rectangles([box_to_rectangle(box, (REF_PLANE,))])
    widget._threshold.value = 0.5
    widget._all_planes.value = True
    assert widget.run() is not None
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)
    return viewer, widget, viewer.layers["cells instances"]


def test_all_planes_fill_one_layer_with_each_shape_at_its_plane(run_all_planes):
    viewer, widget, layer = run_all_planes
    planes = np.array([int(np.asarray(d)[0, 0]) for d in layer.data])
    assert np.bincount(planes).tolist() == [20] * PLANES
    assert all((np.asarray(d)[:, 0] == p).all() for d, p in zip(layer.data, planes, strict=True))
    tracks = layer.features[TRACK].to_numpy()
    assert len(np.unique(tracks)) == 20 and "20 tracks on 6 planes" in widget._info.value
    assert layer.text.string.format == "{track_id:.0f}"  # each shape's track id drawn by it
    for k in (0, 4):  # scrolling through the planes shows that plane's 20 polygons
        viewer.dims.set_current_step(0, k)
        shown = np.flatnonzero(layer._data_view._displayed)
        assert shown.tolist() == np.flatnonzero(planes == k).tolist()


def test_accept_track_reviews_the_whole_track_on_every_plane(run_all_planes):
    viewer, widget, layer = run_all_planes
    tracks = layer.features[TRACK].to_numpy()
    one = int(np.flatnonzero(tracks == tracks[5])[3])
    layer.selected_data = {one}
    widget._accept_track.clicked.emit()
    status = layer.features["status"].to_numpy()
    assert (status[tracks == tracks[5]] == "accepted").all()
    assert (status[tracks != tracks[5]] == "proposed").all()
    assert (tracks == tracks[5]).sum() == PLANES
    layer.selected_data = {0}
    assert widget.review_tracks("rejected") == PLANES
    assert (layer.features["status"].to_numpy()[tracks == tracks[0]] == "rejected").all()


def test_saved_coco_has_a_plane_per_image_and_loads_back_onto_the_planes(run_all_planes, tmp_path):
    viewer, widget, layer = run_all_planes
    out = widget.save(tmp_path / "s.json")
    data = json.loads(out.read_text())
    assert [im["plane"] for im in data["images"]] == list(range(PLANES))
    assert len({a["track_id"] for a in data["annotations"]}) == 20
    viewer.layers.remove(layer)
    assert widget.load(out) == 20 * PLANES
    again = viewer.layers["cells instances"]
    planes = np.array([int(np.asarray(d)[0, 0]) for d in again.data])
    assert np.bincount(planes).tolist() == [20] * PLANES
    assert len(np.unique(again.features[TRACK])) == 20


def test_the_file_reader_opens_a_stack_file_as_one_layer_at_the_planes(tmp_path):
    from napari_instanno.inference.annotator import Annotator
    from napari_instanno.io.coco import plane_items, write_coco
    from napari_instanno.napari._reader import read_coco_layers, read_geojson_layer

    stack, discs = drifting_discs(planes=4, n=9, size=96)
    (r, c), rad = discs[0].at(0)
    inst = Annotator(matcher="ncc", outliner="otsu", device="cpu").find_similar_stack(
        stack, [c - rad - 2, r - rad - 2, c + rad + 2, r + rad + 2], score_threshold=0.5)
    coco = write_coco(tmp_path / "s.json", plane_items(inst))
    for layers in (read_coco_layers(str(coco)), read_geojson_layer(str(inst.to_geojson(
            tmp_path / "s.geojson")))):
        assert len(layers) == 1
        data, kwargs, kind = layers[0]
        planes = [int(d[0, 0]) for d in data]
        assert kind == "shapes" and np.bincount(planes).tolist() == [9] * 4
        assert len(np.unique(kwargs["features"][TRACK])) == 9


def test_a_rerun_on_one_plane_replaces_that_plane_only():
    from napari.layers import Shapes

    from napari_instanno.instances import Instances
    from napari_instanno.napari.layers import add_instances, set_status

    square = np.array([[10.0, 10.0], [10.0, 20.0], [20.0, 20.0], [20.0, 10.0]])
    stack = Instances(polygons=[square] * 3, categories={1: "cell"},
                      properties={"plane": np.arange(3), TRACK: np.zeros(3, np.int64)})
    layer = Shapes(ndim=3)
    add_instances(layer, stack, (0,), replace_category="cell")
    set_status(layer, [0], "accepted")  # plane 0's square
    again = Instances(polygons=[square + 0.5], categories={1: "cell"}, scores=[0.9])
    add_instances(layer, again, (1,), replace_category="cell")  # a new run on plane 1
    planes = sorted(int(np.asarray(d)[0, 0]) for d in layer.data)
    assert planes == [0, 1, 2]  # planes 0 and 2 untouched; plane 1's proposal replaced, not
    assert sorted(layer.features["score"].tolist()) == [0.9, 1.0, 1.0]  # blocked by plane 0's
    add_instances(layer, again, (0,), replace_category="cell")  # on plane 0: the accepted stays
    assert sorted(int(np.asarray(d)[0, 0]) for d in layer.data) == [0, 1, 2]
