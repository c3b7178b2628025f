"""The ``instanno`` command line: predict, evaluate, train, demo."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import cli_checks, cli_stacks
from .errors import InstannoError
from .inference.components import DEFAULT_MIN_SCORE
from .inference.policy import IN_MEMORY_PIXELS, fits_in_memory


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors as one-line ``InstannoError``s like every other error."""

    def error(self, message: str) -> None:
        raise InstannoError(f"{message}; see '{self.prog} --help'")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="instanno", description=__doc__)
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = p.add_subparsers(dest="command", required=True)

    pr = sub.add_parser("predict", help="find instances similar to a reference, or outline a box")
    pr.add_argument("image", help="PNG / JPEG / TIFF / GeoTIFF file or zarr store")
    which = pr.add_mutually_exclusive_group(required=True)
    which.add_argument("--ref-box", nargs=4, type=float, metavar=("X", "Y", "W", "H"),
                       action="append", help="reference instance: find every similar one "
                       "(repeat it for several references of one kind)")
    which.add_argument("--box", nargs=4, type=float, metavar=("X", "Y", "W", "H"),
                       help="one instance: return its polygon")
    pr.add_argument("--negative-box", nargs=4, type=float, metavar=("X", "Y", "W", "H"),
                    action="append", help="a thing not wanted (repeatable; with --ref-box)")
    pr.add_argument("--out", required=True, help="output file")
    pr.add_argument("--format", choices=("coco", "coco-results", "geojson"), default=None,
                    help="coco: a COCO dataset (COCO(path) loads it); coco-results: the results "
                    "list COCOeval takes; default: from the suffix (.geojson -> geojson, else coco)")
    pr.add_argument("--category", default="object")
    pr.add_argument("--score-threshold", type=float, default=DEFAULT_MIN_SCORE,
                    help=f"keep matches scoring at least this (default {DEFAULT_MIN_SCORE})")
    pr.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    _model_args(pr)
    _models_arg(pr)
    pr.add_argument("--level", type=int, default=0, help="multiscale level to read")
    side = int(IN_MEMORY_PIXELS ** 0.5)
    tiles = pr.add_argument_group(f"large images (tiled; automatic above {side}x{side} pixels)")
    tiles.add_argument("--tile-size", type=int, default=None, help="tile core size in pixels")
    tiles.add_argument("--batch-size", type=int, default=None,
                       help="tiles per batched pass (default: 8 on a GPU, 1 on the CPU)")
    tiles.add_argument("--scheduler", default=None,
                       help="dask.distributed scheduler address (default: local threads)")
    tiles.add_argument("--checkpoint", default=None,
                       help="folder keeping finished tiles; rerun with it to resume")
    tiles.add_argument("--table", default=None, help="also stream every instance to this parquet file")
    st = pr.add_argument_group("stacks and series (every plane; IMAGE: a 3D / time TIFF or zarr, "
                               "or a quoted folder or glob of images, e.g. 'frames/*.png')")
    st.add_argument("--ref-plane", type=int, default=None, metavar="K",
                    help="the plane --ref-box is drawn on (default 0); --checkpoint resumes")
    st.add_argument("--axes", default=None, help="the stack's axes, e.g. TYX, ZYXC, TCYX (default: "
                    "from the file's metadata, else the first axis is the plane axis)")
    st.add_argument("--ref-image", default=None, metavar="IMG",
                    help="a series' reference image, when it is not the series' first one")

    ev = sub.add_parser("evaluate", help="benchmark on a COCO folder")
    ev.add_argument("dataset", help="folder with annotations.json and images/")
    ev.add_argument("--mode", choices=("oneshot", "box2poly"), default="oneshot")
    ev.add_argument("--max-images", type=int, default=None)
    ev.add_argument("--json", default=None, help="also write the metrics to this JSON file")
    ev.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    _model_args(ev)
    _models_arg(ev)

    tr = sub.add_parser("train", help="train a model from a config file")
    tr.add_argument("model", choices=("matcher", "contour"))
    tr.add_argument("--config", default=None, help="a training recipe (configs/)")
    tr.add_argument("--from", dest="from_", default=None, metavar="ANNOTATIONS.json",
                    help="fine-tune the shipped model on your COCO annotations instead")
    tr.add_argument("--images", default=None, help="with --from: the folder of its images")
    tr.add_argument("--out", default=None, help="with --from: the model folder to write (new, "
                    "or one holding only the other model)")
    tr.add_argument("--models", default=None, metavar="MODEL_DIR",
                    help="with --from: start from this model folder's weights, not the shipped")
    tr.add_argument("--steps", type=int, default=None, help="with --from: training steps")
    tr.add_argument("--device", default=None)
    tr.add_argument("--no-resume", action="store_true", help="start over, ignoring checkpoints")

    de = sub.add_parser("demo", help="run the whole loop on the built-in nuclei sample")
    de.add_argument("--out", default="instanno-demo", help="folder for the results")
    de.add_argument("--no-viewer", action="store_true", help="do not open napari")
    _model_args(de)
    for command in (pr, ev, tr, de):  # --debug also after the command; SUPPRESS keeps the top one
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show the traceback of an error")
    return p


def _models_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", default=None,
                   help="a model folder (instanno train matcher --from) instead of the shipped weights")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--matcher", default=None, help="learned (default when shipped) | ncc | cosine")
    p.add_argument("--outliner", default=None, help="learned (default when shipped) | otsu | ellipse")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")


def tqdm_progress(desc: str = "tiles", unit: str = "tile") -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback drawing a tqdm bar with ETA (``.close()`` it after)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=0, desc=desc, unit=unit)

    def update(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
            bar.n = bar.last_print_n = done  # resumed tiles do not count for the ETA
        bar.update(done - bar.n)

    update.close = bar.close  # type: ignore[attr-defined]
    return update


def _outline_one(ann: object, data: object, box: np.ndarray, large: bool) -> np.ndarray:
    """The polygon for ``box``; a large image is read only in a window around it
    (``tiled_outlines.outline_boxes``)."""
    if not large:
        ann.set_image(np.asarray(data))
        return ann.box_to_polygon(box)
    from .inference.tiled_outlines import outline_boxes

    return outline_boxes(ann.outliner, data, [box])[0]


def cmd_predict(a: argparse.Namespace) -> int:
    if cli_stacks.is_stack_run(a):
        return cli_stacks.predict_stack(a, lambda: tqdm_progress("planes", "plane"))
    shape, box, negatives = cli_checks.check_predict(a)
    from .inference.annotator import Annotator  # only now: a bad argument fails without these
    from .instances import Instances
    from .io.images import open_image

    fmt = a.format or ("geojson" if a.out.lower().endswith((".geojson", ".geo.json")) else "coco")
    opened = open_image(a.image, level=a.level)
    h, w = shape[:2]
    large = not fits_in_memory((h, w))
    tiled = large or any(v is not None for v in (a.tile_size, a.batch_size, a.scheduler,
                                                  a.checkpoint, a.table))
    ann = Annotator(matcher=a.matcher, outliner=a.outliner, device=a.device, models=a.models)
    if a.box is not None:
        poly = _outline_one(ann, opened.data, box, large)
        inst = Instances(polygons=[poly], categories={1: a.category})
    elif tiled:
        from .inference.policy import TILE_SIZE
        from .inference.tiling import find_similar_tiled

        progress = tqdm_progress()
        try:
            inst = find_similar_tiled(
                ann, opened.data, box, negatives=negatives, tile_size=a.tile_size or TILE_SIZE,
                category=a.category, score_threshold=a.score_threshold, scheduler=a.scheduler,
                progress=progress, checkpoint=a.checkpoint, table=a.table,
                batch_size=a.batch_size)
        finally:
            progress.close()
    else:
        ann.set_image(np.asarray(opened.data))
        inst = ann.find_similar(box, negatives, a.score_threshold, a.category)
    if fmt == "geojson":
        inst.to_geojson(a.out, transform=opened.transform, crs=opened.crs, overwrite=a.overwrite)
    elif fmt == "coco":
        info = {"id": 1, "file_name": Path(a.image).name, "height": h, "width": w}
        inst.to_coco(a.out, image=info, overwrite=a.overwrite)
    else:
        from .io.atomic import write_json_atomic

        # RLE (what COCOeval loads) for ordinary images; polygons for huge ones
        write_json_atomic(a.out, inst.to_coco_results(1, shape=None if tiled else (h, w)),
                          a.overwrite)
    print(f"{len(inst)} instance(s) -> {a.out}")
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    cli_checks.check_evaluate(a)
    from .training.evaluate import evaluate_box2poly, evaluate_oneshot, format_table

    if a.mode == "oneshot":
        res = evaluate_oneshot(a.dataset, a.matcher, a.outliner, a.max_images, a.device,
                               models=a.models)
    else:
        res = evaluate_box2poly(a.dataset, a.outliner, max_images=a.max_images, device=a.device,
                                models=a.models)
    print(format_table([{"dataset": str(a.dataset), "mode": a.mode, **res}]))
    if a.json:
        from .io.atomic import write_json_atomic

        write_json_atomic(a.json, res, overwrite=a.overwrite)
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    if a.from_ is not None:
        from .training import finetune

        cli_checks.check_finetune(a)
        base = finetune.base_weights(a.model, a.models)
        if a.model == "matcher":
            path = finetune.finetune_matcher(a.from_, a.images, a.out, a.steps or finetune.STEPS,
                                             a.device, base)
        else:
            path = finetune.finetune_contour(a.from_, a.images, a.out,
                                             a.steps or finetune.CONTOUR_STEPS, a.device, base)
        print(f"weights -> {path}; use them with --models {a.out}")
        return 0
    if a.config is None:
        raise InstannoError("train needs --config RECIPE, or --from ANNOTATIONS.json --images DIR "
                            "--out MODEL_DIR")
    cli_checks.check_train(a)
    if a.model == "matcher":
        from .training.train_matcher import train
    else:
        from .training.train_contour import train
    path = train(a.config, resume=not a.no_resume, device=a.device)
    print(f"weights -> {path}")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    cli_checks.check_demo(a)
    from .inference.annotator import Annotator
    from .io.coco import write_coco
    from .io.overlay import save_overlay
    from .samples import CATEGORIES, nuclei_sample

    image, ref_box = nuclei_sample()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    ann = Annotator(matcher=a.matcher, outliner=a.outliner, device=a.device).set_image(image)
    inst = ann.find_similar(ref_box, score_threshold=DEFAULT_MIN_SCORE,
                            category=CATEGORIES["nuclei"])
    info = {"file_name": "nuclei.png", "height": image.shape[0], "width": image.shape[1]}
    write_coco(out / "nuclei.coco.json", [(info, inst)], overwrite=True)
    inst.to_geojson(out / "nuclei.geojson", overwrite=True)
    save_overlay(out / "nuclei_overlay.png", image, inst)
    print(f"matcher={ann.matcher.name} outliner={ann.outliner.name}: {len(inst)} nuclei found "
          f"from one reference box; wrote {out}/nuclei.coco.json, nuclei.geojson, "
          "nuclei_overlay.png")
    if not a.no_viewer and os.environ.get("DISPLAY") and not os.environ.get("CI"):
        import napari

        show_result(napari.Viewer(), image, inst)
        napari.run()
    return 0


def show_result(viewer: object, image: np.ndarray, inst: object) -> object:
    """Put the demo's image, its found instances and the Find similar widget (returned) in
    ``viewer``."""
    from .napari._sample_data import CATEGORY
    from .napari.shapes_data import instances_to_shapes
    from .samples import CATEGORIES

    viewer.add_image(image, name="nuclei", metadata={CATEGORY: CATEGORIES["nuclei"]})
    viewer.add_shapes(name="nuclei instances", **instances_to_shapes(inst))
    return viewer.window.add_plugin_dock_widget("napari-instanno", "Find similar")[1]


COMMANDS = {"predict": cmd_predict, "evaluate": cmd_evaluate, "train": cmd_train,
            "demo": cmd_demo}


def _one_line(text: object) -> str:
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _warn(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> None:
    print(f"instanno: warning: {_one_line(message)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``instanno``. Every error, a bad argument or an unexpected failure, prints one
    line and exits with status 2 (warnings are one line too); ``--debug`` shows the traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    with warnings.catch_warnings():
        if not debug:
            warnings.showwarning = _warn
        try:
            args = _parser().parse_args(argv)
            return COMMANDS[args.command](args)
        except KeyboardInterrupt:
            print("instanno: interrupted", file=sys.stderr)
            return 130
        except Exception as err:
            if debug:
                raise
            if isinstance(err, InstannoError):
                print(f"instanno: error: {_one_line(err)}", file=sys.stderr)
            else:
                print(f"instanno: error: unexpected {type(err).__name__}: {_one_line(err)} (rerun "
                      "with --debug for the traceback, and please report it)", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
