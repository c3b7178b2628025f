"""The widget driven from code, as a notebook does: every action with explicit arguments, waiting
for its job, and bad input raised as ``InstannoError`` with the GUI's message."""

from __future__ import annotations

import numpy as np
import pytest
import torchvision  # noqa: F401  (before any viewer: see test_widgets)
from pycocotools.coco import COCO

from napari_instanno import InstannoError
from napari_instanno.napari import FindSimilarWidget

pytestmark = pytest.mark.gui


@pytest.fixture
def widget(make_napari_viewer, discs):
    image, centres = discs  # 128 x 128, 16 discs of radius 8
    viewer = make_napari_viewer()
    widget = FindSimilarWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget._matcher.value, widget._outliner.value = "ncc", "otsu"
    viewer.add_image(image, name="discs")
    widget.set_image_layer("discs")
    return widget, centres


def _box(centre, half=10.0):
    r, c = centre
    return [c - half, r - half, c + half, r + half]


def test_the_whole_loop_from_code(widget, tmp_path):
    widget, centres = widget
    widget.add_reference(_box(centres[0]))
    found = widget.find_similar(timeout=60)
    assert len(found) >= len(centres)  # every disc (weak matches too: all scores)
    layer = widget.result_layer()
    shown = widget.set_min_score(0.5)
    assert shown == len(layer.data) == int((found.scores >= 0.5).sum())
    assert widget.accept(min_score=0.8) == int((found.scores >= 0.8).sum())
    assert widget.reject([0]) == 1
    statuses = layer.features["status"].tolist()
    assert statuses[0] == "rejected" and statuses.count("accepted") >= 1
    polys = widget.outline_boxes([[2, 2, 14, 14]])
    assert len(polys) == 1 and len(widget.result_layer().data) == shown + 1
    saved = widget.save(tmp_path / "discs.json")
    coco = COCO(str(saved))
    assert len(coco.anns) == len(widget.instances()) - 1  # the rejected shape is left out
    widget._viewer.layers.remove(layer)
    assert widget.load(saved) == len(coco.anns)


def test_bad_input_from_code_raises_the_guis_message(widget):
    widget, centres = widget
    with pytest.raises(InstannoError, match="outside"):
        widget.add_reference([500, 500, 520, 520])
    with pytest.raises(InstannoError, match="no layer named"):
        widget.set_image_layer("nope")
    with pytest.raises(InstannoError, match="indices or a score"):
        widget.accept()
    widget.add_reference(_box(centres[0]))
    widget.run()
    with pytest.raises(InstannoError, match="still working"):
        widget.run()
    widget.wait(60)
    with pytest.raises(InstannoError, match="no result shape 999"):
        widget.reject([999])
    widget._viewer.layers.remove("discs")
    with pytest.raises(InstannoError, match="no image layer"):
        widget.find_similar()


def test_a_failed_job_is_raised_by_wait(widget, monkeypatch):
    from napari_instanno.inference.annotator import Annotator

    widget, centres = widget

    def boom(*args, **kwargs):
        raise InstannoError("the matcher ran out of ideas")

    monkeypatch.setattr(Annotator, "find_similar", boom)
    widget.add_reference(_box(centres[0]))
    with pytest.raises(InstannoError, match="ran out of ideas"):
        widget.find_similar(timeout=60)
    assert not widget.busy
    np.testing.assert_equal(len(widget.result_layer().data), 0)
