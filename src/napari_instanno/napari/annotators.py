"""The widget's side of the models: one Annotator kept between runs (rebuilt when the model
choice changes, given a new image only when the plane changes, so a new reference on the same
plane reuses its features), and the background work of each action."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InstannoError
from ..inference.stand_ins import FLAG, waiting
from ..instances import Instances


def model_choices(kind: str) -> list[str]:
    """The matcher (``kind="matcher"``) or outliner names to offer: those built on the learned
    weights ("learned", "guarded") only when the weights ship."""
    from ..inference.annotator import MATCHERS, OUTLINERS, WEIGHTS
    from ..models.weights import shipped_path

    names = list(MATCHERS if kind == "matcher" else OUTLINERS)
    return [n for n in names if n not in ("learned", "guarded") or shipped_path(WEIGHTS[kind])]


Names = tuple[str, str, str]  # (matcher, outliner, model folder: "" for the shipped weights)
OUTLINE_STEP = 64  # stand-ins outlined between two progress reports (and cancel checks)


def _build(names: Names) -> Any:
    """A new Annotator for (matcher, outliner, model folder) ``names``; a failure is one
    ``InstannoError``."""
    from ..inference.annotator import Annotator

    try:
        return Annotator(matcher=names[0], outliner=names[1], models=names[2] or None)
    except InstannoError:
        raise
    except Exception as err:
        raise InstannoError(f"cannot set up matcher {names[0]!r} / outliner {names[1]!r}: "
                            f"{err}") from err


@dataclass
class Pending:
    """A run's candidates not outlined yet (``Annotator.find_similar(outline_threshold=)``),
    outlined when the shown threshold goes below ``floor``; where they go (``results``, a
    ``ResultLayer``, at plane ``indices``) and what outlines them (``names``, ``key``, ``plane``,
    through the tiler when ``tiled``)."""

    results: Any
    indices: tuple
    key: tuple
    names: Names
    plane: Any
    category: str
    inst: Instances
    floor: float
    tiled: bool = False

    def needs(self, threshold: float) -> bool:
        """Whether candidates scoring >= ``threshold`` still wait for their outline."""
        return threshold < self.floor and bool(len(waiting(self.inst, threshold)))

    def advance(self, inst: Instances, threshold: float) -> Instances:
        """Take ``inst`` (outlined down to ``threshold``); the instances new to the layer."""
        new = inst[inst.properties[FLAG].astype(bool) & (inst.scores < self.floor)]
        self.inst, self.floor = inst, min(self.floor, float(threshold))
        return new


class AnnotatorCache:
    """One ``Annotator`` for the current (matcher, outliner) names and image plane.

    ``preload`` builds and warms it up (``Annotator.warm_up``) in a background thread (when the
    widget opens or the model choice changes) so a first Run waits neither for the weights nor
    for the models' one-time set-up; the jobs use it one at a time.
    """

    def __init__(self) -> None:
        self._annotator: Any = None
        self._names: Names | None = None
        self._image_key: tuple | None = None
        self._loading: tuple[Names, Future] | None = None
        self._state = threading.Lock()  # guards the fields above (held briefly)
        self._use = threading.Lock()  # held by the job using the Annotator

    def preload(self, names: Names) -> None:
        """Start building the Annotator for ``names`` in a background thread (if not done)."""
        with self._state:
            if self._names == names or (self._loading is not None and self._loading[0] == names):
                return
            future: Future = Future()
            self._loading = (names, future)

        def load() -> None:
            try:
                ann = _build(names)
            except BaseException as err:  # raised by the job that needs it
                future.set_exception(err)
                return
            with contextlib.suppress(Exception):  # only a head start: a failure shows on Run
                ann.warm_up()
            future.set_result(ann)

        # not a daemon: Python waits for it at exit (a model build cut off at exit aborts the
        # process from torch's C++ side, "terminate called without an active exception")
        threading.Thread(target=load, name="instanno-model-load", daemon=False).start()

    def loading(self, names: Names) -> bool:
        """Whether the Annotator for ``names`` is still being built or warmed up: a job that
        needs it now waits for it."""
        with self._state:
            pending = self._loading
        return pending is not None and pending[0] == names and not pending[1].done()

    def get(self, names: Names, image_key: tuple, plane: Any) -> Any:
        """The Annotator for ``names``, with ``plane`` set if ``image_key`` changed (``plane``
        None: leave the image unset, e.g. for tiled runs). Call it from the worker thread."""
        with self._state:
            loading, current = self._loading, self._names == names
            if loading is not None and loading[0] == names:
                self._loading = None
        if not current:
            ann = loading[1].result() if loading is not None and loading[0] == names \
                else _build(names)
            with self._state:
                self._annotator, self._names, self._image_key = ann, names, None
        if image_key != self._image_key and plane is not None:
            self._annotator.set_image(np.asarray(plane))
            self._image_key = image_key
        return self._annotator

    def stretches_outlines(self) -> bool:
        """Whether the current Annotator's outliner stretches each outline to its box (a model
        folder taught from boxes only: ``LearnedOutliner(fit_to_box=)``)."""
        with self._state:
            ann = self._annotator
        return bool(getattr(getattr(ann, "outliner", None), "fit_to_box", False))

    def find_similar(self, names: Names, image_key: tuple, plane: Any, box: np.ndarray,
                     category: str, tiled: bool, report: Callable, cancelled: Callable,
                     outline_threshold: float | None = None, negatives: Any = None) -> Instances:
        """Every instance similar to ``box`` (one or several) and unlike ``negatives`` in
        ``plane`` (through the tiler when ``tiled``); only those scoring >= ``outline_threshold``
        are outlined now (``Annotator.find_similar``), the others with ``outline_more``."""
        report(0, 2)
        with self._use:
            ann = self.get(names, image_key, None if tiled else plane)
            if tiled:
                from ..inference.tiling import find_similar_tiled

                return find_similar_tiled(ann, plane, box, negatives=negatives, category=category,
                                          outline_threshold=outline_threshold, progress=report,
                                          cancel=cancelled)
            report(1, 2)
            if cancelled():
                return Instances()
            inst = ann.find_similar(box, negatives=negatives, category=category,
                                    outline_threshold=outline_threshold)
        report(2, 2)
        return inst

    def find_similar_stack(self, names: Names, image_key: tuple, plane: Any,
                           stack: Any, box: np.ndarray, ref_plane: int, category: str,
                           score_threshold: float, report: Callable, cancelled: Callable
                           ) -> Instances:
        """Every plane of ``stack`` from ``box`` on its plane ``ref_plane`` (the displayed
        ``plane``, which the Annotator holds again after), linked into tracks
        (``Annotator.find_similar_stack``)."""
        with self._use:
            return self.get(names, image_key, plane).find_similar_stack(
                stack, box, ref_plane, category=category, score_threshold=score_threshold,
                progress=report, cancel=cancelled)

    def outline_more(self, names: Names, image_key: tuple, plane: Any, tiled: bool,
                     inst: Instances, min_score: float, report: Callable, cancelled: Callable,
                     step: int = OUTLINE_STEP) -> Instances:
        """``inst`` (from ``find_similar``) with its stand-ins scoring >= ``min_score`` outlined,
        best first: on the whole image (``Annotator.outline``) ``step`` at a time between progress
        reports and cancel checks, through the tiler (``tiled``) window by window
        (``tiled_outlines``); on cancel, what is done so far."""
        todo = inst.scores[waiting(inst, min_score)]
        if not len(todo):
            return inst
        with self._use:
            ann = self.get(names, image_key, None if tiled else plane)
            if tiled:
                from ..inference.tiled_outlines import outline_tiled

                return outline_tiled(ann.outliner, plane, inst, min_score, progress=report,
                                     cancel=cancelled)
            for k in range(0, len(todo), step):
                report(k, len(todo))
                if cancelled():
                    break
                inst = ann.outline(inst, min_score=float(todo[min(k + step, len(todo)) - 1]))
        report(len(todo), len(todo))
        return inst

    def outline(self, names: Names, image_key: tuple, plane: Any, tiled: bool,
                boxes: np.ndarray, report: Callable) -> list[np.ndarray]:
        """One polygon per box (through windows of ``plane`` when ``tiled``: ``tiled_outlines``)."""
        report(0, 1)
        with self._use:
            ann = self.get(names, image_key, None if tiled else plane)
            if tiled:
                from ..inference.tiled_outlines import outline_boxes

                polys = outline_boxes(ann.outliner, plane, boxes)
            else:
                polys = ann.boxes_to_polygons(boxes)
        report(1, 1)
        return polys

    def refine(self, names: Names, image_key: tuple, plane: Any, tiled: bool,
               shapes: list[np.ndarray], report: Callable, cancelled: Callable
               ) -> list[np.ndarray]:
        """The napari polygon vertices ``shapes`` refined, as corner-frame (row, col) polygons
        (in a window of ``plane`` around each when ``tiled``: ``tiled_outlines``)."""
        from .shapes_data import OFFSET

        out = []
        with self._use:
            ann = self.get(names, image_key, None if tiled else plane)
            if tiled:
                from ..inference.tiled_outlines import refine_polygons

                return refine_polygons(ann.outliner, plane, [v[:, -2:] + OFFSET for v in shapes],
                                       progress=report, cancel=cancelled)
            for k, v in enumerate(shapes):
                report(k, len(shapes))
                if cancelled():
                    break
                out.append(ann.refine(v[:, -2:] + OFFSET))
        report(len(shapes), len(shapes))
        return out
