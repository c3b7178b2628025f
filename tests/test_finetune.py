"""Fine-tuning the matcher and the contour regressor on the user's annotations
(``training.finetune``, ``instanno train matcher|contour --from``): a model folder that
``Annotator(models=...)`` uses, never the shipped one."""

from __future__ import annotations

import json

import numpy as np
import pytest
from skimage.io import imsave
from skimage.measure import label

from napari_instanno import Annotator, InstannoError
from napari_instanno.cli import main
from napari_instanno.geometry import polygon_box
from napari_instanno.instances import Instances
from napari_instanno.io.coco import write_coco
from napari_instanno.models.weights import models_dir, read_metadata, shipped_path
from napari_instanno.training.finetune import Cancelled, finetune_models

from .conftest import disc_scene

pytestmark = pytest.mark.skipif(shipped_path("matcher") is None or shipped_path("contour") is None,
                                reason="needs the shipped weights")


@pytest.fixture
def saved(tmp_path):
    """Two disc images in a folder and the COCO file the widget would save for them."""
    (tmp_path / "imgs").mkdir()
    items = []
    for k in range(2):
        img, _ = disc_scene(seed=k)
        imsave(tmp_path / "imgs" / f"{k}.png", (np.clip(img, 0, 1) * 255).astype(np.uint8),
               check_contrast=False)
        inst = Instances.from_label_image(label(img > 0.5), category="disc")
        items.append(({"id": k + 1, "file_name": f"{k}.png", "height": 128, "width": 128}, inst))
    write_coco(tmp_path / "mine.json", items)
    return tmp_path / "mine.json", tmp_path / "imgs"


def test_train_matcher_from_my_annotations_gives_a_model_folder(saved, tmp_path, capsys):
    ann, imgs = saved
    out = tmp_path / "my-model"
    shipped = shipped_path("matcher").read_bytes()
    assert main(["train", "matcher", "--from", str(ann), "--images", str(imgs), "--out", str(out),
                 "--steps", "2", "--device", "cpu"]) == 0
    assert "--models" in capsys.readouterr().out
    assert shipped_path("matcher").read_bytes() == shipped  # never overwritten
    card = (out / "matcher.md").read_text()
    assert "mine.json" in card and "images" in card and "2 steps" in card
    # float32: the shipped weights' int8 layers (models.int8) would lay out their state otherwise
    tuned = Annotator(matcher="learned", outliner="ellipse", device="cpu", models=out,
                      precision="float32")
    plain = Annotator(matcher="learned", outliner="ellipse", device="cpu", precision="float32")
    a, b = tuned.matcher.model.state_dict(), plain.matcher.model.state_dict()
    assert any(not np.array_equal(a[k], b[k]) for k in a)
    img, centres = disc_scene(seed=3)
    r, c = centres[5]
    found = tuned.set_image(img).find_similar([c - 10, r - 10, c + 10, r + 10])
    assert len(found) >= 1


def test_finetune_bad_input_says_what_to_do(saved, tmp_path, capsys):
    ann, imgs = saved
    base = ["train", "matcher", "--from", str(ann), "--steps", "1", "--device", "cpu"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([*base, "--images", str(empty), "--out", str(tmp_path / "m1")]) == 2
    assert "2 of the 2 images" in capsys.readouterr().err
    few = json.loads(ann.read_text())
    few["annotations"] = few["annotations"][:2]
    (tmp_path / "few.json").write_text(json.dumps(few))
    assert main(["train", "matcher", "--from", str(tmp_path / "few.json"), "--images", str(imgs),
                 "--out", str(tmp_path / "m2")]) == 2
    assert "at least 3 annotated instances" in capsys.readouterr().err
    assert main([*base, "--images", str(imgs), "--out", str(models_dir())]) == 2
    assert "shipped models folder" in capsys.readouterr().err
    with pytest.raises(InstannoError, match="holds no matcher.safetensors"):
        Annotator(matcher="ncc", models=empty)


def _state(model):
    return {k: v.float() for k, v in model.state_dict().items()}


def _differs(a, b) -> bool:
    return any(not np.array_equal(a[k], b[k]) for k in a)


def test_train_contour_from_my_polygons_alone_or_next_to_a_matcher(saved, tmp_path, capsys):
    ann, imgs = saved
    shipped = shipped_path("contour").read_bytes()
    alone = tmp_path / "contour-only"
    assert main(["train", "contour", "--from", str(ann), "--images", str(imgs), "--out", str(alone),
                 "--steps", "2", "--device", "cpu"]) == 0
    assert "--models" in capsys.readouterr().out
    assert shipped_path("contour").read_bytes() == shipped  # never overwritten
    assert sorted(p.name for p in alone.iterdir()) == ["contour.md", "contour.safetensors",
                                                       "contour_recipe.yaml"]
    card = (alone / "contour.md").read_text()
    assert "mine.json" in card and "32 outlined instances" in card and "2 steps" in card
    assert read_metadata(alone / "contour.safetensors", "contour")["steps"] == "2"
    from safetensors.torch import load_file

    assert {v.dtype for v in load_file(alone / "contour.safetensors").values()
            if v.is_floating_point()} == {__import__("torch").float16}
    plain = Annotator(device="cpu", precision="float32")  # float32: one state layout (int8)
    tuned = Annotator(device="cpu", models=alone, precision="float32")  # the matcher missing: the shipped one
    assert _differs(_state(tuned.outliner.model), _state(plain.outliner.model))
    assert not _differs(_state(tuned.matcher.model), _state(plain.matcher.model))
    img, centres = disc_scene(seed=3)
    r, c = centres[5]
    poly = tuned.set_image(img).boxes_to_polygons(np.array([[c - 9, r - 9, c + 9, r + 9]]))[0]
    assert np.abs(poly.mean(axis=0) - (r, c)).max() < 3  # still outlines the disc
    imsave(tmp_path / "new.png", (np.clip(img, 0, 1) * 255).astype(np.uint8), check_contrast=False)
    assert main(["predict", str(tmp_path / "new.png"), "--box", str(c - 9), str(r - 9), "18", "18",
                 "--models", str(alone), "--device", "cpu", "--out", str(tmp_path / "o.json")]) == 0
    assert len(json.loads((tmp_path / "o.json").read_text())["annotations"]) == 1

    both = tmp_path / "both"  # a folder with a fine-tuned matcher takes the contour next to it
    assert main(["train", "matcher", "--from", str(ann), "--images", str(imgs), "--out", str(both),
                 "--steps", "1", "--device", "cpu"]) == 0
    assert main(["train", "contour", "--from", str(ann), "--images", str(imgs), "--out", str(both),
                 "--models", str(alone), "--steps", "1", "--device", "cpu"]) == 0
    assert str(alone / "contour.safetensors") in (both / "contour.md").read_text()
    tuned = Annotator(device="cpu", models=both, precision="float32")
    assert _differs(_state(tuned.matcher.model), _state(plain.matcher.model))
    assert _differs(_state(tuned.outliner.model), _state(plain.outliner.model))


def test_train_contour_bad_input_says_what_to_do(saved, tmp_path, capsys):
    ann, imgs = saved
    base = ["train", "contour", "--images", str(imgs), "--steps", "1", "--device", "cpu"]
    boxes = json.loads(ann.read_text())
    for a in boxes["annotations"]:
        a["segmentation"] = []
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    assert main([*base, "--from", str(tmp_path / "boxes.json"), "--out", str(tmp_path / "m1")]) == 2
    err = capsys.readouterr().err.strip()
    assert "has only boxes" in err and "Box → polygon" in err and "\n" not in err
    assert not (tmp_path / "m1").exists()  # nothing half-made left
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "contour", "--from", str(ann), "--images", str(empty), "--out",
                 str(tmp_path / "m2")]) == 2
    assert "2 of the 2 images" in capsys.readouterr().err
    few = json.loads(ann.read_text())
    few["annotations"] = few["annotations"][:2]
    (tmp_path / "few.json").write_text(json.dumps(few))
    assert main([*base, "--from", str(tmp_path / "few.json"), "--out", str(tmp_path / "m3")]) == 2
    assert "at least 3 annotated instances" in capsys.readouterr().err
    assert main([*base, "--from", str(ann), "--out", str(models_dir())]) == 2
    assert "shipped models folder" in capsys.readouterr().err
    assert main([*base, "--from", str(ann), "--out", str(tmp_path / "m4"), "--models",
                 str(tmp_path / "nowhere")]) == 2
    assert "--models" in capsys.readouterr().err


def test_cancelled_fine_tuning_leaves_no_folder(saved, tmp_path):
    ann, imgs = saved
    seen = []

    def stop(done: int, total: int) -> None:
        seen.append((done, total))
        if done == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        finetune_models(ann, imgs, tmp_path / "m", {"matcher": 1, "contour": 3}, on_step=stop)
    assert seen == [(1, 4), (2, 4)]  # one count over both models
    assert not (tmp_path / "m").exists()


def test_a_matcher_taught_from_boxes_only_gets_outlines_fitted_to_its_boxes(saved, tmp_path,
                                                                             capsys):
    """Box-only annotations (aircraft, vehicles): the matcher learns the kind's extent, the
    shipped contour regressor never saw it, so its outlines are stretched to the boxes."""
    ann, imgs = saved
    data = json.loads(ann.read_text())
    for a in data["annotations"]:
        a["segmentation"] = []
    (tmp_path / "boxes.json").write_text(json.dumps(data))
    out = tmp_path / "boxes-model"
    assert main(["train", "matcher", "--from", str(tmp_path / "boxes.json"), "--images", str(imgs),
                 "--out", str(out), "--steps", "1", "--device", "cpu"]) == 0
    assert read_metadata(out / "matcher.safetensors", "matcher")["taught_from"] == "boxes"
    assert "stretched to the matcher's boxes" in (out / "matcher.md").read_text()
    tuned = Annotator(device="cpu", models=out)
    assert tuned.outliner.fit_to_box
    img, centres = disc_scene(seed=3)
    r, c = centres[5]
    found = tuned.set_image(img).find_similar([c - 10, r - 10, c + 10, r + 10],
                                              score_threshold=0.3)
    assert len(found) >= 3
    bounds = np.stack([polygon_box(p) for p in found.polygons])
    np.testing.assert_allclose(bounds, found.boxes, atol=1e-6)
    assert not Annotator(device="cpu", models=out, fit_outlines=False).outliner.fit_to_box
    # outlines in the annotations, or a contour regressor of the folder's own: no fitting
    poly = tmp_path / "poly-model"
    assert main(["train", "matcher", "--from", str(ann), "--images", str(imgs), "--out", str(poly),
                 "--steps", "1", "--device", "cpu"]) == 0
    assert "taught_from" not in read_metadata(poly / "matcher.safetensors", "matcher")
    assert not Annotator(device="cpu", models=poly).outliner.fit_to_box
    assert main(["train", "contour", "--from", str(ann), "--images", str(imgs), "--out", str(out),
                 "--steps", "1", "--device", "cpu"]) == 0
    assert not Annotator(device="cpu", models=out).outliner.fit_to_box
    assert not Annotator(device="cpu").outliner.fit_to_box  # the shipped models
