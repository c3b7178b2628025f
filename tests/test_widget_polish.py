"""What a person sees in the widget: the dock's title, toasts and the info line, the progress bar,
the category, the edge-colour swatch, which reference box a run used."""

from __future__ import annotations

import re

import pytest

# torch pulls in triton; loading triton after Mesa's GL context exists segfaults (LLVM clash), so
# it is loaded before any viewer is made (as in test_widgets).
import torchvision  # noqa: F401

from .conftest import docked_widget

pytestmark = pytest.mark.gui


def _menu_commands(menu_id: str) -> list[str]:
    from napari._app_model import get_app_model

    return [item.command.title for item in get_app_model().menus.get_menu(menu_id)
            if hasattr(item, "command")]


def test_dock_title_opened_from_the_plugins_menu_is_shown_whole(make_napari_viewer, qtbot):
    from napari._app_model import get_app_model

    viewer = make_napari_viewer(show=True)
    assert "Find similar (Instanno)" in _menu_commands("napari/plugins")  # as the README says
    samples = get_app_model().menus.get_menu("napari/file/samples")
    assert [m.title for m in samples if getattr(m, "submenu", "").endswith("napari-instanno")] == [
        "Instanno"]
    assert _menu_commands("napari/file/samples/napari-instanno")[:2] == [
        "Coins (with a reference box)", "Nuclei, fluorescence (with a reference box)"]
    get_app_model().commands.execute_command("napari-instanno.find_similar_widget").result()
    dock = next(d for name, d in viewer.window._wrapped_dock_widgets.items()
                if name.startswith("Find similar"))
    qtbot.waitUntil(dock.isVisible)
    label = dock.titleBarWidget().title
    assert label.text() == "Find similar (Instanno)"
    assert label.width() >= label.fontMetrics().horizontalAdvance(label.text())


def test_the_samples_and_the_demo_name_their_category_in_the_widget(make_napari_viewer, qtbot):
    from napari_instanno.cli import show_result
    from napari_instanno.inference.annotator import Annotator
    from napari_instanno.napari.widgets import FindSimilarWidget
    from napari_instanno.samples import nuclei_sample

    viewer = make_napari_viewer()
    viewer.open_sample("napari-instanno", "nuclei")
    widget = FindSimilarWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget._category.value == "nucleus"
    viewer.open_sample("napari-instanno", "coins")
    widget.reset_choices()
    widget._image.value = viewer.layers["coins"]
    assert widget._category.value == "coin"

    image, box = nuclei_sample()  # the demo: its result layer and its widget say the same name
    demo = make_napari_viewer()
    inst = Annotator(matcher="ncc", outliner="otsu").set_image(image).find_similar(
        box, category="nucleus")
    demo_widget = show_result(demo, image, inst)
    assert set(demo.layers["nuclei instances"].features["category"]) == {"nucleus"}
    assert demo_widget._category.value == "nucleus"


@pytest.fixture
def nuclei(make_napari_viewer, qtbot):
    """A viewer with the nuclei sample (image + preset reference box) and the docked widget."""
    viewer = make_napari_viewer()
    return viewer, docked_widget(viewer), qtbot


def _finish(qtbot, widget) -> None:
    qtbot.waitUntil(lambda: not widget.busy, timeout=60_000)


def test_edge_colour_swatch_shows_the_shapes_colour(nuclei):
    import numpy as np

    from napari_instanno.styles import STATUS_COLORS

    viewer, widget, qtbot = nuclei
    widget.run()
    _finish(qtbot, widget)
    layer = viewer.layers["nuclei instances"]
    swatch = viewer.window._qt_viewer.controls.widgets[layer]._edge_color_control.edge_color_edit
    assert np.allclose(layer.edge_color, STATUS_COLORS["proposed"])
    assert swatch.line_edit.text() == "yellow"  # was "lime" while every shape was yellow
    layer.selected_data = {0}
    widget.result_layer()  # every action binds the layer again: a selected shape keeps its colour
    assert np.allclose(layer.edge_color[0], STATUS_COLORS["proposed"])
    layer.selected_data = set()
    layer.add_polygons([np.array([[5.0, 5.0], [5.0, 15.0], [15.0, 15.0]])])  # drawn by hand
    assert layer.features["status"].iloc[-1] == "accepted"
    assert np.allclose(layer.edge_color[-1], STATUS_COLORS["accepted"])
    assert np.allclose(layer.edge_color[:-1], STATUS_COLORS["proposed"])
    assert swatch.line_edit.text() == "yellow"


def _toast_line(record, qtbot) -> str:
    """The one line a collapsed toast shows for a notification (elided when it does not fit)."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification
    from qtpy.QtWidgets import QLabel

    toast = NapariQtNotification.from_notification(record)
    toast.show()
    qtbot.waitExposed(toast)
    shown = QLabel.text(toast.message)
    toast.close()  # once: it stops its timer and animations (qtbot would close it a second time)
    return shown


def test_toasts_are_whole_and_the_info_line_never_stale(nuclei, make_napari_viewer):
    from napari.utils.notifications import notification_manager

    from napari_instanno.napari.widgets import FindSimilarWidget

    viewer, widget, qtbot = nuclei
    widget.run()
    _finish(qtbot, widget)
    assert "instances found" in widget._info.value
    ref = viewer.layers["reference"]

    def busy_run():
        widget._run.changed.emit(True)
        widget._run.changed.emit(True)  # pressed again while the first run works

    clicks = [
        (lambda: widget._box2poly.changed.emit(True), "select a box in the 'reference' layer first"),
        (lambda: widget._refine.changed.emit(True), "select the polygons to refine first"),
        (lambda: widget._accept.changed.emit(True), "select shapes first (click, or drag a box)"),
        (busy_run, "still working: wait, or press Cancel"),
        (lambda: viewer.layers.remove(ref) or widget._run.changed.emit(True),
         "no reference box: draw one around an object"),
    ]
    for click, message in clicks:
        widget._say("a message from before")
        n = len(notification_manager.records)
        click()
        record = notification_manager.records[n]
        assert str(record.message) == message
        assert _toast_line(record, qtbot) == message  # the whole message, nothing cut
        assert widget._info.value == message  # the info line says it too
        _finish(qtbot, widget)

    empty = make_napari_viewer()
    lonely = FindSimilarWidget(empty)
    empty.window.add_dock_widget(lonely)
    n = len(notification_manager.records)
    lonely._run.changed.emit(True)
    assert _toast_line(notification_manager.records[n], qtbot) == "no image layer: open an image first"
    assert lonely._info.value == "no image layer: open an image first"


def test_a_failed_job_says_why_in_the_info_line(nuclei, monkeypatch):
    from napari_instanno.inference.annotator import Annotator

    viewer, widget, qtbot = nuclei

    def fail(*args, **kwargs):
        raise RuntimeError("out of ideas")

    monkeypatch.setattr(Annotator, "find_similar", fail)
    widget.run()
    _finish(qtbot, widget)
    assert widget._info.value == "Find similar failed: RuntimeError: out of ideas"


def test_progress_bar_is_full_when_refine_ends(nuclei):
    viewer, widget, qtbot = nuclei
    widget.run()
    _finish(qtbot, widget)
    bar = widget._bar
    assert bar.value == bar.max > 0
    layer = viewer.layers["nuclei instances"]
    layer.selected_data = {0}
    widget.refine_selected()
    _finish(qtbot, widget)  # Refine reports no steps: the bar went busy, then full
    assert bar.value == bar.max > 0 and bar.native.text() == "100%"
    assert widget._info.value == "1 polygon(s) refined"


def test_box_to_polygon_on_an_outlined_instance_selects_it(nuclei):
    from napari_instanno.geometry import polygon_box
    from napari_instanno.napari.shapes_data import box_to_rectangle, layer_to_instances

    viewer, widget, qtbot = nuclei
    widget.run()
    _finish(qtbot, widget)
    layer = viewer.layers["nuclei instances"]
    n = len(layer.data)
    ref = viewer.layers["reference"]
    ref.add_rectangles([box_to_rectangle(polygon_box(layer_to_instances(layer).polygons[3]))])
    ref.selected_data = {len(ref.data) - 1}
    widget.box_to_polygon()
    _finish(qtbot, widget)
    assert len(layer.data) == n and layer.selected_data == {3}  # no copy: the one there, selected
    assert len(ref.data) == 1  # the box was used up, the preset one stays
    assert widget._info.value == "0 polygon(s) added; 1 outlined already: selected"


def test_a_drawn_box_beside_the_preset_one_the_info_line_says_what_was_used(nuclei):
    from napari_instanno.napari.shapes_data import box_to_rectangle, rectangle_to_box

    viewer, widget, qtbot = nuclei
    ref = viewer.layers["reference"]
    x0, y0, x1, y1 = rectangle_to_box(ref.data[0])
    ref.add_rectangles([box_to_rectangle([x0 - 100, y0, x1 - 100, y1])])  # the user's own box
    ref.selected_data = set()
    widget.run()
    _finish(qtbot, widget)
    assert "from 2 positive(s), 0 negative(s)" in widget._info.value  # both, and it says so
    ref.selected_data = {1}
    widget.run()
    _finish(qtbot, widget)
    assert "from 1 positive(s)" in widget._info.value  # only the selected one


def test_the_info_line_says_which_path_the_guarded_matcher_took(make_napari_viewer, qtbot):
    """With the guarded matcher, the status line names the path its evidence chose."""
    viewer = make_napari_viewer()
    widget = docked_widget(viewer, "coins", "guarded", "ellipse")
    assert widget.run() is not None
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    assert re.search(r"instances found from .* \(matched by (learned|ncc)\)", widget._info.value)
