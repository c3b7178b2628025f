"""Several references and negatives (``inference.references``): pooled positives, suppressed
negatives, the same on tiles, and the bad input that gets a one-line message."""

from __future__ import annotations

import numpy as np
import pytest

from napari_instanno import Annotator, InstannoError
from napari_instanno.inference import references
from napari_instanno.inference.references import (
    LOOK_SCORE,
    NEGATIVE_MARGIN,
    check_references,
    looks,
    pool,
)
from napari_instanno.inference.tiling import find_similar_tiled

KINDS = ("disc", "ring", "square")


def scene(n: int = 6, spacing: int = 32, r: int = 8) -> tuple[np.ndarray, dict[str, list]]:
    """Discs, rings and squares of one size on a grid (12 of each), with a little noise."""
    size = n * spacing
    rr, cc = np.mgrid[:size, :size] + 0.5
    img = np.zeros((size, size))
    where: dict[str, list] = {k: [] for k in KINDS}
    for i in range(n):
        for j in range(n):
            y, x = (i + 0.5) * spacing, (j + 0.5) * spacing
            kind = KINDS[(i * n + j) % 3]
            d = np.hypot(rr - y, cc - x)
            mask = {"disc": d <= r, "ring": (d <= r) & (d >= r - 3),
                    "square": (abs(rr - y) <= 0.8 * r) & (abs(cc - x) <= 0.8 * r)}[kind]
            img[mask] = 1.0
            where[kind].append((y, x))
    img += np.random.default_rng(0).normal(0, 0.02, img.shape)
    return img.astype(np.float32), where


def box(centre: tuple[float, float], half: float = 10) -> list[float]:
    y, x = centre
    return [x - half, y - half, x + half, y + half]


def found(inst, where) -> dict[str, int]:
    """How many of each kind were found (a detection centred within 3 px)."""
    centres = (inst.boxes[:, [1, 0]] + inst.boxes[:, [3, 2]]) / 2
    return {k: sum(bool(len(centres)) and np.linalg.norm(centres - c, axis=1).min() < 3
                   for c in cs) for k, cs in where.items()}


@pytest.fixture(scope="module")
def shapes():
    img, where = scene()
    return Annotator(matcher="ncc", outliner="ellipse", device="cpu").set_image(img), img, where


def test_a_second_reference_adds_its_look_and_a_negative_removes_its_look(shapes, monkeypatch):
    monkeypatch.setattr(references, "POOLING", "max")  # the squares look like the disc only
    ann, _, where = shapes
    disc, ring, square = (box(where[k][0]) for k in KINDS)
    one = ann.find_similar(disc, score_threshold=0.7)
    assert found(one, where) == {"disc": 12, "ring": 0, "square": 12}
    two = ann.find_similar([disc, ring], score_threshold=0.7)
    assert found(two, where) == {"disc": 12, "ring": 12, "square": 12}
    assert len(two) == 36  # pooled: each object once
    wanted = ann.find_similar([disc, ring], negatives=[square], score_threshold=0.7)
    assert found(wanted, where) == {"disc": 12, "ring": 12, "square": 0}
    assert len(wanted) == 24
    assert np.all(np.diff(wanted.scores) <= 1e-9)


def test_one_box_in_a_list_is_the_same_as_one_box(shapes):
    ann, _, where = shapes
    a = ann.find_similar(box(where["disc"][3]), score_threshold=0.5)
    b = ann.find_similar([box(where["disc"][3])], score_threshold=0.5)
    np.testing.assert_allclose(a.boxes, b.boxes)
    np.testing.assert_allclose(a.scores, b.scores)


@pytest.mark.parametrize("pooling", ["max", "mean", "looks", "blend"])
def test_tiled_runs_take_the_same_references(shapes, pooling, monkeypatch):
    monkeypatch.setattr(references, "POOLING", pooling)
    ann, img, where = shapes
    refs = [box(where["disc"][0]), box(where["ring"][4]), box(where["disc"][9])]
    neg = [box(where["square"][7])]
    whole = ann.find_similar(refs, negatives=neg, score_threshold=0.7)
    tiled = find_similar_tiled(ann, img, refs, negatives=neg, score_threshold=0.7, tile_size=64,
                               scheduler="sync")
    assert found(tiled, where) == found(whole, where) == {"disc": 12, "ring": 12, "square": 0}
    assert len(tiled) == len(whole) == 24
    # the same scores: the tiler pools the positives as the whole image does (same looks)
    np.testing.assert_allclose(np.sort(tiled.scores), np.sort(whole.scores), atol=1e-3)


def test_pool_keeps_the_best_score_per_place_and_drops_what_a_negative_scores_higher():
    a = np.array([[0, 0, 10, 10], [50, 50, 60, 60], [100, 0, 110, 10.0]])
    b = np.array([[1, 0, 11, 10], [200, 0, 210, 10.0]])
    neg = np.array([[100, 1, 110, 11], [50, 50, 60, 60.0], [200, 0, 210, 10]])
    boxes, scores = pool([(a, [0.5, 0.9, 0.6]), (b, [0.8, 0.4])], [(neg, [0.7 + NEGATIVE_MARGIN,
                                                                        0.2, 0.5])])
    # (0, 0) twice -> its best 0.8; (100, 0): a negative scores it higher by more than the margin
    # -> dropped; (50, 50) kept; (200, 0): the negative is higher, but within the margin -> kept
    np.testing.assert_allclose(scores, [0.9, 0.8, 0.4])
    np.testing.assert_allclose(boxes[1], b[0])


def test_looks_join_the_positives_that_find_each_other():
    boxes = np.array([[0, 0, 10, 10], [50, 50, 60, 60], [100, 100, 110, 110.0]])
    found = [(boxes[:2] + 1, np.array([1.0, LOOK_SCORE])),  # the first finds the second
             (boxes[1:2], np.array([1.0])),  # the second only itself
             (boxes[[2, 0]], np.array([1.0, LOOK_SCORE - 0.01])),  # the third the first, weakly
             ]
    assert looks(found, boxes).tolist() == [0, 0, 1]
    found[2] = (boxes[[2, 1]], np.array([1.0, 0.9]))  # ... or the second: one look, via it
    assert looks(found, boxes).tolist() == [0, 0, 0]


def test_pool_means_the_scores_within_a_look_and_takes_the_best_look():
    a = np.array([[0, 0, 10, 10], [50, 50, 60, 60.0]])
    b = np.array([[1, 0, 11, 10.0]])
    c = np.array([[100, 0, 110, 10.0]])
    found = [(a, [0.8, 0.6]), (b, [0.4]), (c, [0.5])]
    boxes, scores = pool(found, look=[0, 0, 1])
    # (0, 0): both of look 0 -> 0.6; (50, 50): one of the two -> 0.3; (100, 0): look 1 alone
    np.testing.assert_allclose(scores, [0.6, 0.5, 0.3])
    np.testing.assert_allclose(boxes, [a[0], c[0], a[1]])
    np.testing.assert_allclose(pool(found)[1], [0.8, 0.6, 0.5])  # each its own look: the best


def test_the_blend_halves_the_best_looks_score_and_the_best_positives():
    a = np.array([[0, 0, 10, 10], [50, 50, 60, 60.0]])
    b = np.array([[1, 0, 11, 10.0]])
    c = np.array([[100, 0, 110, 10.0]])
    found = [(a, [0.8, 0.6]), (b, [0.4]), (c, [0.5])]
    boxes, scores = pool(found, look=[0, 0, 1], blend=True)
    # (0, 0): looks 0.6, best 0.8 -> 0.7; (50, 50): looks 0.3, best 0.6 -> 0.45; (100, 0): 0.5
    np.testing.assert_allclose(scores, [0.7, 0.5, 0.45])
    np.testing.assert_allclose(boxes, [a[0], c[0], a[1]])
    np.testing.assert_allclose(pool(found, blend=True)[1], [0.8, 0.6, 0.5])  # own looks: max


def test_by_looks_a_place_needs_the_support_of_the_references_that_look_alike(shapes,
                                                                              monkeypatch):
    ann, _, where = shapes
    disc, ring = box(where["disc"][0]), box(where["ring"][0])
    # NCC: the disc finds the ring at 0.66 and the squares at 0.72, the ring the squares at 0.2
    monkeypatch.setattr(references, "POOLING", "max")
    best = ann.find_similar([disc, ring], score_threshold=0.7)
    monkeypatch.setattr(references, "POOLING", "blend")  # the default: the squares' 0.72
    blended = ann.find_similar([disc, ring], score_threshold=0.7)  # and their look's 0.46
    monkeypatch.setattr(references, "POOLING", "looks")
    alike = ann.find_similar([disc, ring], score_threshold=0.7)
    assert found(best, where) == {"disc": 12, "ring": 12, "square": 12}
    assert found(alike, where) == {"disc": 12, "ring": 12, "square": 0}  # one look: both needed
    assert found(blended, where) == found(alike, where) and len(alike) == len(blended) == 24


def test_a_stack_pools_its_references_by_look_on_every_plane(shapes, monkeypatch):
    monkeypatch.setattr(references, "POOLING", "looks")
    ann, img, where = shapes
    refs = [box(where["disc"][0]), box(where["ring"][0])]
    whole = ann.find_similar(refs, score_threshold=0.7)
    stack = ann.find_similar_stack(np.stack([img, img[::-1]]), refs, 0, score_threshold=0.7)
    for k, plane in enumerate([where, {n: [(192 - y, x) for y, x in c] for n, c in where.items()}]):
        assert found(stack[stack.properties["plane"] == k], plane) == found(whole, where)
    np.testing.assert_allclose(stack[stack.properties["plane"] == 0].scores, whole.scores)


def test_positives_added_to_a_set_are_each_their_own_look():
    refs = references.ReferenceSet(["a", "b", "c"], look=np.array([0, 0, 1]))
    more = references.with_positives(refs, ["d", "e"])
    assert more.positives == ["a", "b", "c", "d", "e"]
    assert more.look.tolist() == [0, 0, 1, 2, 3]
    assert references.with_positives(references.ReferenceSet(["a"]), ["d"]).look is None


@pytest.mark.parametrize("refs, negatives, message", [
    ([[10, 10, 30, 30]], [[11, 11, 31, 31]], "negative box 1 covers reference box 1"),
    ([[10, 10, 20, 20], [0, 0, 100, 100]], None, "differ in size by 10x"),
    ([[10, 10, 20, 20], [300, 300, 320, 320]], None, "reference box 2 .* outside"),
    ([[10, 10, 20, 20]], [[-50, -50, -10, -10]], "negative box 1 .* outside"),
    ([], None, "no reference box"),
    ([[1, 2, 3]], None, "4 numbers"),
    ([[0, 0, 192, 150]], None, "the reference box covers 78% of the 192x192 image, leaving no room"),
    ([[10, 10, 30, 30], [-10, 0, 150, 170]], None, "reference box 2 covers 69%"),
])
def test_bad_references_get_one_line_that_says_what_to_do(refs, negatives, message):
    with pytest.raises(InstannoError, match=message) as err:
        check_references(refs, negatives, (192, 192))
    assert "\n" not in str(err.value)


def test_a_score_threshold_where_negatives_go_is_refused(shapes):
    ann, _, where = shapes
    with pytest.raises(InstannoError, match="score_threshold="):
        ann.find_similar(box(where["disc"][0]), 0.5)


def xywh(b: list[float]) -> list[str]:
    return [str(b[0]), str(b[1]), str(b[2] - b[0]), str(b[3] - b[1])]


def test_the_cli_takes_several_ref_boxes_and_negative_boxes(tmp_path, capsys, monkeypatch):
    from skimage.io import imsave

    from napari_instanno.cli import main

    monkeypatch.setattr(references, "POOLING", "max")  # so that only the negative drops squares

    img, where = scene()
    png = tmp_path / "shapes.png"
    imsave(png, (np.clip(img, 0, 1) * 255).astype(np.uint8), check_contrast=False)
    disc, ring, square = (box(where[k][0]) for k in KINDS)
    args = ["predict", str(png), "--ref-box", *xywh(disc), "--ref-box", *xywh(ring),
            "--matcher", "ncc", "--outliner", "ellipse", "--device", "cpu",
            "--score-threshold", "0.7", "--out"]
    assert main([*args, str(tmp_path / "all.json")]) == 0
    assert "36 instance(s)" in capsys.readouterr().out
    assert main([*args, str(tmp_path / "wanted.json"), "--negative-box", *xywh(square)]) == 0
    assert "24 instance(s)" in capsys.readouterr().out
    assert main([*args, str(tmp_path / "bad.json"), "--negative-box", *xywh(disc)]) == 2
    err = capsys.readouterr().err.strip()
    assert "negative box 1 covers reference box 1" in err and "\n" not in err


def test_the_evaluate_protocol_never_picks_a_reference_find_similar_refuses():
    from napari_instanno.training.evaluate import reference_index

    boxes = np.array([[10, 10, 190, 150], [20, 20, 30, 30], [30, 30, 190, 190], [5, 5, 9, 9.0]])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    ref = reference_index(boxes, areas, (192, 192))
    assert ref in (1, 3)  # the two large ones cover over half of the image: not references
    check_references(boxes[ref], None, (192, 192))  # accepted
    assert reference_index(boxes[[0, 2]], areas[[0, 2]], (192, 192)) is None


def two_sizes_scene(large_radius: float = 32.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Soft-edged discs of 12 px (16 of them) and ``2 * large_radius`` px (4) across on a dark
    noisy image: the image, the small discs' boxes and the large ones'."""
    rr, cc = np.mgrid[:384, :384] + 0.5
    img = np.zeros((384, 384))
    small = [(24 + 48 * i, 216 + 48 * j) for i in range(8) for j in range(2)][:16]
    large = [(56 + 96 * i, 56 + 96 * j) for i in range(2) for j in range(2)]
    for (y, x), r in [*((c, 6.0) for c in small), *((c, large_radius) for c in large)]:
        img = np.maximum(img, np.clip(r - np.hypot(rr - y, cc - x) + 0.5, 0, 1))
    img += np.random.default_rng(1).normal(0, 0.02, img.shape)
    boxes = [np.array([[x - r, y - r, x + r, y + r] for y, x in cs]) for cs, r in
             ((small, 6.0), (large, large_radius))]
    return img.astype(np.float32), boxes[0], boxes[1]


def test_references_far_apart_in_size_are_each_matched_at_their_own_scale() -> None:
    from napari_instanno.geometry import box_iou
    from napari_instanno.inference.references import embed_references, find_references

    img, small, large = two_sizes_scene()
    ann = Annotator(device="cpu", outliner="ellipse").set_image(img)
    matcher = ann._component("matcher")
    passes = []
    compute = matcher._compute_features
    matcher._compute_features = lambda x, s, v="": passes.append((s, v)) or compute(x, s, v)
    refs = embed_references(matcher, np.stack([small[0], large[0]]), np.zeros((0, 4)))
    scales = [r["scale"] for r in refs.positives]
    assert scales[0] > 1.0 and scales[1] == 1.0  # the 12-px disc upscaled, the 64-px one not
    close = embed_references(matcher, np.stack([small[0], small[1] + [0, 0, 1, 1]]),
                             np.zeros((0, 4)))
    assert len({r["scale"] for r in close.positives}) == 1  # similar sizes share one pass
    passes.clear()
    boxes, scores = find_references(matcher, refs)
    order = [s for s, _ in passes]  # one pass per scale and view, one scale after the other
    assert len(set(passes)) == len(passes) and order == sorted(order) and len(set(order)) <= 2
    shown = boxes[scores >= 0.2]  # at one shared scale: 2 of the 4 large discs, 18 boxes
    for truth in (small, large):  # every disc of both sizes found with a box of its own size
        assert (box_iou(truth, shown).max(1) >= 0.6).all()
    assert len(shown) == len(small) + len(large)


def test_references_of_close_sizes_share_the_finest_scale_among_them() -> None:
    """References of close sizes share one feature pass at the scale of the one the matcher
    upscales most, not the median one's: none is matched on a coarser feature grid than its own,
    where small objects merge, so larger references added later do not cost the small ones."""
    from napari_instanno.geometry import box_iou
    from napari_instanno.inference.references import embed_references, find_references

    img, small, large = two_sizes_scene(large_radius=8.0)
    ann = Annotator(device="cpu", outliner="ellipse").set_image(img)
    matcher = ann._component("matcher")
    own = [matcher.scale_for(b) for b in (small[0], large[0])]
    assert own[0] > own[1] > 1.0  # both upscaled, the 12-px disc more (within SHARED_SCALE)
    refs = embed_references(matcher, np.stack([small[0], large[0], large[1]]), np.zeros((0, 4)))
    assert [r["scale"] for r in refs.positives] == [own[0]] * 3  # the median is a 16-px disc
    boxes, scores = find_references(matcher, refs)
    shown = boxes[scores >= 0.2]
    for truth in (small, large):
        assert (box_iou(truth, shown).max(1) >= 0.5).all()


def test_a_set_is_tiled_when_its_smallest_reference_would_upscale_past_the_budget(monkeypatch):
    """Each reference has its own scale on the whole image, so the whole-image run must fit for
    the most upscaled one, not only for the median one."""
    from napari_instanno.inference import policy, tiling
    from napari_instanno.instances import Instances

    img, small, large = two_sizes_scene()
    ann = Annotator(device="cpu", outliner="ellipse").set_image(img)
    monkeypatch.setattr(policy, "MAX_MATCH_PIXELS", 2 * img.size)
    tiled = []
    monkeypatch.setattr(tiling, "find_similar_tiled",
                        lambda *args, **kwargs: tiled.append(args[2]) or Instances())
    assert len(ann.find_similar(large[:2])) >= 4 and not tiled  # 64 px: matched at scale 1
    ann.find_similar(np.stack([small[0], large[0], large[1]]))  # the 12-px one: upscaled 3x
    assert len(tiled) == 1 and len(tiled[0]) == 3
