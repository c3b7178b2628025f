"""The napari layer without a viewer: coordinates, features, threshold stash, reader, writers,
sample data and the npe2 manifest."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from napari.layers import Shapes

from napari_instanno import Instances
from napari_instanno.geometry import mask_iou, polygon_box
from napari_instanno.napari import _reader, _sample_data, _writer
from napari_instanno.napari.layers import (
    HIDDEN,
    STATUS_COLORS,
    add_instances,
    apply_threshold,
    replace_polygons,
    set_status,
)
from napari_instanno.napari.shapes_data import (
    box_to_rectangle,
    instances_to_shapes,
    layer_to_instances,
    rectangle_to_box,
    status_colors,
)
from napari_instanno.samples import nuclei_sample


def _squares(n: int = 5) -> Instances:
    polys = [np.array([[r, c], [r, c + 6], [r + 4, c + 6], [r + 4, c]], float)
             for r, c in zip(range(2, 2 + 10 * n, 10), range(3, 3 + 12 * n, 12), strict=True)]
    return Instances(polygons=polys, scores=np.linspace(1.0, 0.2, n),
                     categories={1: "cell", 2: "debris"}, category_ids=[1, 2, 1, 2, 1][:n],
                     status=np.array(["proposed", "accepted", "rejected", "proposed",
                                      "accepted"][:n], dtype=object))


def test_napari_pixel_centres_match_our_corner_frame():
    inst = _squares()
    layer = Shapes(**instances_to_shapes(inst))
    ours = inst.to_masks((64, 80))
    theirs = layer.to_masks((64, 80))
    assert theirs.shape == ours.shape
    for a, b in zip(ours, theirs, strict=True):
        assert a.sum() == 24  # 4 x 6 pixels
        assert mask_iou(a, b) == 1.0
    # the napari vertex of corner (2, 3) is the pixel centre 0.5 up-left of it
    assert np.allclose(layer.data[0][0], [1.5, 2.5])


def test_shapes_round_trip_keeps_polygons_and_features():
    inst = _squares()
    layer = Shapes(**instances_to_shapes(inst))
    assert list(layer.features.columns) == ["score", "category", "status"]
    assert np.allclose(layer.edge_color[1], STATUS_COLORS["accepted"])
    assert np.allclose(layer.edge_color[2], STATUS_COLORS["rejected"])
    back = layer_to_instances(layer)
    assert len(back) == len(inst)
    for p, q in zip(inst.polygons, back.polygons, strict=True):
        assert np.allclose(p, q)
    assert back.category_names == inst.category_names
    assert back.status.tolist() == inst.status.tolist()
    assert np.allclose(back.scores, inst.scores)


def test_rectangles_boxes_and_planes():
    box = np.array([10.0, 20.0, 30.0, 25.0])
    rect = box_to_rectangle(box, plane=(3,))
    assert rect.shape == (4, 3) and (rect[:, 0] == 3).all()
    assert np.allclose(rectangle_to_box(rect), box)
    layer = Shapes(ndim=3)
    add_instances(layer, _squares(2), plane=(3,))
    assert (np.asarray(layer.data[0])[:, 0] == 3).all()
    assert np.allclose(polygon_box(layer_to_instances(layer).polygons[0]), [3, 2, 9, 6])


def test_threshold_stashes_and_restores_keeping_edits():
    layer = Shapes(ndim=2)
    add_instances(layer, _squares(), threshold=0.5)
    assert len(layer.data) == 3 and len(layer.metadata[HIDDEN][0]) == 2
    assert (layer.features["score"] >= 0.5).all()
    set_status(layer, [0], "rejected")  # an edit while some are hidden
    assert apply_threshold(layer, 0.0) == 5
    assert len(layer.metadata[HIDDEN][0]) == 0
    assert layer.features["status"].tolist().count("rejected") == 2
    assert np.allclose(layer.edge_color, status_colors(layer.features["status"]))
    assert sorted(layer.features["score"]) == sorted(_squares().scores)
    assert apply_threshold(layer, 0.9) == 1
    assert len(layer_to_instances(layer)) == 1  # writers see only what is shown


def test_rerun_replaces_unreviewed_proposals_of_its_category_only():
    layer = Shapes(ndim=2)
    inst = _squares()
    add_instances(layer, inst, replace_category="cell")
    again = inst[[0, 2, 4]]  # the three "cell" squares again: 0 proposed, 2 rejected, 4 accepted
    assert add_instances(layer, again, replace_category="cell") == 1  # only the proposed one
    feats = layer.features
    assert len(layer.data) == 5
    assert sorted(feats["status"]) == sorted(inst.status.tolist())


def test_replace_polygons_touches_only_those_shapes():
    layer = Shapes(ndim=2)
    add_instances(layer, _squares())
    new = [np.array([[40.0, 40.0], [40.0, 50.0], [50.0, 45.0]])]
    idx = replace_polygons(layer, [1], new)
    assert idx == [4] and len(layer.data) == 5
    assert np.allclose(layer_to_instances(layer).polygons[4], new[0])
    assert layer.features["status"].iloc[4] == "accepted"  # it kept its features
    assert np.allclose(layer.edge_color[4], STATUS_COLORS["accepted"])


def test_reader_and_writers_round_trip(tmp_path):
    from pycocotools.coco import COCO

    inst = _squares()
    data = instances_to_shapes(inst)
    meta = {"shape_type": ["polygon"] * len(inst), "features": data["features"], "name": "img",
            "metadata": {"instanno_image": {"file_name": "img.png", "height": 64, "width": 80}}}
    coco_path, = _writer.write_coco_layer(str(tmp_path / "a.json"), data["data"], meta)
    geo_path, = _writer.write_geojson_layer(str(tmp_path / "a.geojson"), data["data"], meta)
    coco = COCO(coco_path)
    assert len(coco.getAnnIds()) == 4  # the rejected square is left out of an export
    assert coco.annToMask(coco.loadAnns(1)[0]).sum() == 24
    kept = inst[inst.status != "rejected"]
    for path in (coco_path, geo_path):
        reader = _reader.get_reader(path)
        assert reader is not None
        (shapes, kwargs, kind), = reader(path)
        assert kind == "shapes"
        back = layer_to_instances(Shapes(shapes, **kwargs))
        assert all(np.allclose(p, q) for p, q in zip(kept.polygons, back.polygons, strict=True))
        assert back.status.tolist() == kept.status.tolist()
        assert back.category_names == kept.category_names


def test_reader_declines_other_json(tmp_path):
    other = tmp_path / "settings.json"
    other.write_text(json.dumps({"a": 1}))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert _reader.get_reader(str(other)) is None
    assert _reader.get_reader(str(broken)) is None
    assert _reader.get_reader(str(tmp_path / "x.png")) is None


def test_geotiff_reader_claims_only_georeferenced_tiffs(geo_folder, tmp_path):
    import tifffile

    path = geo_folder / "images" / "discs.tif"
    reader = _reader.get_geotiff_reader(str(path))
    assert reader is not None
    (data, meta, kind), = reader(str(path))
    assert kind == "image" and meta["rgb"] and isinstance(data, np.ndarray)
    assert data.shape == (128, 104, 3) and data.dtype == np.uint16
    first = data[..., 0].astype(float)  # bands as stored, in order (the fixture scales them 1x, 2x, 3x)
    assert np.allclose(data[..., 1], 2 * first, atol=2) and np.allclose(data[..., 2], 3 * first, atol=3)
    assert meta["metadata"]["crs"].to_epsg() == 32632
    assert meta["metadata"]["transform"].c == 512410.0
    lo, hi = meta["contrast_limits"]
    assert data.min() <= lo < hi <= data.max()
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.zeros((8, 8), np.uint8))
    assert _reader.get_geotiff_reader(str(plain)) is None
    assert _reader.get_geotiff_reader(str(tmp_path / "missing.tif")) is None


def test_writer_uses_level_of_detail_and_georeferencing(tmp_path):
    from napari.components import ViewerModel
    from rasterio.crs import CRS
    from rasterio.transform import Affine

    from napari_instanno.io.geojson import read_geojson
    from napari_instanno.napari.large_layers import LOD_KEY, LevelOfDetail
    from napari_instanno.napari.layers import GEOREF

    viewer = ViewerModel()
    viewer.add_image(np.zeros((200, 200), np.uint8))
    geo = {"transform": Affine(2.0, 0, 1000.0, 0, -2.0, 5000.0), "crs": CRS.from_epsg(32632)}
    lod = LevelOfDetail(viewer, _squares(), metadata={GEOREF: geo})
    viewer.reset_view()
    lod.set_threshold(0.5)  # scores 1, .8, .6 kept; .4, .2 hidden
    meta = lod.shapes._get_state()
    assert meta["metadata"][LOD_KEY] is lod
    path, = _writer.write_geojson_layer(str(tmp_path / "a.geojson"), [], meta)
    written = json.loads(open(path).read())
    assert written["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32632"
    back = read_geojson(path, transform=geo["transform"])
    assert len(back) == 2  # of the three above the threshold, the rejected one is left out
    assert all(np.allclose(p, q) for p, q in zip(_squares().polygons[:2], back.polygons,
                                                 strict=True))
    lod.close()


def test_sample_data_comes_with_a_reference_inside_the_image():
    for make in (_sample_data.make_coins, _sample_data.make_nuclei):
        (image, meta, kind), (rects, ref_meta, ref_kind) = make()
        assert kind == "image" and ref_kind == "shapes" and ref_meta["name"] == "reference"
        x0, y0, x1, y1 = rectangle_to_box(rects[0])
        assert 0 <= x0 < x1 <= image.shape[1] and 0 <= y0 < y1 <= image.shape[0]
    image, _ = nuclei_sample()
    assert image.shape == (256, 256) and image.dtype == np.uint8


def test_npe2_validate_passes():
    npe2 = [sys.executable, "-m", "npe2", "validate", "napari-instanno"]
    out = subprocess.run(npe2, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "valid" in out.stdout


@pytest.mark.parametrize("name", ["coins", "nuclei"])
def test_manifest_declares_sample(name):
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    keys = [s.key for s in pm.get_manifest("napari-instanno").contributions.sample_data]
    assert name in keys
