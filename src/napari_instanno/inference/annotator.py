"""The Annotator: one image, cached features, cheap prompts (the shape of SAM's predictor)."""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InstannoError
from ..image import check_box, check_polygon, clip_boxes, to_rgb01
from ..instances import Instances
from .adapt import ADAPT_BY_DEFAULT, find_adapted
from .components import DEFAULT_MIN_SCORE as DEFAULT_MIN_SCORE  # re-exported
from .components import Matcher, Outliner
from .duplicates import duplicates_suppressed
from .guard import label_method
from .outline_memo import OutlineMemo
from .policy import tiling_plan
from .references import check_references, embed_references, not_negative, smallest
from .stand_ins import FLAG, finished, stand_ins, waiting

# name -> "module:Class"; learned models register here and are the default when their weights ship.
MATCHERS = {  # the first is the widget's default choice
    "learned": "napari_instanno.inference.learned_matcher:LearnedMatcher",
    "ncc": "napari_instanno.inference.baselines:NCCMatcher",
    "cosine": "napari_instanno.inference.baselines:CosineMatcher",
    "guarded": "napari_instanno.inference.guard:GuardedMatcher",
}
OUTLINERS = {
    "learned": "napari_instanno.inference.learned_outliner:LearnedOutliner",
    "otsu": "napari_instanno.inference.baselines:OtsuOutliner",
    "ellipse": "napari_instanno.inference.baselines:EllipseOutliner",
}
WEIGHTS = {"matcher": "matcher", "outliner": "contour"}
DEFAULT = {"matcher": "learned", "outliner": "learned"}  # when the weights ship
FALLBACK = {"matcher": "ncc", "outliner": "otsu"}


def default_device() -> str:
    """``cuda`` when a GPU is usable, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _build(kind: str, name: str | None, device: str, models: Any = None, **kwargs: Any) -> Any:
    from ..models.weights import weights_file

    table = MATCHERS if kind == "matcher" else OUTLINERS
    weights = weights_file(WEIGHTS[kind], models)
    if weights is not None:
        kwargs["weights"] = weights  # baselines ignore it
    if name is None:
        name = DEFAULT[kind] if weights is not None else FALLBACK[kind]
        if name == FALLBACK[kind]:
            warnings.warn(f"no shipped {kind} weights found; using the {name!r} baseline",
                          stacklevel=3)
    if name not in table:
        raise InstannoError(f"unknown {kind} {name!r}; choose one of {sorted(table)}")
    module, cls = table[name].split(":")
    try:
        factory = getattr(importlib.import_module(module), cls)
    except ModuleNotFoundError as err:
        raise InstannoError(f"{kind} {name!r} is not available in this version") from err
    obj = factory(device=device, **kwargs)
    obj.name = name
    return obj


class Annotator:
    """Find similar instances from one reference box, outline boxes, refine polygons.

    ``matcher`` is ``"learned"`` (the default when weights ship), ``"guarded"`` (the learned
    matcher, NCC where the image's evidence says it is off its domain: ``inference.guard``; its
    result says which path found it in ``properties["matched_by"]``), ``"ncc"`` or ``"cosine"``.
    ``outliner`` is ``"learned"``, ``"otsu"`` or ``"ellipse"``. Boxes are (x0, y0, x1, y1) in
    pixels; polygons come back as (row, col) arrays (see ``geometry``). ``models``: a folder
    of weights (``training.finetune``) used instead of the shipped ones where it has them.
    ``precision``: the learned models' float type (``inference.precision``; "auto": bfloat16 on
    CPUs with AMX, else float32). ``fit_outlines``: stretch each learned outline to the box it
    was made from (None: when ``models`` says so,
    ``weights.fits_outlines_to_boxes``: a matcher fine-tuned on boxes only, no contour of its own).
    """

    def __init__(self, matcher: str | None = None, outliner: str | None = None,
                 device: str | None = None, models: str | Path | None = None,
                 precision: str = "auto", fit_outlines: bool | None = None) -> None:
        from ..models.weights import fits_outlines_to_boxes, holds_weights

        self.device = device or default_device()
        if models is not None and not holds_weights(models):
            raise InstannoError(f"models folder {models} holds no matcher.safetensors or "
                                "contour.safetensors; make one with `instanno train matcher --from`")
        self.matcher: Matcher = _build("matcher", matcher, self.device, models, precision=precision)
        fit = fits_outlines_to_boxes(models) if fit_outlines is None else fit_outlines
        self.outliner: Outliner = _build("outliner", outliner, self.device, models,
                                         precision=precision, fit_to_box=fit)
        self.image_shape: tuple[int, int] | None = None
        self._rgb: np.ndarray | None = None
        self._ready: set[str] = set()
        self.last_adaptation: dict[str, float] = {}  # the latest find_similar's (adapt.adapted)
        self._memo = OutlineMemo()  # candidates outlined on this image (``outline_memo``)

    def set_image(self, image: Any, value_range: Any = None) -> Annotator:
        """Use ``image`` (numpy, dask or zarr; (H, W) or (H, W, C)) for the next prompts.

        Features are computed on first use and cached until the next ``set_image``.
        """
        self._hold(to_rgb01(np.asarray(image), value_range))
        return self

    def _hold(self, rgb: np.ndarray | None) -> None:
        """Prompt on ``rgb`` (RGB in [0, 1]; None: no image) from now on; the models take it on
        their next use, and no earlier outline is reused."""
        self._rgb = rgb
        self.image_shape = None if rgb is None else rgb.shape[:2]
        self._ready = set()
        self._memo.clear()

    def warm_up(self) -> Annotator:
        """Run both models once on a small made-up image, so that the first real prompt skips
        their one-time set-up (kernel choice, buffers: ~0.9 s of a first 1024² click on a 2-core
        CPU); the image set before, if any, stays set. The widget does it while the models load."""
        kept = self._rgb
        yy, xx = np.mgrid[:128, :128]
        discs = np.zeros((128, 128), np.float32)
        for r, c in ((24, 24), (24, 96), (96, 40), (90, 100)):
            discs[(yy - r) ** 2 + (xx - c) ** 2 < 14 ** 2] = 0.8
        try:
            self.set_image(discs, value_range=(0.0, 1.0))
            # a small reference and a large one: both learned matchers where there are two
            for box in ([8.0, 8.0, 40.0, 40.0], [0.0, 0.0, 72.0, 72.0]):
                self.find_similar(box)
        finally:  # also when it fails: the caller's image stays
            self._hold(kept)
            self.last_adaptation = {}
        return self

    def _shape(self) -> tuple[int, int]:
        """The image's (H, W); a clear error before ``set_image``."""
        if self.image_shape is None:
            raise InstannoError("no image set; call set_image(image) first")
        return self.image_shape

    def _component(self, which: str) -> Any:
        self._shape()
        comp = self.matcher if which == "matcher" else self.outliner
        if which not in self._ready:
            comp.set_image(self._rgb)
            self._ready.add(which)
        return comp

    def find_similar(self, refs: Any, negatives: Any = None, score_threshold: float = 0.0,
                     category: str = "object", outline_threshold: float | None = None,
                     adapt: bool | None = None) -> Instances:
        """Every instance like the ones in ``refs`` and unlike ``negatives``, outlined, best first.

        ``refs``: one (x0, y0, x1, y1) box or a sequence of them (positives of one kind);
        ``negatives``: boxes of things not wanted (``references``: scores pooled over the
        positives, candidates a negative scores higher dropped). When ``policy.tiling_plan``
        says so (large images, or small references the matcher upscales), the image goes
        through it in tiles: same result, bounded memory.

        ``adapt``: with two positives or a negative, tune the learned matcher's head on them for
        a few seconds first (``adapt``; None: ``adapt.ADAPT_BY_DEFAULT``; whole-image runs only).
        ``outline_threshold``: outline now only the candidates scoring at least this (what a
        viewer shows first); the others get their box's ellipse as a stand-in polygon and
        ``properties["outlined"]`` False, for ``outline`` to finish later with the same result
        as outlining all at once (a tiled run's: ``tiled_outlines.outline_tiled``).
        """
        if self._rgb is None:
            raise InstannoError("no image set; call set_image(image) first")
        if isinstance(negatives, (int, float)):
            raise InstannoError("negatives must be boxes; pass the score threshold by name: "
                                "find_similar(ref, score_threshold=...)")
        pos, neg = check_references(refs, negatives, self.image_shape)
        if tiling_plan(self.image_shape, smallest(pos), self.matcher).tiled:
            from .tiling import find_similar_tiled

            return find_similar_tiled(self, self._rgb, pos, negatives=neg,
                                      score_threshold=score_threshold, category=category,
                                      outline_threshold=outline_threshold,
                                      value_range=((0.0,) * 3, (1.0,) * 3))
        matcher = self._component("matcher")
        reference = embed_references(matcher, pos, neg)
        boxes, scores, self.last_adaptation = find_adapted(
            matcher, reference, ADAPT_BY_DEFAULT if adapt is None else adapt)
        keep = (scores >= score_threshold) & not_negative(boxes, neg)
        h, w = self.image_shape
        boxes, scores = clip_boxes(boxes[keep], (0, 0, w, h)), scores[keep]
        now = scores >= (score_threshold if outline_threshold is None else outline_threshold)
        polygons = self._outline_candidates(boxes[now]) if now.any() else []
        keep = duplicates_suppressed(polygons, scores[now])  # two outlines of one object: the better
        inst = Instances(polygons=[polygons[i] for i in keep], boxes=boxes[now][keep],
                         scores=scores[now][keep], categories={1: category})
        if outline_threshold is not None:
            later = ~now
            rest = Instances(polygons=stand_ins(boxes[later]), boxes=boxes[later],
                             scores=scores[later], categories={1: category},
                             properties={FLAG: np.zeros(int(later.sum()), dtype=bool)})
            inst.properties[FLAG] = np.ones(len(inst), dtype=bool)
            inst = Instances.concat([inst, rest])
        return label_method(inst, reference)

    def _outline_candidates(self, boxes: np.ndarray) -> list[np.ndarray]:
        """Outlines of the matcher's candidates, reusing those of earlier prompts on this image."""
        return self._memo.outline(boxes, self._component("outliner").outline)

    def outline(self, inst: Instances, min_score: float = 0.0) -> Instances:
        """``inst`` from ``find_similar(..., outline_threshold=)`` on the current image, with its
        stand-ins scoring at least ``min_score`` outlined (``stand_ins.finished``: the same
        instances as outlining them all at once, best first)."""
        todo = waiting(inst, min_score)
        if not len(todo):
            return inst
        return finished(inst, todo, self._outline_candidates(inst.boxes[todo]))

    def box_to_polygon(self, box: Any) -> np.ndarray:
        """The polygon of the one instance inside ``box``."""
        b = check_box(box, self._shape())
        return self._component("outliner").outline(b[None])[0]

    def boxes_to_polygons(self, boxes: Any) -> list[np.ndarray]:
        """One polygon per box, batched."""
        arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        checked = np.stack([check_box(b, self._shape()) for b in arr]) if len(arr) else arr
        return self._component("outliner").outline(checked) if len(arr) else []

    def refine(self, polygon: Any) -> np.ndarray:
        """``polygon`` (row, col), e.g. after the user moved a few vertices, snapped to the object."""
        return self._component("outliner").refine([check_polygon(polygon, self._shape())])[0]

    def find_similar_stack(self, stack: Any, refs: Any, ref_plane: int = 0,
                           **kwargs: Any) -> Instances:
        """Every instance similar to ``refs`` (boxes on plane ``ref_plane``) on every plane of a
        stack, time-lapse or series, linked into tracks (``properties["plane"]`` and
        ``["track_id"]``); the references are embedded once. See ``inference.stacks``."""
        from .stacks import find_similar_stack

        return find_similar_stack(self, stack, refs, ref_plane, **kwargs)
