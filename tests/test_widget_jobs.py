"""The widget's background work under bad timing: the slider moved while the shapes below the
shown score are being outlined, a new reference while that job runs, the viewer closed during a
job. No crash, no stale shapes, no lost reviewed shapes. NCC + Otsu, slowed down where a job
must still be running when the user acts."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torchvision  # noqa: F401  (before any viewer: see test_widgets)
from napari.utils.notifications import notification_manager

from napari_instanno.inference.annotator import Annotator
from napari_instanno.napari.layers import all_shapes
from napari_instanno.napari.shapes_data import box_to_rectangle, shapes_to_instances
from napari_instanno.napari.widgets import FindSimilarWidget
from napari_instanno.samples import nuclei_sample

from .conftest import docked_widget

pytestmark = pytest.mark.gui
TIMEOUT_MS = 60_000
SLOW_S = 0.4  # per Annotator.outline call (the lazy job makes several)


@pytest.fixture
def setup(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    return viewer, docked_widget(viewer), qtbot


@pytest.fixture
def slow_outline(monkeypatch):
    """Annotator.outline (the lazy job's step) takes SLOW_S longer, and smaller steps."""
    from napari_instanno.napari import annotators

    real = Annotator.outline

    def slow(self, inst, min_score=0.0):
        time.sleep(SLOW_S)
        return real(self, inst, min_score)

    monkeypatch.setattr(Annotator, "outline", slow)
    monkeypatch.setattr(annotators, "OUTLINE_STEP", 4)


def _wait(qtbot, widget) -> None:
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)


def _errors_since(n: int) -> list[str]:
    return [str(r.message) for r in notification_manager.records[n:]
            if r.severity.name == "ERROR"]


def _everything(layer):
    """Every shape of the layer, shown and hidden, as Instances."""
    return shapes_to_instances(*all_shapes(layer))


def _full_run(box) -> np.ndarray:
    """The scores of every candidate, all outlined at once, as the API gives them."""
    image, _ = nuclei_sample()
    return np.sort(Annotator(matcher="ncc", outliner="otsu", device="cpu").set_image(image)
                   .find_similar(box, category="nucleus").scores)


def _lazy_job_running(qtbot, widget) -> None:
    qtbot.waitUntil(lambda: widget._jobs.busy and widget._jobs._background, timeout=TIMEOUT_MS)


def test_slider_moves_while_outlining_and_ends_with_the_full_run(setup, slow_outline):
    viewer, widget, qtbot = setup
    box = widget.reference_box()
    full = _full_run(box)
    assert widget.run() is not None
    _wait(qtbot, widget)
    layer = widget.result_layer()
    assert len(layer.data) == int((full >= 0.3).sum()) < len(full)  # only the shown outlined
    layer.selected_data = {0, 1}
    widget.accept_selected()

    widget._threshold.value = 0.25  # down: a background job outlines 0.25 .. 0.3
    _lazy_job_running(qtbot, widget)
    assert widget._run.enabled  # a background job leaves Run usable
    widget._threshold.value = 0.0  # down again while it runs: superseded by one down to 0
    widget._threshold.value = 0.9  # and up: the late shapes arrive hidden
    _wait(qtbot, widget)
    assert (layer.features["score"] >= 0.9).all()
    everything = _everything(layer)
    np.testing.assert_allclose(np.sort(everything.scores), full)  # all of them, none twice
    widget._threshold.value = 0.0
    _wait(qtbot, widget)
    assert len(layer.data) == len(full)
    assert list(layer.features["status"]).count("accepted") == 2  # the review is kept


def test_a_lazy_image_outlines_what_is_shown_first_and_the_rest_when_the_slider_goes_down(
        make_napari_viewer, qtbot):
    import dask.array as da

    from napari_instanno.inference.tiling import find_similar_tiled

    image, box = nuclei_sample()
    viewer = make_napari_viewer()
    viewer.add_image(da.from_array(image, chunks=64), name="lazy")  # goes through the tiler
    widget = FindSimilarWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget._matcher.value, widget._outliner.value = "ncc", "otsu"
    viewer.layers["reference"].add_rectangles([box_to_rectangle(box)])
    full = find_similar_tiled(Annotator(matcher="ncc", outliner="otsu", device="cpu"),
                              da.from_array(image, chunks=64), box)
    shown = float(widget._threshold.value)
    assert widget.run() is not None
    _wait(qtbot, widget)
    layer = widget.result_layer()
    assert len(layer.data) == int((full.scores >= shown).sum()) < len(full)
    assert widget._pending is not None and widget._pending.tiled  # the rest wait, not outlined
    layer.selected_data = {0}
    widget.accept_selected()
    widget._threshold.value = 0.0  # down: outlined window by window in the background
    _wait(qtbot, widget)
    assert len(layer.data) == len(full)
    everything = _everything(layer)
    np.testing.assert_allclose(np.sort(everything.scores), np.sort(full.scores))
    got = np.sort([p.mean(axis=0) for p in everything.polygons], axis=0)
    np.testing.assert_allclose(got, np.sort([p.mean(axis=0) for p in full.polygons], axis=0),
                               atol=1e-6)  # the outlines a full run gives, not the stand-ins
    assert list(layer.features["status"]).count("accepted") == 1
    assert "more outlined" in widget._info.value


def test_new_reference_while_outlining_leaves_no_stale_shapes(setup, slow_outline):
    viewer, widget, qtbot = setup
    first = widget.reference_box()
    assert widget.run() is not None
    _wait(qtbot, widget)
    layer = widget.result_layer()
    layer.selected_data = {0}
    widget.accept_selected()
    accepted = np.array(layer.data[0])

    widget._threshold.value = 0.0
    _lazy_job_running(qtbot, widget)
    ref = viewer.layers["reference"]
    second = np.array([first[0] - 100, first[1], first[2] - 100, first[3]], float)
    ref.add_rectangles([box_to_rectangle(second)])
    ref.selected_data = {len(ref.data) - 1}
    n = len(notification_manager.records)
    assert widget.run() is not None  # the outlining job gives way, no "still working"
    _wait(qtbot, widget)
    assert not _errors_since(n)
    found = widget._jobs.result  # what the new run found (slider at 0: all outlined at once)
    assert found.properties["outlined"].all()
    feats = layer.features
    proposed = np.sort(feats["score"][feats["status"] == "proposed"].to_numpy())
    # only the new run's proposals: none left from the old one's outlining job
    assert np.isin(proposed, found.scores).all()
    assert len(found) - 1 <= len(proposed) <= len(found)  # one may overlap the accepted shape
    assert (feats["status"] == "accepted").sum() == 1
    kept = [np.array(d) for d, s in zip(layer.data, feats["status"], strict=True) if s == "accepted"]
    np.testing.assert_allclose(kept[0], accepted)  # the accepted shape, untouched


@pytest.mark.parametrize("which", ["run", "outlining"])
def test_closing_the_viewer_during_a_job_is_quiet(qtbot, monkeypatch, slow_outline, which):
    import napari

    real = Annotator.find_similar

    def slow_find(self, *args, **kwargs):
        time.sleep(1.0)
        return real(self, *args, **kwargs)

    viewer = napari.Viewer(show=False)
    viewer.open_sample("napari-instanno", "nuclei")
    widget = FindSimilarWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget._matcher.value, widget._outliner.value = "ncc", "otsu"
    if which == "outlining":
        assert widget.run() is not None
        _wait(qtbot, widget)
        widget._threshold.value = 0.0
        _lazy_job_running(qtbot, widget)
    else:
        monkeypatch.setattr(Annotator, "find_similar", slow_find)
        assert widget.run() is not None
    worker = widget._jobs._worker
    finished = []
    worker.finished.connect(lambda: finished.append(True))
    n = len(notification_manager.records)
    viewer.close()  # the job's callbacks now find the widget gone; pytest-qt fails on any raise
    qtbot.waitUntil(lambda: bool(finished), timeout=TIMEOUT_MS)
    qtbot.wait(200)
    assert not _errors_since(n)


def test_models_load_in_the_background_when_the_widget_opens(make_napari_viewer, qtbot,
                                                              monkeypatch):
    import threading

    from napari_instanno.napari import annotators

    built = []
    real = annotators._build

    def build(names):
        built.append((names, threading.current_thread().name))
        return real(names)

    monkeypatch.setattr(annotators, "_build", build)
    viewer = make_napari_viewer()
    viewer.open_sample("napari-instanno", "nuclei")
    widget = FindSimilarWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget._matcher.value, widget._outliner.value = "ncc", "otsu"
    qtbot.waitUntil(lambda: bool(built), timeout=TIMEOUT_MS)  # before any click
    assert built == [(("ncc", "otsu", ""), "instanno-model-load")]  # once, for the final choice
    assert widget.run() is not None
    _wait(qtbot, widget)
    assert len(built) == 1 and len(widget.result_layer().data) > 10  # the click reused it


def test_a_run_before_the_models_are_loaded_says_it_waits_for_them(make_napari_viewer, qtbot,
                                                                   monkeypatch):
    """Run pressed while the widget still loads its models: the status line says what the job
    waits for, the result comes once they are there, and later runs no longer say it."""
    import threading

    from napari_instanno.napari import annotators

    gate, real = threading.Event(), annotators._build
    monkeypatch.setattr(annotators, "_build", lambda names: (gate.wait(60), real(names))[1])
    viewer = make_napari_viewer()
    try:
        widget = docked_widget(viewer)
        qtbot.waitUntil(lambda: widget._annotators.loading(widget._names()), timeout=TIMEOUT_MS)
        assert widget.run() is not None
        assert widget._info.value == "Find similar (waiting for the models to load, once)..."
        gate.set()
        _wait(qtbot, widget)
        assert "instances found" in widget._info.value
        n = len(viewer.layers["nuclei instances"].data)
        assert n > 0
        assert widget.run() is not None
        assert widget._info.value == "Find similar..."
        _wait(qtbot, widget)
        assert len(viewer.layers["nuclei instances"].data) == n
    finally:
        gate.set()
