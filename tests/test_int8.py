"""The matcher's int8 backbone layers (``models.int8``): same nuclei as float32, portable."""

from __future__ import annotations

import copy
import json
import os
import pickle
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from napari_instanno.geometry import box_iou
from napari_instanno.image import to_rgb01
from napari_instanno.inference.learned_matcher import LearnedMatcher
from napari_instanno.inference.precision import uses_int8
from napari_instanno.models import int8
from napari_instanno.models.weights import shipped_path
from napari_instanno.samples import nuclei_sample

pytestmark = pytest.mark.skipif(not int8.available(), reason="PyTorch quantises for x86 only")


def test_the_default_matcher_uses_int8_where_the_precision_rule_says() -> None:
    assert LearnedMatcher().int8 == uses_int8("cpu", "auto")
    assert not LearnedMatcher(precision="float32").int8
    assert not uses_int8("cuda", "auto") and not uses_int8("cpu", "bfloat16")


def test_int8_layers_find_the_nuclei_float32_finds() -> None:
    image, ref = nuclei_sample()
    rgb = to_rgb01(np.tile(image, (2, 2)))  # 512², seen at 2x: 1 MPix, so int8
    full, low = LearnedMatcher(precision="float32"), LearnedMatcher(precision="float32")
    assert int8.quantize_body(low.model.backbone.body, shipped_path("matcher"))
    assert isinstance(low.model.backbone.body[int8.SPANS[0][0]], int8.Int8Layers)
    found = []
    for m in (full, low):
        m.set_image(rgb)
        b, s = m.find(m.embed_reference(ref))
        found.append(b[s >= 0.3])
    (b32, b8) = found
    # (dsb2018/val AP50 0.868 float32, 0.867 int8: models/matcher.md)
    assert len(b32) >= 30 and abs(len(b32) - len(b8)) <= max(2, 0.02 * len(b32))
    assert (box_iou(b32, b8).max(axis=1) >= 0.7).mean() >= 0.95


@pytest.mark.parametrize(("start", "stop", "stride"), int8.SPANS)
def test_only_large_images_run_in_int8(start: int, stop: int, stride: int) -> None:
    m = LearnedMatcher(precision="float32")
    span = nn.Sequential(*m.model.backbone.body[start:stop])
    cal = json.loads(int8.calibration_path(shipped_path("matcher")).read_text())
    layers = int8.Int8Layers(span, cal["spans"][int8.span_key(start, stop)], stride)
    side = int(np.ceil(np.sqrt(int8.INT8_PIXELS))) // stride
    channels = next(c for c in span.modules() if isinstance(c, nn.Conv2d)).in_channels
    with torch.inference_mode():
        for n, is_int8 in ((side - 8, False), (side, True)):  # a reference crop, an image
            x = torch.rand(1, channels, n, n)
            want, got = span(x), layers(x)
            assert torch.equal(want, got) != is_int8
            assert ((got - want).norm() / want.norm()) < 0.3


def test_int8_layers_pickle_and_copy_as_float_layers_and_ranges() -> None:
    m = LearnedMatcher(precision="float32")
    assert int8.quantize_body(m.model.backbone.body, shipped_path("matcher"))
    x = torch.rand(1, 3, 1024, 1024)
    with torch.inference_mode():
        want = m.model.backbone(x)
        for other in (pickle.loads(pickle.dumps(m.model)), copy.deepcopy(m.model)):
            for start, _, stride in int8.SPANS:
                span = other.backbone.body[start]
                assert isinstance(span, int8.Int8Layers) and span.input_stride == stride
                assert span.qparams == m.model.backbone.body[start].qparams
            got = other.backbone(x)
            assert torch.equal(got[8], want[8]) and torch.equal(got[16], want[16])


def test_a_calibration_for_other_weights_or_layers_is_not_used(tmp_path) -> None:
    weights = tmp_path / "matcher.safetensors"
    shutil.copy(shipped_path("matcher"), weights)
    shipped = json.loads(int8.calibration_path(shipped_path("matcher")).read_text())
    body = LearnedMatcher(precision="float32").model.backbone.body
    cases = {"other weights": {**shipped, "weights_sha256": "0" * 64},
             "other layers": {**shipped, "spans": {k: dict(list(v.items())[:-1])
                                                   for k, v in shipped["spans"].items()}}}
    for case in cases.values():
        int8.calibration_path(weights).write_text(json.dumps(case))
        assert not int8.quantize_body(body, weights)
    assert not any(isinstance(layer, int8.Int8Layers) for layer in body)
    int8.calibration_path(weights).write_text(json.dumps(shipped))  # the same bytes: used
    assert int8.quantize_body(body, weights)
    for start, stop, _ in int8.SPANS:
        assert isinstance(body[start], int8.Int8Layers)
        assert body[start].qparams == shipped["spans"][int8.span_key(start, stop)]


def _span_and_qparams() -> tuple[nn.Module, dict]:
    m = LearnedMatcher(precision="float32")
    span = nn.Sequential(*m.model.backbone.body[int8.SPANS[0][0]:int8.SPANS[0][1]])
    return span, json.loads(int8.calibration_path(shipped_path("matcher")).read_text())["spans"]["2-7"]


def test_int8_layers_are_kept_in_the_cache_and_later_loaded_without_tracing(
        tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(int8.CACHE_ENV, str(tmp_path / "cache"))
    span, qparams = _span_and_qparams()
    x = torch.rand(1, 16, 512, 512)
    with torch.inference_mode():
        want = int8.Int8Layers(span, qparams)(x)
        kept = list((tmp_path / "cache").glob("int8-*.pt"))
        assert len(kept) == 1 and not list((tmp_path / "cache").glob(".*"))

        def no_tracing(*_):
            raise AssertionError("traced again")

        monkeypatch.setattr(int8, "quantized", no_tracing)
        assert torch.equal(int8.Int8Layers(span, qparams)(x), want)
        other = {k: [v[0] * 1.5, v[1]] for k, v in qparams.items()}  # other ranges: not this file
        with pytest.raises(AssertionError, match="traced again"):
            int8.Int8Layers(span, other)


def test_the_cache_keeps_the_most_recently_used_modules(tmp_path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv(int8.CACHE_ENV, str(cache))
    monkeypatch.setattr(int8, "CACHE_KEEP", 3)
    old = [cache / f"int8-{i:032d}.pt" for i in range(4)]
    for age, path in enumerate(old):  # old[0] used last, old[3] longest ago
        path.write_bytes(b"an earlier model's module")
        os.utime(path, (1e9 - age * 1e5, 1e9 - age * 1e5))
    span, qparams = _span_and_qparams()
    int8.Int8Layers(span, qparams)  # a new module: quantised and kept, the oldest two go
    (new,) = set(cache.glob("int8-*.pt")) - set(old)
    assert sorted(cache.glob("int8-*.pt")) == sorted([new, old[0], old[1]])
    os.utime(new, (1e8, 1e8))  # as if it were used long ago: loading it marks it used now
    int8.Int8Layers(span, qparams)
    assert new.stat().st_mtime > old[0].stat().st_mtime and new.is_file()


def test_a_damaged_or_unwritable_cache_quantises_again(tmp_path, monkeypatch) -> None:
    span, qparams = _span_and_qparams()
    x = torch.rand(1, 16, 512, 512)
    monkeypatch.setenv(int8.CACHE_ENV, str(tmp_path / "cache"))
    with torch.inference_mode():
        want = int8.Int8Layers(span, qparams)(x)
        (kept,) = (tmp_path / "cache").glob("int8-*.pt")
        kept.write_bytes(b"not a TorchScript file")
        assert torch.equal(int8.Int8Layers(span, qparams)(x), want)
        assert kept.read_bytes() != b"not a TorchScript file"  # replaced by a good one
        blocker = tmp_path / "a file"
        blocker.write_text("")
        monkeypatch.setenv(int8.CACHE_ENV, str(blocker / "cache"))  # cannot be made
        assert torch.equal(int8.Int8Layers(span, qparams)(x), want)


def test_an_unpickled_matcher_gets_its_int8_layers_without_tracing(tmp_path, monkeypatch) -> None:
    """A dask worker on another machine (an empty cache) may run the matcher in another thread
    while it unpickles a copy: tracing there must not happen."""
    m = LearnedMatcher(precision="float32")
    assert int8.quantize_body(m.model.backbone.body, shipped_path("matcher"))
    data = pickle.dumps(m.model)
    monkeypatch.setenv(int8.CACHE_ENV, str(tmp_path / "empty"))

    def no_tracing(*_):
        raise AssertionError("traced")

    monkeypatch.setattr(int8, "quantized", no_tracing)
    x = torch.rand(1, 3, 1024, 1024)
    with torch.inference_mode():
        got, want = pickle.loads(data).backbone(x), m.model.backbone(x)
        assert torch.equal(got[8], want[8]) and torch.equal(got[16], want[16])
