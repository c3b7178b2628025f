"""What the Find similar widget's buttons do: find similar (one plane or all), the score
threshold, review, box -> polygon, refine, save and load.

Mixed into ``FindSimilarWidget`` (``widgets`` holds the layout and the wiring, and the helpers
these actions use: ``_context``, ``_results``, ``_target``, ``_jobs``, ``_annotators``, ``_say``).
Each action raises ``InstannoError`` on bad input; the buttons show it as a notification.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from napari.utils.notifications import show_info, show_warning

from ..errors import InstannoError
from ..image import check_box
from ..inference.stand_ins import FLAG
from ..instances import Instances
from .annotators import Pending
from .files import format_for, read_annotations, save_instances
from .jobs import shows_errors
from .layers import GEOREF
from .prompts import displayed_plane, reference_boxes, runs_tiled, selected_rectangles
from .proposals import choose_references
from .shapes_data import rectangle_to_box
from .stack_layers import review_tracks, show_tracks, stack_of, summary


class WidgetActions:
    """The actions of ``FindSimilarWidget`` (see the module docstring)."""

    def _waits(self, names: tuple) -> str:
        """What the status line adds while a job waits for the models the widget is still
        loading (nothing once they are loaded)."""
        return " (waiting for the models to load, once)" if self._annotators.loading(names) else ""

    def run(self) -> Any:
        """Find every instance similar to the reference (on every plane with *All planes*);
        returns the started worker."""
        if self._all_planes.value:
            return self.run_all_planes()
        plane, indices, key, names = self._context()
        results = self._results()
        category = self._category_name()
        # every reference rectangle, and what was accepted (positives) / rejected (negatives)
        box, negatives = choose_references(reference_boxes(self._viewer),
                                           *results.reviewed(category, indices), plane.shape[:2])
        used = f"{len(box)} positive(s), {len(negatives)} negative(s)" + (
            f" with models '{Path(names[2]).name}'" if names[2] else "")
        tiled = runs_tiled(self.image_layer, plane)
        shown = float(self._threshold.value)  # outlined first; the rest when the slider goes down

        def work(report: Callable, cancelled: Callable) -> Instances:
            return self._annotators.find_similar(names, key, plane, box, category, tiled, report,
                                                 cancelled, outline_threshold=shown,
                                                 negatives=negatives)

        def done(inst: Instances) -> None:
            flag = inst.properties.get(FLAG)
            later = np.zeros(len(inst), bool) if flag is None else ~flag.astype(bool)
            n = results.add(inst[~later], indices, self._threshold.value, replace_category=category)
            self._pending = Pending(results, indices, key, names, plane, category, inst,
                                    shown, tiled) if later.any() else None
            path = inst.properties.get("matched_by")  # the guarded matcher's choice, if any
            by = f" (matched by {path[0]})" if path is not None and len(path) else ""
            if self._annotators.stretches_outlines():
                by += " (taught from boxes: outlines stretched to them)"
            self._say(f"{n + int(later.sum())} '{category}' instances found from {used}{by}; "
                      f"{results.shown()} shown")
            self._viewer.layers.selection.active = results.layer
            results.layer.mode = "select"
            self._outline_more(float(self._threshold.value))  # the slider moved meanwhile

        return self._jobs.start("Find similar", work, done,
                                note=self._waits(names))

    def run_all_planes(self) -> Any:
        """Find similar on every plane of the image's first axis from the reference on the
        displayed plane, instances linked into tracks (``stack_layers``); returns the worker."""
        plane, indices, key, names = self._context()
        stack = stack_of(self.image_layer, indices)
        box = check_box(self.reference_box(), plane.shape[:2], "reference box")
        results, category, keep = self._results(), self._category_name(), self._threshold.value

        def work(report: Callable, cancelled: Callable) -> Instances:
            return self._annotators.find_similar_stack(names, key, plane, stack, box, indices[0],
                                                       category, keep, report, cancelled)

        def done(inst: Instances) -> None:
            results.add(inst, indices, self._threshold.value, replace_category=category)
            show_tracks(results.layer)
            self._say(summary(inst, category))
            self._viewer.layers.selection.active = results.layer

        return self._jobs.start("Find similar, all planes", work, done,
                                note=self._waits(names))

    def review_tracks(self, status: str) -> int:
        """Set ``status`` on the whole tracks of the selected shapes, on every plane."""
        n = review_tracks(self._target().layer, status)
        self._say(f"{n} shapes {status}" if n else "select a shape of the track first")
        return n

    def _on_threshold(self, value: float) -> None:
        target = self._target()
        shown = target.set_threshold(float(value))
        self._say(f"{shown} shapes with score >= {value:.2f} shown")
        if self._pending is not None and self._pending.results.layer is target.layer:
            self._outline_more(float(value))

    def _outline_more(self, threshold: float) -> Any:
        """Outline in the background the last run's candidates scoring >= ``threshold`` that
        wait for their outline; returns the worker (None when there is nothing to do, or a job
        the user started is running: its end will ask again)."""
        pending = self._pending
        if pending is None or not pending.needs(threshold) or not self._jobs.free:
            return None

        def work(report: Callable, cancelled: Callable) -> Instances:
            return self._annotators.outline_more(pending.names, pending.key, pending.plane,
                                                 pending.tiled, pending.inst, threshold, report,
                                                 cancelled)

        def done(inst: Instances) -> None:
            if self._pending is not pending:  # a newer run replaced these candidates
                return
            n = pending.results.add_more(pending.advance(inst, threshold), pending.indices,
                                         self._threshold.value, pending.category)
            self._say(f"{n} more outlined; {pending.results.shown()} shown")

        return self._jobs.start("Outlining", work, done, background=True)

    def _review(self, status: str, everything: bool = False) -> None:
        results = self._target()
        n = results.review_proposed(status) if everything else results.review(status)
        if not n:
            note = "nothing to accept" if everything else "select shapes first (click, or drag a box)"
            show_info(note)
            self._say(note)
            return
        self._say(f"{n} shapes {status}")

    def accept_selected(self) -> None:
        """Mark the selected result shapes accepted (key Y on the result layer)."""
        self._review("accepted")

    def reject_selected(self) -> None:
        """Mark the selected result shapes rejected (key N on the result layer)."""
        self._review("rejected")

    def accept_all(self) -> None:
        """Mark every shown, still proposed result shape accepted (rejections stay)."""
        self._review("accepted", everything=True)

    def box_to_polygon(self) -> Any:
        """Outline the selected reference-layer rectangles and add them as accepted polygons; a
        box around an instance outlined already selects that shape instead of adding a copy."""
        plane, indices, key, names = self._context()
        ref, sel = selected_rectangles(self._viewer)
        if not sel:
            raise InstannoError("select a box in the 'reference' layer first")
        boxes = np.stack([check_box(rectangle_to_box(ref.data[i]), plane.shape[:2]) for i in sel])
        results = self._results()
        tiled = runs_tiled(self.image_layer, plane)
        category = self._category_name()

        def work(report: Callable, cancelled: Callable) -> list[np.ndarray]:
            return self._annotators.outline(names, key, plane, tiled, boxes, report)

        def done(polys: list[np.ndarray]) -> None:
            there = results.outlined_already(polys)
            new = [p for p, k in zip(polys, there, strict=True) if k < 0]
            inst = Instances(polygons=new, categories={1: category},
                             status=np.full(len(new), "accepted", dtype=object))
            results.add(inst, indices, self._threshold.value)  # drawn shapes keep their indices
            ref.selected_data = set(sel)
            ref.remove_selected()
            found = {int(k) for k in there if k >= 0}
            if found:
                results.layer.selected_data = found
            self._say(f"{len(new)} polygon(s) added" + (
                f"; {len(found)} outlined already: selected" if found else ""))

        return self._jobs.start("Box → polygon", work, done,
                                note=self._waits(names))

    def refine_selected(self) -> Any:
        """Snap the selected (edited) polygons of the result layer to the object boundary."""
        plane, _, key, names = self._context()
        results = self._target()
        sel = sorted(results.layer.selected_data)
        if not sel:
            raise InstannoError("select the polygons to refine first")
        before = [np.array(results.layer.data[i]) for i in sel]

        tiled = runs_tiled(self.image_layer, plane)

        def work(report: Callable, cancelled: Callable) -> list[np.ndarray]:
            return self._annotators.refine(names, key, plane, tiled, before, report, cancelled)

        def done(polys: list[np.ndarray]) -> None:
            kept, collapsed = results.replace_refined(sel, before, polys)
            if collapsed:
                show_warning(f"{collapsed} polygon(s) collapsed: kept as drawn")
            self._say(f"{kept} polygon(s) refined" + (f", {collapsed} collapsed: kept as drawn"
                                                       if collapsed else ""))

        return self._jobs.start("Refine", work, shows_errors(done, self._say),
                                note=self._waits(names))

    def save(self, path: str | Path, fmt: str | None = None, include_rejected: bool | None = None
             ) -> Path:
        """Save the result layer as COCO JSON or GeoJSON (atomic; see ``files``). Rejected
        instances are left out unless ``include_rejected`` (default: the "keep rejected" box)."""
        results = self._target()
        inst = results.instances()
        keep = self._keep_rejected.value if include_rejected is None else include_rejected
        out = save_instances(path, inst, results.layer.metadata, results.layer.name,
                             format_for(path, fmt), include_rejected=keep)
        self._saved_to = out
        left = 0 if keep else inst.num_rejected
        note = f" ({left} rejected left out; tick \"keep rejected\" to save them)" if left else ""
        self._say(f"saved {len(inst) - left} instances to {out.name}{note}")
        return out

    def load(self, path: str | Path) -> int:
        """Add the shapes of a COCO / GeoJSON file to the result layer; returns how many.

        A GeoJSON with a ``crs`` member is read in the map coordinates of a georeferenced image.
        """
        results = self._results()
        _, indices = displayed_plane(self._viewer, self.image_layer)
        found = read_annotations(path, results.layer.metadata.get(GEOREF),
                                 self._category.value or "object")
        added = sum(results.add(inst, indices, self._threshold.value) for inst in found)
        self._say(f"loaded {added} shapes from {Path(path).name}")
        return added
