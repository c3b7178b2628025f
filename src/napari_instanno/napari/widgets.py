"""The "Find similar" dock widget: layout and wiring over ``Annotator``, ``Instances`` and ``io``.

Box one instance in the "reference" layer, Run, review the polygons (accept ``Y`` / reject ``N``
on the result layer; napari already uses A and R), outline missed boxes, refine edited polygons,
save. Model calls run in the background (``jobs``, ``annotators``); errors become notifications
and never touch the annotations already made. Results: ``result_layer``; the image is the
displayed 2D plane of the chosen layer (``prompts``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSlider,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    create_widget,
)
from napari.layers import Shapes
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import QTimer

from ..errors import InstannoError
from ..image import check_box
from ..inference.annotator import DEFAULT_MIN_SCORE
from ..inference.policy import IN_MEMORY_PIXELS
from ..instances import Instances
from ._sample_data import CATEGORY, REFERENCE
from .annotators import AnnotatorCache, Pending, model_choices
from .files import ask_load_path, ask_save_path, format_for, read_annotations, save_instances
from .jobs import JobRunner, shows_errors
from .layers import GEOREF
from .prompts import (
    displayed_plane,
    reference_box,
    reference_boxes,
    reference_layer,
    runs_tiled,
    selected_rectangles,
)
from .proposals import choose_references
from .result_layer import ResultLayer, bind_review, result_shapes
from .shapes_data import rectangle_to_box
from .stack_layers import review_tracks, show_tracks, stack_of, summary
from .widget_api import WidgetAPI

if TYPE_CHECKING:
    import napari

ACCEPT_KEY, REJECT_KEY = "y", "n"


class FindSimilarWidget(WidgetAPI, Container):
    """Dock widget: reference box -> similar instances as editable, reviewable polygons.

    The buttons' actions are public methods; ``WidgetAPI`` adds the ones a notebook needs.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._viewer = viewer
        self._image = create_widget(label="image", annotation="napari.layers.Image")
        self._matcher = ComboBox(label="matcher", choices=model_choices("matcher"))
        self._outliner = ComboBox(label="outliner", choices=model_choices("outliner"))
        self._category = LineEdit(label="category", value="object")
        self._draw = PushButton(text="Draw reference box")
        self._run = PushButton(text="Find similar")
        self._cancel = PushButton(text="Cancel", enabled=False)
        self._bar = ProgressBar(label="progress", value=0, min=0, max=1)
        self._threshold = FloatSlider(label="min score", min=0.0, max=1.0, step=0.01,
                                      value=DEFAULT_MIN_SCORE, tracking=False)
        self._accept = PushButton(text=f"Accept sel. [{ACCEPT_KEY.upper()}]")
        self._reject = PushButton(text=f"Reject sel. [{REJECT_KEY.upper()}]")
        self._accept_all = PushButton(text="Accept all")
        self._all_planes = CheckBox(text="All planes", value=False, tooltip="find similar on every "
                                    "plane of a stack from this reference; one track id per object")
        self._accept_track, self._reject_track = (PushButton(text=f"{t} track") for t in ("Accept",
                                                                                          "Reject"))
        self._box2poly = PushButton(text="Box → polygon")
        self._refine = PushButton(text="Refine selected")
        self._save_coco = PushButton(text="Save COCO")
        self._save_geojson = PushButton(text="Save GeoJSON")
        self._load = PushButton(text="Load")
        self._keep_rejected = CheckBox(text="keep rejected", value=False,
                                       tooltip="save rejected instances too (a session file that "
                                               "reopens with its review state)")
        self._info = Label(value="Draw a box around one instance, then Find similar.")
        self._info.native.setWordWrap(True)  # a long message wraps instead of being cut

        def row(*widgets: Any) -> Container:
            return Container(widgets=widgets, layout="horizontal", labels=False)

        super().__init__(widgets=[
            self._image, self._matcher, self._outliner, self._category,
            row(self._draw, self._run, self._cancel), self._bar, self._threshold,
            row(self._accept, self._reject, self._accept_all),
            row(self._all_planes, self._accept_track, self._reject_track),
            row(self._box2poly, self._refine),
            row(self._save_coco, self._save_geojson, self._load), self._keep_rejected, self._info,
        ])
        self._jobs = JobRunner(self._bar, self._say, self._on_busy)
        self._annotators = AnnotatorCache()
        self._pending: Pending | None = None  # the last run's candidates not outlined yet
        for choice in (self._matcher, self._outliner):  # deferred: read both once both are set
            choice.changed.connect(lambda *_: QTimer.singleShot(0, self._preload))
        self.native.destroyed.connect(lambda *_: self._jobs.close())
        QTimer.singleShot(0, self._preload)  # the models load while the user draws a reference

        # buttons and keys show an InstannoError as a notification; called from code, it is raised
        for button, action in [
            (self._draw, self.draw_reference), (self._run, self.run), (self._cancel, self.cancel),
            (self._accept, self.accept_selected), (self._reject, self.reject_selected),
            (self._accept_all, self.accept_all), (self._box2poly, self.box_to_polygon),
            (self._accept_track, lambda: self.review_tracks("accepted")),
            (self._reject_track, lambda: self.review_tracks("rejected")),
            (self._refine, self.refine_selected), (self._save_coco, lambda: self._ask("coco")),
            (self._save_geojson, lambda: self._ask("geojson")), (self._load, lambda: self._ask(None)),
        ]:
            button.changed.connect(shows_errors(lambda *_, act=action: act(), self._say))
        self._threshold.changed.connect(shows_errors(self._on_threshold, self._say))
        self._image.changed.connect(self._on_image)
        self._on_image(self._image.value)

    @property
    def busy(self) -> bool:
        """Whether a background job is running."""
        return self._jobs.busy

    def _say(self, text: str) -> None:
        self._info.value = text

    def _preload(self, *_: Any) -> None:
        self._annotators.preload((self._matcher.value, self._outliner.value))

    def _on_busy(self, busy: bool) -> None:
        self._run.enabled, self._cancel.enabled = not busy, busy

    @property
    def image_layer(self) -> Any:
        layer = self._image.value
        if layer is None:
            raise InstannoError("no image layer: open an image first")
        return layer

    def _on_image(self, layer: Any) -> None:
        if layer is not None and CATEGORY in layer.metadata:  # a sample, or the demo's image
            self._category.value = str(layer.metadata[CATEGORY])
        if layer is not None and REFERENCE not in self._viewer.layers:
            self.draw_reference()

    def draw_reference(self) -> Shapes:
        """Select (creating it if needed) the reference layer, with the rectangle tool active."""
        return reference_layer(self._viewer, self.image_layer)

    def result_layer(self) -> Shapes:
        """The result layer of the chosen image, created (with review keys bound) if needed."""
        return self._results().layer

    def _results(self) -> ResultLayer:
        """The chosen image's result layer, behind ``ResultLayer``."""
        image = self.image_layer
        shape = displayed_plane(self._viewer, image)[0].shape[:2]
        return ResultLayer(self._viewer, result_shapes(self._viewer, image, shape), self._bind,
                           self.result_layer)

    def _target(self) -> ResultLayer:
        """The active Shapes layer if it holds results, else the chosen image's result layer."""
        active = self._viewer.layers.selection.active
        if isinstance(active, Shapes) and active.name != REFERENCE:
            return ResultLayer(self._viewer, active, self._bind, self.result_layer)
        return self._results()

    def _bind(self, layer: Shapes) -> None:
        bind_review(layer, {ACCEPT_KEY: shows_errors(self.accept_selected, self._say),
                            REJECT_KEY: shows_errors(self.reject_selected, self._say)},
                    self._category.value)

    def reference_box(self) -> np.ndarray:
        """The reference (x0, y0, x1, y1): the selected rectangle, else the last one drawn."""
        return reference_box(self._viewer)

    def _context(self) -> tuple[Any, tuple, tuple, tuple[str, str]]:
        """(plane, plane indices, image key for the Annotator cache, model names)."""
        image = self.image_layer
        plane, indices = displayed_plane(self._viewer, image)
        key = (id(image), id(image.data), indices)
        return plane, indices, key, (self._matcher.value, self._outliner.value)

    def _category_name(self) -> str:
        return self._category.value.strip() or "object"

    def cancel(self) -> None:
        """Stop the running job at its next step; its results are dropped, annotations kept."""
        self._jobs.cancel()

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
        used = f"{len(box)} positive(s), {len(negatives)} negative(s)"
        tiled = runs_tiled(self.image_layer, plane)
        shown = float(self._threshold.value)  # outlined first; the rest when the slider goes down

        def work(report: Callable, cancelled: Callable) -> Instances:
            return self._annotators.find_similar(names, key, plane, box, category, tiled, report,
                                                 cancelled, outline_threshold=shown,
                                                 negatives=negatives)

        def done(inst: Instances) -> None:
            flag = inst.properties.get("outlined")
            later = np.zeros(len(inst), bool) if flag is None else ~flag.astype(bool)
            n = results.add(inst[~later], indices, self._threshold.value, replace_category=category)
            self._pending = Pending(results, indices, key, names, plane, category, inst,
                                    shown) if later.any() else None
            self._say(f"{n + int(later.sum())} '{category}' instances found from {used}; "
                      f"{results.shown()} shown")
            self._viewer.layers.selection.active = results.layer
            results.layer.mode = "select"
            self._outline_more(float(self._threshold.value))  # the slider moved meanwhile

        return self._jobs.start("Find similar", work, done)

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

        return self._jobs.start("Find similar, all planes", work, done)

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
                                                 pending.inst, threshold, report, cancelled)

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
        if runs_tiled(self.image_layer, plane):
            side = int(IN_MEMORY_PIXELS ** 0.5)
            raise InstannoError(f"box → polygon: images up to {side}x{side} for now")
        category = self._category_name()

        def work(report: Callable, cancelled: Callable) -> list[np.ndarray]:
            return self._annotators.outline(names, key, plane, boxes, report)

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

        return self._jobs.start("Box → polygon", work, done)

    def refine_selected(self) -> Any:
        """Snap the selected (edited) polygons of the result layer to the object boundary."""
        plane, _, key, names = self._context()
        results = self._target()
        sel = sorted(results.layer.selected_data)
        if not sel:
            raise InstannoError("select the polygons to refine first")
        before = [np.array(results.layer.data[i]) for i in sel]

        def work(report: Callable, cancelled: Callable) -> list[np.ndarray]:
            return self._annotators.refine(names, key, plane, before, report, cancelled)

        def done(polys: list[np.ndarray]) -> None:
            kept, collapsed = results.replace_refined(sel, before, polys)
            if collapsed:
                show_warning(f"{collapsed} polygon(s) collapsed: kept as drawn")
            self._say(f"{kept} polygon(s) refined" + (f", {collapsed} collapsed: kept as drawn"
                                                       if collapsed else ""))

        return self._jobs.start("Refine", work, shows_errors(done, self._say))

    def save(self, path: str | Path, fmt: str | None = None, include_rejected: bool | None = None
             ) -> Path:
        """Save the result layer as COCO JSON or GeoJSON (atomic; see ``files``). Rejected
        instances are left out unless ``include_rejected`` (default: the "keep rejected" box)."""
        results = self._target()
        inst = results.instances()
        keep = self._keep_rejected.value if include_rejected is None else include_rejected
        out = save_instances(path, inst, results.layer.metadata, results.layer.name,
                             format_for(path, fmt), include_rejected=keep)
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

    def _ask(self, fmt: str | None) -> None:
        """A file dialog, then save as ``fmt`` ("coco" / "geojson"), or load (None)."""
        path = ask_load_path(self.native) if fmt is None else ask_save_path(self.native, fmt)
        if path and fmt is None:
            self.load(path)
        elif path:
            self.save(path, fmt)
