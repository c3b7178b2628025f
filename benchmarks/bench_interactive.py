"""What a user waits for: model loading, and click to polygons for a new image and a new reference.

Four real images: the largest dsb2018/val image (1024², small nuclei the matcher upscales), the
first airbus-aircraft/val tile, the first crowdai-buildings/val tile and the coins sample. The
reference is the evaluate protocol's median-area instance (``training.evaluate``); the "new
reference" is another instance three places up the area order, on the cached features. "click"
is what the widget does (``find_similar(..., outline_threshold=)`` at the shown 0.3: candidates
below are outlined only when the slider goes down); "all" outlines every candidate, as before.
NCC + Otsu run in the same process on the same calls: the ratios are against them. Model load
is timed in this process (the package already imported) and in a new process with every import.

    OMP_NUM_THREADS=1 python benchmarks/bench_interactive.py --threads 2
    OMP_NUM_THREADS=1 python benchmarks/bench_interactive.py --threads 2 --compare float32
    xvfb-run -a python benchmarks/bench_interactive.py --threads 2 --widget   # + the widget path

``--lazy`` also times the largest image as a lazy (dask) array, which the widget sends through
the tiler: "click" outlines the shown part (``find_similar_tiled(..., outline_threshold=)``),
"all" every candidate (what the widget's tiled path did before).

``--compare PRECISION`` also times the learned models at that precision (e.g. float32: no int8
layers) in the same process, on the same calls: a row per image beside the default's.

``--widget`` also times the widget in a real viewer: the dsb2018 image opened, the widget docked
(its models load in the background meanwhile), a reference drawn, Run -> the result layer filled.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from napari_instanno.inference.precision import PRECISIONS

SHOWN = 0.3  # the widget's default min score (inference.annotator.DEFAULT_MIN_SCORE)


def images(shared: Path) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(name, RGB [0, 1] image, reference box, second reference box) of the four images."""
    from napari_instanno.image import to_rgb01
    from napari_instanno.samples import COINS_REF_BOX, coins_sample
    from napari_instanno.training.datasets import CocoFolder
    from napari_instanno.training.evaluate import reference_index

    out = []
    picks = [("dsb2018/val", 518), ("airbus-aircraft/val", None), ("crowdai-buildings/val", None)]
    for folder, image_id in picks:
        samples = CocoFolder(shared / folder).samples
        s = samples[0] if image_id is None else next(x for x in samples
                                                        if int(x.info["id"]) == image_id)
        rgb, gt = s.load_rgb01(), s.instances
        ref = reference_index(gt.boxes, gt.areas, rgb.shape[:2])
        order = list(np.argsort(gt.areas, kind="stable"))
        other = int(order[min(len(order) - 1, order.index(ref) + 3)])
        name = f"{folder.split('/')[0]} {Path(s.info['file_name']).name[:12]}"
        out.append((name, rgb, gt.boxes[ref], gt.boxes[other]))
    coins, box = coins_sample()
    other = np.array([x + d for x, d in zip(COINS_REF_BOX, (-120, 0, -120, 0), strict=True)])
    out.append(("coins sample", to_rgb01(coins), box, other))
    return out


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def fresh_load(names: str, threads: int, repeats: int) -> float:
    """Median seconds to ``import`` the Annotator and build it with ``names`` in a new Python
    process, torch's import included: what ``instanno predict`` or a notebook waits for."""
    import subprocess
    import sys

    code = ("import time; t = time.perf_counter(); import torch; "
            f"torch.set_num_threads({threads}); "
            "from napari_instanno.inference.annotator import Annotator; "
            f"Annotator({names}device='cpu'); print(time.perf_counter() - t)")
    return float(np.median([float(subprocess.run([sys.executable, "-c", code], check=True,
                                                 capture_output=True, text=True).stdout)
                            for _ in range(repeats)]))


def clicks(ann, rgb: np.ndarray, ref: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """Seconds for a new image and a new reference, as the widget asks ("click") and with every
    candidate outlined ("all"), and how many candidates / shown."""
    out = {}
    for mode, kw in (("all", {}), ("click", {"outline_threshold": SHOWN})):
        out[f"image {mode}"], inst = timed(lambda kw=kw: ann.set_image(rgb).find_similar(ref, **kw))
        out[f"ref {mode}"], _ = timed(lambda kw=kw: ann.find_similar(other, **kw))
        out["found"], out["shown"] = len(inst), int((inst.scores >= SHOWN).sum())
    return out


def lazy_clicks(ann, rgb: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Seconds for a new image given as a dask array (the tiler), "click" and "all" as above."""
    import dask.array as da

    from napari_instanno.inference.tiling import find_similar_tiled

    lazy = da.from_array((rgb * 255).astype(np.uint8), chunks=512)
    out = {}
    for mode, kw in (("all", {}), ("click", {"outline_threshold": SHOWN})):
        out[f"lazy {mode}"], inst = timed(lambda kw=kw: find_similar_tiled(ann, lazy, ref, **kw))
        out["found"], out["shown"] = len(inst), int((inst.scores >= SHOWN).sum())
    return out


def median(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each entry's median over the runs."""
    return {k: float(np.median([r[k] for r in runs])) for k in runs[0]}


WIDGET_OPEN = """
import time
import numpy as np
import napari
from qtpy.QtCore import QEventLoop, QTimer
viewer = napari.Viewer(show=True)
viewer.add_image(np.zeros((512, 512)), name="image")
t0 = time.perf_counter()
from napari_instanno.napari import FindSimilarWidget
widget = FindSimilarWidget(viewer)
viewer.window.add_dock_widget(widget)
t1 = time.perf_counter()
ticks, ready = [t1], []
def tick():
    ticks.append(time.perf_counter())
    if not ready and not widget._annotators.loading(widget._names()):
        ready.append(ticks[-1])
        loop.quit()
timer = QTimer(interval=10)
timer.timeout.connect(tick)
timer.start()
loop = QEventLoop()
QTimer.singleShot(60000, loop.quit)
loop.exec_()
print(t1 - t0, ready[0] - t0, np.diff(ticks).max())
viewer.close()
"""


def widget_open() -> None:
    """In a new process (torch not imported yet), a viewer open: seconds until the docked widget
    shows, until its models are loaded and warmed up, and the longest GUI stall meanwhile."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", WIDGET_OPEN], check=True, capture_output=True,
                         text=True).stdout.split()
    shown, ready, stall = (float(v) for v in out[-3:])
    print(f"widget opened in a new process: shown {shown:.2f} s, models loaded and warmed up "
          f"{ready:.2f} s after opening (longest GUI stall {stall:.2f} s)")


def widget_path(rgb: np.ndarray, ref: np.ndarray) -> None:
    """Run -> result layer filled in a real viewer, with the default (shipped) models."""
    import torchvision  # noqa: F401, I001  (before any GL context: see tests/test_widgets.py)
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_instanno.napari import FindSimilarWidget

    viewer = napari.Viewer(show=True)
    viewer.add_image(rgb, name="dsb", rgb=True)
    t_open = time.perf_counter()
    widget = FindSimilarWidget(viewer)
    viewer.window.add_dock_widget(widget)
    names = (widget._matcher.value, widget._outliner.value)
    widget.add_reference(ref)  # a user takes a few seconds to draw it; the models load meanwhile
    while time.perf_counter() - t_open < 5.0:
        QApplication.processEvents()
        time.sleep(0.01)
    t0 = time.perf_counter()
    widget.run()
    layer = widget.result_layer()
    while widget.busy or not len(layer.data):
        QApplication.processEvents()
        time.sleep(0.005)
    t1 = time.perf_counter()
    print(f"widget ({names[0]} + {names[1]}, 5 s after opening): Run -> {len(layer.data)} "
          f"polygons in the layer {t1 - t0:.2f} s")
    viewer.close()


def print_rows(name: str, size: str, a: dict, b: dict, cols: tuple[str, ...],
               extra: tuple[str, dict] | None = None) -> None:
    """The learned (``a``) and NCC (``b``) seconds of ``cols``, and their ratios; ``extra``: a
    (label, seconds) row of the learned models at another precision."""
    print(f"{name:<26}{size:>10}  {int(a['found']):>5}/{int(a['shown']):<5}  "
          + "".join(f"{a[c]:>13.2f}" for c in cols))
    if extra is not None:
        label, e = extra
        print(f"{'  learned ' + label:<26}{'':>10}  {int(e['found']):>5}/{int(e['shown']):<5}  "
              + "".join(f"{e[c]:>13.2f}" for c in cols))
    print(f"{'  ncc + otsu':<26}{'':>10}  {int(b['found']):>5}/{int(b['shown']):<5}  "
          + "".join(f"{b[c]:>13.2f}" for c in cols))
    print(f"{'  ratio':<26}{'':>10}  {'':>11}  "
          + "".join(f"{'x%.1f' % (a[c] / max(b[c], 1e-9)):>13}" for c in cols), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--shared", default="../shared/data")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--widget", action="store_true", help="also time the widget path (needs a display)")
    p.add_argument("--lazy", action="store_true", help="also the largest image as a dask array")
    p.add_argument("--compare", choices=PRECISIONS, default=None,
                   help="also time the learned models at this precision in the same run")
    p.add_argument("--repeats", type=int, default=3,
                   help="time each click this many times and print the median (a shared CPU's "
                        "noise)")
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from napari_instanno.inference.annotator import Annotator

    scenes = images(Path(args.shared))
    t_learned, learned = timed(lambda: Annotator(device="cpu"))
    t_ncc, ncc = timed(lambda: Annotator(matcher="ncc", outliner="otsu", device="cpu"))
    other = None
    if args.compare:
        t_other, other = timed(lambda: Annotator(device="cpu", precision=args.compare))
        print(f"model load at precision {args.compare}: {t_other:.2f} s (in this process)")
    new_learned = fresh_load("", args.threads, args.repeats)
    new_ncc = fresh_load("matcher='ncc', outliner='otsu', ", args.threads, args.repeats)
    print(f"torch threads {args.threads}; model load: {learned.matcher.name} + "
          f"{learned.outliner.name} {t_learned:.2f} s, ncc + otsu {t_ncc:.2f} s; in a new "
          f"process, imports included (median of {args.repeats}): learned {new_learned:.2f} s, "
          f"ncc + otsu {new_ncc:.2f} s")
    for ann in (learned, ncc, other):  # first-call set-up stays out of the timings, as in the widget
        if ann is not None:
            ann.warm_up()
    cols = ("image click", "ref click", "image all", "ref all")
    print(f"{'image':<26}{'size':>10}  {'found/shown':>11}  " + "".join(f"{c:>13}" for c in cols)
          + "   (seconds; x = learned / ncc)")
    for name, rgb, ref, second in scenes:
        runs: dict[int, list] = {0: [], 1: [], 2: []}
        for _ in range(args.repeats):  # interleaved, so a drifting machine hits each alike
            for i, ann in enumerate((learned, ncc, other)):
                if ann is not None:
                    runs[i].append(clicks(ann, rgb, ref, second))
        a, b = median(runs[0]), median(runs[1])
        extra = (args.compare, median(runs[2])) if other is not None else None
        print_rows(name, f"{rgb.shape[1]}x{rgb.shape[0]}", a, b, cols, extra)
    if args.lazy:
        name, rgb, ref, _ = scenes[0]
        cols = ("lazy click", "lazy all")
        print(f"{'':<26}{'':>10}  {'':>11}  " + "".join(f"{c:>13}" for c in cols))
        a, b = (median([lazy_clicks(ann, rgb, ref) for _ in range(args.repeats)])
                for ann in (learned, ncc))
        print_rows(name + " (dask)", "", a, b, cols)
    if args.widget:
        name, rgb, ref, _ = scenes[0]
        widget_open()
        widget_path(rgb, ref)


if __name__ == "__main__":
    main()
