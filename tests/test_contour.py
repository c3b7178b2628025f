"""The contour regressor: loss terms, alignment, a short overfit run, the learned outliner."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from napari_instanno.errors import InstannoError
from napari_instanno.geometry import (
    fit_to_box,
    mask_iou,
    polygon_box,
    polygon_to_mask,
    resample_polygon,
)
from napari_instanno.inference.learned_outliner import LearnedOutliner
from napari_instanno.models.contour import ContourRegressor
from napari_instanno.models.weights import save_fp16
from napari_instanno.training.losses import (
    align_start,
    contour_loss,
    cosine_move_loss,
    dice_loss,
    rasterize,
    signed_area,
    soft_rasterize,
    vector_loss,
)
from napari_instanno.training.train_contour import build_model, crop_iou, make_batch


def star(centre: tuple[float, float], r_out: float, r_in: float, points: int = 5,
         angle: float = 0.3) -> np.ndarray:
    t = np.arange(2 * points) * math.pi / points + angle
    r = np.where(np.arange(2 * points) % 2 == 0, r_out, r_in)
    return np.stack([centre[0] + r * np.cos(t), centre[1] + r * np.sin(t)], axis=1)


def test_cosine_loss_perfect_and_opposite():
    ideal = torch.randn(2, 16, 2)
    assert float(cosine_move_loss(ideal * 3.0, ideal)) == pytest.approx(0.0, abs=1e-5)
    assert float(cosine_move_loss(-ideal, ideal)) == pytest.approx(2.0, abs=1e-5)
    perpendicular = ideal.flip(-1) * torch.tensor([1.0, -1.0])
    assert float(cosine_move_loss(perpendicular, ideal)) == pytest.approx(1.0, abs=1e-5)


def test_vector_loss_and_alignment():
    ref = torch.as_tensor(resample_polygon(star((20, 20), 10, 5), 32))[None].float()
    shuffled = ref.roll(7, dims=1).flip(1)  # other start, other orientation
    assert float(vector_loss(shuffled, ref)) > 1.0
    aligned = align_start(shuffled, ref)
    assert torch.allclose(aligned, ref)
    assert float(vector_loss(aligned, ref)) == pytest.approx(0.0, abs=1e-6)
    assert torch.sign(signed_area(aligned)) == torch.sign(signed_area(ref))


def test_rasterisation_matches_geometry_and_dice():
    poly = star((16, 15), 12, 6)
    hard = rasterize(torch.as_tensor(poly)[None].float(), 32, 32.0)[0].numpy() > 0.5
    assert mask_iou(hard, polygon_to_mask(poly, (32, 32))) > 0.99
    vertices = torch.as_tensor(poly)[None].float().requires_grad_()
    soft = soft_rasterize(vertices, 32, 32.0)
    assert ((soft[0] > 0.5).numpy() == hard).mean() > 0.99
    target = torch.as_tensor(hard)[None].float()
    loss = dice_loss(soft, target)
    assert float(loss.detach()) < 0.15
    assert float(dice_loss(1 - soft, target)) > 0.8
    loss.backward()  # differentiable with respect to the vertices
    assert vertices.grad.abs().sum() > 0


def test_contour_loss_terms_and_ablation():
    gt = torch.as_tensor(resample_polygon(star((32, 32), 20, 10), 64))[None].float()
    init = gt + 3.0
    perfect = [gt.clone()]
    total, parts = contour_loss(perfect, [gt - init], gt, rasterize(gt, 32, 64.0), extent=64.0)
    assert parts["vector"] == pytest.approx(0.0, abs=1e-6)
    assert parts["cos"] == pytest.approx(0.0, abs=1e-5)
    away = [init + 1.0]  # moved away from the ground truth: opposite direction
    _, with_cos = contour_loss(away, [torch.ones_like(gt)], gt, None)
    _, without = contour_loss(away, [torch.ones_like(gt)], gt, None, use_cos=False)
    assert with_cos["cos"] > 1.5
    assert without["total"] == pytest.approx(without["vector"])
    assert with_cos["total"] > without["total"]


def _synthetic(rng: np.random.Generator, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """A noisy image with a bright star filling the middle half, and the star polygon."""
    poly = star((size / 2, size / 2), size * 0.25, size * 0.11, angle=0.3)
    img = 0.2 + 0.6 * polygon_to_mask(poly, (size, size))[..., None] * np.ones(3)
    img = img + rng.normal(0, 0.03, img.shape)
    return np.clip(img, 0, 1).astype(np.float32), poly


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A regressor overfit on one star (crops with jitter and flips): (model, weights path)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    img, poly = _synthetic(rng)
    crop = torch.as_tensor((img * 255).round().astype(np.uint8).transpose(2, 0, 1))[None]
    box = torch.tensor([[poly[:, 1].min(), poly[:, 0].min(), poly[:, 1].max(), poly[:, 0].max()]])
    cache = {"crops": crop, "boxes": box.float(),
             "polys": torch.as_tensor(resample_polygon(poly, 128))[None].float()}
    model = ContourRegressor(crop_size=32, channels=32)
    cfg = {"jitter": 0.15, "refine_prob": 0.3, "mask_size": 16}
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    gen = torch.Generator().manual_seed(0)
    idx = torch.zeros(8, dtype=torch.long)
    for _ in range(120):
        crops, init, gt, mask = make_batch(model, cache, idx, cfg, gen)
        polys, moves = model(crops, init)
        loss, _ = contour_loss(polys, moves, gt, mask, extent=32.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    path = tmp_path_factory.mktemp("w") / "contour.safetensors"
    save_fp16(model, path, {"model": json.dumps(model.config())})
    return model, path, cache


def test_overfit_beats_ellipse(trained):
    model, _, cache = trained
    metrics = crop_iou(model, {k: v.repeat(16, *[1] * (v.dim() - 1)) for k, v in cache.items()},
                       {"jitter": 0.1}, "cpu")
    assert metrics["iou"] > metrics["ellipse_iou"] + 0.1, metrics


def test_learned_outliner_outline_and_refine(trained):
    _, path, _ = trained
    img, poly = _synthetic(np.random.default_rng(1))
    gt = polygon_to_mask(poly, img.shape[:2])
    out = LearnedOutliner(weights=path, tolerance=0.0)
    out.set_image(img)
    box = np.array([poly[:, 1].min(), poly[:, 0].min(), poly[:, 1].max(), poly[:, 0].max()])
    polys = out.outline(np.stack([box, box + 1.0]))
    assert len(polys) == 2 and polys[0].shape == (64, 2)
    ellipse_iou = mask_iou(polygon_to_mask(resample_polygon(
        star((48, 48), 24, 24), 64), img.shape[:2]), gt)
    assert mask_iou(polygon_to_mask(polys[0], img.shape[:2]), gt) > ellipse_iou + 0.05
    # a rough user polygon (too large, off-centre, one side dragged out): refine snaps it back
    ring = resample_polygon(poly, 64)
    centre = ring.mean(axis=0)
    drag = np.exp(-((np.arange(64) - 14) / 6.0) ** 2)[:, None] * [8.0, -6.0]
    distorted = centre + (ring - centre) * 1.25 + [3.0, -2.0] + drag
    before = mask_iou(polygon_to_mask(distorted, img.shape[:2]), gt)
    after = mask_iou(polygon_to_mask(out.refine([distorted])[0], img.shape[:2]), gt)
    assert after > before + 0.1, (before, after)
    out.tolerance = 0.7
    simple = out.outline(box[None])[0]
    assert 3 <= len(simple) < 64
    assert out.outline(np.zeros((0, 4))) == []


def test_loaded_model_folds_batchnorms_without_changing_results(trained):
    import copy

    model, path, _ = trained          # trained: non-trivial BatchNorm statistics everywhere
    model = copy.deepcopy(model).eval()
    fast = LearnedOutliner(weights=path).model
    assert not any(isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))
                   for m in fast.modules())
    crops = torch.rand(3, 3, model.crop_size, model.crop_size)
    with torch.no_grad():
        ref, out = model(crops)[0][-1], fast(crops)[0][-1]
    torch.testing.assert_close(out, ref, atol=2e-2, rtol=0)   # crop pixels; fp16 weights


def test_missing_weights_is_a_clear_error(tmp_path):
    with pytest.raises(InstannoError, match="contour weights not found"):
        LearnedOutliner(weights=tmp_path / "none.safetensors")


def test_build_model_starts_from_init_weights(trained, tmp_path):
    model, path, _ = trained
    cfg = {"model": model.config(), "init": str(path)}
    start = build_model(cfg).state_dict()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(start[key].float(), value.float(), atol=2e-3, rtol=2e-3)
    fresh = build_model({"model": model.config()}).state_dict()
    assert any(not torch.allclose(fresh[k].float(), v.float())
               for k, v in model.state_dict().items() if v.is_floating_point())
    with pytest.raises(InstannoError):
        build_model({"model": model.config(), "init": str(tmp_path / "missing.safetensors")})


@given(st.lists(st.tuples(st.floats(-50, 50), st.floats(-50, 50)), min_size=3, max_size=20,
                unique=True),
       st.tuples(st.floats(0, 100), st.floats(0, 100), st.floats(1, 60), st.floats(1, 60)))
@settings(max_examples=60, deadline=None)
def test_fit_to_box_puts_the_polygons_bounds_on_the_box_and_keeps_its_order(poly, box):
    p = np.asarray(poly, dtype=np.float64)
    assume(np.ptp(p, axis=0).min() > 1e-3)
    x0, y0, w, h = box
    b = np.array([x0, y0, x0 + w, y0 + h])
    fitted = fit_to_box(p, b)
    np.testing.assert_allclose(polygon_box(fitted), b, atol=1e-6)
    for axis in range(2):  # a stretch per axis: the vertices keep their order along each
        before, after = p[:, axis], fitted[:, axis]
        assert (after[:, None] >= after[None, :] - 1e-9)[before[:, None] > before[None, :]].all()
