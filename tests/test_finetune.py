"""Fine-tuning the matcher on the user's annotations (``training.finetune``, ``instanno train
matcher --from``): a model folder that ``Annotator(models=...)`` uses, never the shipped one."""

from __future__ import annotations

import json

import numpy as np
import pytest
from skimage.io import imsave
from skimage.measure import label

from napari_instanno import Annotator, InstannoError
from napari_instanno.cli import main
from napari_instanno.instances import Instances
from napari_instanno.io.coco import write_coco
from napari_instanno.models.weights import models_dir, shipped_path

from .conftest import disc_scene

pytestmark = pytest.mark.skipif(shipped_path("matcher") is None, reason="needs the shipped matcher")


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
    tuned = Annotator(matcher="learned", outliner="ellipse", device="cpu", models=out)
    plain = Annotator(matcher="learned", outliner="ellipse", device="cpu")
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
