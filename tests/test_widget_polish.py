"""What a person sees in the widget: the dock's title, toasts and the info line, the progress bar,
the category, the edge-colour swatch, which reference box a run used."""

from __future__ import annotations

import pytest

# torch pulls in triton; loading triton after Mesa's GL context exists segfaults (LLVM clash), so
# it is loaded before any viewer is made (as in test_widgets).
import torchvision  # noqa: F401

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
    from napari_instanno.napari.widgets import FindSimilarWidget

    viewer = make_napari_viewer()
    viewer.open_sample("napari-instanno", "nuclei")
    widget = FindSimilarWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget._matcher.value, widget._outliner.value = "ncc", "otsu"
    return viewer, widget, qtbot


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
