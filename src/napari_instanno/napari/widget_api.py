"""The Find similar widget driven from code (a notebook, a script): the buttons' actions as plain
methods taking explicit arguments, waiting for the background job where one runs.

Mixed into ``FindSimilarWidget``. Boxes are (x0, y0, x1, y1) image pixels; result shapes are
addressed by their index in the result layer. Bad input raises ``InstannoError`` with the same
one-line message the GUI shows as a notification.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InstannoError
from ..image import check_box
from ..instances import Instances
from .prompts import displayed_plane, reference_layer
from .shapes_data import box_to_rectangle


class WidgetAPI:
    """Programmatic actions of ``FindSimilarWidget`` (see the module docstring)."""

    def set_image_layer(self, layer: Any) -> None:
        """Work on ``layer`` (an Image layer or its name), as choosing it in the image box."""
        if isinstance(layer, str):
            if layer not in self._viewer.layers:
                raise InstannoError(f"no layer named {layer!r}; open the image first")
            layer = self._viewer.layers[layer]
        self._image.value = layer

    def add_reference(self, box: Sequence[float]) -> None:
        """Draw a reference rectangle around one instance (it becomes the one used)."""
        plane, indices = displayed_plane(self._viewer, self.image_layer)
        b = check_box(box, plane.shape[:2], "reference box")
        ref = reference_layer(self._viewer, self.image_layer)
        ref.add_rectangles([box_to_rectangle(b, indices)])
        ref.selected_data = {len(ref.data) - 1}

    def wait(self, timeout: float = 120.0) -> Any:
        """Wait for the running job (if any); its result (``InstannoError`` if it failed)."""
        return self._jobs.wait(timeout)

    def find_similar(self, timeout: float = 120.0) -> Instances:
        """Press Find similar and wait: the instances the run found, all scores. The layer shows
        those above ``min_score``; the ones below it are not outlined yet (ellipse stand-ins,
        ``properties["outlined"]`` False) until the slider goes down (``set_min_score``)."""
        self.run()
        return self.wait(timeout)

    def set_min_score(self, value: float) -> int:
        """Move the min score slider; returns how many shapes are shown."""
        self._threshold.value = float(value)
        return self._target().shown()

    def instances(self) -> Instances:
        """What the result layer holds and would save (edits and review statuses included)."""
        return self._target().instances()

    def accept(self, indices: Sequence[int] | None = None, min_score: float | None = None) -> int:
        """Accept result shapes by index, or every proposed one scoring at least ``min_score``;
        returns how many."""
        return self._review_where("accepted", indices, min_score, None)

    def reject(self, indices: Sequence[int] | None = None, max_score: float | None = None) -> int:
        """Reject result shapes by index, or every proposed one scoring below ``max_score``;
        returns how many."""
        return self._review_where("rejected", indices, None, max_score)

    def _review_where(self, status: str, indices: Sequence[int] | None, lo: float | None,
                      hi: float | None) -> int:
        results = self._target()
        if (indices is None) == (lo is None and hi is None):
            raise InstannoError("give either shape indices or a score bound")
        if indices is None:
            feats = results.layer.features
            score = feats["score"].to_numpy(float)
            keep = (feats["status"].to_numpy() == "proposed")
            keep &= score >= lo if lo is not None else score < hi
            indices = np.flatnonzero(keep).tolist()
        n = len(results.layer.data)
        bad = [i for i in indices if not 0 <= int(i) < n]
        if bad:
            raise InstannoError(f"no result shape {bad[0]}; the layer holds {n} shapes")
        return results.review(status, [int(i) for i in indices])

    def outline_boxes(self, boxes: Sequence[Sequence[float]], timeout: float = 120.0
                      ) -> list[np.ndarray]:
        """Box → polygon for each box (added as accepted shapes); returns the polygons."""
        ref = reference_layer(self._viewer, self.image_layer)
        start = len(ref.data)
        plane, indices = displayed_plane(self._viewer, self.image_layer)
        rects = [box_to_rectangle(check_box(b, plane.shape[:2]), indices) for b in boxes]
        ref.add_rectangles(rects)
        ref.selected_data = set(range(start, start + len(rects)))
        self.box_to_polygon()
        return self.wait(timeout)

    def refine_shapes(self, indices: Sequence[int], timeout: float = 120.0) -> list[np.ndarray]:
        """Refine the result shapes at ``indices`` (e.g. after editing their vertices)."""
        layer = self._target().layer
        layer.selected_data = {int(i) for i in indices}
        self.refine_selected()
        return self.wait(timeout)

    def fine_tune(self, steps: int | None = None, wait: bool = True, timeout: float = 1800.0
                  ) -> Any:
        """Press *Fine-tune on accepted* (``steps`` per model; default a few minutes' worth) and,
        with ``wait``, wait for it: {"matcher": path, "contour": path} of the new model folder,
        now the widget's model choice (None if cancelled). Without ``wait``: the worker."""
        worker = self.fine_tune_accepted(steps)
        return self.wait(timeout) if wait else worker
