"""The "Find similar" dock widget: layout and wiring over ``Annotator``, ``Instances`` and ``io``.

Box one instance in the "reference" layer, Run, review the polygons (accept ``Y`` / reject ``N``
on the result layer; napari already uses A and R), outline missed boxes, refine edited polygons,
save. Model calls run in the background (``jobs``, ``annotators``); errors become notifications
and never touch the annotations already made. Results: ``result_layer``; the image is the
displayed 2D plane of the chosen layer (``prompts``).
"""

from __future__ import annotations

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
from qtpy.QtCore import QTimer

from ..errors import InstannoError
from ..inference.annotator import DEFAULT_MIN_SCORE
from ._sample_data import CATEGORY, REFERENCE
from .annotators import AnnotatorCache, Pending, model_choices
from .files import ask_load_path, ask_save_path
from .finetuning import FineTuneActions, folder_choices
from .jobs import JobRunner, shows_errors
from .prompts import (
    displayed_plane,
    reference_box,
    reference_layer,
)
from .result_layer import ResultLayer, bind_review, result_shapes
from .widget_actions import WidgetActions
from .widget_api import WidgetAPI

if TYPE_CHECKING:
    import napari

ACCEPT_KEY, REJECT_KEY = "y", "n"


class FindSimilarWidget(WidgetActions, FineTuneActions, WidgetAPI, Container):
    """Dock widget: reference box -> similar instances as editable, reviewable polygons.

    The buttons' actions are public methods (``WidgetActions``, ``FineTuneActions``);
    ``WidgetAPI`` adds the ones a notebook needs.
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._viewer = viewer
        self._image = create_widget(label="image", annotation="napari.layers.Image")
        self._matcher = ComboBox(label="matcher", choices=model_choices("matcher"))
        self._outliner = ComboBox(label="outliner", choices=model_choices("outliner"))
        self._models = ComboBox(label="models", choices=folder_choices(), tooltip="the shipped "
                                "weights, or a folder fine-tuned on your annotations")
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
        self._finetune = PushButton(text="Fine-tune on accepted", tooltip="train the matcher "
                                    "(and the outliner) on the accepted shapes of this image")
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
            self._image, self._matcher, self._outliner, self._models, self._category,
            row(self._draw, self._run, self._cancel), self._bar, self._threshold,
            row(self._accept, self._reject, self._accept_all),
            row(self._all_planes, self._accept_track, self._reject_track),
            row(self._box2poly, self._refine, self._finetune),
            row(self._save_coco, self._save_geojson, self._load), self._keep_rejected, self._info,
        ])
        self._jobs = JobRunner(self._bar, self._say, self._on_busy)
        self._annotators = AnnotatorCache()
        self._pending: Pending | None = None  # the last run's candidates not outlined yet
        self._saved_to: Path | None = None  # the last annotations file saved (fine-tune goes there)
        # deferred (read every choice once all are set); the widget's own timer: gone with it
        preload = QTimer(self.native, singleShot=True, interval=0)
        preload.timeout.connect(self._preload)
        for choice in (self._matcher, self._outliner, self._models):
            choice.changed.connect(lambda *_: preload.start())
        jobs = self._jobs  # not through self: its wrapper may be gone when Qt destroys the widget
        self.native.destroyed.connect(lambda *_: jobs.close())
        preload.start()  # the models load while the user draws a reference

        # buttons and keys show an InstannoError as a notification; called from code, it is raised
        for button, action in [
            (self._draw, self.draw_reference), (self._run, self.run), (self._cancel, self.cancel),
            (self._accept, self.accept_selected), (self._reject, self.reject_selected),
            (self._accept_all, self.accept_all), (self._box2poly, self.box_to_polygon),
            (self._accept_track, lambda: self.review_tracks("accepted")),
            (self._reject_track, lambda: self.review_tracks("rejected")),
            (self._refine, self.refine_selected), (self._finetune, self.fine_tune_accepted),
            (self._save_coco, lambda: self._ask("coco")),
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
        self._annotators.preload(self._names())

    def _names(self) -> tuple[str, str, str]:
        """(matcher, outliner, model folder; "" for the shipped weights)."""
        return self._matcher.value, self._outliner.value, self._models.value

    def _on_busy(self, busy: bool) -> None:
        self._run.enabled = self._finetune.enabled = not busy
        self._cancel.enabled = busy

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
        return plane, indices, key, self._names()

    def _category_name(self) -> str:
        return self._category.value.strip() or "object"

    def cancel(self) -> None:
        """Stop the running job at its next step; its results are dropped, annotations kept."""
        self._jobs.cancel()

    def _ask(self, fmt: str | None) -> None:
        """A file dialog, then save as ``fmt`` ("coco" / "geojson"), or load (None)."""
        path = ask_load_path(self.native) if fmt is None else ask_save_path(self.native, fmt)
        if path and fmt is None:
            self.load(path)
        elif path:
            self.save(path, fmt)
