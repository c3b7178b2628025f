import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from napari_instanno import Instances, InstannoError
from napari_instanno.geometry import mask_iou, polygon_to_mask
from napari_instanno.io.coco import read_coco, write_coco
from napari_instanno.io.geojson import read_geojson, to_feature_collection


def make_instances():
    rr = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    polys = [np.stack([20 + 8 * np.sin(rr), 30 + 12 * np.cos(rr)], 1),
             np.array([[50.0, 60.0], [50, 75], [65, 75], [65, 60]])]
    return Instances(polygons=polys, scores=[0.8, 0.6], status=["accepted", "rejected"],
                     categories={1: "cell", 2: "debris"}, category_ids=[1, 2],
                     properties={"note": np.array(["a", "b"], dtype=object)})


def test_coco_written_loads_in_pycocotools_and_masks_match(tmp_path):
    inst = make_instances()
    other = Instances(polygons=[np.array([[1.0, 1.0], [1, 9], [9, 9], [9, 1]])],
                      categories={1: "cell"})
    path = write_coco(tmp_path / "a.json", [({"file_name": "a.png", "height": 100, "width": 120},
                                             inst),
                                            ({"file_name": "b.png", "height": 20, "width": 20},
                                             other)], include_rejected=True)
    coco = COCO(str(path))
    assert len(coco.imgs) == 2 and len(coco.anns) == 3
    assert {c["name"] for c in coco.cats.values()} == {"cell", "debris"}
    ann = coco.anns[2]
    assert ann["bbox"] == [60.0, 50.0, 15.0, 15.0] and ann["area"] == 225.0
    for ann_id, poly in zip((1, 2), inst.polygons):
        expected = polygon_to_mask(poly, (100, 120))
        assert mask_iou(coco.annToMask(coco.anns[ann_id]).astype(bool), expected) > 0.9
    (info, back), _ = read_coco(path)
    assert back.status.tolist() == ["accepted", "rejected"]
    assert back.category_names == ["cell", "debris"]
    assert np.allclose(back.polygons[1], inst.polygons[1])


def test_coco_results_with_shape_are_rle_for_cocoeval(tmp_path):
    res = make_instances().to_coco_results(7, shape=(100, 120))
    assert res[0]["image_id"] == 7 and set(res[0]) >= {"bbox", "score", "segmentation",
                                                        "category_id"}
    m = mask_utils.decode({"size": res[1]["segmentation"]["size"],
                           "counts": res[1]["segmentation"]["counts"].encode()})
    assert m.sum() == 225


def test_coco_results_keep_track_ids_and_cocoeval_still_takes_them(tmp_path):
    """A stack's results list (``instanno predict --format coco-results``) says which track each
    instance is on; COCOeval scores it as before and ``read_coco`` gives the tracks back."""
    import contextlib
    import io

    from pycocotools.cocoeval import COCOeval

    from napari_instanno.io.atomic import write_json_atomic

    inst = make_instances()
    inst.properties["track_id"] = np.array([3, 4])
    res = inst.to_coco_results(1, shape=(100, 120))
    assert [r["track_id"] for r in res] == [3, 4] and [r["note"] for r in res] == ["a", "b"]
    path = write_json_atomic(tmp_path / "res.json", res)
    (_, back), = read_coco(path)
    assert back.properties["track_id"].tolist() == [3, 4]
    gt_path = write_coco(tmp_path / "gt.json", [({"file_name": "a.png", "height": 100,
                                                 "width": 120}, inst)], include_rejected=True)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        ev = COCOeval(gt, gt.loadRes(json.loads(path.read_text())), "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[0] > 0.99  # the results are the ground truth itself


def test_geojson_round_trip_pixels_and_qupath_fields(tmp_path):
    inst = make_instances()
    path = inst.to_geojson(tmp_path / "a.geojson", include_rejected=True)
    data = json.loads(path.read_text())
    feat = data["features"][0]
    assert feat["geometry"]["type"] == "Polygon"
    ring = feat["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1]
    assert feat["properties"]["classification"]["name"] == "cell"
    # x right, y down: x is the column
    assert ring[0][0] == pytest.approx(inst.polygons[0][0, 1])
    back = read_geojson(path)
    assert back.category_names == ["cell", "debris"]
    assert back.status.tolist() == ["accepted", "rejected"]
    assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(back.polygons, inst.polygons))


def test_geojson_map_coordinates_round_trip():
    inst = make_instances()
    transform = (10.0, 0.0, 500000.0, 0.0, -10.0, 6000000.0)
    fc = to_feature_collection(inst, transform)
    x, y = fc["features"][1]["geometry"]["coordinates"][0][0]
    assert (x, y) == (500000.0 + 60 * 10, 6000000.0 - 50 * 10)
    from napari_instanno.io.geojson import from_feature_collection

    back = from_feature_collection(fc, transform)
    assert np.allclose(back.polygons[1], inst.polygons[1])


@pytest.mark.needs_shared  # an independent reference: the fields in map coordinates
def test_sentinel2_fields_to_crs_match_reference_within_half_pixel(shared_data, tmp_path):
    rasterio = pytest.importorskip("rasterio")  # declared in the testing extra
    import shapely
    from shapely.geometry import Polygon, shape

    folder = shared_data / "sentinel2-fields"
    info, inst = read_coco(folder / "annotations.json")[0]
    with rasterio.open(folder / info["file_name"]) as src:
        transform, crs = src.transform, src.crs
    path = inst.to_geojson(tmp_path / "fields.geojson", transform=transform, crs=crs)
    ours = json.loads(path.read_text())
    assert ours["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32632"
    # outer rings of every polygon part (COCO polygons hold no holes, the reference has some)
    ref = []
    for f in json.loads((folder / "fields_epsg32632.geojson").read_text())["features"]:
        geom = shape(f["geometry"])
        ref += [Polygon(g.exterior) for g in getattr(geom, "geoms", [geom])]
    half_pixel = abs(transform.a) / 2
    assert len(ours["features"]) == len(inst) == 275
    ref = np.array(ref)
    for feat in ours["features"]:
        geom = shape(feat["geometry"])
        for part in getattr(geom, "geoms", [geom]):
            assert shapely.hausdorff_distance(ref, part).min() <= half_pixel


def test_saves_are_atomic_and_never_clobber(tmp_path):
    inst = make_instances()
    path = inst.to_coco(tmp_path / "a.json")
    before = path.read_text()
    with pytest.raises(InstannoError, match="exists"):
        inst[:1].to_coco(path)
    assert path.read_text() == before
    inst[:1].to_coco(path, overwrite=True)
    assert len(json.loads(path.read_text())["annotations"]) == 1
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]
    with pytest.raises(InstannoError, match="does not exist"):
        inst.to_geojson(tmp_path / "missing" / "a.geojson")


def test_unwritable_folder_gives_one_line_error(tmp_path):
    import os

    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    try:
        if os.access(ro, os.W_OK):  # root ignores permissions: use a path under a file instead
            target = tmp_path / "file.txt"
            target.write_text("x")
            bad = target / "a.json"
        else:
            bad = ro / "a.json"
        with pytest.raises(InstannoError, match="cannot save|does not exist"):
            make_instances().to_coco(bad)
    finally:
        os.chmod(ro, 0o700)


def test_corrupt_and_malformed_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InstannoError, match="corrupt"):
        read_coco(bad)
    gj = tmp_path / "bad.geojson"
    gj.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[1, 2]]}}]}))
    with pytest.raises(InstannoError, match="malformed"):
        read_geojson(gj)
    gj.write_text(json.dumps({"type": "Point"}))
    with pytest.raises(InstannoError, match="FeatureCollection"):
        read_geojson(gj)


def test_coco_pointing_at_missing_image(tmp_path):
    from napari_instanno.training.datasets import CocoFolder

    (tmp_path / "images").mkdir()
    write_coco(tmp_path / "annotations.json",
               [({"file_name": "images/gone.png", "height": 100, "width": 120}, make_instances())])
    sample = CocoFolder(tmp_path)[0]
    with pytest.raises(InstannoError, match="missing"):
        sample.load_rgb01()


def _eval_folder(tmp_path, edit=None, text=None):
    """A one-image COCO folder (a 40 x 40 PNG with two squares); ``edit`` changes the JSON."""
    from skimage.io import imsave

    (tmp_path / "images").mkdir(exist_ok=True)
    img = np.zeros((40, 40), np.uint8)
    img[5:15, 5:15] = img[20:32, 22:34] = 255
    imsave(tmp_path / "images" / "a.png", img, check_contrast=False)
    squares = Instances(polygons=[np.array([[5.0, 5], [5, 15], [15, 15], [15, 5]]),
                                  np.array([[20.0, 22], [20, 34], [32, 34], [32, 22]])])
    path = write_coco(tmp_path / "annotations.json",
                      [({"file_name": "images/a.png", "height": 40, "width": 40}, squares)],
                      overwrite=True)
    data = json.loads(path.read_text())
    if edit:
        edit(data)
    path.write_text(text if text is not None else json.dumps(data))
    return tmp_path


@pytest.mark.parametrize("text, edit, message", [
    ("{not json", None, "corrupt"),
    ("", None, "corrupt"),
    (None, lambda d: d["annotations"][0].update(segmentation=[[1, 1, 5, 5]]), "at least 6"),
    (None, lambda d: d.pop("images"), "no 'images'"),
    (None, lambda d: d["images"][0].pop("file_name"), "no file_name"),
    (None, lambda d: d["annotations"][0].update(image_id=7), "not in 'images'"),
    (None, lambda d: d["annotations"][0].update(segmentation={"size": [80, 80], "counts": "0"}),
     "does not match"),
])
def test_evaluate_bad_ground_truth_is_one_line_error(tmp_path, text, edit, message):
    from napari_instanno.training.evaluate import evaluate_box2poly

    folder = _eval_folder(tmp_path, edit, text)
    with pytest.raises(InstannoError, match=message) as err:
        evaluate_box2poly(folder, outliner="ellipse")
    assert "\n" not in str(err.value) and "annotations.json" in str(err.value)


def test_evaluate_fills_a_missing_bbox_and_warns_about_a_wrong_height(tmp_path):
    from napari_instanno.training.evaluate import evaluate_box2poly, save_results

    folder = _eval_folder(tmp_path, lambda d: [a.pop("bbox") for a in d["annotations"]])
    res = evaluate_box2poly(folder, outliner="ellipse")
    assert res["instances"] == 2 and res["mIoU"] > 0.5
    folder = _eval_folder(tmp_path, lambda d: d["images"][0].update(height=50))
    with pytest.warns(UserWarning, match="40 x 40 pixels but the annotations say 50 x 40"):
        evaluate_box2poly(folder, outliner="ellipse")
    out = save_results(tmp_path / "res.json", res)
    with pytest.raises(InstannoError, match="exists"):
        save_results(out, res)
    with pytest.raises(InstannoError, match="NaN"):
        save_results(tmp_path / "nan.json", {"mIoU": float("nan")})
    assert not (tmp_path / "nan.json").exists()


def test_writers_follow_the_umask_and_replace_only_regular_files(tmp_path):
    import os

    inst = make_instances()
    old = os.umask(0o027)
    try:
        path = inst.to_geojson(tmp_path / "a.geojson")
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o640
    link = tmp_path / "link.geojson"
    link.symlink_to(path)
    with pytest.raises(InstannoError, match="symlink"):
        inst.to_geojson(link, overwrite=True)
    assert link.is_symlink()
    with pytest.raises(InstannoError, match="folder"):
        inst.to_coco(tmp_path, overwrite=True)
    bad = Instances(polygons=[np.array([[0.0, 0], [0, np.nan], [3, 3]])])
    with pytest.raises(InstannoError, match="NaN"):
        bad.to_coco(tmp_path / "nan.json")
    assert not (tmp_path / "nan.json").exists()


def test_rejected_are_left_out_unless_asked(tmp_path):
    inst = make_instances()  # one accepted, one rejected
    assert inst.num_rejected == 1
    (_, back), = read_coco(inst.to_coco(tmp_path / "a.json"))
    assert back.status.tolist() == ["accepted"]
    assert read_geojson(inst.to_geojson(tmp_path / "a.geojson")).status.tolist() == ["accepted"]
    (_, kept), = read_coco(inst.to_coco(tmp_path / "b.json", include_rejected=True))
    assert kept.status.tolist() == ["accepted", "rejected"]
    assert kept.properties["note"].tolist() == ["a", "b"]


def test_holes_and_parts_through_coco_and_geojson(tmp_path):
    from pycocotools.coco import COCO
    from shapely.geometry import MultiPolygon, Polygon

    donut = Polygon([(10, 10), (50, 10), (50, 50), (10, 50)], [[(20, 20), (30, 20), (30, 30), (20, 30)]])
    two = MultiPolygon([Polygon([(60, 60), (70, 60), (70, 70)]), Polygon([(80, 80), (90, 80), (90, 90)])])
    inst = Instances(geometries=[donut, two])
    assert inst.areas.tolist() == [1500.0, 100.0]
    path = inst.to_coco(tmp_path / "a.json", image={"height": 100, "width": 100})
    coco = COCO(str(path))
    assert isinstance(coco.anns[1]["segmentation"], dict)  # holes: RLE for other tools
    assert coco.annToMask(coco.anns[1]).sum() == 1500
    assert len(coco.anns[2]["segmentation"]) == 2  # parts: one polygon each
    (_, back), = read_coco(path)
    assert back.geometries[0].equals(donut) and back.geometries[1].equals(two)
    with pytest.raises(InstannoError, match="height and width"):
        inst.to_coco(tmp_path / "b.json")
    gj = json.loads(inst.to_geojson(tmp_path / "a.geojson").read_text())
    assert [f["geometry"]["type"] for f in gj["features"]] == ["Polygon", "MultiPolygon"]
    assert len(gj["features"][0]["geometry"]["coordinates"]) == 2  # exterior + hole
    back = read_geojson(tmp_path / "a.geojson")
    assert back.geometries[0].equals(donut) and back.areas.tolist() == [1500.0, 100.0]


def test_foreign_rle_donut_keeps_its_hole_and_corrupt_rle_is_refused(tmp_path):
    from pycocotools import mask as mask_utils

    m = np.zeros((30, 30), np.uint8)
    m[5:25, 5:25] = 1
    m[10:15, 10:15] = 0
    counts = mask_utils.encode(np.asfortranarray(m))["counts"].decode()
    doc = {"images": [{"id": 1, "height": 30, "width": 30}], "categories": [{"id": 1, "name": "c"}],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
                            "segmentation": {"size": [30, 30], "counts": counts}}]}
    path = tmp_path / "rle.json"
    path.write_text(json.dumps(doc))
    (_, inst), = read_coco(path)
    assert len(inst.geometries[0].interiors) == 1 and (inst.to_masks((30, 30))[0] == m).all()
    for bad, message in ((counts[:-1] + "z", "cover|corrupt|RLE"), (counts + "\x7f", "not an RLE"),
                         ("0" * 3, "cover")):
        doc["annotations"][0]["segmentation"]["counts"] = bad
        path.write_text(json.dumps(doc))
        with pytest.raises(InstannoError, match=message):
            read_coco(path)


def test_geojson_without_classification_gets_the_default_category(tmp_path):
    fc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {}, "geometry": {
            "type": "Polygon", "coordinates": [[[0, 0], [4, 0], [4, 4], [0, 0]]]}},
        {"type": "Feature", "properties": {"classification": {"name": None}}, "geometry": {
            "type": "Polygon", "coordinates": [[[0, 0], [4, 0], [4, 4], [0, 0]]]}}]}
    path = tmp_path / "a.geojson"
    path.write_text(json.dumps(fc))
    assert read_geojson(path).category_names == ["object", "object"]
    assert read_geojson(path, default_category="tree").category_names == ["tree", "tree"]


@pytest.mark.needs_shared  # real fields with courtyards (holes) and split parcels (MultiPolygons)
def test_sentinel2_fields_with_holes_and_parts_come_back_whole(shared_data, tmp_path):
    rasterio = pytest.importorskip("rasterio")
    import shapely
    from shapely.geometry import shape

    folder = shared_data / "sentinel2-fields"
    with rasterio.open(folder / "images" / "RGB_small.tif") as src:
        transform, crs, size = src.transform, src.crs, (src.height, src.width)
    path = folder / "fields_epsg32632.geojson"
    with pytest.raises(InstannoError, match="map coordinates"):
        read_geojson(path)
    inst = read_geojson(path, transform=transform, crs=crs)
    ref = [shape(f["geometry"]) for f in json.loads(path.read_text())["features"]]
    assert len(inst) == len(ref) == 276
    holes = [i for i, g in enumerate(inst.geometries) if g.geom_type == "Polygon" and g.interiors]
    multi = [i for i, g in enumerate(inst.geometries) if g.geom_type == "MultiPolygon"]
    assert len(holes) == 5 and len(multi) == 3
    pixel_area = abs(transform.a * transform.e)
    assert np.allclose(inst.areas * pixel_area, [g.area for g in ref], rtol=1e-9)
    assert inst.properties["crop"][0] == "Vårbyg"
    back_gj = read_geojson(inst.to_geojson(tmp_path / "f.geojson", transform=transform, crs=crs),
                           transform=transform, crs=crs)
    (_, back_coco), = read_coco(inst.to_coco(tmp_path / "f.json", image={
        "file_name": "images/RGB_small.tif", "height": size[0], "width": size[1]}))
    from napari_instanno.napari.shapes_data import instances_to_shapes, shapes_to_instances

    kw = instances_to_shapes(inst)  # what the viewer shows: one shape per ring
    back_shapes = shapes_to_instances(kw["data"], kw["shape_type"], kw["features"])
    assert len(kw["data"]) == 276 + 5 + 3 and len(back_shapes) == 276
    for i in holes + multi:
        assert shapely.equals_exact(back_coco.geometries[i], inst.geometries[i], tolerance=0)
        assert shapely.equals_exact(back_gj.geometries[i], inst.geometries[i], tolerance=1e-6)
        assert shapely.equals_exact(back_shapes.geometries[i], inst.geometries[i], tolerance=1e-9)


def test_parquet_table_keeps_every_property(tmp_path):
    """A run's table keeps what COCO and GeoJSON keep: the plane, the track, whether an outline
    was computed, free notes; a batch without a key reads back as None there."""
    pytest.importorskip("pyarrow")
    from napari_instanno.io.table import TableWriter, read_table, table_to_coco

    first = make_instances()
    first.properties.update(plane=np.array([0, 3]), track_id=np.array([7, 8]),
                            outlined=np.array([True, False]))
    second = make_instances()
    second.properties = {"plane": np.array([1, 2]), "outlined": np.array([True, True])}
    writer = TableWriter(tmp_path / "run.parquet")
    writer.write(first)
    writer.write(second)
    back = read_table(writer.close())
    assert back.properties["plane"].tolist() == [0, 3, 1, 2]
    assert back.properties["plane"].dtype == np.int64
    assert back.properties["outlined"].tolist() == [True, False, True, True]
    assert back.properties["track_id"].tolist() == [7, 8, None, None]
    assert back.properties["note"].tolist() == ["a", "b", None, None]
    coco = json.loads(table_to_coco(tmp_path / "run.parquet", tmp_path / "run.json",
                                    include_rejected=True).read_text())
    assert [a["track_id"] for a in coco["annotations"]][:2] == [7, 8]
    assert [a["plane"] for a in coco["annotations"]] == [0, 3, 1, 2]
