"""Make docs/screenshot.png from a real run: nuclei sample, preset reference, Find similar.

Run headless with ``xvfb-run -a python scripts/screenshot.py`` (needs an OpenGL context, so
``QT_QPA_PLATFORM=offscreen`` is not enough). Uses the learned models when they ship, else the
NCC + Otsu baselines; ``--matcher`` / ``--outliner`` override.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

# triton (pulled in by torchvision) must load before the GL context exists: see tests/test_widgets
import torchvision  # noqa: F401


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs"
                                             / "screenshot.png"))
    parser.add_argument("--matcher", default=None)
    parser.add_argument("--outliner", default=None)
    parser.add_argument("--size", type=int, nargs=2, default=(1280, 760), metavar=("W", "H"))
    args = parser.parse_args()

    import napari
    from qtpy.QtWidgets import QApplication
    from skimage.io import imsave

    viewer = napari.Viewer(title="napari-instanno")
    viewer.window.resize(*args.size)
    viewer.open_sample("napari-instanno", "nuclei")
    _, widget = viewer.window.add_plugin_dock_widget("napari-instanno", "Find similar")
    if args.matcher:
        widget._matcher.value = args.matcher
    if args.outliner:
        widget._outliner.value = args.outliner
    app = QApplication.instance()
    start = time.perf_counter()
    widget.run()
    while widget.busy:
        app.processEvents()
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    layer = viewer.layers["nuclei instances"]
    # a little review, so all three colours show: accept the best, reject the weakest
    order = layer.features["score"].to_numpy().argsort()
    layer.selected_data = set(order[-8:].tolist())
    widget.accept_selected()
    layer.selected_data = set(order[:2].tolist())
    widget.reject_selected()
    layer.selected_data = set()
    viewer.layers.selection.active = layer
    viewer.reset_view()
    for _ in range(20):
        app.processEvents()
        time.sleep(0.02)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    imsave(args.out, shot, check_contrast=False)
    print(f"{len(layer.data)} polygons with matcher={widget._matcher.value} "
          f"outliner={widget._outliner.value} in {seconds:.2f} s; wrote {args.out}")
    viewer.close()


if __name__ == "__main__":
    main()
