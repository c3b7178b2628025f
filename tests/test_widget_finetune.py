"""The widget's *Fine-tune on accepted* (#17): refused politely with fewer than 3 accepted shapes,
progress while it trains in the background, Cancel leaves nothing behind, and the new model
folder joins the model choice, is chosen, and the next run uses it; nothing accepted changes."""

from __future__ import annotations

import numpy as np
import pytest
import torchvision  # noqa: F401  (before any viewer: see test_widgets)
from napari.utils.notifications import notification_manager

from napari_instanno.napari.finetuning import USER_MODELS_ENV, training_set
from napari_instanno.napari.layers import all_shapes
from napari_instanno.napari.widgets import FindSimilarWidget

from .conftest import docked_widget

pytestmark = pytest.mark.gui
TIMEOUT_MS = 120_000


def _errors_since(n: int) -> list[str]:
    return [str(r.message) for r in notification_manager.records[n:]
            if r.severity.name == "ERROR"]


def _snapshot(layer):
    data, _, feats = all_shapes(layer)
    return [np.array(v) for v in data], list(feats["status"])


def test_fine_tune_on_accepted(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv(USER_MODELS_ENV, str(tmp_path / "user"))
    viewer = make_napari_viewer()
    widget = docked_widget(viewer)
    assert widget._models.choices == ("",)  # the shipped weights only
    widget.find_similar()
    layer = viewer.layers["nuclei instances"]
    widget.accept([0, 1])
    seen = len(notification_manager.records)
    widget._finetune.native.click()  # the button: a one-line notification, nothing started
    assert not widget.busy
    err = _errors_since(seen)
    assert len(err) == 1 and "at least 3 accepted shapes" in err[0] and "has 2" in err[0]
    assert "\n" not in err[0] and widget._info.value == err[0]

    widget.accept_all()
    before = _snapshot(layer)
    n_accepted = before[1].count("accepted")
    widget.fine_tune(steps=500, wait=False)  # long: cancelled after its first steps
    assert widget.busy and not widget._run.enabled and widget._cancel.enabled
    qtbot.waitUntil(lambda: widget._bar.value >= 1, timeout=TIMEOUT_MS)
    assert widget._bar.max == 1000  # the matcher's steps, then the contour regressor's
    assert widget._info.value == "Fine-tune..."
    widget._cancel.native.click()
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)
    assert widget._info.value == "cancelled; nothing changed"
    assert not any((tmp_path / "user").glob("*")) and widget._models.choices == ("",)

    widget.save(tmp_path / "mine.json")  # the next folder goes next to the saved annotations
    made = widget.fine_tune(steps=1)
    folder = tmp_path / "mine-model"
    assert made == {"matcher": folder / "matcher.safetensors",
                    "contour": folder / "contour.safetensors"}
    for card in ("matcher.md", "contour.md"):
        assert f"{n_accepted} accepted shapes of 'nuclei instances'" in (folder / card).read_text()
    assert widget._models.value == str(folder) and widget._models.current_choice == \
        f"{tmp_path.name}/mine-model"
    assert (widget._matcher.value, widget._outliner.value) == ("learned", "learned")
    assert f"on {n_accepted} accepted shapes" in widget._info.value
    assert "contour regressor" in widget._info.value and str(folder) in widget._info.value
    after = _snapshot(layer)  # nothing the user accepted moved or changed status
    assert after[1] == before[1] and all(np.array_equal(a, b) for a, b in zip(after[0], before[0]))

    widget.find_similar()  # the re-run uses the new folder
    assert "with models 'mine-model'" in widget._info.value
    assert widget._annotators._names == ("learned", "learned", str(folder))
    kept = _snapshot(layer)
    accepted = [v for v, s in zip(*before) if s == "accepted"]
    assert all(any(np.array_equal(a, v) for v in kept[0]) for a in accepted)

    again = FindSimilarWidget(viewer)  # a later session offers it too
    viewer.window.add_dock_widget(again)
    assert str(folder) in again._models.choices


def test_training_set_keeps_accepted_on_the_plane_and_boxes_as_boxes():
    from napari_instanno.instances import Instances

    square = np.array([[0, 0], [0, 10], [10, 10], [10, 0.0]])
    diamond = np.array([[0, 5], [5, 10], [10, 5], [5, 0.0]])
    inst = Instances(polygons=[square, diamond, diamond + 20, diamond + 40],
                     status=np.array(["accepted", "accepted", "rejected", "accepted"], object),
                     properties={"plane": np.array([0, 0, 0, 1])})
    train, outlined = training_set(inst, (0,))
    assert len(train) == 2 and outlined == 1
    assert len(train.polygons[0]) == 0 and np.allclose(train.boxes[0], [0, 0, 10, 10])


def test_a_model_folder_taught_from_boxes_stretches_the_outlines_and_says_so(
        make_napari_viewer, tmp_path, monkeypatch):
    import shutil

    from napari_instanno.geometry import polygon_box
    from napari_instanno.models.weights import TAUGHT_FROM, add_metadata, shipped_path

    folder = tmp_path / "user" / "boxes-model"  # as `train matcher --from` makes from boxes only
    folder.mkdir(parents=True)
    shutil.copy(shipped_path("matcher"), folder / "matcher.safetensors")
    add_metadata(folder / "matcher.safetensors", {TAUGHT_FROM: "boxes"})
    monkeypatch.setenv(USER_MODELS_ENV, str(tmp_path / "user"))
    viewer = make_napari_viewer()
    widget = docked_widget(viewer, matcher="learned", outliner="learned")
    widget._models.value = str(folder)
    inst = widget.find_similar()
    assert "with models 'boxes-model' (taught from boxes: outlines stretched to them)" in \
        widget._info.value
    outlined = np.flatnonzero(inst.properties["outlined"])
    assert len(outlined) >= 10
    bounds = np.stack([polygon_box(inst.polygons[i]) for i in outlined])
    np.testing.assert_allclose(bounds, inst.boxes[outlined], atol=1e-6)
    widget._models.value = ""  # the shipped models: outlines as the regressor draws them
    widget.find_similar()
    assert "stretched" not in widget._info.value


def test_fine_tune_on_a_lazy_layer_reads_the_window_around_the_accepted(
        make_napari_viewer, qtbot, tmp_path, monkeypatch):
    import dask.array as da

    from napari_instanno.samples import nuclei_sample

    monkeypatch.setenv(USER_MODELS_ENV, str(tmp_path / "user"))
    image, box = nuclei_sample()
    big = np.zeros((600, 700), image.dtype)
    big[300:556, 400:656] = image  # the nuclei sit in one corner of a larger lazy image
    viewer = make_napari_viewer()
    viewer.add_image(da.from_array(big, chunks=128), name="lazy")
    widget = FindSimilarWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget._matcher.value, widget._outliner.value = "ncc", "otsu"
    widget.add_reference(box + [400, 300, 400, 300])
    widget.find_similar()
    widget.accept_all()
    made = widget.fine_tune(steps=1)
    assert set(made) == {"matcher", "contour"}
    card = (made["matcher"].parent / "matcher.md").read_text()
    assert "image 'lazy'" in card and ", window x " in card
    x0 = int(card.split(", window x ")[1].split("-")[0])
    assert 300 <= x0 <= 400  # the window starts near the nuclei, not at the image's corner


def test_training_window_refuses_shapes_spread_over_more_than_memory_allows():
    from napari_instanno.errors import InstannoError
    from napari_instanno.instances import Instances
    from napari_instanno.napari.finetuning import shifted, training_window

    boxes = np.array([[10, 10, 30, 30], [100, 50, 120, 80.0]])
    inst = Instances(polygons=[np.zeros((0, 2))] * 2, boxes=boxes)
    y0, y1, x0, x1 = training_window(inst, (5000, 5000))
    assert (y0, x0) == (0, 0) and y1 == 80 + 32 and x1 == 120 + 32  # boxes + the halo
    np.testing.assert_allclose(shifted(inst, 5, 7).boxes, boxes - [7, 5, 7, 5])
    far = Instances(polygons=[np.zeros((0, 2))] * 2,
                    boxes=np.array([[0, 0, 20, 20], [9000, 9000, 9020, 9020.0]]))
    with pytest.raises(InstannoError, match="accept shapes within 4096x4096"):
        training_window(far, (10000, 10000))
