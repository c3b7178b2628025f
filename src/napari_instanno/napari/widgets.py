"""The "Find similar" dock widget: a thin GUI over ``Annotator``, ``Instances`` and ``io``.

Box one instance in the "reference" layer, Run, review the polygons (accept ``Y`` / reject ``N``,
on the result layer; napari already uses A and R), outline missed boxes, refine edited polygons,
save. Every model call runs in a ``thread_worker``; errors become notifications and never touch
the annotations already made. A run finding more than ``LOD_ABOVE`` instances (2D images) is shown
through ``LevelOfDetail`` (centres when zoomed out, the visible polygons when zoomed in); review,
threshold and saving then act on the whole set. GeoJSON is saved in map coordinates with the CRS
when the image came from a georeferenced GeoTIFF (our reader keeps its transform and CRS).

Images: the displayed 2D plane of the chosen layer (stacks: the current slice; RGB, grayscale, any
dtype; see ``napari_instanno.image`` for the normalisation).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
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
from napari.qt.threading import create_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QObject, Signal

from ..errors import InstannoError
from ..geometry import polygon_area
from ..image import check_box
from ..inference.annotator import DEFAULT_MIN_SCORE
from ..instances import Instances
from ._reader import get_reader, read_geojson_layer
from ._sample_data import REFERENCE
from .large_layers import INDEX, LevelOfDetail
from .large_layers import KEY as LOD_KEY
from .layers import (
    GEOREF,
    HIDDEN,
    IMAGE_INFO,
    STATUS_COLORS,
    add_instances,
    all_shapes,
    apply_threshold,
    ensure_features,
    georef,
    layer_to_instances,
    rectangle_to_box,
    replace_polygons,
    set_status,
    shapes_to_instances,
)

if TYPE_CHECKING:
    import napari

TILED_ABOVE = 4096 * 4096  # in-memory planes larger than this go through tiling too
LOD_ABOVE = 10_000  # runs finding more instances are shown through LevelOfDetail
ACCEPT_KEY, REJECT_KEY = "y", "n"
MIN_AREA = 1.0  # a refined polygon smaller than this (px^2) is a collapse: keep the user's one


class _Signals(QObject):
    progress = Signal(int, int)  # emitted from the worker thread, delivered in the GUI thread


def _choices(kind: str) -> list[str]:
    from ..inference.annotator import MATCHERS, OUTLINERS, WEIGHTS
    from ..models.weights import shipped_path

    names = list(MATCHERS if kind == "matcher" else OUTLINERS)
    return [n for n in names if n != "learned" or shipped_path(WEIGHTS[kind])]


class FindSimilarWidget(Container):
    """Dock widget: reference box -> similar instances as editable, reviewable polygons."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._viewer = viewer
        self._image = create_widget(label="image", annotation="napari.layers.Image")
        self._matcher = ComboBox(label="matcher", choices=_choices("matcher"))
        self._outliner = ComboBox(label="outliner", choices=_choices("outliner"))
        self._category = LineEdit(label="category", value="object")
        self._draw = PushButton(text="Draw reference box")
        self._run = PushButton(text="Find similar")
        self._cancel = PushButton(text="Cancel", enabled=False)
        self._bar = ProgressBar(label="progress", value=0, min=0, max=1)
        self._threshold = FloatSlider(label="min score", min=0.0, max=1.0, step=0.01,
                                      value=DEFAULT_MIN_SCORE,
                                      tracking=False)
        self._accept = PushButton(text=f"Accept sel. [{ACCEPT_KEY.upper()}]")
        self._reject = PushButton(text=f"Reject sel. [{REJECT_KEY.upper()}]")
        self._accept_all = PushButton(text="Accept all")
        self._box2poly = PushButton(text="Box → polygon")
        self._refine = PushButton(text="Refine selected")
        self._save_coco = PushButton(text="Save COCO")
        self._save_geojson = PushButton(text="Save GeoJSON")
        self._load = PushButton(text="Load")
        self._info = Label(value="Draw a box around one instance, then Find similar.")

        def row(*widgets: Any) -> Container:
            return Container(widgets=widgets, layout="horizontal", labels=False)

        super().__init__(widgets=[
            self._image, self._matcher, self._outliner, self._category,
            row(self._draw, self._run, self._cancel), self._bar, self._threshold,
            row(self._accept, self._reject, self._accept_all),
            row(self._box2poly, self._refine),
            row(self._save_coco, self._save_geojson, self._load), self._info,
        ])
        self._signals = _Signals()
        self._signals.progress.connect(self._on_progress)
        self._worker: Any = None
        self._pbar: Any = None
        self._stop = threading.Event()
        self._annotator: Any = None
        self._annotator_key: tuple | None = None
        self._image_key: tuple | None = None

        self._draw.changed.connect(self.draw_reference)
        self._run.changed.connect(self.run)
        self._cancel.changed.connect(self.cancel)
        self._threshold.changed.connect(self._on_threshold)
        self._accept.changed.connect(self.accept_selected)
        self._reject.changed.connect(self.reject_selected)
        self._accept_all.changed.connect(self.accept_all)
        self._box2poly.changed.connect(self.box_to_polygon)
        self._refine.changed.connect(self.refine_selected)
        self._save_coco.changed.connect(lambda: self._ask_save("coco"))
        self._save_geojson.changed.connect(lambda: self._ask_save("geojson"))
        self._load.changed.connect(self._ask_load)
        self._image.changed.connect(self._on_image)
        self._on_image(self._image.value)

    @property
    def busy(self) -> bool:
        """Whether a background job is running."""
        return self._worker is not None

    # --- layers --------------------------------------------------------------------------
    @property
    def image_layer(self) -> Any:
        layer = self._image.value
        if layer is None:
            raise InstannoError("no image layer; open an image (or File > Open Sample) first")
        return layer

    def _on_image(self, layer: Any) -> None:
        if layer is not None and REFERENCE not in self._viewer.layers:
            self.draw_reference()

    def draw_reference(self) -> Shapes:
        """Select (creating it if needed) the reference layer, with the rectangle tool active."""
        layers = self._viewer.layers
        if REFERENCE in layers:
            ref = layers[REFERENCE]
        else:
            image = self.image_layer
            ref = self._viewer.add_shapes(
                ndim=image.ndim, name=REFERENCE, edge_color="cyan", face_color="transparent",
                edge_width=1.5, scale=image.scale, translate=image.translate)
        layers.selection.active = ref
        ref.mode = "add_rectangle"
        return ref

    def result_layer(self) -> Shapes:
        """The result layer of the chosen image, created (with review keys bound) if needed."""
        image = self.image_layer
        name = f"{image.name} instances"
        if name in self._viewer.layers:
            layer = self._viewer.layers[name]
        else:
            h, w = self._plane(image)[0].shape[:2]
            layer = self._viewer.add_shapes(
                ndim=image.ndim, name=name, face_color="transparent", opacity=1.0,
                edge_width=max(1.0, max(h, w) / 512), scale=image.scale, translate=image.translate,
                metadata={IMAGE_INFO: {"file_name": _file_name(image), "height": int(h),
                                       "width": int(w)}, GEOREF: georef(image.metadata)})
        self._bind(layer)
        return layer

    def _bind(self, layer: Shapes) -> None:
        layer.bind_key(ACCEPT_KEY, lambda _: self.accept_selected(), overwrite=True)
        layer.bind_key(REJECT_KEY, lambda _: self.reject_selected(), overwrite=True)
        defaults = {"score": 1.0, "category": self._category.value, "status": "accepted"}
        if LOD_KEY in layer.metadata:
            defaults[INDEX] = -1  # a hand-drawn shape, new to the full set
        ensure_features(layer, defaults)
        layer.current_edge_color = STATUS_COLORS["accepted"]

    def _add(self, layer: Shapes, inst: Instances, idx: tuple, category: str | None = None
             ) -> tuple[Shapes, int]:
        """Add ``inst`` to a result layer as ``add_instances`` does; returns (layer, added).

        A layer deleted meanwhile (a background job's target) is replaced by the image's result
        layer. More than ``LOD_ABOVE`` instances on a 2D, unscaled image move the layer's shapes
        into a ``LevelOfDetail``, whose Shapes layer takes the result layer's name and place.
        """
        if layer not in self._viewer.layers:
            layer = self.result_layer()
        lod = layer.metadata.get(LOD_KEY)
        image = self.image_layer
        if lod is None and len(inst) > LOD_ABOVE and not idx and np.allclose(image.scale, 1) \
                and np.allclose(image.translate, 0):
            old = shapes_to_instances(*all_shapes(layer))
            meta = {k: v for k, v in layer.metadata.items() if k != HIDDEN}
            name, width = layer.name, float(layer.current_edge_width)
            self._viewer.layers.remove(layer)
            lod = LevelOfDetail(self._viewer, old, name=name, edge_width=width, metadata=meta)
            lod.min_score = float(self._threshold.value)
            layer = lod.shapes
            self._bind(layer)
        if lod is not None:
            return layer, lod.add(inst, replace_category=category)
        return layer, add_instances(layer, inst, idx, self._threshold.value,
                                    replace_category=category)

    def _target(self) -> Shapes:
        """The active Shapes layer if it holds results, else the chosen image's result layer."""
        active = self._viewer.layers.selection.active
        if isinstance(active, Shapes) and active.name != REFERENCE:
            return active
        return self.result_layer()

    def _plane(self, layer: Any) -> tuple[Any, tuple[int, ...]]:
        """The displayed 2D plane (or RGB plane) of an image layer and its leading indices."""
        data = layer.data[0] if layer.multiscale else layer.data
        lead = layer.ndim - 2
        if lead <= 0:
            return data, ()
        point = layer.world_to_data(self._viewer.dims.point)
        idx = tuple(int(np.clip(round(p), 0, n - 1)) for p, n in zip(point[:lead], data.shape))
        return data[idx], idx

    def _selected_rectangles(self, ref: Shapes) -> list[int]:
        return [i for i in sorted(ref.selected_data) if ref.shape_type[i] == "rectangle"]

    def reference_box(self) -> np.ndarray:
        """The reference (x0, y0, x1, y1): the selected rectangle, else the last one drawn."""
        ref = self._viewer.layers[REFERENCE] if REFERENCE in self._viewer.layers else None
        rects = [] if ref is None else [i for i, t in enumerate(ref.shape_type) if t == "rectangle"]
        if not rects:
            raise InstannoError("no reference box: click 'Draw reference box' and drag a "
                                "rectangle around one instance")
        chosen = (self._selected_rectangles(ref) or rects)[-1]
        return rectangle_to_box(ref.data[chosen])

    # --- background jobs ------------------------------------------------------------------
    def _start(self, what: str, work: Callable[..., Any], done: Callable[[Any], None]) -> Any:
        """Run ``work(progress, cancelled)`` in a thread; ``done(result)`` in the GUI thread."""
        if self._worker is not None:
            show_info("still working; wait or press Cancel")
            return None
        self._stop = threading.Event()
        stop, emit = self._stop, self._signals.progress.emit
        worker = create_worker(work, emit, stop.is_set, _start_thread=False, _connect={
            "returned": lambda result: None if stop.is_set() else done(result),
            "errored": lambda err: self._on_error(what, err),  # instead of re-raising
            "finished": self._on_finished,
        })
        self._worker = worker
        self._pbar = progress(total=0, desc=what)
        self._bar.value, self._bar.max = 0, 0
        self._info.value = f"{what}..."
        self._run.enabled, self._cancel.enabled = False, True
        worker.start()
        return worker

    def _on_progress(self, done: int, total: int) -> None:
        self._bar.max, self._bar.value = max(total, 1), min(done, max(total, 1))
        if self._pbar is not None:
            self._pbar.total = total
            self._pbar.update(done - self._pbar.n)

    def _on_error(self, what: str, err: Exception) -> None:
        msg = str(err) if isinstance(err, InstannoError) else f"{type(err).__name__}: {err}"
        self._info.value = f"{what} failed"
        show_error(f"{what} failed: {msg}")

    def _on_finished(self) -> None:
        if self._pbar is not None:
            self._pbar.close()
        self._worker = self._pbar = None
        self._run.enabled, self._cancel.enabled = True, False
        if self._stop.is_set():
            self._info.value = "cancelled; nothing changed"

    def cancel(self) -> None:
        """Stop the running job at its next step; its results are dropped, annotations kept."""
        self._stop.set()

    def _get_annotator(self, names: tuple[str, str], key: tuple, plane: Any) -> Any:
        """The cached Annotator for ``names``, with ``plane`` set when ``key`` changed (thread)."""
        from ..inference.annotator import Annotator

        if self._annotator is None or self._annotator_key != names:
            try:
                self._annotator = Annotator(matcher=names[0], outliner=names[1])
            except Exception as err:
                if isinstance(err, InstannoError):
                    raise
                raise InstannoError(f"cannot set up matcher {names[0]!r} / outliner "
                                    f"{names[1]!r}: {err}") from err
            self._annotator_key, self._image_key = names, None
        if key != self._image_key and plane is not None:
            self._annotator.set_image(np.asarray(plane))
            self._image_key = key
        return self._annotator

    def _context(self) -> tuple[Any, tuple, Any, tuple[str, str]]:
        image = self.image_layer
        plane, idx = self._plane(image)
        key = (id(image), id(image.data), idx)
        return plane, idx, key, (self._matcher.value, self._outliner.value)

    # --- actions --------------------------------------------------------------------------
    def run(self) -> Any:
        """Find every instance similar to the reference; returns the worker (None on bad input)."""
        try:
            plane, idx, key, names = self._context()
            box = check_box(self.reference_box(), plane.shape[:2], "reference box")
            layer = self.result_layer()
        except InstannoError as err:
            show_error(str(err))
            return None
        category = self._category.value.strip() or "object"
        tiled = _needs_tiling(self.image_layer, plane)

        def work(report: Callable, cancelled: Callable) -> Instances:
            report(0, 2)
            ann = self._get_annotator(names, key, None if tiled else plane)
            if tiled:
                return _find_tiled(ann, plane, box, category, report, cancelled)
            report(1, 2)
            if cancelled():
                return Instances()
            inst = ann.find_similar(box, category=category)
            report(2, 2)
            return inst

        def done(inst: Instances) -> None:
            target, n = self._add(layer, inst, idx, category)
            lod = target.metadata.get(LOD_KEY)
            shown = len(lod.kept()) if lod is not None else len(target.data)
            self._info.value = f"{n} '{category}' instances found; {shown} shown"
            self._viewer.layers.selection.active = target
            target.mode = "select"

        return self._start("Find similar", work, done)

    def _on_threshold(self, value: float) -> None:
        try:
            layer = self._target()
            lod = layer.metadata.get(LOD_KEY)
            shown = (lod.set_threshold(float(value)) if lod is not None
                     else apply_threshold(layer, float(value)))
        except InstannoError as err:
            show_error(str(err))
            return
        self._info.value = f"{shown} shapes with score >= {value:.2f} shown"

    def _review(self, status: str, everything: bool = False) -> None:
        try:
            layer = self._target()
        except InstannoError as err:
            show_error(str(err))
            return
        lod = layer.metadata.get(LOD_KEY)
        if everything and lod is not None:  # the whole set above the threshold, not just drawn
            full = lod.instances()
            idx = np.flatnonzero((full.status == "proposed") & (full.scores >= lod.min_score))
        elif everything:
            idx = np.flatnonzero(layer.features["status"].to_numpy() == "proposed")
        else:
            idx = sorted(layer.selected_data)
        if not len(idx):
            show_info("nothing to accept" if everything else
                      "select shapes first (select tool: click, or drag a box around them)")
            return
        if everything and lod is not None:
            lod.set_status(idx, status)
        else:
            set_status(layer, idx, status)
        self._info.value = f"{len(idx)} shapes {status}"

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
        """Outline the selected reference-layer rectangles and add them as accepted polygons."""
        try:
            plane, idx, key, names = self._context()
            ref = self._viewer.layers[REFERENCE] if REFERENCE in self._viewer.layers else None
            sel = self._selected_rectangles(ref) if ref is not None else []
            if not sel:
                raise InstannoError("select one or more rectangles in the 'reference' layer first")
            boxes = np.stack([check_box(rectangle_to_box(ref.data[i]), plane.shape[:2])
                              for i in sel])
            layer = self.result_layer()
        except InstannoError as err:
            show_error(str(err))
            return None
        category = self._category.value.strip() or "object"
        if _needs_tiling(self.image_layer, plane):
            show_error("box → polygon works on in-memory images up to 4096x4096 for now")
            return None

        def work(report: Callable, cancelled: Callable) -> list[np.ndarray]:
            report(0, 1)
            polys = self._get_annotator(names, key, plane).boxes_to_polygons(boxes)
            report(1, 1)
            return polys

        def done(polys: list[np.ndarray]) -> None:
            inst = Instances(polygons=polys, categories={1: category},
                             status=np.full(len(polys), "accepted", dtype=object))
            self._add(layer, inst, idx)
            ref.selected_data = set(sel)
            ref.remove_selected()
            self._info.value = f"{len(polys)} polygon(s) added"

        return self._start("Box → polygon", work, done)

    def refine_selected(self) -> Any:
        """Snap the selected (edited) polygons of the result layer to the object boundary."""
        try:
            plane, _, key, names = self._context()
            layer = self._target()
            sel = sorted(layer.selected_data)
            if not sel:
                raise InstannoError("select the polygon(s) to refine in the result layer first")
            before = [np.array(layer.data[i]) for i in sel]
        except InstannoError as err:
            show_error(str(err))
            return None

        def work(report: Callable, cancelled: Callable) -> list[np.ndarray]:
            ann = self._get_annotator(names, key, plane)
            out = []
            for k, v in enumerate(before):
                report(k, len(before))
                if cancelled():
                    break
                out.append(ann.refine(v[:, -2:] + 0.5))
            return out

        def done(polys: list[np.ndarray]) -> None:
            same = len(layer.data) > sel[-1] and all(
                np.array_equal(layer.data[i], v) for i, v in zip(sel, before, strict=True))
            if not same:
                show_error("the shapes changed while refining; select them and refine again")
                return
            bad = [k for k, p in enumerate(polys) if polygon_area(p) < MIN_AREA]
            if bad:
                show_warning(f"refine collapsed {len(bad)} polygon(s); they are kept as drawn")
            keep = [k for k in range(len(polys)) if k not in bad]
            new = replace_polygons(layer, [sel[k] for k in keep], [polys[k] for k in keep])
            layer.selected_data = set(new)
            self._info.value = f"{len(keep)} polygon(s) refined"

        return self._start("Refine", work, done)

    # --- files ----------------------------------------------------------------------------
    def save(self, path: str | Path, fmt: str | None = None) -> Path | None:
        """Save the shown shapes of the result layer as COCO JSON or GeoJSON (atomic).

        A ``LevelOfDetail`` layer saves its whole set above the threshold; GeoJSON of a
        georeferenced image is in map coordinates with the image's CRS.
        """
        from ..io.coco import write_coco
        from ..io.geojson import write_geojson

        path = Path(path)
        fmt = fmt or ("geojson" if path.suffix.lower() == ".geojson" else "coco")
        try:
            layer = self._target()
            lod = layer.metadata.get(LOD_KEY)
            inst = lod.kept() if lod is not None else layer_to_instances(layer)
            if fmt == "geojson":
                out = write_geojson(path, inst, overwrite=True,
                                    **(layer.metadata.get(GEOREF) or {}))
            else:
                info = dict(layer.metadata.get(IMAGE_INFO) or {"file_name": layer.name})
                out = write_coco(path, [(info, inst)], overwrite=True)
        except InstannoError as err:
            show_error(str(err))
            return None
        self._info.value = f"saved {len(inst)} shapes to {out.name}"
        return out

    def load(self, path: str | Path) -> int:
        """Add the shapes of a COCO / GeoJSON file to the result layer; returns how many.

        A GeoJSON with a ``crs`` member is read in the map coordinates of a georeferenced image.
        """
        from ..io.atomic import read_json
        from ..io.geojson import from_feature_collection

        try:
            reader = get_reader(str(path))
            if reader is None:
                raise InstannoError(f"{path} is not a COCO or GeoJSON file")
            layer = self.result_layer()
            _, idx = self._plane(self.image_layer)
            geo = layer.metadata.get(GEOREF)
            data = read_json(path, "GeoJSON") if reader is read_geojson_layer else None
            if geo is not None and isinstance(data, dict) and "crs" in data:
                found = [from_feature_collection(data, geo["transform"], source=str(path))]
            else:
                found = [shapes_to_instances(d, meta["shape_type"], meta["features"])
                         for d, meta, _ in reader(str(path))]
            added = 0
            for inst in found:
                layer, n = self._add(layer, inst, idx)
                added += n
        except InstannoError as err:
            show_error(str(err))
            return 0
        self._info.value = f"loaded {added} shapes from {Path(path).name}"
        return added

    def _ask_save(self, fmt: str) -> None:
        from qtpy.QtWidgets import QFileDialog

        ext = ".geojson" if fmt == "geojson" else ".json"
        path, _ = QFileDialog.getSaveFileName(self.native, f"Save {fmt}", f"annotations{ext}",
                                              f"{fmt} (*{ext})")
        if path:
            self.save(path, fmt)

    def _ask_load(self) -> None:
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getOpenFileName(self.native, "Load annotations", "",
                                              "COCO / GeoJSON (*.json *.geojson)")
        if path:
            self.load(path)


def _file_name(layer: Any) -> str:
    src = getattr(layer.source, "path", None)
    return Path(src).name if src else layer.name


def _needs_tiling(layer: Any, plane: Any) -> bool:
    return (layer.multiscale or not isinstance(plane, np.ndarray)
            or plane.shape[0] * plane.shape[1] > TILED_ABOVE)


def _find_tiled(ann: Any, plane: Any, box: np.ndarray, category: str, report: Callable,
                cancelled: Callable) -> Instances:
    from ..inference.tiling import find_similar_tiled

    return find_similar_tiled(ann, plane, box, tile_size=1024, category=category,
                              progress=report, cancel=cancelled)
