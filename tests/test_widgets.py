"""The "Find similar" widget in a real (headless) viewer: reference -> polygons -> review -> save ->
reopen, plus bad input, errors, cancel and stacks. NCC + Otsu keep it fast and deterministic."""

from __future__ import annotations

import numpy as np
import pytest

# torch pulls in triton; loading triton after Mesa's GL context exists segfaults (LLVM clash), so
# it is loaded before any viewer is made.
import torchvision  # noqa: F401
from napari.utils.notifications import notification_manager

from napari_instanno import InstannoError
from napari_instanno.geometry import box_iou, ellipse_polygon, polygon_box
from napari_instanno.inference.annotator import DEFAULT_MIN_SCORE, Annotator
from napari_instanno.napari.layers import HIDDEN, STATUS_COLORS, replace_polygons
from napari_instanno.napari.shapes_data import box_to_rectangle, layer_to_instances, rectangle_to_box
from napari_instanno.napari.widgets import FindSimilarWidget

from .conftest import docked_widget

pytestmark = pytest.mark.gui
TIMEOUT_MS = 60_000


@pytest.fixture
def setup(make_napari_viewer, qtbot, request):
    """A viewer with the nuclei sample (image + preset reference) and the docked widget."""
    viewer = make_napari_viewer(show=getattr(request, "param", False))
    return viewer, docked_widget(viewer), qtbot


def _wait(qtbot, widget) -> None:
    qtbot.waitUntil(lambda: not widget.busy, timeout=TIMEOUT_MS)


def _run(viewer, widget, qtbot):
    assert widget.run() is not None
    _wait(qtbot, widget)
    return viewer.layers["nuclei instances"]


def _errors_since(n: int) -> list[str]:
    return [str(r.message) for r in notification_manager.records[n:]
            if r.severity.name == "ERROR"]


def _colour_pixels(shot: np.ndarray, rgb: tuple[float, ...]) -> np.ndarray:
    """(row, col) of screenshot pixels within 60/255 of an edge colour."""
    target = np.array(rgb[:3]) * 255
    return np.argwhere(np.abs(shot[..., :3].astype(int) - target).max(axis=-1) < 60)


@pytest.mark.parametrize("setup", [True], indirect=True)  # shown: screenshots need a drawn canvas
def test_run_gives_polygons_with_features_and_the_screenshot_shows_them(setup):
    viewer, widget, qtbot = setup
    assert widget._image.value.name == "nuclei"
    assert widget._matcher.choices[:2] in (("ncc", "cosine"), ("learned", "ncc"))
    viewer.reset_view()
    before = viewer.screenshot(canvas_only=True)
    assert len(_colour_pixels(before, STATUS_COLORS["proposed"])) == 0

    layer = _run(viewer, widget, qtbot)
    n = len(layer.data)
    assert n >= 40  # the image holds 92 nuclei; NCC finds most
    assert set(layer.shape_type) == {"polygon"}
    feats = layer.features
    assert list(feats.columns) == ["score", "category", "status"]
    assert set(feats["status"]) == {"proposed"} and set(feats["category"]) == {"nucleus"}
    assert feats["score"].between(0, 1).all() and feats["score"].max() == pytest.approx(1.0)
    assert np.allclose(layer.edge_color, STATUS_COLORS["proposed"])
    # polygons sit on nuclei: bright pixels inside, dark around
    image = viewer.layers["nuclei"].data
    masks = layer_to_instances(layer).to_masks(image.shape)
    inside = image[masks.any(axis=0)].mean()
    assert inside > 3 * image[~masks.any(axis=0)].mean()

    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True)
    yellow = _colour_pixels(shot, STATUS_COLORS["proposed"])
    assert len(yellow) > 20 * n
    # every polygon's vertices map onto yellow screen pixels (camera: world -> canvas)
    centre, zoom = np.array(viewer.camera.center[-2:]), viewer.camera.zoom
    half = np.array(shot.shape[:2]) / 2
    hits = 0
    for poly in layer.data[:20]:
        screen = (np.asarray(poly)[:, -2:] - centre) * zoom + half
        d = np.abs(yellow[None, :, :] - screen[:, None, :]).max(axis=-1).min(axis=1)
        hits += np.mean(d <= 3) > 0.8
    assert hits >= 18


def test_threshold_review_keys_and_categories(setup):
    viewer, widget, qtbot = setup
    layer = _run(viewer, widget, qtbot)
    assert widget._threshold.value == DEFAULT_MIN_SCORE                  # weak matches start hidden
    assert (layer.features["score"] >= DEFAULT_MIN_SCORE).all()
    widget._threshold.value = 0.0
    _wait(qtbot, widget)  # the candidates below the first threshold are outlined in the background
    n = len(layer.data)
    scores = np.sort(layer.features["score"].to_numpy())
    widget._threshold.value = 0.7
    assert len(layer.data) == int((scores >= 0.7).sum()) < n
    assert (layer.features["score"] >= 0.7).all()
    assert len(layer.metadata[HIDDEN][0]) == n - len(layer.data)
    widget._threshold.value = 0.0
    assert len(layer.data) == n and np.allclose(np.sort(layer.features["score"]), scores)

    layer.selected_data = {0, 1}
    widget.accept_selected()
    keys = {str(k): f for k, f in layer.keymap.items()}
    layer.selected_data = {2}
    keys["N"](layer)  # the reject shortcut bound on the layer
    status = layer.features["status"]
    assert status[:3].tolist() == ["accepted", "accepted", "rejected"]
    assert np.allclose(layer.edge_color[:2], STATUS_COLORS["accepted"])
    assert np.allclose(layer.edge_color[2], STATUS_COLORS["rejected"])
    layer.selected_data = {3}
    keys["Y"](layer)
    assert layer.features["status"][3] == "accepted"

    # a second category in the same layer; re-running "nucleus" keeps the reviewed shapes
    ref = viewer.layers["reference"]
    ref.add_rectangles([box_to_rectangle([10, 10, 40, 40])])  # a large, different template
    widget._category.value = "blob"
    _run(viewer, widget, qtbot)
    assert set(layer.features["category"]) == {"nucleus", "blob"}
    ref.selected_data = {0}  # the preset nucleus box again
    widget._category.value = "nucleus"
    _run(viewer, widget, qtbot)
    obj = layer.features[layer.features["category"] == "nucleus"]
    assert (obj["status"] == "accepted").sum() == 3 and (obj["status"] == "rejected").sum() == 1
    # the accepted ones are positives too and the rejected one a negative: more proposals, none twice
    boxes = np.array([rectangle_to_box(layer.data[i]) for i in obj.index])
    iou = box_iou(boxes, boxes)
    assert len(obj) >= n and (iou[np.triu_indices(len(boxes), 1)] < 0.5).all()

    widget.accept_all()
    st = layer.features["status"]
    assert (st == "proposed").sum() == 0 and (st == "rejected").sum() == 1


def test_box_to_polygon_and_refine(setup, monkeypatch):
    viewer, widget, qtbot = setup
    layer = _run(viewer, widget, qtbot)
    ref = viewer.layers["reference"]
    box = rectangle_to_box(ref.data[0])
    x0, y0, x1, y1 = box  # the run's outline of the preset nucleus goes: the user outlines it anew
    centres = [np.asarray(d).mean(axis=0) + 0.5 for d in layer.data]
    layer.selected_data = {i for i, (r, c) in enumerate(centres) if x0 < c < x1 and y0 < r < y1}
    layer.remove_selected()
    n = len(layer.data)
    ref.add_rectangles([box_to_rectangle(box)])
    ref.selected_data = {1}
    widget.box_to_polygon()
    _wait(qtbot, widget)
    assert len(layer.data) == n + 1 and len(ref.data) == 1  # the drawn box became a polygon
    assert layer.features["status"].iloc[-1] == "accepted"
    poly = layer_to_instances(layer).polygons[-1]
    x0, y0, x1, y1 = box
    inside = (poly[:, 1] >= x0 - 1) & (poly[:, 1] <= x1 + 1) & (poly[:, 0] >= y0 - 1) & (
        poly[:, 0] <= y1 + 1)
    assert inside.all()

    # the user drags a polygon too wide, then refines it: the layer gets Annotator.refine's answer
    widget._outliner.value = "ellipse"
    good = layer_to_instances(layer).polygons[0]
    wide = good.mean(axis=0) + 1.4 * (good - good.mean(axis=0))
    score = layer.features["score"].iloc[0]
    idx = replace_polygons(layer, [0], [wide])
    layer.selected_data = set(idx)
    widget.refine_selected()
    _wait(qtbot, widget)
    assert len(layer.data) == n + 1 and layer.selected_data == set(idx)
    expected = ellipse_polygon(polygon_box(wide), 32)
    assert np.allclose(layer_to_instances(layer).polygons[idx[0]], expected)
    assert layer.features["score"].iloc[idx[0]] == pytest.approx(score)  # features kept

    # a refine that collapses a polygon leaves the user's polygon as it was
    monkeypatch.setattr(Annotator, "refine", lambda self, p: np.zeros((3, 2)))
    n_notes = len(notification_manager.records)
    widget.refine_selected()
    _wait(qtbot, widget)
    assert np.allclose(layer_to_instances(layer).polygons[idx[0]], expected)
    assert any("collapsed" in str(r.message) for r in notification_manager.records[n_notes:])


def test_save_reopen_and_save_layers(setup, tmp_path):
    from pycocotools.coco import COCO

    viewer, widget, qtbot = setup
    layer = _run(viewer, widget, qtbot)
    layer.selected_data = {0}
    widget.reject_selected()
    widget._threshold.value = 0.5  # hidden shapes are not saved
    shown = layer_to_instances(layer)
    assert shown.num_rejected == 1
    export = widget.save(tmp_path / "export.json")  # an export leaves the rejected one out
    assert len(COCO(str(export)).anns) == len(shown) - 1
    assert "1 rejected left out" in widget._info.value
    widget._keep_rejected.value = True  # a session file keeps them, to reopen with its review
    for name in ("session.json", "session.geojson"):
        path = widget.save(tmp_path / name)
        assert path is not None and path.is_file()
        reopened = viewer.open(str(path), plugin="napari-instanno")[0]
        back = layer_to_instances(reopened)
        assert len(back) == len(shown)
        for p, q in zip(shown.polygons, back.polygons, strict=True):
            assert np.allclose(p, q, atol=1e-3)
        assert back.status.tolist() == shown.status.tolist()
        assert np.allclose(back.scores, shown.scores)
        assert back.category_names == shown.category_names
    coco = COCO(str(tmp_path / "session.json"))
    assert coco.imgs[1]["height"] == 256 and coco.imgs[1]["width"] == 256

    # File > Save Layers goes through the npe2 writers
    viewer.layers.selection = {layer}
    saved = viewer.layers.save(str(tmp_path / "layers.json"), selected=True,
                               plugin="napari-instanno")
    assert saved == [str(tmp_path / "layers.json")]
    coco = COCO(saved[0])  # the writers export: the rejected shape is left out
    assert len(coco.anns) == len(layer.data) - 1 and coco.imgs[1]["file_name"].startswith("nuclei")
    mask = coco.annToMask(coco.anns[1])
    assert mask.shape == (256, 256) and mask.sum() > 0
    saved = viewer.layers.save(str(tmp_path / "layers.geojson"), selected=True,
                               plugin="napari-instanno")
    assert len(layer_to_instances(viewer.open(saved[0], plugin="napari-instanno")[0])) == len(
        layer.data) - 1
    # loading adds to the result layer instead of replacing it
    assert widget.load(tmp_path / "session.geojson") == len(shown)


def test_bad_reference_notifies_and_keeps_annotations(setup):
    viewer, widget, qtbot = setup
    layer = _run(viewer, widget, qtbot)
    before = [np.array(d) for d in layer.data]
    ref = viewer.layers["reference"]
    ref.add_rectangles([box_to_rectangle([300, 300, 340, 330])])  # outside the 256x256 image
    ref.selected_data = {1}
    n = len(notification_manager.records)
    widget._run.changed.emit(True)  # the button: a notification, the user's shapes untouched
    assert any("outside" in m for m in _errors_since(n))
    assert not widget.busy and len(layer.data) == len(before)
    assert all(np.array_equal(a, b) for a, b in zip(before, layer.data, strict=True))
    with pytest.raises(InstannoError, match="outside"):  # from code: the same message, raised
        widget.run()
    viewer.layers.remove(ref)
    n = len(notification_manager.records)
    widget._run.changed.emit(True)
    assert any("no reference box" in m for m in _errors_since(n))
    with pytest.raises(InstannoError, match="no reference box"):
        widget.run()


def test_worker_errors_and_cancel_keep_annotations(setup, monkeypatch):
    viewer, widget, qtbot = setup
    layer = _run(viewer, widget, qtbot)
    count = len(layer.data)

    def boom(*args, **kwargs):
        raise InstannoError("the matcher ran out of ideas")

    monkeypatch.setattr(Annotator, "find_similar", boom)
    n = len(notification_manager.records)
    _run(viewer, widget, qtbot)
    assert any("ran out of ideas" in m for m in _errors_since(n))
    assert len(layer.data) == count
    monkeypatch.setattr(Annotator, "find_similar", lambda *a, **k: 1 / 0)
    n = len(notification_manager.records)
    _run(viewer, widget, qtbot)
    assert any("ZeroDivisionError" in m for m in _errors_since(n))
    monkeypatch.undo()

    import napari_instanno.inference.annotator as annotator_module

    def broken(*args, **kwargs):
        raise RuntimeError("weights file is truncated")

    monkeypatch.setattr(annotator_module, "_build", broken)
    widget._matcher.value = "cosine"  # a new choice builds a new Annotator, which fails
    n = len(notification_manager.records)
    _run(viewer, widget, qtbot)
    assert any("cannot set up matcher 'cosine'" in m and "truncated" in m
               for m in _errors_since(n))
    assert len(layer.data) == count
    monkeypatch.undo()
    widget._matcher.value = "ncc"

    widget._category.value = "other"
    assert widget.run() is not None
    widget.cancel()
    _wait(qtbot, widget)
    assert len(layer.data) == count and "cancelled" in widget._info.value
    assert widget._run.enabled


@pytest.mark.parametrize("kind", ["stack_uint16", "rgb_float"])
def test_stacks_and_other_dtypes(make_napari_viewer, qtbot, kind, discs):
    discs, centres = discs  # 128 x 128, 16 bright discs
    viewer = make_napari_viewer()
    if kind == "stack_uint16":
        stack = np.zeros((3, 128, 128), np.float32)
        stack[1] = discs
        stack[0] = np.roll(discs, 16, axis=1)
        image = viewer.add_image((np.clip(stack, 0, None) * 4000).astype(np.uint16), name="img")
        viewer.dims.set_current_step(0, 1)
    else:
        rgb = np.stack([discs, discs * 0.5, 1 - discs], axis=-1).astype(np.float32)
        image = viewer.add_image(rgb, name="img", rgb=True)
    widget = FindSimilarWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget._matcher.value, widget._outliner.value = "ncc", "otsu"
    ref = viewer.layers["reference"]  # made by the widget for the new image
    assert ref.ndim == image.ndim and ref.mode == "add_rectangle"
    r, c = centres[5]
    plane = (1,) if kind == "stack_uint16" else ()
    ref.add_rectangles([box_to_rectangle([c - 10, r - 10, c + 10, r + 10], plane)])
    assert widget.run() is not None
    _wait(qtbot, widget)
    layer = viewer.layers["img instances"]
    assert len(layer.data) == len(centres)
    found = layer_to_instances(layer)
    got = np.sort(np.array([p.mean(axis=0) for p in found.polygons]), axis=0)
    assert np.allclose(got, np.sort(np.array(centres), axis=0), atol=1.0)
    if plane:
        assert all((np.asarray(d)[:, 0] == 1).all() for d in layer.data)


def _lazy_widget(make_napari_viewer, image: np.ndarray):
    """A viewer showing ``image`` as a dask layer "lazy" (the tiler's path), the widget docked
    with NCC + Otsu."""
    import dask.array as da

    viewer = make_napari_viewer()
    viewer.add_image(da.from_array(image, chunks=64), name="lazy")
    widget = FindSimilarWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget._matcher.value, widget._outliner.value = "ncc", "otsu"
    return viewer, widget


def test_lazy_image_goes_through_tiling(make_napari_viewer, qtbot, discs, monkeypatch):
    from napari_instanno.inference import tiling

    calls = []
    real = tiling.find_similar_tiled

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(tiling, "find_similar_tiled", spy)
    image, centres = discs
    viewer, widget = _lazy_widget(make_napari_viewer, image)
    r, c = centres[0]
    viewer.layers["reference"].add_rectangles([box_to_rectangle([c - 10, r - 10, c + 10, r + 10])])
    steps = []
    widget._jobs.signals.progress.connect(lambda done, total: steps.append((done, total)))
    assert widget.run() is not None
    _wait(qtbot, widget)
    assert len(calls) == 1 and callable(calls[0]["cancel"])
    assert steps[-1][0] == steps[-1][1] > 0
    layer = viewer.layers["lazy instances"]
    assert len(layer.data) == len(centres)
    # a hand-drawn polygon gets the default features and their colour
    layer.add_polygons([np.array([[1.0, 1.0], [1.0, 5.0], [5.0, 5.0]])])
    assert layer.features["status"].iloc[-1] == "accepted"
    assert np.allclose(layer.edge_color[-1], STATUS_COLORS["accepted"])


def test_box_to_polygon_and_refine_on_a_lazy_image(make_napari_viewer, qtbot, discs):
    """On a dask layer (the tiler's path) box -> polygon and refine read a window around the
    shapes instead of refusing the image."""
    image, centres = discs
    viewer, widget = _lazy_widget(make_napari_viewer, image)
    ref = viewer.layers["reference"]
    r, c = centres[3]
    box = np.array([c - 12, r - 12, c + 12, r + 12], float)
    ref.add_rectangles([box_to_rectangle(box)])
    ref.selected_data = {0}
    widget.box_to_polygon()
    _wait(qtbot, widget)
    layer = viewer.layers["lazy instances"]
    assert len(layer.data) == 1 and len(ref.data) == 0  # the drawn box became a polygon
    assert layer.features["status"].iloc[0] == "accepted"
    poly = layer_to_instances(layer).polygons[0]
    assert np.allclose(poly.mean(axis=0), (r, c), atol=1.5)  # on the disc
    assert (np.abs(poly - (r, c)).max(axis=0) <= 12).all()  # inside the box

    widget._outliner.value = "ellipse"  # refine: the ellipse of the dragged polygon's bounds
    wide = poly.mean(axis=0) + 1.4 * (poly - poly.mean(axis=0))
    idx = replace_polygons(layer, [0], [wide])
    layer.selected_data = set(idx)
    widget.refine_selected()
    _wait(qtbot, widget)
    assert np.allclose(layer_to_instances(layer).polygons[idx[0]],
                       ellipse_polygon(polygon_box(wide), 32))


def test_geotiff_saves_geojson_in_map_coordinates(make_napari_viewer, geo_folder, tmp_path):
    import json

    import rasterio

    from napari_instanno.io.geojson import read_geojson

    tif = geo_folder / "images" / "discs.tif"
    viewer = make_napari_viewer()
    image, = viewer.open(str(tif), plugin="napari-instanno")
    assert image.rgb and image.metadata["crs"].to_epsg() == 32632
    widget = FindSimilarWidget(viewer)
    viewer.window.add_dock_widget(widget)
    assert widget.load(geo_folder / "annotations.json") == 12
    layer = viewer.layers["discs instances"]
    pixels = layer_to_instances(layer)
    path = widget.save(tmp_path / "fields.geojson")
    written = json.loads(path.read_text())
    assert written["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32632"
    with rasterio.open(tif) as ds:
        b, transform = ds.bounds, ds.transform
    xy = np.concatenate([f["geometry"]["coordinates"][0] for f in written["features"]])
    assert len(written["features"]) == 12
    assert (xy[:, 0] >= b.left - 1e-6).all() and (xy[:, 0] <= b.right + 1e-6).all()
    assert (xy[:, 1] >= b.bottom - 1e-6).all() and (xy[:, 1] <= b.top + 1e-6).all()
    back = read_geojson(path, transform=transform)
    assert all(np.allclose(p, q, atol=1e-4) for p, q in zip(pixels.polygons, back.polygons,
                                                            strict=True))
    # loading the map-coordinate file through the widget puts the polygons back on the pixels
    assert widget.load(path) == 12
    again = layer_to_instances(layer).polygons[12:]
    assert all(np.allclose(p, q, atol=1e-4) for p, q in zip(pixels.polygons, again, strict=True))
    # File > Save Layers writes map coordinates too
    viewer.layers.selection = {layer}
    saved, = viewer.layers.save(str(tmp_path / "layers.geojson"), selected=True,
                                plugin="napari-instanno")
    assert json.loads(open(saved).read())["crs"] == written["crs"]


def test_huge_run_is_shown_through_level_of_detail(make_napari_viewer, qtbot, tmp_path,
                                                    monkeypatch):
    import json

    from napari.layers import Points

    from napari_instanno.instances import Instances
    from napari_instanno.napari import result_layer
    from napari_instanno.napari.large_layers import LOD_KEY, camera

    n_side, step = 110, 9  # 12,100 squares of 4 x 4 px on a 990 x 990 grid
    rows, cols = np.meshgrid(np.arange(n_side) * step + 5.0, np.arange(n_side) * step + 5.0,
                             indexing="ij")
    corners = np.array([[0, 0], [0, 4], [4, 4], [4, 0]], float)
    polys = [corners + (r, c) for r, c in zip(rows.ravel(), cols.ravel(), strict=True)]
    n = len(polys)
    assert n > result_layer.LOD_ABOVE
    scores = np.random.default_rng(0).uniform(0.3, 1.0, n)
    monkeypatch.setattr(Annotator, "find_similar", lambda self, box, category="object", **kw:
                        Instances(polygons=polys, scores=scores, categories={1: category}))
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((1000, 1000), np.uint8), name="img")
    widget = FindSimilarWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget._matcher.value, widget._outliner.value = "ncc", "otsu"
    viewer.layers["reference"].add_rectangles([box_to_rectangle([5, 5, 9, 9])])
    assert widget.run() is not None  # the Run path, with the monkeypatched matcher
    _wait(qtbot, widget)

    layer = viewer.layers["img instances"]
    overview = viewer.layers["img instances (overview)"]
    lod = layer.metadata[LOD_KEY]
    assert isinstance(overview, Points) and len(overview.data) == n
    assert str(n) in widget._info.value
    viewer.reset_view()  # zoomed out: centres only
    assert overview.visible and not layer.visible and len(layer.data) == 0

    camera(viewer).center = (500, 500)
    camera(viewer).zoom = 8.0  # zoomed in: the polygons around the view, editable
    assert layer.visible and not overview.visible
    assert 0 < len(layer.data) <= lod.max_shapes
    viewer.layers.selection.active = layer
    first, second = (layer_to_instances(layer).polygons[i] for i in (0, 1))
    layer.selected_data = {0}
    widget.accept_selected()
    layer.selected_data = {1}
    widget.reject_selected()

    widget._threshold.value = 0.5
    kept = int((scores >= 0.5).sum())
    assert lod.set_threshold(0.5) == kept and overview.shown.sum() == kept
    assert (layer.features["score"] >= 0.5).all()
    widget._threshold.value = 0.0

    camera(viewer).center = (100, 100)  # away: the shown subset changes, the review is kept
    path = widget.save(tmp_path / "all.json", include_rejected=True)
    coco = json.loads(path.read_text())
    assert len(coco["annotations"]) == n  # nothing lost
    by_box = {tuple(np.round(a["bbox"], 3)): a["status"] for a in coco["annotations"]}

    def status(poly):
        (y0, x0), (y1, x1) = poly.min(axis=0), poly.max(axis=0)
        return by_box[tuple(np.round([x0, y0, x1 - x0, y1 - y0], 3))]

    assert status(first) == "accepted" and status(second) == "rejected"
    assert sorted(by_box.values()).count("proposed") == n - 2

    widget.accept_all()  # the whole set, not only the drawn polygons
    viewer.layers.selection = {layer}
    saved, = viewer.layers.save(str(tmp_path / "layers.json"), selected=True,
                                plugin="napari-instanno")
    anns = json.loads(open(saved).read())["annotations"]
    assert len(anns) == n - 1 and all(a["status"] == "accepted" for a in anns)  # rejected: out

    assert widget.run() is not None  # the same run again: every instance was reviewed, none twice
    _wait(qtbot, widget)
    assert len(lod.instances()) == n and widget._info.value.startswith("0 ")


def test_demo_viewer_shows_result_and_widget(make_napari_viewer):
    from napari_instanno.cli import show_result
    from napari_instanno.samples import nuclei_sample

    viewer = make_napari_viewer()
    image, box = nuclei_sample()
    inst = Annotator(matcher="ncc", outliner="otsu").set_image(image).find_similar(box)
    widget = show_result(viewer, image, inst)
    layer = viewer.layers["nuclei instances"]
    assert len(layer.data) == len(inst) > 10
    assert list(layer.features["status"].unique()) == ["proposed"]
    assert isinstance(widget, FindSimilarWidget)
    assert widget in viewer.window.dock_widgets.values()
    n_layers = len(viewer.layers)
    assert widget.result_layer().name == layer.name  # the widget reviews the shown result
    assert len(viewer.layers) == n_layers


def test_result_layer_deleted_during_a_run_gets_the_results_anyway(setup):
    viewer, widget, qtbot = setup
    assert widget.run() is not None
    viewer.layers.remove(widget.result_layer())   # deleted while the job runs
    _wait(qtbot, widget)
    layer = viewer.layers["nuclei instances"]    # made again by the job's callback
    assert len(layer.data) >= 40 and viewer.layers.selection.active is layer


def test_the_widget_module_opens_without_torch():
    """The dock appears at once: torch (2-3 s to import) loads in the widget's background model
    load, not when napari imports the widget."""
    import subprocess
    import sys

    code = ("import sys; import napari.layers; import napari_instanno.napari.widgets; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
