"""Synthetic exemplar episodes: copies of one object pasted on another folder's background."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.measure import label, regionprops

from napari_instanno.geometry import ellipse_polygon
from napari_instanno.instances import Instances
from napari_instanno.io.coco import write_coco
from napari_instanno.models.matcher import MatcherConfig
from napari_instanno.training.episodes import EpisodeConfig, EpisodeSampler
from napari_instanno.training.synthetic import cut_object, paste_scene, warp_cutout

SMALL = MatcherConfig(strides=(8,), dim=32, ref_size=32, min_crop=32)


def red_disc(radius: int = 10):
    """A cutout of a red disc (mask) from a grey image."""
    img = np.full((40, 40, 3), 100, np.uint8)
    rr, cc = np.mgrid[:40, :40] + 0.5
    img[(rr - 20) ** 2 + (cc - 20) ** 2 <= radius ** 2] = (255, 0, 0)
    box = np.array([20 - radius, 20 - radius, 20 + radius, 20 + radius], float)
    return cut_object(img, ellipse_polygon(box, 48), box)


def test_every_pasted_copy_is_a_target_of_the_right_size() -> None:
    cfg = EpisodeConfig(crop=192, copies=(5, 12), copy_scale=(0.7, 1.4), max_overlap=0.0)
    rng = np.random.default_rng(3)
    for _ in range(5):
        ref_side = float(rng.uniform(16, 40))
        scene = paste_scene(torch.full((3, 192, 192), 0.4), red_disc(), ref_side, cfg, rng)
        # no overlap: every copy stays whole, so every copy is a target
        assert len(scene.boxes) == len(scene.copies) >= 5
        np.testing.assert_allclose(scene.visible, 1.0, atol=0.05)
        # each red blob of the image is one target box, and it lies inside that box
        img = scene.image.numpy()
        red = (img[0] > 0.7) & (img[1] < 0.3)
        blobs = regionprops(label(red))
        assert len(blobs) == len(scene.boxes)
        for blob in blobs:
            r0, c0, r1, c1 = blob.bbox
            inside = ((scene.boxes[:, 0] <= c0 + 1) & (scene.boxes[:, 1] <= r0 + 1)
                      & (scene.boxes[:, 2] >= c1 - 1) & (scene.boxes[:, 3] >= r1 - 1))
            assert inside.sum() == 1
        # sizes: the reference at ref_side, the other copies within copy_scale of it
        sides = (scene.boxes[:, 2:] - scene.boxes[:, :2]).max(1)
        assert sides[scene.ref] == pytest.approx(ref_side, abs=2.0)
        assert (sides >= 0.7 * ref_side - 2).all() and (sides <= 1.4 * ref_side + 2).all()


def test_covered_copies_are_not_targets() -> None:
    cfg = EpisodeConfig(crop=96, copies=(30, 30), copy_scale=(1.0, 1.0), max_overlap=1.0,
                        min_visible_copy=0.6)
    scene = paste_scene(torch.zeros(3, 96, 96), red_disc(), 30.0, cfg, np.random.default_rng(0))
    assert len(scene.copies) == 30 and (scene.visible <= 1.0 + 1e-6).all()
    assert len(scene.boxes) == int((scene.visible >= 0.6).sum()) < 30  # crowded: some hidden


def test_box_only_objects_keep_their_box_and_rotate_by_quarter_turns() -> None:
    img = np.zeros((60, 80, 3), np.uint8)
    img[20:30, 10:50] = 200  # a 40 x 10 box-only object
    box = np.array([10, 20, 50, 30], float)
    ring = np.array([[20, 10], [20, 50], [30, 50], [30, 10]], float)  # (row, col): just the box
    cut = cut_object(img, ring, box)
    assert cut.rigid and cut.inside.sum() == 400 and cut.alpha.shape[0] > 10  # feathered margin
    piece = warp_cutout(cut, 80.0, 0.0, 1, False, False)  # a quarter turn, twice the size
    rows, cols = np.nonzero(piece[4].numpy() > 0.5)
    assert np.ptp(rows) + 1 == pytest.approx(80, abs=2) and np.ptp(cols) + 1 == pytest.approx(20, abs=2)


def _folder(root, colour, n: int = 2):
    """A COCO folder of 64 x 64 images, each with three discs of one colour."""
    (root / "images").mkdir(parents=True)
    items = []
    for i in range(n):
        img = np.full((64, 64, 3), 30 + 40 * i, np.uint8)
        rr, cc = np.mgrid[:64, :64] + 0.5
        polys = []
        for cy, cx in ((16, 16), (16, 46), (46, 30)):
            img[(rr - cy) ** 2 + (cc - cx) ** 2 <= 64] = colour
            polys.append(ellipse_polygon(np.array([cx - 8, cy - 8, cx + 8, cy + 8], float), 32))
        Image.fromarray(img).save(root / f"images/{i}.png")
        items.append(({"id": i + 1, "file_name": f"images/{i}.png", "height": 64, "width": 64},
                      Instances(polygons=polys, category_ids=np.ones(3, int), categories={1: "disc"})))
    write_coco(root / "annotations.json", items)
    return root


def test_sampler_synthetic_episodes_are_well_formed_and_seeded(tmp_path) -> None:
    folders = {"a": _folder(tmp_path / "a", (250, 20, 20)), "b": _folder(tmp_path / "b", (20, 250, 20))}
    cfg = EpisodeConfig(crop=128, synthetic=1.0, synth_ref_side=(12, 40), copies=(3, 8))

    def episodes(seed: int):
        sampler = EpisodeSampler(folders, SMALL, cfg)
        rng = np.random.default_rng(seed)
        return [sampler.sample(rng) for _ in range(8)]

    first, again, other = episodes(7), episodes(7), episodes(8)
    for e, f in zip(first, again):
        assert e.source == f.source and e.source.startswith("synthetic:")
        np.testing.assert_array_equal(e.image, f.image)
        np.testing.assert_array_equal(e.boxes, f.boxes)
        np.testing.assert_array_equal(e.ref_crop, f.ref_crop)
    assert any(not np.array_equal(e.image, o.image) for e, o in zip(first, other))
    for e in first:
        assert e.image.shape == (3, 128, 128) and e.ref_crop.shape == (3, 32, 32)
        assert 1 <= len(e.boxes) <= 8 and (e.boxes >= 0).all() and (e.boxes <= 128).all()
        # the reference is 12-40 px (longer side; a rotated disc's box grows by at most sqrt 2)
        assert 12 - 1 <= e.ref_size.max() <= 40 * 1.42 + 1
        # the reference box in its crop has the reference's size at the crop's scale
        local = e.ref_local[2:] - e.ref_local[:2]
        np.testing.assert_allclose(local / local.max(), e.ref_size / e.ref_size.max(), atol=0.05)



def test_one_pixel_wide_pieces_paste_without_error() -> None:
    """A piece 1 px wide (a thin object scaled down) is pasted, blur or not."""
    from napari_instanno.training.synthetic import _place

    piece = torch.ones(5, 21, 1)
    for seed in range(20):
        canvas, top = torch.zeros(3, 32, 32), torch.full((32, 32), -1, dtype=torch.int32)
        box = _place(canvas, top, piece, 0, np.zeros((0, 4)), 0.0, np.random.default_rng(seed))
        assert box is not None and box[2] - box[0] == 1 and box[3] - box[1] == 21
        assert (top == 0).sum() == 21


def test_a_rival_kind_is_pasted_as_often_as_the_targets_and_is_never_a_target() -> None:
    img = np.full((40, 40, 3), 100, np.uint8)
    img[10:30, 10:30] = (0, 0, 255)
    box = np.array([10, 10, 30, 30], float)
    blue_square = cut_object(img, ellipse_polygon(box, 4)[:0], box)  # box-only: the square
    cfg = EpisodeConfig(crop=256, copies=(6, 6), copy_scale=(1.0, 1.0), max_overlap=0.0)
    scene = paste_scene(torch.full((3, 256, 256), 0.5), red_disc(8), 20.0, cfg,
                        np.random.default_rng(1), rival=blue_square)
    out = scene.image.numpy()
    blue = (out[2] > 0.8) & (out[0] < 0.3)
    red = (out[0] > 0.8) & (out[2] < 0.3)
    n_blue = len(regionprops(label(blue)))
    assert n_blue >= 3  # several rival copies, not a singleton distractor
    # every target box holds red, none is centred on a rival
    for x0, y0, x1, y1 in scene.boxes.astype(int):
        assert red[y0:y1, x0:x1].any()
        cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
        assert not blue[cy, cx]
