"""The widget's side of the models: one Annotator kept between runs (rebuilt when the model
choice changes, given a new image only when the plane changes, so a new reference on the same
plane reuses its features), and the background work of each action."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import InstannoError
from ..instances import Instances


def model_choices(kind: str) -> list[str]:
    """The matcher (``kind="matcher"``) or outliner names to offer: "learned" only when shipped."""
    from ..inference.annotator import MATCHERS, OUTLINERS, WEIGHTS
    from ..models.weights import shipped_path

    names = list(MATCHERS if kind == "matcher" else OUTLINERS)
    return [n for n in names if n != "learned" or shipped_path(WEIGHTS[kind])]


class AnnotatorCache:
    """One ``Annotator`` for the current (matcher, outliner) names and image plane."""

    def __init__(self) -> None:
        self._annotator: Any = None
        self._names: tuple[str, str] | None = None
        self._image_key: tuple | None = None

    def get(self, names: tuple[str, str], image_key: tuple, plane: Any) -> Any:
        """The Annotator for ``names``, with ``plane`` set if ``image_key`` changed (``plane``
        None: leave the image unset, e.g. for tiled runs). Call it from the worker thread."""
        from ..inference.annotator import Annotator

        if self._annotator is None or self._names != names:
            try:
                self._annotator = Annotator(matcher=names[0], outliner=names[1])
            except InstannoError:
                raise
            except Exception as err:
                raise InstannoError(f"cannot set up matcher {names[0]!r} / outliner "
                                    f"{names[1]!r}: {err}") from err
            self._names, self._image_key = names, None
        if image_key != self._image_key and plane is not None:
            self._annotator.set_image(np.asarray(plane))
            self._image_key = image_key
        return self._annotator

    def find_similar(self, names: tuple[str, str], image_key: tuple, plane: Any, box: np.ndarray,
                     category: str, tiled: bool, report: Callable, cancelled: Callable
                     ) -> Instances:
        """Every instance similar to ``box`` in ``plane`` (through the tiler when ``tiled``)."""
        report(0, 2)
        ann = self.get(names, image_key, None if tiled else plane)
        if tiled:
            from ..inference.tiling import find_similar_tiled

            return find_similar_tiled(ann, plane, box, category=category, progress=report,
                                      cancel=cancelled)
        report(1, 2)
        if cancelled():
            return Instances()
        inst = ann.find_similar(box, category=category)
        report(2, 2)
        return inst

    def outline(self, names: tuple[str, str], image_key: tuple, plane: Any, boxes: np.ndarray,
                report: Callable) -> list[np.ndarray]:
        """One polygon per box."""
        report(0, 1)
        polys = self.get(names, image_key, plane).boxes_to_polygons(boxes)
        report(1, 1)
        return polys

    def refine(self, names: tuple[str, str], image_key: tuple, plane: Any,
               shapes: list[np.ndarray], report: Callable, cancelled: Callable
               ) -> list[np.ndarray]:
        """The napari polygon vertices ``shapes`` refined, as corner-frame (row, col) polygons."""
        from .layers import OFFSET

        ann = self.get(names, image_key, plane)
        out = []
        for k, v in enumerate(shapes):
            report(k, len(shapes))
            if cancelled():
                break
            out.append(ann.refine(v[:, -2:] + OFFSET))
        report(len(shapes), len(shapes))
        return out
