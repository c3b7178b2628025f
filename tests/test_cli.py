import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from skimage.io import imsave

from napari_instanno.cli import main
from napari_instanno.errors import InstannoError
from napari_instanno.instances import Instances
from napari_instanno.io.coco import write_coco
from napari_instanno.styles import STATUS_COLORS

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


def test_predict_writes_a_coco_dataset_or_the_cocoeval_results(disc_png, tmp_path, capsys):
    path, centres = disc_png
    r, c = centres[5]
    args = ["predict", str(path), "--ref-box", str(c - 10), str(r - 10), "20", "20", *FAST]
    dataset, results = tmp_path / "found.json", tmp_path / "res.json"
    assert main([*args, "--out", str(dataset)]) == 0  # --format coco, the default for .json
    assert "16 instance(s)" in capsys.readouterr().out
    gt = COCO(str(dataset))
    assert len(gt.anns) == len(centres)
    assert gt.imgs[1] == {"id": 1, "file_name": "discs.png", "height": 128, "width": 128}
    assert main([*args, "--out", str(results), "--format", "coco-results"]) == 0
    res = json.loads(results.read_text())
    assert len(res) == len(centres)
    assert {"bbox", "score", "segmentation", "category_id"} <= set(res[0])
    assert len(gt.loadRes(str(results)).anns) == len(centres)  # the list COCOeval takes


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


def test_predict_box_on_an_image_too_large_to_load_reads_a_window(disc_png, tmp_path,
                                                                   monkeypatch):
    from napari_instanno import cli

    path, centres = disc_png
    r, c = centres[0]
    box = ["--box", str(c - 11), str(r - 11), "22", "22"]
    whole, part = tmp_path / "whole.geojson", tmp_path / "part.geojson"
    assert main(["predict", str(path), *box, "--out", str(whole), *FAST]) == 0
    reads = []
    monkeypatch.setattr(cli, "fits_in_memory", lambda shape: reads.append(shape) or False)
    assert main(["predict", str(path), *box, "--out", str(part), *FAST]) == 0
    assert reads  # the large-image path was taken
    ring = [np.array(json.loads(f.read_text())["features"][0]["geometry"]["coordinates"][0])
            for f in (whole, part)]
    np.testing.assert_allclose(ring[1], ring[0], atol=0.05)  # the same outline from a window


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
    whole = json.loads((tmp_path / "a.json").read_text())["annotations"]
    tiled = json.loads((tmp_path / "b.json").read_text())["annotations"]
    assert len(whole) == len(tiled) == len(centres)
    assert any((tmp_path / "ckpt").iterdir())


def test_evaluate_both_modes_on_discs(disc_dataset, tmp_path, capsys):
    out = tmp_path / "m.json"
    assert main(["evaluate", str(disc_dataset), "--json", str(out), *FAST]) == 0
    m = json.loads(out.read_text())
    assert m["images"] == 2 and m["bbox_AP50"] > 0.95 and m["segm_AP50"] > 0.9
    assert main(["evaluate", str(disc_dataset), "--mode", "box2poly", "--json", str(out),
                 "--overwrite", *FAST]) == 0
    m = json.loads(out.read_text())
    assert m["instances"] == 32 and m["mIoU"] > 0.85 and m["F2px"] > 0.9
    assert "| dataset |" in capsys.readouterr().out


def test_evaluate_takes_a_model_folder(disc_dataset, tmp_path):
    from napari_instanno.models.weights import shipped_path

    folder = tmp_path / "tuned"  # a fine-tuned folder holding only a contour regressor
    folder.mkdir()
    (folder / "contour.safetensors").write_bytes(shipped_path("contour").read_bytes())
    out = tmp_path / "m.json"
    assert main(["evaluate", str(disc_dataset), "--mode", "box2poly", "--models", str(folder),
                 "--outliner", "learned", "--device", "cpu", "--json", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["outliner"] == "learned" and m["instances"] == 32 and m["mIoU"] > 0.7


def test_demo_writes_coco_geojson_and_overlay(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--no-viewer", *FAST]) == 0
    coco = COCO(str(out / "nuclei.coco.json"))
    assert len(coco.anns) > 10
    assert len(json.loads((out / "nuclei.geojson").read_text())["features"]) == len(coco.anns)
    from skimage.io import imread

    overlay = imread(out / "nuclei_overlay.png")
    assert overlay.shape == (512, 512, 3)
    yellow = np.round(np.array(STATUS_COLORS["proposed"][:3]) * 255)
    assert (overlay == yellow).all(axis=2).sum() > 100  # proposed outlines drawn


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


# --- bad input: one line, exit status 2, before any model is loaded or any pixel is read --------
def _stack_tiff(tmp_path):
    import tifffile

    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.zeros((40, 64, 64), np.uint8))
    return path


def _stack_zarr(tmp_path):
    import zarr

    path = tmp_path / "stack.zarr"
    zarr.open(str(path), mode="w", shape=(40, 64, 64), chunks=(1, 64, 64), dtype="u1")[:] = 0
    return path


def _ome_z_stack(tmp_path):
    import zarr

    path = tmp_path / "stack.ome.zarr"
    group = zarr.open_group(str(path), mode="w")
    group.create_array("0", shape=(1, 1, 12, 64, 64), chunks=(1, 1, 1, 64, 64), dtype="u1")
    group.attrs["multiscales"] = [{"axes": ["t", "c", "z", "y", "x"], "datasets": [{"path": "0"}]}]
    return path


def _file(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    return path


# case -> (what differs from a good command, the message); "{tmp}" etc. are filled in by the test
BAD_PREDICT = {
    "device bogus": ({"extra": ["--device", "bogus"]}, "--device 'bogus' is not a device"),
    "tile size 0": ({"extra": ["--tile-size", "0"]}, "--tile-size must be a positive number"),
    "batch size 0": ({"extra": ["--batch-size", "0"]}, "--batch-size must be a positive number"),
    "score threshold nan": ({"extra": ["--score-threshold", "nan"]},
                            "--score-threshold must be a number from 0 to 1"),
    "score threshold 2": ({"extra": ["--score-threshold", "2"]},
                          "--score-threshold must be a number from 0 to 1"),
    "unknown matcher": ({"extra": ["--matcher", "bogus"]}, "--matcher 'bogus' is unknown"),
    "negative level": ({"extra": ["--level", "-1"]}, "--level must be 0 or more"),
    "empty ref box": ({"box": ["5", "5", "0", "10"]}, "W and H must be above 0"),
    "nan ref box": ({"box": ["5", "nan", "10", "10"]}, "holds NaN/inf"),
    "ref box outside": ({"box": ["900", "900", "5", "5"]}, "outside the 128x128 image"),
    "out folder missing": ({"out": "{tmp}/missing/o.json"}, "folder {tmp}/missing does not exist"),
    "out exists": ({"out": "{png}"}, "exists; pass --overwrite"),
    "table folder missing": ({"extra": ["--table", "{tmp}/missing/t.parquet"]}, "does not exist"),
    "checkpoint is a file": ({"extra": ["--checkpoint", "{png}"]}, "--checkpoint {png} is a file"),
    "image missing": ({"image": "{tmp}/nope.png"}, "does not exist; check the path"),
    "zero-byte png": ({"image": "{empty}"}, "is empty (0 bytes)"),
    "text png": ({"image": "{text}"}, "is not an image"),
    # stacks run every plane (cli_stacks); their bad input is refused from the headers too
    "3D TIFF stack, plane out of range": ({"image": "{tif}", "extra": ["--ref-plane", "40"]},
                                          "--ref-plane 40 is out of range: {tif} has 40 planes"),
    "zarr stack, wrong axes": ({"image": "{zarr}", "extra": ["--axes", "TZYX"]},
                               "axes 'TZYX' do not fit the stack of shape (40, 64, 64)"),
    "OME-Zarr z stack, box outside": ({"image": "{ome}", "box": ["900", "900", "5", "5"]},
                                      "outside the 64x64 image"),
    "stack with --tile-size": ({"image": "{tif}", "extra": ["--tile-size", "256"]},
                               "stacks and series run each plane whole"),
    "series matching nothing": ({"image": "{tmp}/none/*.png"}, "matches no image files"),
}


@pytest.fixture
def no_models_no_pixels(monkeypatch):
    """Fail the test if a model is built or an image's pixels are read."""
    import skimage.io

    from napari_instanno.inference import annotator
    from napari_instanno.io import images

    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded or pixels were read before the arguments were checked")

    monkeypatch.setattr(annotator.Annotator, "__init__", forbidden)
    monkeypatch.setattr(images, "read_image_file", forbidden)
    monkeypatch.setattr(skimage.io, "imread", forbidden)


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("instanno: error: "), captured.err
    assert "Traceback" not in captured.err and "install" not in err[0]
    return err[0]


@pytest.mark.parametrize("case", list(BAD_PREDICT))
def test_bad_predict_arguments_fail_fast_in_one_line(case, disc_png, tmp_path, capsys,
                                                     no_models_no_pixels):
    import time

    import torch  # noqa: F401  (imported before the clock starts: the timing is the checks' own)

    png, _ = disc_png
    names = {"tmp": tmp_path, "png": png, "empty": _file(tmp_path, "empty.png", b""),
             "text": _file(tmp_path, "notes.png", b"just some text\n"),
             "tif": _stack_tiff(tmp_path), "zarr": _stack_zarr(tmp_path),
             "ome": _ome_z_stack(tmp_path)}
    change, message = BAD_PREDICT[case]
    cmd = {"image": "{png}", "box": ["6", "6", "20", "20"], "out": "{tmp}/o.json",
           "extra": ["--matcher", "ncc", "--outliner", "otsu"], **change}
    argv = ["predict", cmd["image"], "--ref-box", *cmd["box"], "--out", cmd["out"], *cmd["extra"]]
    t0 = time.perf_counter()
    assert main([v.format(**names) for v in argv]) == 2
    assert time.perf_counter() - t0 < 2
    assert message.format(**names) in _one_error_line(capsys)
    assert not (tmp_path / "o.json").exists()


def test_unavailable_gpu_is_refused_before_loading(monkeypatch, disc_png, tmp_path, capsys,
                                                   no_models_no_pixels):
    import torch

    png, _ = disc_png
    argv = ["predict", str(png), "--ref-box", "6", "6", "20", "20", "--out", str(tmp_path / "o.json")]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main([*argv, "--device", "cuda"]) == 2
    assert "no CUDA GPU is usable here; use --device cpu" in _one_error_line(capsys)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert main([*argv, "--device", "cuda:3"]) == 2
    assert "this machine has 1 CUDA device(s), cuda:0 to cuda:0" in _one_error_line(capsys)


def test_usage_errors_and_unexpected_errors_are_one_line_unless_debug(monkeypatch, disc_png,
                                                                      tmp_path, capsys):
    from napari_instanno.inference import annotator

    png, _ = disc_png
    argv = ["predict", str(png), "--ref-box", "6", "6", "20", "20", "--out", str(tmp_path / "o.json"),
            *FAST]
    assert main([*argv, "--tile-size", "big"]) == 2
    assert "argument --tile-size: invalid int value: 'big'" in _one_error_line(capsys)
    assert main(["predict", str(png), "--out", "o.json"]) == 2
    assert "one of the arguments --ref-box --box is required" in _one_error_line(capsys)

    def crash(*args, **kwargs):
        raise RuntimeError("deep inside a library")

    monkeypatch.setattr(annotator.Annotator, "find_similar", crash)
    assert main(argv) == 2
    line = _one_error_line(capsys)
    assert "RuntimeError: deep inside a library" in line and "--debug" in line
    for debug in (["--debug", *argv], [*argv, "--debug"]):  # before or after the command
        with pytest.raises(RuntimeError, match="deep inside"):
            main(debug)
    with pytest.raises(InstannoError, match="exists"):
        main(["--debug", *argv[:-len(FAST) - 2], "--out", str(png), *FAST])


def test_the_instanno_command_prints_one_line_and_exits_2(tmp_path):
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "napari_instanno.cli", "predict",
                          str(tmp_path / "nope.png"), "--box", "0", "0", "5", "5", "--out",
                          str(tmp_path / "o.json")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        f"instanno: error: image {tmp_path / 'nope.png'} does not exist; check the path"]


def _edit_annotations(folder, change):
    path = folder / "annotations.json"
    data = json.loads(path.read_text())
    out = change(data)
    path.write_text(out if isinstance(out, str) else json.dumps(data))


# case -> (how annotations.json is spoilt, what the one line says)
BAD_EVALUATE = {
    "malformed JSON": (lambda d: "{not json", "is not valid COCO JSON"),
    "empty file": (lambda d: "", "is not valid COCO JSON"),
    "two-point polygon": (lambda d: d["annotations"][0].update(segmentation=[[1, 1, 5, 5]]),
                          "a polygon needs an even count of at least 6"),
    "missing images": (lambda d: d.pop("images"), "has no 'images' list"),
    "image without a size": (lambda d: d["images"][0].pop("height"), "image 1 has no height"),
    "image file missing": (lambda d: d["images"][0].update(file_name="images/gone.png"),
                           "gone.png does not exist"),
    "image file is text": (lambda d: d["images"][0].update(file_name="annotations.json"),
                           "annotations.json is not an image"),
}


@pytest.mark.parametrize("case", list(BAD_EVALUATE))
def test_bad_evaluate_input_fails_fast_in_one_line(case, disc_dataset, capsys, no_models_no_pixels):
    change, message = BAD_EVALUATE[case]
    _edit_annotations(disc_dataset, change)
    assert main(["evaluate", str(disc_dataset), *FAST]) == 2
    line = _one_error_line(capsys)
    assert message in line and "annotations.json" in line


def test_evaluate_fills_a_missing_bbox_and_warns_of_a_wrong_image_size(disc_dataset, tmp_path,
                                                                        capsys):
    def spoil(d):
        d["annotations"][0].pop("bbox")
        d["images"][1]["height"] = 100

    _edit_annotations(disc_dataset, spoil)
    out = tmp_path / "m.json"
    assert main(["evaluate", str(disc_dataset), "--json", str(out), *FAST]) == 0
    assert json.loads(out.read_text())["bbox_AP50"] > 0.9  # the ground truth lines up all the same
    warned = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    assert warned == ["instanno: warning: images/1.png is 128 x 128 pixels but the annotations say "
                      "100 x 128 (height x width); fix the file's height and width"]


def test_bad_evaluate_arguments(disc_dataset, tmp_path, capsys, no_models_no_pixels):
    assert main(["evaluate", str(tmp_path / "nowhere"), *FAST]) == 2
    assert f"dataset {tmp_path / 'nowhere'} is not a folder" in _one_error_line(capsys)
    assert main(["evaluate", str(disc_dataset), "--max-images", "0", *FAST]) == 2
    assert "--max-images must be a positive number" in _one_error_line(capsys)
    (tmp_path / "m.json").write_text("{}")
    assert main(["evaluate", str(disc_dataset), "--json", str(tmp_path / "m.json"), *FAST]) == 2
    assert "exists; pass --overwrite" in _one_error_line(capsys)
    assert main(["evaluate", str(disc_dataset), "--models", str(tmp_path / "none"), *FAST]) == 2
    assert "--models" in _one_error_line(capsys)


def test_box_to_polygon_before_set_image_says_what_to_do():
    from napari_instanno.inference.annotator import Annotator

    with pytest.raises(InstannoError, match=r"no image set; call set_image\(image\) first"):
        Annotator(matcher="ncc", outliner="otsu", device="cpu").box_to_polygon([0, 0, 5, 5])


def test_demo_shows_no_overlapping_or_nested_pair(tmp_path):
    import shapely

    from napari_instanno.inference.duplicates import DUPLICATE_IOU, NESTED_SHARE

    assert main(["demo", "--out", str(tmp_path), "--no-viewer", "--device", "cpu"]) == 0
    coco = COCO(str(tmp_path / "nuclei.coco.json"))
    polys = [shapely.Polygon(np.reshape(a["segmentation"][0], (-1, 2))) for a in coco.anns.values()]
    assert len(polys) > 50  # about 70 nuclei in the sample
    tree = shapely.STRtree(polys)
    for i, j in zip(*tree.query(polys, predicate="intersects")):
        if i < j:
            inter = polys[i].intersection(polys[j]).area
            assert inter <= DUPLICATE_IOU * polys[i].union(polys[j]).area
            assert inter <= NESTED_SHARE * min(polys[i].area, polys[j].area)


def test_a_bad_command_fails_before_the_heavy_libraries_load(tmp_path):
    """What makes a fresh `instanno` with a bad argument answer in about a second: neither torch
    nor scipy / scikit-image / shapely is imported before the arguments are checked."""
    import subprocess
    import sys

    import napari_instanno

    png = Path(napari_instanno.__file__).parent / "sample_data" / "nuclei.png"
    heavy = "[m for m in ('torch', 'scipy', 'skimage', 'shapely') if m in sys.modules]"
    for image, device, message in [(tmp_path / "nope.png", "cpu", "does not exist; check the path"),
                                   (png, "bogus", "--device 'bogus' is not a device")]:
        code = ("import sys\nfrom napari_instanno.cli import main\n"
                f"rc = main(['predict', {str(image)!r}, '--ref-box', '1', '1', '5', '5', '--out', "
                f"{str(tmp_path / 'o.json')!r}, '--device', {device!r}])\nprint(rc, {heavy})")
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=120)
        assert run.stdout.split("\n")[0] == "2 []", run.stdout + run.stderr
        assert message in run.stderr
