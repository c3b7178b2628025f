"""Every plane of a stack, time-lapse or series from one reference, with track identities.

The references are embedded once, on the reference plane (or a separate reference image); each
plane is normalised on its own and its features are computed once, as a single-image run would, so
a plane costs what a single-image run on it costs less the embedding. With ``reseed``, the
reference objects are followed from plane to plane (on each plane, the confident instance
overlapping most the one followed on the plane before) and each one found is embedded again and
used, with the references, on the next plane away from the reference, as video object segmentation
propagates a frame's result to the next one. Finished planes are kept in memory or in a
``checkpoint`` folder (one file per plane, ``checkpoint.TileStore``), so a cancelled, interrupted
or crashed run keeps them and a rerun with the same folder does only the missing planes. Instances
are linked across planes into tracks (``tracks.link_tracks``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InstannoError
from ..geometry import box_iou, polygon_box
from ..image import clip_boxes, to_rgb01
from ..instances import Instances
from ..io.images import read_image_file
from ..io.stacks import Planes, array_planes, is_series, open_series, open_stack
from .checkpoint import TileResult, TileStore
from .duplicates import duplicates_suppressed
from .guard import label_method
from .policy import tiling_plan
from .references import (
    ReferenceSet,
    check_references,
    decide_looks,
    embed_references,
    find_references,
    not_negative,
    smallest,
    with_positives,
)
from .tracks import MAX_GAP, MIN_IOU, link_tracks

# Off: benchmarks/bench_stacks.py finds no gain for the shipped models (every disc found without
# it, also on discs growing 1.7x) at 1.3-2x the time; with NCC it helps where objects change look
# (growing discs: 50 % -> 100 % found), so it is there to turn on.
RESEED = False
RESEED_MIN_SCORE = 0.5  # an instance seeds the next plane only when it scores at least this ...
RESEED_MIN_IOU = 0.3  # ... and overlaps the object followed on the plane before this much (box IoU)


class StackInterrupted(InstannoError):
    """The run was interrupted (Ctrl-C); ``partial`` holds the finished planes' instances."""

    def __init__(self, message: str, partial: Instances) -> None:
        super().__init__(message)
        self.partial = partial


def as_planes(stack: Any, axes: str | None = None) -> Planes:
    """``Planes`` of an array (numpy, dask, zarr), a TIFF / zarr stack path, or a folder or glob
    of images (``io.stacks``)."""
    if isinstance(stack, Planes):
        return stack
    if isinstance(stack, str | Path):
        return open_series(stack) if is_series(stack) else open_stack(stack, axes)
    return array_planes(stack, axes)


def plane_order(count: int, ref_plane: int | None) -> list[int]:
    """Planes from the reference outwards: forward to the end, then backward to the first
    (``ref_plane`` None: all in order)."""
    if ref_plane is None:
        return list(range(count))
    return list(range(ref_plane, count)) + list(range(ref_plane - 1, -1, -1))


def _previous(k: int, ref_plane: int | None) -> int:
    """The plane that seeds ``k``: its neighbour towards the reference."""
    return k + 1 if ref_plane is not None and k < ref_plane else k - 1


def _describe(component: Any) -> str:
    cls = type(component)
    return f"{cls.__module__}.{cls.__qualname__}:{getattr(component, 'name', '')}"


class _Run:
    """The components and references of one stack run, and the plane the matcher holds."""

    def __init__(self, annotator: Any, planes: Planes, boxes: np.ndarray,
                 score_threshold: float) -> None:
        self.matcher, self.outliner = annotator.matcher, annotator.outliner
        self.planes, self.boxes = planes, boxes
        self.references = ReferenceSet([])
        self.score_threshold = score_threshold
        self.held: int | None = None  # the plane whose features the matcher holds
        self.rgb = np.zeros((0, 0, 3), np.float32)  # ... and its RGB [0, 1] pixels
        self.pad: float | None = None  # reference box side / its outline's, for re-seeding
        self.ref_rgb = self.rgb  # the reference plane (or image) as RGB [0, 1]

    def hold(self, k: int, image: np.ndarray | None = None) -> np.ndarray:
        """Give the matcher plane ``k`` (unless it holds it); returns its RGB [0, 1] pixels."""
        if k == self.held:
            return self.rgb
        rgb = to_rgb01(self.planes.read(k) if image is None else image)
        h, w = rgb.shape[:2]
        if tiling_plan((h, w), smallest(self.boxes), self.matcher).tiled:
            raise InstannoError(f"plane {k} ({w}x{h}) is too large to run whole with this "
                                "reference; stacks are not tiled yet: run that plane on its own")
        self.matcher.set_image(rgb)
        self.held, self.rgb = k, rgb
        return rgb

    def find(self, k: int, seeds: list, negative_boxes: np.ndarray) -> TileResult:
        """Plane ``k``'s instances, outlined, from the references and ``seeds`` (the matcher
        holds the plane); none where ``negative_boxes`` are, as ``Annotator.find_similar``."""
        refs = self.references
        if seeds:
            refs = with_positives(refs, seeds)
        boxes, scores = find_references(self.matcher, refs)
        keep = (scores >= self.score_threshold) & not_negative(boxes, negative_boxes)
        h, w = self.rgb.shape[:2]
        boxes, scores = clip_boxes(boxes[keep], (0, 0, w, h)), scores[keep]
        self.outliner.set_image(self.rgb)
        polygons = self.outliner.outline(boxes) if len(boxes) else []
        keep = duplicates_suppressed(polygons, scores)  # two outlines of one object: the better
        return TileResult(k, boxes[keep], scores[keep], [polygons[i] for i in keep])

    def seeds_from(self, result: TileResult, followed: np.ndarray) -> tuple[list, np.ndarray]:
        """The references of the plane's instances continuing the ``followed`` boxes (confident,
        overlapping most), and their boxes: each outline's box, padded as the reference box pads
        its outline on the reference plane (the matcher holds the plane)."""
        ok = np.flatnonzero(result.scores >= RESEED_MIN_SCORE)
        if not len(ok) or not len(followed):
            return [], np.zeros((0, 4))
        outlines = np.stack([polygon_box(result.polygons[i]) for i in ok])
        iou = box_iou(followed, result.boxes[ok])
        picked = np.unique(iou.argmax(1)[iou.max(1) >= RESEED_MIN_IOU])
        if self.pad is None and len(picked):  # the reference plane: how the user drew the box
            ref_side, side = _sides(followed[:1]), _sides(outlines[picked[:1]])
            self.pad = float(np.clip(ref_side / np.maximum(side, 1.0), 1.0, 2.0)[0])
        boxes = _padded(outlines[picked], self.pad or 1.0)
        h, w = self.rgb.shape[:2]
        boxes = clip_boxes(boxes, (0, 0, w, h))
        seeds = [self.matcher.embed_reference(b) for b in boxes]
        for seed in seeds:  # a guarded matcher keeps the path chosen for the references
            if self.references.method is not None:
                seed.method = self.references.method
        return seeds, boxes


def _sides(boxes: np.ndarray) -> np.ndarray:
    return np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))


def _padded(boxes: np.ndarray, factor: float) -> np.ndarray:
    """Boxes scaled by ``factor`` about their centres."""
    centre, half = (boxes[:, :2] + boxes[:, 2:]) / 2, (boxes[:, 2:] - boxes[:, :2]) * factor / 2
    return np.hstack([centre - half, centre + half])


def find_similar_stack(
    annotator: Any,
    stack: Any,
    refs: Any,
    ref_plane: int = 0,
    *,
    negatives: Any = None,
    axes: str | None = None,
    ref_image: Any = None,
    score_threshold: float = 0.0,
    category: str = "object",
    reseed: bool = RESEED,
    link: bool = True,
    min_iou: float = MIN_IOU,
    gap: int = MAX_GAP,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    checkpoint: str | Path | None = None,
) -> Instances:
    """Every instance similar to the references ``refs`` on every plane of ``stack``, linked into
    tracks; ``properties["plane"]`` and ``properties["track_id"]`` say where each one is.

    ``stack``: a (planes, H, W[, C]) numpy, dask or zarr array (other layouts: ``axes``, see
    ``io.stacks``), a TIFF / zarr path, a folder or glob of images, or ``Planes``. ``refs``: one
    (x0, y0, x1, y1) box or a sequence of them on plane ``ref_plane``, or on ``ref_image`` (an
    array or image path) when given (a series whose reference is another image); ``negatives``:
    boxes there of things not wanted (``references``; their places are left out on that plane).
    ``reseed``: also match each plane with the reference objects as found on the plane before
    (module docstring). Tracks: Hungarian assignment on polygon IoU >= ``min_iou``, an object may be
    missed on ``gap`` planes; planes of different sizes (a series) are not linked (each instance
    is its own track, with a warning). ``progress(done, total)`` after each plane; ``cancel()``
    is checked between planes and stops with the finished ones (a warning says so), as does
    Ctrl-C (``StackInterrupted`` carrying them). Planes that cannot be read are skipped with one
    warning listing them.
    """
    planes = as_planes(stack, axes)
    n = len(planes)
    if n == 0:
        raise InstannoError("the stack has no planes")
    if ref_image is None:
        if isinstance(ref_plane, bool) or not 0 <= int(ref_plane) < n:
            raise InstannoError(f"reference plane {ref_plane} is out of range: the stack has {n} "
                                f"planes, 0 to {n - 1}")
        ref_plane = int(ref_plane)
        try:
            ref = planes.read(ref_plane)
        except InstannoError as err:
            raise InstannoError(f"the reference plane {ref_plane} cannot be read: {err}") from None
    else:
        ref = read_image_file(ref_image) if isinstance(ref_image, str | Path) else ref_image
        ref, ref_plane = np.asarray(ref), None
    boxes, negative_boxes = check_references(refs, negatives, ref.shape[:2])
    run = _Run(annotator, planes, boxes, float(score_threshold))
    run.ref_rgb = run.hold(-1 if ref_plane is None else ref_plane, ref)
    run.references = embed_references(run.matcher, boxes, negative_boxes)
    decide_looks(run.references, lambda i: run.matcher.find(run.references.positives[i]))
    fingerprint = {
        "planes": n, "sources": planes.sources, "plane_shape": list(planes.shape(0) or ()),
        "ref_plane": -1 if ref_plane is None else ref_plane, "ref_boxes": boxes,
        "negative_boxes": negative_boxes,
        "score_threshold": float(score_threshold), "reseed": bool(reseed),
        "matcher": _describe(run.matcher), "outliner": _describe(run.outliner)}
    store = TileStore(checkpoint, fingerprint)
    results = {r.index: r for r in store.finished()}
    skipped: dict[int, str] = {}
    seeds: dict[int, tuple[list, np.ndarray]] = {}  # plane -> its seeds and their boxes
    if progress is not None:
        progress(len(results), n)
    stopped = interrupted = False
    try:
        for k in plane_order(n, ref_plane):
            if k in results:
                continue
            if cancel is not None and cancel():
                stopped = True
                break
            prev = _previous(k, ref_plane)
            if reseed and prev in results and prev not in seeds:  # finished in an earlier run
                seeds[prev] = _seeds_of(run, prev, results[prev], store)
            followed = seeds[prev][1] if prev in seeds else boxes
            try:
                run.hold(k)
            except InstannoError as err:
                skipped[k] = str(err)
                continue
            result = run.find(k, seeds[prev][0] if prev in seeds else [],
                              negative_boxes if k == ref_plane else np.zeros((0, 4)))
            if reseed:
                seeds[k] = run.seeds_from(result, followed)
            results[k] = store.save(result)
            if progress is not None:
                progress(len(results), n)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        # the components now hold another plane: the Annotator recomputes on its next use
        annotator.set_image(run.ref_rgb, value_range=((0.0,) * 3, (1.0,) * 3))
    inst = _gather(results, store, category, run.references)
    if link and len(inst):
        _link(inst, planes, min_iou, gap)
    done = f"{len(results)} of {n} planes done"
    if skipped:
        names = [Path(planes.sources[k]).name if planes.sources else f"plane {k}" for k in skipped]
        first = str(next(iter(skipped.values()))).splitlines()[0][:120]
        warnings.warn(f"skipped {len(skipped)} plane(s) that could not be read: "
                      f"{', '.join(names)} (first: {first}); {done}", stacklevel=2)
    where = f"; finished planes are kept in {checkpoint}, rerun with it to resume" \
        if checkpoint else ""
    if interrupted:
        raise StackInterrupted(f"interrupted: {done}{where}", inst)
    if stopped:
        warnings.warn(f"cancelled: {done}{where}", stacklevel=2)
    return inst


def _seeds_of(run: _Run, k: int, result: TileResult, store: TileStore
              ) -> tuple[list, np.ndarray]:
    """Seeds of plane ``k`` finished in an earlier run: its features are computed again, and
    the objects followed are taken to be the reference boxes' (they move little a plane)."""
    try:
        run.hold(k)
    except InstannoError:
        return [], np.zeros((0, 4))
    full = TileResult(k, result.boxes, result.scores, store.polygons(k))
    return run.seeds_from(full, run.boxes)


def _gather(results: dict[int, TileResult], store: TileStore, category: str,
            reference: Any) -> Instances:
    """The finished planes' instances, in plane order, with their ``plane``."""
    parts = []
    for k in sorted(results):
        r = results[k]
        polys = r.polygons if r.polygons is not None else store.polygons(k)
        parts.append(Instances(polygons=polys, boxes=r.boxes, scores=r.scores,
                               categories={1: category},
                               properties={"plane": np.full(len(r.scores), k, dtype=np.int64)}))
    inst = Instances.concat(parts) if parts else Instances(categories={1: category})
    if not len(inst):
        inst.properties["plane"] = np.zeros(0, dtype=np.int64)
    return label_method(inst, reference)


def _link(inst: Instances, planes: Planes, min_iou: float, gap: int) -> None:
    """Set ``inst.properties["track_id"]``; planes of different sizes are not linked."""
    plane = inst.properties["plane"]
    sizes = {k: planes.shape(k) for k in np.unique(plane).tolist()}
    first = sizes[min(sizes)]
    other = next((k for k, s in sizes.items() if s != first), None)
    if other is not None:
        warnings.warn(f"the planes differ in size (plane {min(sizes)}: {first}, plane {other}: "
                      f"{sizes[other]}): every plane is annotated, but instances are not linked "
                      "into tracks", stacklevel=3)
        inst.properties["track_id"] = np.arange(len(inst), dtype=np.int64)
        return
    inst.properties["track_id"] = link_tracks(plane, inst.geometries, min_iou, gap)
