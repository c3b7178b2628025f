import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from skimage.io import imsave

from napari_instanno.cli import main
from napari_instanno.errors import InstannoError
from napari_instanno.instances import Instances
from napari_instanno.io.coco import write_coco

from .conftest import disc_scene

FAST = ["--matcher", "ncc", "--outliner", "otsu", "--device", "cpu"]


@pytest.fixture
def disc_png(tmp_path):
    img, centres = disc_scene()
    path = tmp_path / "discs.png"
    imsave(path, (np.clip(img, 0, 1) * 255).astype(np.uint8), check_contrast=False)
    return path, centres


@pytest.fixture
def disc_dataset(tmp_path):
    """A COCO folder of two disc images with exact ground truth."""
    (tmp_path / "ds" / "images").mkdir(parents=True)
    items = []
    for k in range(2):
        img, _ = disc_scene(seed=k)
        name = f"images/{k}.png"
        imsave(tmp_path / "ds" / name, (np.clip(img, 0, 1) * 255).astype(np.uint8),
               check_contrast=False)
        from skimage.measure import label

        gt = Instances.from_label_image(label(img > 0.5), category="disc")
        items.append(({"id": k + 1, "file_name": name, "height": 128, "width": 128}, gt))
    write_coco(tmp_path / "ds" / "annotations.json", items)
    return tmp_path / "ds"


def test_predict_ref_box_writes_cocoeval_results(disc_png, tmp_path, capsys):
    path, centres = disc_png
    r, c = centres[5]
    out = tmp_path / "res.json"
    assert main(["predict", str(path), "--ref-box", str(c - 10), str(r - 10), "20", "20",
                 "--out", str(out), *FAST]) == 0
    res = json.loads(out.read_text())
    assert len(res) == len(centres)
    assert {"bbox", "score", "segmentation", "category_id"} <= set(res[0])
    assert "16 instance(s)" in capsys.readouterr().out


def test_predict_box_to_geojson_and_refuses_overwrite(disc_png, tmp_path, capsys):
    path, centres = disc_png
    r, c = centres[0]
    out = tmp_path / "one.geojson"
    args = ["predict", str(path), "--box", str(c - 11), str(r - 11), "22", "22", "--out",
            str(out), *FAST]
    assert main(args) == 0
    feats = json.loads(out.read_text())["features"]
    assert len(feats) == 1 and feats[0]["geometry"]["type"] == "Polygon"
    assert main(args) == 2
    assert "exists" in capsys.readouterr().err


def test_predict_geotiff_writes_map_coordinates(geo_folder, tmp_path):
    tif = geo_folder / "images" / "discs.tif"
    out = tmp_path / "f.geojson"
    # the disc centred at row 48.5, column 80.5: 10 m pixels from (512410 E, 6247200 N)
    assert main(["predict", str(tif), "--box", "69", "37", "23", "23", "--out", str(out),
                 *FAST]) == 0
    data = json.loads(out.read_text())
    assert data["crs"]["properties"]["name"].endswith("32632")
    xy = np.array(data["features"][0]["geometry"]["coordinates"][0])
    centre = xy[:-1].mean(axis=0)
    assert np.allclose(centre, [512410 + 80.5 * 10, 6247200 - 48.5 * 10], atol=10)
    assert np.ptp(xy, axis=0).min() > 100  # a disc of radius 8 px, not a speck


def test_predict_bad_input_is_one_line(tmp_path, disc_png, capsys):
    path, _ = disc_png
    assert main(["predict", str(tmp_path / "nope.png"), "--box", "0", "0", "5", "5", "--out",
                 str(tmp_path / "o.json"), *FAST]) == 2
    assert main(["predict", str(path), "--ref-box", "900", "900", "5", "5", "--out",
                 str(tmp_path / "o.json"), *FAST]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "does not exist" in err[0] and "outside" in err[1]


def test_predict_tiled_zarr_matches_untiled(tmp_path):
    import zarr

    img, centres = disc_scene(size=512, spacing=32)
    store = zarr.open(str(tmp_path / "discs.zarr"), mode="w", shape=img.shape, chunks=(100, 100),
                      dtype="f4")
    store[:] = img
    r, c = centres[40]
    common = ["--ref-box", str(c - 10), str(r - 10), "20", "20", *FAST]
    assert main(["predict", str(tmp_path / "discs.zarr"), "--out", str(tmp_path / "a.json"),
                 *common]) == 0
    assert main(["predict", str(tmp_path / "discs.zarr"), "--out", str(tmp_path / "b.json"),
                 "--tile-size", "128", "--batch-size", "2", "--checkpoint", str(tmp_path / "ckpt"),
                 *common]) == 0
    whole = json.loads((tmp_path / "a.json").read_text())
    tiled = json.loads((tmp_path / "b.json").read_text())
    assert len(whole) == len(tiled) == len(centres)
    assert any((tmp_path / "ckpt").iterdir())


def test_evaluate_both_modes_on_discs(disc_dataset, tmp_path, capsys):
    out = tmp_path / "m.json"
    assert main(["evaluate", str(disc_dataset), "--json", str(out), *FAST]) == 0
    m = json.loads(out.read_text())
    assert m["images"] == 2 and m["bbox_AP50"] > 0.95 and m["segm_AP50"] > 0.9
    assert main(["evaluate", str(disc_dataset), "--mode", "box2poly", "--json", str(out),
                 *FAST]) == 0
    m = json.loads(out.read_text())
    assert m["instances"] == 32 and m["mIoU"] > 0.85 and m["F2px"] > 0.9
    assert "| dataset |" in capsys.readouterr().out


def test_demo_writes_coco_geojson_and_overlay(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--no-viewer", *FAST]) == 0
    coco = COCO(str(out / "nuclei.coco.json"))
    assert len(coco.anns) > 10
    assert len(json.loads((out / "nuclei.geojson").read_text())["features"]) == len(coco.anns)
    from skimage.io import imread

    overlay = imread(out / "nuclei_overlay.png")
    assert overlay.shape == (512, 512, 3)
    assert (overlay == [255, 215, 0]).all(axis=2).sum() > 100  # proposed outlines drawn


def test_training_recipes_give_clear_errors_and_take_overrides(tmp_path):
    from napari_instanno.training.recipes import load_config

    bad = tmp_path / "bad.yaml"
    bad.write_text("**not yaml")
    with pytest.raises(InstannoError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("steps: 3\n")
    with pytest.raises(InstannoError, match="needs a 'data' section"):
        load_config(bad)
    with pytest.raises(InstannoError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    good = tmp_path / "good.yaml"
    good.write_text("data: {a: 1}\ntrain: {steps: 3}\n")
    cfg = load_config(good, ["train.steps=5", "train.use_cos=false", "model.dim=8"])
    assert cfg["train"] == {"steps": 5, "use_cos": False} and cfg["model"] == {"dim": 8}
