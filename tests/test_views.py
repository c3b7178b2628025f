"""Dihedral views of the learned matcher (``inference.views``): boxes map into and out of each
view, detections fuse, the number of views follows the pixel budget, and the fused result turns
with the image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_instanno.inference.learned_matcher import LearnedMatcher
from napari_instanno.inference.views import (
    DIHEDRAL,
    VIEW_PIXELS,
    fuse,
    unview_boxes,
    view_boxes,
    view_image,
    views_for,
)


@settings(max_examples=50, deadline=None)
@given(st.sampled_from(DIHEDRAL), st.integers(8, 60), st.integers(8, 60), st.data())
def test_a_box_lands_on_its_pixels_in_every_view_and_comes_back(view, h, w, data):
    y0, x0 = data.draw(st.integers(0, h - 2)), data.draw(st.integers(0, w - 2))
    y1, x1 = data.draw(st.integers(y0 + 1, h)), data.draw(st.integers(x0 + 1, w))
    img = torch.zeros(1, 1, h, w)
    img[..., y0:y1, x0:x1] = 1.0
    seen = view_image(img, view)[0, 0]
    b = view_boxes(np.array([x0, y0, x1, y1]), view, (h, w))[0].astype(int)
    assert seen[b[1]:b[3], b[0]:b[2]].all() and seen.sum() == (y1 - y0) * (x1 - x0)
    back = unview_boxes(b[None].astype(float), view, (h, w))
    np.testing.assert_allclose(back[0], [x0, y0, x1, y1])


def test_views_fit_the_pixel_budget():
    assert views_for(VIEW_PIXELS / 8) == DIHEDRAL
    assert views_for(VIEW_PIXELS / 5) == DIHEDRAL[:4]
    assert views_for(VIEW_PIXELS) == ("",)
    assert views_for(VIEW_PIXELS / 8, most=2) == ("", "h")


def test_fuse_averages_one_object_over_the_views_and_halves_one_seen_once():
    a = (np.array([[0, 0, 10, 10], [50, 50, 60, 60.0]]), np.array([0.8, 0.6]))
    b = (np.array([[2, 0, 12, 10.0]]), np.array([0.4]))
    boxes, scores = fuse([a, b])
    np.testing.assert_allclose(scores, [0.6, 0.3])
    # score-weighted: (0.8 * 0 + 0.4 * 2) / 1.2
    np.testing.assert_allclose(boxes[0], [2 / 3, 0, 10 + 2 / 3, 10])
    np.testing.assert_allclose(boxes[1], [50, 50, 60, 60])


@pytest.fixture
def random_weights(tmp_path):
    import json

    from napari_instanno.models.matcher import MatcherConfig, OneShotMatcher
    from napari_instanno.models.weights import save_fp16

    torch.manual_seed(0)
    model = OneShotMatcher(MatcherConfig(strides=(8, 16), dim=16), pretrained=False)
    return save_fp16(model, tmp_path / "m.safetensors",
                     {"config": json.dumps(model.cfg.to_dict())})


def test_the_fused_result_turns_with_the_image():
    """Eight views of a flipped image are the eight views of the image: the same detections,
    mirrored (any box mapped to the wrong place in one view would break this)."""
    from napari_instanno.image import to_rgb01
    from napari_instanno.samples import nuclei_sample

    image, box = nuclei_sample()
    img = to_rgb01(image)[64:192, 64:256]  # multiples of 32 after the matcher's 2x: no padding
    box = np.asarray(box, float) - [64, 64, 64, 64]
    m = LearnedMatcher(precision="float32")
    m.set_image(img)
    ref = m.embed_reference(box)
    assert len(ref["views"]) == 7 and ref["scale"] == 2.0
    boxes, scores = m.find(ref)
    m.set_image(img[:, ::-1].copy())
    boxes_f, scores_f = m.find(m.embed_reference(view_boxes(box, "h", (128, 192))[0]))
    shown = scores >= 0.3
    assert shown.sum() > 10 and (scores_f >= 0.3).sum() == shown.sum()
    np.testing.assert_allclose(scores_f[shown], scores[shown], atol=1e-4)
    back = view_boxes(boxes_f, "h", (128, 192))
    gap = np.abs(boxes[shown][:, None] - back[None]).max(2).min(1)
    assert gap.max() < 1e-2


def test_one_view_is_the_plain_matcher(random_weights):
    rng = np.random.default_rng(2)
    img, box = rng.random((70, 100, 3), dtype=np.float32), np.array([10.0, 10, 40, 36])
    one = LearnedMatcher(weights=random_weights, threshold=0.0, min_reference_side=0, views=1)
    one.set_image(img)
    ref = one.embed_reference(box)
    assert "views" not in ref
    boxes, scores = one.find(ref)
    with one._inference():
        plain = one.model.detect(one._features(1.0), ref, 0.0, one.max_detections, one.nms_iou)[0]
    inside = ((plain[0][:, 0] + plain[0][:, 2]) / 2 >= 0)  # all: nothing centred in padding
    keep = (((plain[0][:, 0] + plain[0][:, 2]) / 2 < 100)
            & ((plain[0][:, 1] + plain[0][:, 3]) / 2 < 70) & inside).numpy()
    np.testing.assert_allclose(scores, plain[1].numpy()[keep], atol=1e-6)
    assert len(boxes) == keep.sum()


def test_a_large_image_gets_fewer_views_and_the_tiler_sets_the_whole_images_pixels(
        random_weights):
    m = LearnedMatcher(weights=random_weights, min_reference_side=0)
    m.set_image(np.zeros((64, 64, 3), np.float32))
    assert len(m.embed_reference(np.array([8.0, 8, 40, 40]))["views"]) == 7
    with m.views_as_for(VIEW_PIXELS / 3):  # as the tiler does for a large image
        assert len(m.embed_reference(np.array([8.0, 8, 40, 40]))["views"]) == 1
    assert len(m.embed_reference(np.array([8.0, 8, 40, 40]))["views"]) == 7  # reset after
