"""The learned one-shot matcher: shapes, decoding + NMS, the episode sampler, training, the cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from napari_instanno.errors import InstannoError
from napari_instanno.geometry import box_iou, ellipse_polygon
from napari_instanno.inference.learned_matcher import LearnedMatcher
from napari_instanno.instances import Instances
from napari_instanno.io.coco import write_coco
from napari_instanno.models.matcher import MatcherConfig, OneShotMatcher, decode
from napari_instanno.models.weights import save_fp16
from napari_instanno.training.episodes import Episode, EpisodeConfig, EpisodeSampler
from napari_instanno.training.train_matcher import (
    _teachers,
    collate,
    distill_loss,
    init_from,
    make_targets,
    matcher_loss,
    teacher_maps,
)

SMALL = MatcherConfig(strides=(8,), dim=32, ref_size=32, min_crop=32)
KINDS = {1: (6.0, (1.0, 0.2, 0.2)), 2: (8.0, (0.2, 1.0, 0.2))}  # id: (half size, colour)


def two_kinds_scene(rng: np.random.Generator, size: int = 96, per_kind: int = 3
                    ) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Red discs (kind 1) and green squares (kind 2) on noise; boxes per kind."""
    img = rng.normal(0.3, 0.05, (size, size, 3)).astype(np.float32)
    rr, cc = np.mgrid[:size, :size] + 0.5
    boxes: dict[int, list] = {1: [], 2: []}
    taken: list[np.ndarray] = []
    while len(taken) < 2 * per_kind:
        kind = 1 + len(taken) % 2
        half, colour = KINDS[kind]
        cy, cx = rng.uniform(half + 1, size - half - 1, 2)
        box = np.array([cx - half, cy - half, cx + half, cy + half])
        if taken and box_iou(box[None] + [-3, -3, 3, 3], np.array(taken)).max() > 0:
            continue
        taken.append(box)
        boxes[kind].append(box)
        inside = ((rr - cy) ** 2 + (cc - cx) ** 2 <= half**2) if kind == 1 else \
            (np.abs(rr - cy) <= half) & (np.abs(cc - cx) <= half)
        img[inside] = colour
    return img.clip(0, 1), {k: np.array(v) for k, v in boxes.items()}


def scene_episode(model: OneShotMatcher, rng: np.random.Generator) -> Episode:
    img, boxes = two_kinds_scene(rng)
    kind = int(rng.integers(1, 3))
    ref = boxes[kind][rng.integers(len(boxes[kind]))]
    x = torch.from_numpy(img.transpose(2, 0, 1).copy())[None]
    crops, local = model.reference_crops(x, torch.tensor(ref[None], dtype=torch.float32))
    return Episode(img.transpose(2, 0, 1).copy(), boxes[kind].astype(np.float32),
                   crops[0].numpy(), local[0].numpy(), (ref[2:] - ref[:2]).astype(np.float32))


@pytest.mark.parametrize("backbone", ["mobilenet_v2", "resnet18"])
def test_output_shapes(backbone: str) -> None:
    model = OneShotMatcher(MatcherConfig(strides=(8, 16), dim=16, backbone=backbone),
                           pretrained=False).eval()
    feats = model.features(torch.rand(2, 3, 64, 96))
    assert feats["feats"][8].shape == (2, 16, 8, 12)
    assert feats["feats"][16].shape == (2, 16, 4, 6)
    boxes = torch.tensor([[10.0, 10, 30, 24], [40, 20, 60, 50]])
    ref = model.embed_reference(feats, boxes, torch.tensor([0, 1]))
    assert ref["q"][8].shape == (2, 32) and ref["q"][16].shape == (2, 32)
    assert torch.equal(ref["size"], torch.tensor([[20.0, 14], [20, 30]]))
    assert model.forward_maps(feats, ref).shape == (2, 5, 8, 12)
    out = model.detect(feats, ref, threshold=0.0, max_detections=7)
    assert len(out) == 2
    for b, s in out:
        assert b.shape == (len(s), 4) and len(s) <= 7
        assert torch.all(s[:-1] >= s[1:])


def test_decode_peaks_and_nms() -> None:
    maps = torch.full((1, 5, 8, 8), -10.0)
    maps[0, 1:] = 0.0
    maps[0, 0, 2, 3] = 3.0                     # a peak: box centred on cell (2, 3)
    maps[0, 0, 2, 4] = 2.0                     # its neighbour is no local maximum
    maps[0, 0, 6, 6] = 1.0
    maps[0, 1, 6, 6], maps[0, 4, 6, 6] = 0.25, np.log(2.0)  # offset and a taller box
    boxes, scores = decode(maps, torch.tensor([[10.0, 10.0]]), 8, threshold=0.1)[0]
    np.testing.assert_allclose(scores, torch.sigmoid(torch.tensor([3.0, 1.0])), rtol=1e-6)
    np.testing.assert_allclose(boxes, [[23, 15, 33, 25], [49, 42, 59, 62]], atol=1e-5)
    # two separate peaks whose (large) boxes overlap: NMS keeps the stronger one only
    maps[0, 0, 6, 6] = -10.0
    maps[0, 0, 2, 5] = 2.5
    boxes, scores = decode(maps, torch.tensor([[60.0, 60.0]]), 8, threshold=0.1, nms_iou=0.5)[0]
    assert len(boxes) == 1 and scores[0] == pytest.approx(float(torch.sigmoid(torch.tensor(3.0))))
    boxes, _ = decode(maps, torch.tensor([[60.0, 60.0]]), 8, threshold=0.1, nms_iou=0.95)[0]
    assert len(boxes) == 2


def _coco_scenes(tmp_path, n: int = 3):
    rng = np.random.default_rng(1)
    (tmp_path / "images").mkdir()
    items = []
    for i in range(n):
        img, boxes = two_kinds_scene(rng, size=96, per_kind=3 + i)
        name = f"images/s{i}.png"
        Image.fromarray((img * 255).astype(np.uint8)).save(tmp_path / name)
        polys = [ellipse_polygon(b, 24) for k in (1, 2) for b in boxes[k]]
        cats = [k for k in (1, 2) for _ in boxes[k]]
        inst = Instances(polygons=polys, category_ids=np.array(cats),
                         categories={1: "disc", 2: "square"})
        items.append(({"id": i + 1, "file_name": name, "height": 96, "width": 96}, inst))
    write_coco(tmp_path / "annotations.json", items)
    return tmp_path


def test_sampler_episodes(tmp_path) -> None:
    root = _coco_scenes(tmp_path)
    cfg = EpisodeConfig(crop=128, scale=(1.0, 1.0), empty_crop=0.0, distractors=0.0,
                        other_image=0.5, min_visible=0.99)
    sampler = EpisodeSampler({"shapes": root}, SMALL, cfg)
    rng = np.random.default_rng(0)
    for _ in range(20):
        ep = sampler.sample(rng)
        assert ep.image.shape == (3, 128, 128) and ep.ref_crop.shape == (3, 32, 32)
        # scenes hold 3 + i of each kind: the targets are all of one kind, the reference's kind
        sizes = ep.boxes[:, 2:] - ep.boxes[:, :2]
        i = int(ep.source.split(":")[1].split("->")[0])
        assert len(ep.boxes) == 3 + i
        np.testing.assert_allclose(sizes, np.broadcast_to(ep.ref_size, sizes.shape), atol=1.5)
        lw, lh = ep.ref_local[2:] - ep.ref_local[:2]
        assert lw == pytest.approx(ep.ref_size[0], abs=1.5)  # small objects crop at scale 1
        # the reference crop shows the object at its centre, unlike its border (background)
        centre = ep.ref_crop[:, 14:18, 14:18].mean((1, 2))
        border = np.median(np.concatenate([ep.ref_crop[:, 0], ep.ref_crop[:, -1]], 1), 1)
        assert np.abs(centre - border).max() > 0.15
    # with distractors and scale changes, episodes stay well formed
    sampler.cfg = EpisodeConfig(crop=64, distractors=1.0)
    for _ in range(10):
        ep = sampler.sample(rng)
        assert ep.image.shape == (3, 64, 64) and np.isfinite(ep.image).all()
        assert (ep.boxes >= 0).all() and (ep.boxes <= 64).all()


def test_training_tells_kinds_apart() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = OneShotMatcher(SMALL, pretrained=True)
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], 2e-3)
    rng = np.random.default_rng(0)
    for _ in range(160):
        batch = collate([scene_episode(model, rng) for _ in range(4)], "cpu")
        ref = model.embed_crops(batch["ref_crop"], batch["ref_local"], batch["ref_size"])
        maps = model.forward_maps(model.features(batch["image"]), ref)
        heat, reg, mask = make_targets(batch["boxes"], batch["ref_size"], maps.shape[-2:], 8)
        loss = matcher_loss(maps, heat, reg, mask)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    hits = {"same": 0, "other": 0, "targets": 0}
    with torch.inference_mode():
        for _ in range(6):
            img, boxes = two_kinds_scene(rng)
            feats = model.features(torch.from_numpy(img.transpose(2, 0, 1).copy())[None])
            for kind, other in ((1, 2), (2, 1)):
                ref = model.embed_reference(feats, torch.tensor(boxes[kind][:1]).float())
                found, _ = model.detect(feats, ref, threshold=0.3)[0]
                if len(found):
                    hits["same"] += int((box_iou(boxes[kind], found.numpy()).max(1) > 0.5).sum())
                    hits["other"] += int((box_iou(boxes[other], found.numpy()).max(1) > 0.3).sum())
                hits["targets"] += len(boxes[kind])
    assert hits["same"] >= 0.8 * hits["targets"], hits
    assert hits["other"] <= 0.1 * hits["targets"], hits


@pytest.mark.parametrize("upscale", [1.0, 2.0])
def test_distillation_pulls_the_student_to_the_teacher_on_its_folders_only(random_weights,
                                                                           upscale) -> None:
    torch.manual_seed(0)
    [(teacher, folders, weight, up)] = _teachers(
        {"teacher": str(random_weights), "folders": ["nuclei"], "weight": 0.5,
         "upscale": upscale}, "cpu")
    assert folders == {"nuclei"} and weight == 0.5 and up == upscale
    two = _teachers([{"teacher": str(random_weights), "folders": ["nuclei"]},
                     {"teacher": str(random_weights), "folders": ["planes"], "weight": 2.0}], "cpu")
    assert [(f, w, u) for _, f, w, u in two] == [({"nuclei"}, 1.0, 1.0), ({"planes"}, 2.0, 1.0)]
    assert not any(p.requires_grad for p in teacher.parameters())
    # upscale 2: a stride-4 student learns what the stride-8 teacher finds on the image at 2x
    strides = (8, 16) if upscale == 1 else (4, 8, 16)
    student = OneShotMatcher(MatcherConfig(strides=strides, dim=16, min_crop=64 / upscale),
                             pretrained=False)
    init_from(student, random_weights)
    images = torch.rand(2, 3, 64, 64)
    crops, local = torch.rand(2, 3, 64, 64), torch.tensor([[16.0, 16, 48, 48]] * 2)
    size = torch.tensor([[20.0, 20.0]] * 2)
    with torch.no_grad():
        t_maps = teacher_maps(teacher, up, images, crops, local, size)
    assert t_maps.shape[-2:] == (64 // student.stride,) * 2
    keep = torch.tensor([True, False])  # the episodes of the teacher's folders
    assert float(distill_loss(t_maps[keep], t_maps[keep])) == pytest.approx(0.0, abs=1e-4)

    def loss() -> torch.Tensor:
        ref = student.embed_crops(crops, local, size)
        maps = student.forward_maps(student.features(images), ref)
        return distill_loss(maps[keep], t_maps[keep])

    opt = torch.optim.Adam(student.parameters(), 1e-2)
    first = float(loss().detach())
    assert first > 0.05
    for _ in range(30):
        opt.zero_grad()
        out = loss()
        out.backward()
        opt.step()
    assert float(loss().detach()) < 0.5 * first


def test_a_finer_stride_starts_from_the_next_coarser_attention(random_weights) -> None:
    from safetensors.torch import load_file

    source = load_file(str(random_weights))
    fine = OneShotMatcher(MatcherConfig(strides=(4, 8, 16), dim=16), pretrained=False)
    fresh = {k: v.clone() for k, v in fine.state_dict().items()}
    init_from(fine, random_weights)
    state = fine.state_dict()
    for key, value in state.items():
        if key.startswith("attn.4."):
            expected = source[key.replace("attn.4.", "attn.8.")]
        elif key.startswith("proj.4."):  # 24 channels in: nothing to start from
            expected = fresh[key]
        else:
            expected = source[key]
        assert torch.equal(value, expected.to(value.dtype)), key
    # a file saved without its shared backbone takes it from the weights it was trained on
    stripped = random_weights.with_name("fine.safetensors")
    save_fp16(fine, stripped, leave_out="backbone.")
    again = OneShotMatcher(MatcherConfig(strides=(4, 8, 16), dim=16), pretrained=False)
    init_from(again, stripped, backbone_from=random_weights)
    for key, value in again.state_dict().items():
        assert torch.equal(value, state[key].half().float()), key  # saved as fp16


@pytest.fixture
def random_weights(tmp_path):
    import json

    model = OneShotMatcher(MatcherConfig(strides=(8, 16), dim=16), pretrained=False)
    return save_fp16(model, tmp_path / "m.safetensors",
                     {"config": json.dumps(model.cfg.to_dict())})


def test_feature_cache_and_reference_across_images(random_weights) -> None:
    matcher = LearnedMatcher(weights=random_weights, threshold=0.0, min_reference_side=0, views=1)
    calls = []
    features = matcher.model.features
    matcher.model.features = lambda x: calls.append(x.shape) or features(x)
    rng = np.random.default_rng(0)
    matcher.set_image(rng.random((70, 100, 3), dtype=np.float32))   # padded to 96 x 128
    ref_a = matcher.embed_reference(np.array([10, 10, 30, 30]))
    assert calls == [(1, 3, 96, 128)]
    ref_b = matcher.embed_reference(np.array([40, 20, 60, 44]))
    boxes_a, scores_a = matcher.find(ref_a)
    matcher.find(ref_b)
    assert len(calls) == 1                     # new references reuse the cached features
    assert boxes_a.shape == (len(scores_a), 4) and np.all(np.diff(scores_a) <= 0)
    assert (boxes_a[:, [0, 2]] <= 100).all() and (boxes_a[:, [1, 3]] <= 70).all()
    matcher.set_image(rng.random((40, 40, 3), dtype=np.float32))
    boxes, scores = matcher.find(ref_a)          # a reference travels to another image
    assert len(calls) == 2 and boxes.shape == (len(scores), 4)


def test_detection_limit_warns(random_weights) -> None:
    matcher = LearnedMatcher(weights=random_weights, threshold=0.0, max_detections=3)
    matcher.set_image(np.random.default_rng(0).random((64, 64, 3), dtype=np.float32))
    with pytest.warns(UserWarning, match="limit of 3 detections"):
        boxes, _ = matcher.find(matcher.embed_reference(np.array([10, 10, 60, 60])))
    assert len(boxes) <= 3


def test_small_references_are_matched_on_an_upscaled_image(random_weights) -> None:
    matcher = LearnedMatcher(weights=random_weights, threshold=0.0, min_reference_side=48,
                             max_upscale=4, views=1)
    calls = []
    features = matcher.model.features
    matcher.model.features = lambda x: calls.append(tuple(x.shape[-2:])) or features(x)
    matcher.set_image(np.random.default_rng(0).random((70, 100, 3), dtype=np.float32))
    assert calls == []                                          # features come with a reference
    ref = matcher.embed_reference(np.array([10, 10, 26, 26]))   # 16 px: 3x
    assert ref["scale"] == 3.0 and calls == [(224, 320)]        # 210 x 300 padded to 32
    matcher.embed_reference(np.array([50, 30, 66, 46]))         # same size: cached
    assert len(calls) == 1
    boxes, _ = matcher.find(ref)
    assert len(boxes) and (boxes[:, [0, 2]] <= 100).all() and (boxes[:, [1, 3]] <= 70).all()
    big = matcher.embed_reference(np.array([0, 0, 60, 60]))     # large enough: native scale
    assert big["scale"] == 1.0 and calls[-1] == (96, 128)
    assert matcher.scale_for(np.array([0, 0, 2, 2])) == 4.0     # capped by max_upscale


def test_a_fine_matcher_beside_the_weights_takes_small_references_at_half_the_upscale(
        random_weights) -> None:
    import json

    fine = OneShotMatcher(MatcherConfig(strides=(4, 8, 16), dim=16, min_crop=32,
                                        peak_window=128, resolution=2.0), pretrained=False)
    init_from(fine, random_weights)  # the same backbone
    path = random_weights.with_name("matcher_fine.safetensors")
    own = OneShotMatcher(fine.cfg, pretrained=False)
    own.load_state_dict(fine.state_dict())
    with torch.no_grad():
        next(own.backbone.parameters()).add_(0.5)  # a backbone trained on its own
    save_fp16(own, path, {"config": json.dumps(fine.cfg.to_dict())})  # with its backbone
    with_own = LearnedMatcher(weights=random_weights)
    assert with_own.fine.backbone.body is not with_own.model.backbone.body
    got = with_own.fine.state_dict()["backbone.body.0.0.weight"].float()
    assert torch.allclose(got, own.state_dict()["backbone.body.0.0.weight"].half().float())
    save_fp16(fine, path, {"config": json.dumps(fine.cfg.to_dict()), "backbone": "shared"},
              leave_out="backbone.")
    matcher = LearnedMatcher(weights=random_weights, threshold=0.0, min_reference_side=48,
                             max_upscale=4, views=1)
    assert matcher.fine.backbone.body is matcher.model.backbone.body   # loaded once
    calls = []
    for name, model in (("coarse", matcher.model), ("fine", matcher.fine)):
        features = model.features
        model.features = lambda x, n=name, f=features: calls.append((n, *x.shape[-2:])) or f(x)
    matcher.set_image(np.random.default_rng(0).random((70, 100, 3), dtype=np.float32))
    ref = matcher.embed_reference(np.array([10, 10, 26, 26]))   # 16 px: 3x for the coarse one
    assert ref["scale"] == 3.0 and calls == [("fine", 128, 160)]  # 1.5x: 105 x 150 padded
    assert matcher.runner(3.0) == (matcher.fine, 1.5)
    assert matcher.image_scale(np.array([10, 10, 26, 26])) == 1.5
    # 2.75x for the coarse one: a multiple of 1/2, so the fine one's scale is one of 1/4 (tiles)
    assert matcher.scale_for(np.array([0, 0, 17.5, 17.5])) == 3.0
    boxes, _ = matcher.find(ref)
    assert len(boxes) and (boxes[:, [0, 2]] <= 100).all() and (boxes[:, [1, 3]] <= 70).all()
    near = matcher.embed_reference(np.array([10, 10, 50, 50]))  # 40 px: 1.25x, at least 2x
    assert near["scale"] == 2.0 and calls[-1] == ("fine", 96, 128)  # the image as it is
    assert matcher.reference_extent(np.array([10, 10, 50, 50])) == 128 / 2 + 64  # fine's window
    big = matcher.embed_reference(np.array([0, 0, 60, 60]))     # large enough: the coarse one
    assert big["scale"] == 1.0 and calls[-1] == ("coarse", 96, 128)


def test_optimized_backbone_gives_the_same_features() -> None:
    import torch

    from napari_instanno.models.backbone import Backbone

    torch.manual_seed(0)
    net = Backbone(strides=(8, 16), pretrained=False).eval()
    for m in net.modules():                      # non-trivial BatchNorm statistics to fold
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        ref = net(x)
        fast = net.optimize_for_inference()(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    for s in (8, 16):
        torch.testing.assert_close(fast[s], ref[s], rtol=1e-4, atol=1e-4)


def test_resnet_backbone_strides_and_offline_weights(tmp_path, monkeypatch) -> None:
    from napari_instanno.models.backbone import Backbone

    net = Backbone(strides=(4, 8, 16, 32), pretrained=False, arch="resnet50")
    out = net(torch.rand(1, 3, 64, 64))
    assert {s: tuple(f.shape[1:]) for s, f in out.items()} == {
        4: (256, 16, 16), 8: (512, 8, 8), 16: (1024, 4, 4), 32: (2048, 2, 2)}
    assert net.channels == {4: 256, 8: 512, 16: 1024, 32: 2048}
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(InstannoError, match="resnet18-f37072fd.pth not found offline"):
        Backbone(arch="resnet18")
    with pytest.raises(ValueError, match="available: mobilenet_v2, resnet18"):
        Backbone(arch="vgg16")


def test_missing_weights_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(InstannoError, match="matcher weights not found"):
        LearnedMatcher(weights=tmp_path / "nope.safetensors")
    matcher = LearnedMatcher.__new__(LearnedMatcher)
    matcher.image = None
    matcher.min_reference_side, matcher.max_upscale, matcher.max_reference_side = 48.0, 4.0, 112.0
    matcher.shared_scale, matcher.fine = None, None
    with pytest.raises(InstannoError, match="no image set"):
        matcher.embed_reference(np.array([0, 0, 5, 5]))


def test_shipped_matcher_finds_half_to_twice_the_reference_size() -> None:
    """The reference size is a prior, not a constraint: discs of 0.5x-2x its radius rank first."""
    from napari_instanno.geometry import box_iou

    rng = np.random.default_rng(0)
    size, radii = 512, [8, 12, 16, 24, 32]
    img = rng.normal(0.15, 0.03, (size, size)).astype(np.float32)
    rr, cc = np.mgrid[:size, :size]
    discs = []
    for i, r in enumerate(radii * 3):
        row, col = divmod(i, len(radii))
        cy, cx = 60 + row * 150 + rng.uniform(-8, 8), 50 + col * 100 + rng.uniform(-5, 5)
        img[(rr - cy) ** 2 + (cc - cx) ** 2 <= r * r] += 0.6
        discs.append([cx - r, cy - r, cx + r, cy + r])
    matcher = LearnedMatcher()
    matcher.set_image(np.repeat(img.clip(0, 1)[..., None], 3, axis=2))
    boxes, scores = matcher.find(matcher.embed_reference(np.array(discs[2])))   # radius 16
    top = box_iou(np.array(discs), boxes[:len(discs)])
    assert (top.max(axis=1) >= 0.5).all(), top.max(axis=1).round(2)     # every disc, every size
    assert len(set(top.argmax(axis=1).tolist())) == len(discs)          # each by its own box


@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_reduced_precision_finds_the_same_nuclei_and_keeps_float32_references(precision) -> None:
    """float16 (the GPU fast path, emulated on the CPU) and bfloat16 autocast (the default on
    CPUs with AMX) give the float32 detections; their references are float32, so they work with
    a float32 matcher and on any device."""
    from napari_instanno.image import to_rgb01
    from napari_instanno.samples import nuclei_sample

    image, ref = nuclei_sample()
    rgb = to_rgb01(image)
    full, half = LearnedMatcher(precision="float32"), LearnedMatcher(precision=precision)
    for m in (full, half):
        m.set_image(rgb)
    b32, s32 = full.find(full.embed_reference(ref))
    r16 = half.embed_reference(ref)
    assert all(q.dtype == torch.float32 for q in r16["q"].values())
    b16, s16 = half.find(r16)
    k32, k16 = s32 >= 0.3, s16 >= 0.3
    assert k32.sum() >= 30 and abs(int(k32.sum()) - int(k16.sum())) <= 1
    iou = box_iou(b32[k32], b16[k16])
    assert (iou.max(axis=1) >= 0.9).mean() >= 0.98
    mixed = full.find(r16)[1]  # a float16-made reference in a float32 matcher
    assert abs(int((mixed >= 0.3).sum()) - int(k32.sum())) <= 1


def test_a_reference_too_large_even_downscaled_is_a_one_line_error() -> None:
    m = LearnedMatcher(precision="float32")
    m.set_image(np.zeros((2400, 2400, 3), np.float32))
    assert m.scale_for(np.array([0, 0, 440, 440.0])) == 0.25  # matched at 110 px: fine
    with pytest.raises(InstannoError, match="the reference is 1000 px across; .* up to 896 px "
                                            r"\(the image downscaled 4x\)") as err:
        m.embed_reference(np.array([100, 100, 1100, 1100.0]))
    assert "\n" not in str(err.value) and not m.features  # refused before any feature pass
