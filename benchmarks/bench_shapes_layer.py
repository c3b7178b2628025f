"""napari at scale: 10k and 100k polygons in a Shapes layer, against the level-of-detail helper.

For each count: ``add_shapes`` with every polygon in one call, then one draw of the canvas
(``viewer.screenshot``); the same for a Points layer of the centres (the zoomed-out overview);
and ``LevelOfDetail`` (napari/large_layers.py): set-up zoomed out, then a zoom into a region.
Headless, with an X server for OpenGL (Qt's offscreen platform cannot draw):

    xvfb-run -a nice -n 10 python benchmarks/bench_shapes_layer.py --counts 10000 100000
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def instances(n: int, vertices: int):
    from napari_instanno.geometry import ellipse_polygon
    from napari_instanno.instances import Instances

    side = int(np.ceil(np.sqrt(n)))
    rng = np.random.default_rng(0)
    iy, ix = np.divmod(np.arange(n), side)
    cy, cx = iy * 40 + 20 + rng.uniform(-5, 5, n), ix * 40 + 20 + rng.uniform(-5, 5, n)
    r = rng.uniform(6, 12, n)
    boxes = np.stack([cx - r, cy - r, cx + r, cy + r], axis=1)
    return Instances(polygons=[ellipse_polygon(b, vertices) for b in boxes], boxes=boxes), side * 40


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--counts", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--vertices", type=int, default=24)
    args = p.parse_args()

    import napari

    from napari_instanno.napari.large_layers import LevelOfDetail, camera
    from napari_instanno.napari.shapes_data import instances_to_shapes

    viewer = napari.Viewer(show=False)
    viewer.window.resize(1200, 900)
    viewer.screenshot(canvas_only=True)  # first draw (GL set-up) out of the timings
    for n in args.counts:
        inst, side = instances(n, args.vertices)
        kw = instances_to_shapes(inst)
        layer, t_add = timed(lambda kw=kw, n=n: viewer.add_shapes(**kw, name=f"shapes {n}"))
        viewer.reset_view()
        _, t_draw = timed(lambda: viewer.screenshot(canvas_only=True))
        _, t_redraw = timed(lambda layer=layer: (layer.refresh(),
                                                 viewer.screenshot(canvas_only=True)))
        print(f"{n:>7} polygons ({args.vertices} vertices): Shapes add {t_add:7.2f} s, "
              f"first draw {t_draw:6.2f} s, refresh+draw {t_redraw:6.2f} s", flush=True)
        viewer.layers.remove(layer)

        centres = (inst.boxes[:, [1, 0]] + inst.boxes[:, [3, 2]]) / 2
        pts, t_add = timed(lambda c=centres: viewer.add_points(c, size=16, border_width=0))
        _, t_draw = timed(lambda: viewer.screenshot(canvas_only=True))
        print(f"{n:>7} centres: Points add {t_add:7.2f} s, draw {t_draw:6.2f} s", flush=True)
        viewer.layers.remove(pts)

        viewer.reset_view()
        lod, t_add = timed(lambda inst=inst: LevelOfDetail(viewer, inst, max_shapes=3000))
        _, t_draw = timed(lambda: viewer.screenshot(canvas_only=True))

        def zoom_in(side=side):
            camera(viewer).center = (side / 2, side / 2)
            camera(viewer).zoom = 2.0
            viewer.screenshot(canvas_only=True)

        _, t_zoom = timed(zoom_in)
        print(f"{n:>7} LevelOfDetail: set-up (overview) {t_add:6.2f} s, draw {t_draw:6.2f} s, "
              f"zoom in -> {len(lod.shapes.data)} polygons shown + draw {t_zoom:6.2f} s",
              flush=True)
        lod.close()
        viewer.layers.remove(lod.shapes)
        viewer.layers.remove(lod.points)
    viewer.close()


if __name__ == "__main__":
    main()
