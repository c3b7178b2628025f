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
