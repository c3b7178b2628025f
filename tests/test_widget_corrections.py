"""The widget's correction loop (#17): accepted shapes become positives, rejected ones negatives,
and a re-run never duplicates, moves or removes what the user accepted or edited."""

from __future__ import annotations

import numpy as np
import pytest
import torchvision  # noqa: F401  (before any viewer: see test_widgets)

from napari_instanno.geometry import box_iou
from napari_instanno.napari.proposals import MAX_POSITIVES, choose_references
from napari_instanno.napari.shapes_data import rectangle_to_box
from napari_instanno.napari.widgets import FindSimilarWidget

pytestmark = pytest.mark.gui
TIMEOUT_MS = 60_000


def _run(viewer, widget, qtbot):
    assert widget.run() is not None
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)
    return viewer.layers["nuclei instances"]


def _user_moves(layer, i: int, shift: np.ndarray) -> np.ndarray:
    """Drag shape ``i`` by ``shift`` (row, col) as napari's select tool does: edit, then one
    ``data`` event for the selected shapes."""

    moved = np.asarray(layer.data[i]) + shift
    layer._data_view.edit(i, moved)
    layer.selected_data = {i}
    layer.events.data(value=layer.data, action="changed", data_indices=(i,),
                      vertex_indices=(tuple(range(len(moved))),))
    return moved


def test_accept_reject_edit_and_run_again(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-instanno", "nuclei")
    widget = FindSimilarWidget(viewer)
    widget._matcher.value, widget._outliner.value = "ncc", "otsu"
    layer = _run(viewer, widget, qtbot)
    assert "from 1 positive(s), 0 negative(s)" in widget._info.value
    n = len(layer.data)
    order = np.argsort(layer.features["score"].to_numpy())
    weak = [int(i) for i in order[:2]]  # the weakest matches: the most informative positives
    layer.selected_data = set(weak)
    widget.accept_selected()
    rejected = int(order[-5])  # not the reference itself (that one would contradict it)
    layer.selected_data = {rejected}
    widget.reject_selected()
    edited = int(order[len(order) // 2])
    moved = _user_moves(layer, edited, np.array([1.5, -1.0]))
    assert layer.features["status"][edited] == "accepted"  # an edit keeps the shape
    keep = {i: (np.array(layer.data[i]), layer.features["status"][i]) for i in [*weak, edited,
                                                                             rejected]}

    _run(viewer, widget, qtbot)
    assert "from 4 positive(s), 1 negative(s)" in widget._info.value
    feats = layer.features
    reviewed = [np.array(layer.data[i]) for i in np.flatnonzero(feats["status"] != "proposed")]
    for verts, status in keep.values():  # still there, unmoved, same status
        hit = [k for k, v in enumerate(layer.data) if v.shape == verts.shape
               and np.array_equal(v, verts)]
        assert len(hit) == 1 and feats["status"][hit[0]] == status
    assert len(reviewed) == 4
    assert any(np.array_equal(v, moved) for v in layer.data)
    boxes = np.array([rectangle_to_box(v) for v in layer.data])
    iou = box_iou(boxes, boxes)
    assert (iou[np.triu_indices(len(boxes), 1)] < 0.5).all()  # nothing twice
    assert len(layer.data) >= n - 1


def test_choose_references_orders_caps_and_drops_contradictions():
    drawn = np.array([[10, 10, 20, 20.0]])
    acc = np.array([[30, 30, 41, 41], [50, 50, 60, 60], [70, 70, 200, 200], [90, 90, 99, 99.0]])
    rej = np.array([[50, 51, 60, 61], [0, 100, 10, 110.0]])
    pos, neg = choose_references(drawn, (acc, np.array([0.9, 1.0, 0.5, 0.4])),
                                 (rej, np.array([0.8, 0.3])), (256, 256))
    # drawn first, then hand-made (score 1), then weakest first; the 130-px one is out of range
    np.testing.assert_array_equal(pos, [drawn[0], acc[1], acc[3], acc[0]])
    np.testing.assert_array_equal(neg, [rej[1]])  # the other is the same object as a positive
    many = np.array([[k * 12.0, 0, k * 12 + 10, 10] for k in range(20)])
    pos, _ = choose_references(drawn, (many, np.full(20, 0.5)), (np.zeros((0, 4)), []), (256, 256))
    assert len(pos) == MAX_POSITIVES
