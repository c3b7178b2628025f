"""Synthetic shapes for the contour regressor, and contour training's errors on unusable folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from shapely.geometry import Polygon

from napari_instanno.errors import InstannoError
from napari_instanno.geometry import fit_to_box, mask_iou, polygon_to_mask
from napari_instanno.training.synthetic_shapes import (
    SHAPES,
    paste,
    random_shape,
    shape_crops,
    soft_mask,
    texture_images,
)
from napari_instanno.training.train_contour import train


@pytest.mark.parametrize("kind", SHAPES)
def test_every_kind_is_a_simple_polygon_fitted_to_its_box(kind):
    rng = np.random.default_rng(0)
    box = np.array([36.0, 40.0, 108.0, 100.0])  # x0, y0, x1, y1
    for _ in range(50):
        poly = fit_to_box(random_shape(kind, rng), box)
        assert Polygon(poly).is_valid and Polygon(poly).area > 0
        np.testing.assert_allclose(poly.min(axis=0), [40, 36], atol=1e-6)
        np.testing.assert_allclose(poly.max(axis=0), [100, 108], atol=1e-6)
    with pytest.raises(ValueError, match="unknown shape"):
        random_shape("circle", rng)


def test_sharp_kinds_keep_their_corners():
    rng = np.random.default_rng(1)
    rect = fit_to_box(random_shape("rectangle", np.random.default_rng(3)), np.array([0, 0, 9, 9]))
    assert len(rect) == 4
    l_shape = random_shape("l_shape", rng)
    assert len(l_shape) in (6, 8)  # an L or a U: straight sides, right angles
    sides = np.diff(np.vstack([l_shape, l_shape[:1]]), axis=0)
    dots = np.abs((sides * np.roll(sides, 1, axis=0)).sum(axis=1))
    np.testing.assert_allclose(dots, 0, atol=1e-9)


def test_paste_puts_the_texture_exactly_inside_the_polygon():
    rng = np.random.default_rng(2)
    poly = fit_to_box(random_shape("blob", rng), np.array([20.0, 20.0, 44.0, 44.0]))
    hard = polygon_to_mask(poly, (64, 64))
    alpha = soft_mask(poly, 64)
    assert mask_iou(alpha > 0.5, hard) > 0.97
    assert alpha.sum() == pytest.approx(Polygon(poly).area, rel=0.02)
    out = paste(np.zeros((64, 64, 3)), np.ones((64, 64, 3)), poly)
    np.testing.assert_allclose(out[..., 0], alpha)
    assert out[..., 0][hard].mean() > 0.95 and out[..., 0][~hard].mean() < 0.01


def test_shape_crops_are_seeded_and_the_target_is_what_was_pasted():
    rng = np.random.default_rng(0)
    flat = [np.full((80, 90, 3), v, np.uint8) for v in (30, 220)]  # two plain images
    noisy = [rng.integers(0, 255, (70, 70, 3), dtype=np.uint8)]
    a, b = shape_crops(flat + noisy, 12, seed=5), shape_crops(flat + noisy, 12, seed=5)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["crops"], shape_crops(flat + noisy, 12, seed=6)["crops"])
    assert a["crops"].shape == (12, 3, 144, 144) and a["crops"].dtype == torch.uint8
    assert a["polys"].shape == (12, 128, 2)
    np.testing.assert_allclose(a["boxes"].numpy(), [[36, 36, 108, 108]] * 12, atol=1.5)
    # no neighbours, flat textures: the target's inside and outside differ in brightness
    c = shape_crops(flat, 20, seed=1, neighbours=0)
    for crop, poly in zip(c["crops"], c["polys"]):
        img = crop.float().mean(0).numpy()
        inside = polygon_to_mask(poly.numpy(), (144, 144))
        edge = polygon_to_mask(poly.numpy() * 1.04 - 72 * 0.04, (144, 144)) ^ \
            polygon_to_mask(poly.numpy() * 0.96 + 72 * 0.04, (144, 144))
        core, rest = inside & ~edge, ~inside & ~edge
        assert abs(img[core].mean() - img[rest].mean()) > 10
        assert img[core].std() < 12 and img[rest].std() < 12  # noise only, no stray pastes


@pytest.mark.needs_shared
def test_texture_images_read_real_images(shared_data):
    imgs = texture_images(["crowdai-buildings/train", "usiigaci-phase/train"], 2, seed=0)
    assert len(imgs) == 4 and all(i.dtype == np.uint8 and i.shape[2] == 3 for i in imgs)
    assert all(i.std() > 5 for i in imgs)


def _folder(tmp_path, name, annotations):
    root = tmp_path / name
    (root / "images").mkdir(parents=True)
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(root / "images" / "a.png")
    (root / "annotations.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "images/a.png", "height": 32, "width": 32}],
        "categories": [{"id": 1, "name": "thing"}], "annotations": annotations}))
    return root


def _config(tmp_path, folder):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(json.dumps({  # JSON is YAML
        "seed": 0, "model": {"crop_size": 32, "channels": 32},
        "data": {"cache_dir": str(tmp_path / "cache"), "cache_size": 48, "cache_context": 2.0,
                 "sources": [{"folder": str(folder), "weight": 1.0, "min_size": 4}],
                 "val": {"folder": str(folder)}},
        "train": {"steps": 1}, "run_dir": str(tmp_path / "run"),
        "output": str(tmp_path / "run" / "w.safetensors")}))
    return cfg


@pytest.mark.parametrize("annotations, message", [
    ([{"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 10, 10]}],
     "has boxes only .* remove it from data.sources"),
    ([{"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 2, 2],
       "segmentation": [[4, 4, 6, 4, 6, 6]]}],
     r"no usable instance .* min_size=4 px\); lower min_size or remove the folder"),
    ([], "no usable instance"),
])
def test_contour_training_on_an_unusable_folder_is_a_one_line_error(tmp_path, annotations,
                                                                      message):
    folder = _folder(tmp_path, "data", annotations)
    with pytest.raises(InstannoError, match=message) as err:
        train(_config(tmp_path, folder))
    assert "\n" not in str(err.value) and str(folder) in str(err.value)
    assert not (tmp_path / "run").exists()
