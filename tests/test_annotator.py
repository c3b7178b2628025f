import numpy as np
import pytest

from napari_instanno import Annotator, InstannoError
from napari_instanno.geometry import mask_iou, polygon_to_mask
from napari_instanno.image import to_rgb01


def ref_box(centre, radius=8, pad=2):
    r, c = centre
    return [c - radius - pad, r - radius - pad, c + radius + pad, r + radius + pad]


@pytest.fixture(scope="module")
def ncc():
    return Annotator(matcher="ncc", outliner="otsu", device="cpu")


def test_find_similar_finds_every_disc_once(ncc, discs):
    img, centres = discs
    inst = ncc.set_image(img).find_similar(ref_box(centres[5]), category="disc")
    found = (inst.boxes[:, [1, 0]] + inst.boxes[:, [3, 2]]) / 2
    assert len(inst) == len(centres)
    for c in centres:
        assert np.linalg.norm(found - c, axis=1).min() < 2
    assert inst.category_names == ["disc"] * len(inst)
    assert np.all(np.diff(inst.scores) <= 1e-9)
    disc = polygon_to_mask(inst.polygons[0], img.shape)
    assert 150 < disc.sum() < 260  # pi * 8^2 ~ 201


def test_hitting_the_detection_limit_warns(ncc, discs, monkeypatch):
    from napari_instanno.inference import baselines

    img, centres = discs
    ncc.set_image(img)
    monkeypatch.setattr(baselines, "MAX_DETECTIONS", len(centres) - 2)
    with pytest.warns(UserWarning, match="limit of .* detections"):
        inst = ncc.find_similar(ref_box(centres[5]))
    assert len(inst) == len(centres) - 2


def test_box_to_polygon_and_refine(ncc, discs):
    img, centres = discs
    ncc.set_image(img)
    r, c = centres[0]
    rr, cc = np.mgrid[: img.shape[0], : img.shape[1]]
    truth = (rr + 0.5 - r) ** 2 + (cc + 0.5 - c) ** 2 <= 64
    poly = ncc.box_to_polygon(ref_box(centres[0], pad=3))
    assert mask_iou(polygon_to_mask(poly, img.shape), truth) > 0.85
    squashed = poly.copy()
    squashed[:, 0] = r + (squashed[:, 0] - r) * 0.6
    refined = ncc.refine(squashed)
    before = mask_iou(polygon_to_mask(squashed, img.shape), truth)
    assert mask_iou(polygon_to_mask(refined, img.shape), truth) > before


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.float64])
def test_dtypes_and_channels_are_normalised(dtype, discs):
    img, _ = discs
    scaled = (np.clip(img, 0, 1) * (200 if dtype == np.uint8 else 40000)).astype(dtype)
    for arr in (scaled, np.stack([scaled] * 3, -1), np.stack([scaled] * 5, -1)):
        rgb = to_rgb01(arr)
        assert rgb.shape == (*img.shape, 3) and rgb.dtype == np.float32
        assert rgb.min() >= 0 and rgb.max() <= 1 and rgb.max() > 0.9


@pytest.mark.parametrize("box, message", [
    ([10, 10, 10, 30], "zero area"),
    ([500, 500, 520, 520], "outside"),
    ([np.nan, 1, 5, 5], "NaN"),
    ([1, 2, 3], "4 numbers"),
])
def test_bad_reference_boxes_give_one_line_errors(ncc, discs, box, message):
    ncc.set_image(discs[0])
    with pytest.raises(InstannoError, match=message) as err:
        ncc.find_similar(box)
    assert "\n" not in str(err.value)


def test_box_partly_outside_is_clipped(ncc, discs):
    img, centres = discs
    ncc.set_image(img)
    poly = ncc.box_to_polygon([-20, -20, 30, 30])
    assert poly[:, 0].min() >= 0 and poly[:, 1].min() >= 0


def test_bad_images(ncc):
    with pytest.raises(InstannoError, match="NaN"):
        ncc.set_image(np.full((20, 20), np.nan))
    with pytest.raises(InstannoError, match="not numeric"):
        ncc.set_image(np.array([["a", "b"]]))
    with pytest.raises(InstannoError, match="shape"):
        ncc.set_image(np.zeros((2, 3, 4, 5)))
    tiny = Annotator(matcher="ncc", outliner="otsu").set_image(np.ones((1, 1), np.uint8))
    with pytest.raises(InstannoError, match="covers 100% of the 1x1 image, leaving no room"):
        tiny.find_similar([0, 0, 1, 1])
    assert len(tiny.box_to_polygon([0, 0, 1, 1])) >= 3  # one instance filling it: box -> polygon
    with pytest.raises(InstannoError, match="no image"):
        Annotator(matcher="ncc", outliner="ellipse").find_similar([0, 0, 5, 5])


def test_cosine_baseline_and_unknown_names(discs):
    img, centres = discs
    ann = Annotator(matcher="cosine", outliner="ellipse", device="cpu").set_image(img)
    inst = ann.find_similar(ref_box(centres[5], pad=4))
    found = (inst.boxes[:, [1, 0]] + inst.boxes[:, [3, 2]]) / 2
    assert len(inst) == len(centres)
    assert all(np.linalg.norm(found - c, axis=1).min() < 8 for c in centres)
    with pytest.raises(InstannoError, match="unknown matcher"):
        Annotator(matcher="magic")


def test_features_are_cached_per_image(discs, monkeypatch):
    img, centres = discs
    ann = Annotator(matcher="ncc", outliner="ellipse").set_image(img)
    calls = []
    original = ann.matcher.set_image
    monkeypatch.setattr(ann.matcher, "set_image", lambda rgb: (calls.append(1), original(rgb)))
    ann.find_similar(ref_box(centres[0]))
    ann.find_similar(ref_box(centres[3]))
    assert len(calls) == 1
    ann.set_image(img)
    ann.find_similar(ref_box(centres[0]))
    assert len(calls) == 2


def test_refine_of_a_good_polygon_keeps_it(ncc):
    from napari_instanno.geometry import polygon_area
    from napari_instanno.samples import nuclei_sample

    image, box = nuclei_sample()
    ncc.set_image(image)
    poly = ncc.box_to_polygon(box)
    refined = ncc.refine(poly)
    assert abs(polygon_area(refined) - polygon_area(poly)) < 0.2 * polygon_area(poly)
    assert mask_iou(polygon_to_mask(refined, image.shape), polygon_to_mask(poly, image.shape)) > 0.8


def test_loading_the_annotator_leaves_slow_unused_modules_out():
    """Model load is on the user's path: scipy.signal (1-2 s, pulled in by skimage's polygon
    module) must not come with the learned models, nor with their first result."""
    import subprocess
    import sys

    code = ("import sys; import numpy as np; from napari_instanno import Annotator; "
            "a = Annotator(device='cpu'); a.set_image(np.random.default_rng(0).random((96, 96))); "
            "a.find_similar((30, 30, 50, 50)); print('scipy.signal' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_warm_up_keeps_the_image_and_changes_no_result(discs):
    """The widget warms the models up while they load: a warmed Annotator has no image of its
    own, and on the image set before it finds exactly what it found before."""
    img, centres = discs
    ann = Annotator(device="cpu")
    with pytest.raises(InstannoError, match="no image set"):
        ann.warm_up().find_similar(ref_box(centres[0]))
    ann.set_image(img)
    before = ann.find_similar(ref_box(centres[2]))
    after = ann.warm_up().find_similar(ref_box(centres[2]))
    assert ann.image_shape == img.shape[:2] and len(after) == len(before) > len(centres) // 2
    assert np.allclose(after.scores, before.scores) and np.allclose(after.boxes, before.boxes)
    assert all(np.allclose(a, b) for a, b in zip(after.polygons, before.polygons, strict=True))


def test_a_failing_warm_up_keeps_the_image_and_the_widget_still_gets_its_models(discs,
                                                                              monkeypatch):
    from napari_instanno.napari.annotators import AnnotatorCache

    img, centres = discs
    ann = Annotator(matcher="ncc", outliner="otsu").set_image(img)
    monkeypatch.setattr(ann, "find_similar", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        ann.warm_up()
    monkeypatch.undo()
    assert ann.image_shape == img.shape[:2]
    assert len(ann.find_similar(ref_box(centres[0]))) == len(centres)
    # the widget's background load: a warm-up failure is no reason to refuse the models
    monkeypatch.setattr(Annotator, "warm_up", lambda self: 1 / 0)
    cache = AnnotatorCache()
    cache.preload(("ncc", "otsu", ""))
    got = cache.get(("ncc", "otsu", ""), ("image", 0), img)
    assert isinstance(got, Annotator) and len(got.find_similar(ref_box(centres[0]))) == len(centres)
