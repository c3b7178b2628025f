"""``instanno predict`` on a stack (a 3D / time TIFF or zarr) or a series (a folder or glob of
images): every plane from one reference, instances linked into tracks (``inference.stacks``).

The arguments, the stack's axes, the reference plane and box are checked from headers before
any model is loaded or any plane is read. Progress shows an ETA; Ctrl-C stops after the plane
being done and writes the finished planes; ``--checkpoint`` keeps them on disk so a rerun does
only the missing ones.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import cli_checks
from .errors import InstannoError
from .io.images import TIFF_SUFFIXES, ZARR_SUFFIXES

STACK_FLAGS = ("ref_plane", "axes", "ref_image")
TILE_FLAGS = ("tile_size", "batch_size", "scheduler", "table")


def is_stack_run(a: argparse.Namespace) -> bool:
    """Whether ``instanno predict`` runs a stack or series: a stack flag is given, the image is a
    folder or glob of images, or a TIFF / zarr holding more than one 2D (H, W[, C]) plane."""
    from .io.images import open_image
    from .io.stacks import is_series

    if any(getattr(a, f) is not None for f in STACK_FLAGS) or is_series(a.image):
        return True
    path = Path(a.image)
    if not path.exists() or not (path.is_dir() or path.name.lower().endswith(
            ZARR_SUFFIXES + TIFF_SUFFIXES)) or (path.is_file() and not path.stat().st_size):
        return False  # the 2D checks say what is wrong
    shape = open_image(path, a.level).data.shape
    return len(shape) > 3 or (len(shape) == 3 and shape[2] > cli_checks.MAX_CHANNELS)


def check_stack(a: argparse.Namespace) -> tuple[Any, np.ndarray, np.ndarray]:
    """Every argument of a stack run, from headers only: (planes, reference boxes, negatives)."""
    from .inference.references import check_references
    from .inference.stacks import as_planes

    if a.box is not None:
        raise InstannoError("--box outlines one box of one 2D image; for every plane of a stack "
                            "or series give --ref-box")
    given = [f"--{f.replace('_', '-')}" for f in TILE_FLAGS if getattr(a, f) is not None]
    if given:
        raise InstannoError(f"{', '.join(given)}: stacks and series run each plane whole, not "
                            "in tiles; leave them out")
    cli_checks.output_file(a.out, a.overwrite)
    if a.checkpoint is not None:
        cli_checks.output_folder(a.checkpoint, "--checkpoint")
    cli_checks.fraction(a.score_threshold, "--score-threshold")
    cli_checks.non_negative(a.level, "--level")
    boxes = np.stack([cli_checks.box_xywh(v, "--ref-box") for v in a.ref_box])
    negatives = np.array([cli_checks.box_xywh(v, "--negative-box")
                          for v in a.negative_box or []]).reshape(-1, 4)
    cli_checks.component("matcher", a.matcher, _table("MATCHERS"))
    cli_checks.component("outliner", a.outliner, _table("OUTLINERS"))
    planes = as_planes(a.image, a.axes)
    n = len(planes)
    if a.ref_image is not None:
        if a.ref_plane is not None:
            raise InstannoError("give --ref-plane (a plane of the stack) or --ref-image (another "
                                "image), not both")
        shape = cli_checks.image_shape(a.ref_image)
    else:
        k = 0 if a.ref_plane is None else a.ref_plane
        if not 0 <= k < n:
            raise InstannoError(f"--ref-plane {k} is out of range: {a.image} has {n} planes, "
                                f"0 to {n - 1}")
        shape = planes.shape(k)
        if shape is None:
            raise InstannoError(f"the reference plane {k} ({planes.sources[k]}) is not an "
                                "image that can be read; choose another with --ref-plane")
    check_references(boxes, negatives, shape[:2])
    cli_checks.device(a.device)
    return planes, boxes, negatives


def _table(name: str) -> dict[str, str]:
    from .inference import annotator

    return getattr(annotator, name)


def predict_stack(a: argparse.Namespace, make_progress: Callable[[], Any]) -> int:
    """Run a stack or series (``make_progress()``: a ``progress(done, total)`` with
    ``.close()``), write the result and say what was done; 130 after Ctrl-C (finished planes
    written)."""
    from .inference.annotator import Annotator
    from .inference.stacks import StackInterrupted, find_similar_stack

    planes, boxes, negatives = check_stack(a)
    ann = Annotator(matcher=a.matcher, outliner=a.outliner, device=a.device, models=a.models)
    progress, status = make_progress(), 0
    try:
        inst = find_similar_stack(
            ann, planes, boxes, 0 if a.ref_plane is None else a.ref_plane, negatives=negatives,
            ref_image=a.ref_image, score_threshold=a.score_threshold, category=a.category,
            progress=progress, checkpoint=a.checkpoint)
    except StackInterrupted as err:
        print(f"instanno: {err}; writing the finished planes", file=sys.stderr, flush=True)
        inst, status = err.partial, 130
    finally:
        progress.close()
    write_stack(a, inst, planes)
    tracks = len(np.unique(inst.properties.get("track_id", np.zeros(0))))
    print(f"{len(inst)} instance(s) in {tracks} track(s) over {len(planes)} planes -> {a.out}")
    return status


def write_stack(a: argparse.Namespace, inst: Any, planes: Any) -> Path:
    """Write ``inst`` as ``--format`` says: COCO with one image per plane, GeoJSON with ``plane``
    and ``track_id`` properties, or a COCO results list (image id = plane + 1)."""
    from .io.atomic import write_json_atomic
    from .io.coco import plane_items, to_results, write_coco

    fmt = a.format or ("geojson" if a.out.lower().endswith((".geojson", ".geo.json")) else "coco")
    if fmt == "geojson":
        return inst.to_geojson(a.out, overwrite=a.overwrite)
    plane = inst.properties["plane"]
    if fmt == "coco":
        images = [planes.image_info(k, planes.shape(k)) for k in range(len(planes))]
        return write_coco(a.out, plane_items(inst, images), overwrite=a.overwrite)
    results = [r for k in range(len(planes))
               for r in to_results(inst[plane == k], k + 1, planes.shape(k))]
    return write_json_atomic(a.out, results, a.overwrite)
