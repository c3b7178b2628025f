"""The guard (never worse than template matching) and the reference-scale rule for large objects,
on the shipped weights: the Coins sample, the nuclei sample and large discs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from shapely.geometry import box as shapely_box

from napari_instanno.geometry import box_iou
from napari_instanno.inference.annotator import DEFAULT_MIN_SCORE, Annotator
from napari_instanno.inference.tiling import find_similar_tiled
from napari_instanno.samples import coins_sample, nuclei_sample

COINS = np.array(json.loads((Path(__file__).parent / "fixtures" / "coins_boxes.json").read_text())
                 ["boxes"], dtype=np.float64)


def coins_found(inst, gt: np.ndarray = COINS) -> tuple[int, int]:
    """(coins found: a result's polygon box with IoU >= 0.5, one result per coin; polygons
    covering half or more of two coins' boxes)."""
    boxes = np.array([g.bounds for g in inst.geometries]).reshape(-1, 4)
    iou = box_iou(gt, boxes)
    found, used = 0, set()
    for i in np.argsort(-iou.max(1) if len(boxes) else np.zeros(len(gt))):
        j = int(iou[i].argmax()) if len(boxes) else -1
        if j >= 0 and iou[i, j] >= 0.5 and j not in used:
            found, used = found + 1, used | {j}
    coin_boxes = [shapely_box(*b) for b in gt]
    double = sum(sum(g.intersection(c).area / c.area >= 0.5 for c in coin_boxes) >= 2
                 for g in inst.geometries)
    return found, double


@pytest.fixture(scope="module")
def guarded_annotator() -> Annotator:
    """The shipped models with the guard (``matcher="guarded"``; not the default: model card)."""
    ann = Annotator(matcher="guarded", device="cpu")
    assert ann.outliner.name == "learned"
    return ann


def test_coins_sample_guarded_pipeline_finds_the_coins(guarded_annotator) -> None:
    """The plugin's Coins sample with its preset box: at least 22 of the 24 coins at the default
    score, and no polygon over two coins, whichever path the guard takes."""
    assert len(COINS) == 24
    image, ref = coins_sample()
    inst = guarded_annotator.set_image(image).find_similar(ref, score_threshold=DEFAULT_MIN_SCORE)
    found, double = coins_found(inst)
    assert found >= 22, f"{found} of 24 coins found"
    assert double == 0
    method = guarded_annotator.matcher.last_method
    assert set(inst.properties["matched_by"].tolist()) == {method}


def test_guard_keeps_the_learned_matcher_where_it_works(guarded_annotator) -> None:
    """On nuclei (the learned matcher's domain) the guard takes the learned path, and its result
    is the learned matcher's, tiled or not."""
    image, ref = nuclei_sample()
    guarded = guarded_annotator.set_image(image).find_similar(ref, score_threshold=0.5)
    assert guarded_annotator.matcher.last_method == "learned"
    assert guarded_annotator.matcher.last_evidence["self_score"] >= 0.5
    assert set(guarded.properties["matched_by"].tolist()) == {"learned"}
    learned = Annotator(matcher="learned", device="cpu").set_image(image)
    learned = learned.find_similar(ref, score_threshold=0.5)
    np.testing.assert_allclose(guarded.boxes, learned.boxes, atol=1e-6)
    tiled = find_similar_tiled(guarded_annotator, image, ref, tile_size=96, score_threshold=0.5,
                               workers=1)
    assert set(tiled.properties["matched_by"].tolist()) == {"learned"}
    assert abs(len(tiled) - len(guarded)) <= 1


def test_guard_falls_back_to_ncc_where_the_learned_matcher_misses_the_reference() -> None:
    """On the coins the learned matcher does not re-find the reference coin: the guard gives NCC's
    result, exactly, and says so; tiles take the same path."""
    image, ref = coins_sample()
    ann = Annotator(matcher="guarded", outliner="ellipse", device="cpu").set_image(image)
    floor = ann.matcher.ncc.threshold  # the learned extras rank below every NCC match
    guarded = ann.find_similar(ref, score_threshold=floor)
    if ann.matcher.last_method == "learned":  # new weights may re-find it: then they must say so
        ev = ann.matcher.last_evidence
        assert ev["self_score"] >= ann.matcher.min_self_score or ev["top_score"] >= 0.5
        return
    ncc = Annotator(matcher="ncc", outliner="ellipse", device="cpu").set_image(image)
    np.testing.assert_allclose(guarded.boxes, ncc.find_similar(ref, score_threshold=floor).boxes)
    extras = ann.find_similar(ref)
    assert len(extras) >= len(guarded) and (extras.scores[len(guarded):] < floor).all()
    assert set(guarded.properties["matched_by"].tolist()) == {"ncc"}
    tiled = find_similar_tiled(ann, image, ref, tile_size=128, workers=1)
    assert set(tiled.properties["matched_by"].tolist()) == {"ncc"}


def large_discs(size: int = 1024, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Nine soft-edged bright discs of radius 63-121 px on noise: RGB image and boxes."""
    rng = np.random.default_rng(seed)
    img = rng.normal(0.15, 0.03, (size, size)).astype(np.float32)
    rr, cc = np.mgrid[:size, :size]
    boxes = []
    for i in range(9):
        row, col = divmod(i, 3)
        r = [70, 90, 110][col] * rng.uniform(0.9, 1.1)
        cy, cx = 170 + row * 340 + rng.uniform(-10, 10), 170 + col * 340 + rng.uniform(-10, 10)
        img[(rr - cy) ** 2 + (cc - cx) ** 2 <= r * r] += 0.6
        boxes.append([cx - r, cy - r, cx + r, cy + r])
    rgb = gaussian_filter(np.repeat(img.clip(0, 1)[..., None], 3, axis=2), (0.8, 0.8, 0))
    return rgb, np.array(boxes)


def test_large_references_are_matched_on_a_downscaled_image() -> None:
    """A 180-px reference is matched at half scale (the mirror of the upscaling of small ones):
    the nine discs are the nine best matches, and tiles give the whole image's result."""
    rgb, discs = large_discs()
    ann = Annotator(matcher="learned", outliner="ellipse", device="cpu").set_image(rgb)
    ref = discs[4]
    assert ann.matcher.scale_for(ref) == 0.5
    assert ann.matcher.scale_for(np.array([0, 0, 400, 400])) == 0.25
    assert ann.matcher.scale_for(np.array([0, 0, 100, 100])) == 1.0
    whole = ann.find_similar(ref)
    assert (box_iou(discs, whole.boxes[:9]).max(1) >= 0.5).all()
    tiled = find_similar_tiled(ann, rgb, ref, tile_size=384, workers=1)
    keep_w, keep_t = whole.scores >= 0.1, tiled.scores >= 0.1
    assert keep_w.sum() == keep_t.sum()
    iou = box_iou(whole.boxes[keep_w], tiled.boxes[keep_t])
    assert (iou.max(1) >= 0.95).all()


def test_default_pipeline_finds_the_coins_on_its_own() -> None:
    """The default Annotator (shipped stage-7 matcher, no guard) finds the coins: the issue's
    coins check, on what a new user gets."""
    ann = Annotator(device="cpu")
    assert ann.matcher.name == "learned"
    image, ref = coins_sample()
    inst = ann.set_image(image).find_similar(ref, score_threshold=DEFAULT_MIN_SCORE)
    found, double = coins_found(inst)
    assert found >= 22, f"{found} of 24 coins found"
    assert double == 0
