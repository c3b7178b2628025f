"""Tiled inference: seams and corners, lazy inputs, resume, cancel and failing tiles.

A 512 x 512 image of bright discs on dark, some centred exactly on the 128-pixel tile seams and on
corners where four tiles meet; ``ncc`` + ``otsu`` are exact on it, so tiled must equal untiled.
"""

from __future__ import annotations

import json
import shutil
import warnings

import dask.array as da
import numpy as np
import pytest
import torch
import zarr
from skimage.draw import disk

from napari_instanno.errors import InstannoError
from napari_instanno.geometry import box_iou, polygon_area, polygon_to_mask
from napari_instanno.image import to_rgb01
from napari_instanno.inference.annotator import Annotator
from napari_instanno.inference.baselines import NCCMatcher
from napari_instanno.inference.seams import plan_tiles, seam_nms
from napari_instanno.inference.sources import Source, as_source
from napari_instanno.inference.tiling import TilingInterrupted, batches, find_similar_tiled

SIZE, TILE, R = 512, 128, 8
VR = ([0.0] * 3, [255.0] * 3)
SEAM_CENTRES = [(128, 128), (256, 256), (384, 384), (128, 384), (384, 128),  # 4-tile corners
                (256, 60), (60, 256), (200, 384), (384, 200), (256, 470)]  # on seams


def _centres() -> list[tuple[int, int]]:
    rng = np.random.default_rng(0)
    out = list(SEAM_CENTRES)
    for y in range(20, SIZE - 10, 44):
        for x in range(20, SIZE - 10, 44):
            c = (y + int(rng.integers(-5, 6)), x + int(rng.integers(-5, 6)))
            if all((c[0] - k[0]) ** 2 + (c[1] - k[1]) ** 2 > (2 * R + 6) ** 2 for k in out):
                out.append(c)
    return out


CENTRES = _centres()
IMAGE = np.full((SIZE, SIZE), 20, np.uint8)
for _c in CENTRES:
    IMAGE[disk(_c, R, shape=IMAGE.shape)] = 200
REF_C = CENTRES[len(SEAM_CENTRES)]
REF = (REF_C[1] - R - 1, REF_C[0] - R - 1, REF_C[1] + R + 1, REF_C[0] + R + 1)

CALLS: list[tuple[int, int]] = []


class CountingNCC(NCCMatcher):
    """NCC that records every ``set_image`` (shared by the per-thread copies)."""

    def set_image(self, rgb: np.ndarray) -> None:
        CALLS.append(rgb.shape[:2])
        super().set_image(rgb)


class BatchedNCC(CountingNCC):
    """CountingNCC with ``find_batch``, so the tiler takes its batched path."""

    def find_batch(self, images: list[np.ndarray], reference) -> list:
        out = []
        for rgb in images:
            self.set_image(rgb)
            out.append(self.find(reference))
        return out


@pytest.fixture(scope="module")
def ann() -> Annotator:
    return Annotator(matcher="ncc", outliner="otsu", device="cpu")


@pytest.fixture(scope="module")
def untiled(ann):
    ann.set_image(IMAGE, value_range=VR)
    return ann.find_similar(REF)


def _match(a, b, shape=(SIZE, SIZE)) -> np.ndarray:
    """Mask IoU of each instance of ``a`` with its best box-match in ``b``; checks one-to-one."""
    assert len(a) == len(b), f"{len(a)} vs {len(b)} instances"
    best = box_iou(a.boxes, b.boxes).argmax(axis=1)
    assert len(set(best.tolist())) == len(best), "two instances matched the same one"
    ious = []
    for i, j in enumerate(best):
        ma, mb = polygon_to_mask(a.polygons[i], shape), polygon_to_mask(b.polygons[j], shape)
        ious.append((ma & mb).sum() / max((ma | mb).sum(), 1))
    return np.array(ious)


def _tiled(ann, image=IMAGE, **kw):
    kw.setdefault("tile_size", TILE)
    kw.setdefault("value_range", VR)
    return find_similar_tiled(ann, image, REF, **kw)


def test_tiles_partition_the_image():
    tiles = plan_tiles((300, 520), 128, 32)
    cover = np.zeros((300, 520), int)
    for t in tiles:
        y0, y1, x0, x1 = t.core
        cover[y0:y1, x0:x1] += 1
        wy0, wy1, wx0, wx1 = t.window
        assert (wy0, wx0) == (max(y0 - 32, 0), max(x0 - 32, 0))
        assert (wy1, wx1) == (min(y1 + 32, 300), min(x1 + 32, 520))
    assert (cover == 1).all() and len(tiles) == 3 * 5


def test_seam_nms_only_across_tiles():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [0.5, 0, 10.5, 10], [50, 50, 60, 60.0]])
    keep = seam_nms(boxes, np.array([0.9, 0.8, 0.95, 0.5]), np.array([0, 1, 0, 1]),
                    np.ones(4, bool), 0.5)
    # box 2 (tile 0, best) suppresses box 1 (tile 1); box 0 shares its tile and stays
    assert keep.tolist() == [True, False, True, True]


def test_seams_and_corners_match_untiled(ann, untiled):
    assert len(untiled) == len(CENTRES)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "objects reached a tile's edge" warning
        tiled = _tiled(ann)
    assert _match(tiled, untiled).min() >= 0.95
    full_area = np.pi * R**2
    for cy, cx in SEAM_CENTRES:  # exactly one whole object on each seam and corner
        hits = [i for i, p in enumerate(tiled.polygons)
                if polygon_to_mask(p, (SIZE, SIZE))[cy, cx]]
        assert len(hits) == 1, (cy, cx, len(hits))
        assert polygon_area(tiled.polygons[hits[0]]) > 0.9 * full_area


def test_threads_sync_and_default_value_range_agree(ann, untiled):
    a = _tiled(ann, scheduler="sync")
    b = _tiled(ann, scheduler="threads", workers=2, value_range=None)
    assert _match(a, untiled).min() >= 0.95 and _match(b, untiled).min() >= 0.95


def _record_reads(monkeypatch) -> list[int]:
    areas: list[int] = []
    orig = Source.read

    def read(self, y0, y1, x0, x1):
        areas.append((y1 - y0) * (x1 - x0))
        return orig(self, y0, y1, x0, x1)

    monkeypatch.setattr(Source, "read", read)
    return areas


def test_dask_irregular_chunks_read_window_by_window(ann, untiled, monkeypatch):
    lazy = da.from_array(IMAGE, chunks=((100, 200, 212), (50, 300, 162)))
    areas = _record_reads(monkeypatch)
    assert _match(_tiled(ann, lazy), untiled).min() >= 0.95
    assert max(areas) <= (TILE + 2 * 32) ** 2 < SIZE * SIZE


@pytest.mark.parametrize(("matcher", "batch_size"), [(CountingNCC, 1), (BatchedNCC, 4)])
def test_blank_windows_are_not_matched(matcher, batch_size, monkeypatch):
    """No-data (one value) right of x = 224: the tiles whose windows lie there whole are read but
    not matched, and the result is the same as matching them."""
    from napari_instanno.inference import tile_task

    image = IMAGE.copy()
    image[:, 224:] = 0
    counting = Annotator(matcher="ncc", outliner="otsu", device="cpu")
    counting.matcher = matcher()
    CALLS.clear()
    skipped = _tiled(counting, image, batch_size=batch_size, scheduler="sync")
    windows = [t.window for t in plan_tiles((SIZE, SIZE), TILE, 32)]
    matched = sum(w[2] < 224 for w in windows)  # windows reaching left of the no-data
    assert matched == 8 < len(windows)
    assert len(CALLS) == 1 + matched  # the reference's window, then only those
    monkeypatch.setattr(tile_task, "blank", lambda rgb: False)
    CALLS.clear()
    every = _tiled(counting, image, batch_size=batch_size, scheduler="sync")
    assert len(CALLS) == 1 + len(windows) and len(skipped) > 40
    np.testing.assert_array_equal(skipped.boxes, every.boxes)
    np.testing.assert_array_equal(skipped.scores, every.scores)


def test_value_sample_of_a_large_lazy_image_reads_few_windows(monkeypatch):
    areas = _record_reads(monkeypatch)
    big = da.zeros((8192, 8192), dtype=np.uint16, chunks=1024)
    lo, hi = as_source(big).value_range()
    assert sum(areas) <= 1_100_000 and len(areas) == 64


@pytest.mark.parametrize("fmt", [2, 3, "dask", "ome"])
def test_zarr_store_and_vanishing_store(ann, untiled, tmp_path, monkeypatch, fmt):
    path = tmp_path / f"img{fmt}.zarr"
    if fmt == "ome":
        g = zarr.open_group(str(path), mode="w")
        g.create_array("0", shape=IMAGE.shape, chunks=(64, 64), dtype="u1")[:] = IMAGE
        g.attrs["multiscales"] = [{"axes": ["y", "x"], "datasets": [{"path": "0"}]}]
    else:
        z = zarr.create_array(str(path), shape=IMAGE.shape, chunks=(64, 64), dtype="u1",
                              zarr_format=3 if fmt == "dask" else fmt)
        z[:] = IMAGE
    areas = _record_reads(monkeypatch)
    if fmt == "ome":
        arr = zarr.open_group(str(path), mode="r")
    elif fmt == "dask":
        arr = da.from_zarr(str(path))
    else:
        arr = zarr.open_array(str(path), mode="r")
    assert _match(_tiled(ann, arr), untiled).min() >= 0.95
    assert max(areas) <= (TILE + 2 * 32) ** 2

    def vanish(done, total):
        if done == 3:
            shutil.rmtree(path)

    ckpt = tmp_path / f"ckpt{fmt}"
    with pytest.raises(TilingInterrupted, match="disappeared") as info:
        _tiled(ann, arr, progress=vanish, checkpoint=ckpt, workers=1)
    kept = len(list((ckpt / "tiles").glob("*.npz")))
    assert kept == 3 and 0 < len(info.value.partial) < len(untiled)


def test_ome_zarr_multiscale_levels(ann, untiled, tmp_path):
    g = zarr.open_group(str(tmp_path / "ome.zarr"), mode="w")
    g.create_array("0", shape=IMAGE.shape, chunks=(64, 64), dtype="u1")[:] = IMAGE
    g.create_array("1", shape=(256, 256), chunks=(64, 64), dtype="u1")[:] = IMAGE[::2, ::2]
    g.attrs["multiscales"] = [{"axes": [{"name": "y"}, {"name": "x"}],
                               "datasets": [{"path": "0"}, {"path": "1"}]}]
    src = as_source(g)
    assert src.shape == (SIZE, SIZE) and src.overview is not None
    assert src.sample().shape == (256, 256)
    assert _match(_tiled(ann, g, value_range=None), untiled).min() >= 0.95
    low = find_similar_tiled(ann, g, np.array(REF) / 2, level=1, tile_size=64, value_range=VR)
    assert abs(len(low) - len(untiled)) <= 2


def test_tiff_and_geotiff_windows(ann, untiled, tmp_path):
    import rasterio
    import tifffile
    from rasterio.transform import from_origin

    tif = tmp_path / "img.tif"
    tifffile.imwrite(tif, IMAGE, tile=(64, 64))
    assert _match(_tiled(ann, str(tif)), untiled).min() >= 0.95
    geo = tmp_path / "geo.tif"
    with rasterio.open(geo, "w", driver="GTiff", height=SIZE, width=SIZE, count=1, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(500000, 4e6, 10, 10),
                       tiled=True, blockxsize=64, blockysize=64) as ds:
        ds.write(IMAGE, 1)
    with rasterio.open(geo) as ds:
        assert _match(_tiled(ann, ds), untiled).min() >= 0.95


def test_six_channels_use_the_first_three(ann, untiled, tmp_path, monkeypatch):
    import rasterio

    # the discs in channels 0-2, other patterns in channels 3-5 (to_rgb01 uses the first three)
    noise = np.random.default_rng(3).integers(0, 255, (SIZE, SIZE), dtype=np.uint8)
    six = np.stack([IMAGE, IMAGE, IMAGE, noise, 255 - IMAGE, noise], axis=-1)
    assert as_source(six).read(0, 8, 0, 8).shape == (8, 8, 3)
    assert _match(_tiled(ann, six, value_range=None), untiled).min() >= 0.95
    areas = _record_reads(monkeypatch)
    lazy = da.from_array(six, chunks=(100, 100, 2))
    assert _match(_tiled(ann, lazy), untiled).min() >= 0.95
    assert max(areas) <= (TILE + 2 * 32) ** 2
    geo = tmp_path / "six.tif"
    with rasterio.open(geo, "w", driver="GTiff", height=SIZE, width=SIZE, count=6,
                       dtype="uint8", crs="EPSG:32633",
                       transform=rasterio.Affine(10, 0, 5e5, 0, -10, 4e6)) as ds:
        ds.write(np.moveaxis(six, -1, 0))
    with rasterio.open(geo) as ds:
        assert _match(_tiled(ann, ds), untiled).min() >= 0.95
    with pytest.raises(InstannoError, match="pick one plane"):
        as_source(np.zeros((10, 64, 64)))  # a (Z, H, W) stack, not 64 channels


def test_cancel_then_resume_skips_finished_tiles(untiled, tmp_path):
    ann = Annotator(matcher="ncc", outliner="otsu", device="cpu")
    ann.matcher = CountingNCC()
    ckpt = tmp_path / "ckpt"
    seen: list[tuple[int, int]] = []
    CALLS.clear()
    part = _tiled(ann, checkpoint=ckpt, workers=1, progress=lambda d, t: seen.append((d, t)),
                  cancel=lambda: len(seen) > 5)
    done = len(list((ckpt / "tiles").glob("*.npz")))
    assert done == 5 and seen[-1] == (5, 16) and len(CALLS) == 1 + 5
    assert 0 < len(part) < len(untiled)
    assert set(map(tuple, part.boxes.round(3).tolist())) <= set(
        map(tuple, untiled.boxes.round(3).tolist()))
    CALLS.clear()
    full = _tiled(ann, checkpoint=ckpt, workers=2)
    assert len(CALLS) == 1 + 16 - done  # the reference tile, then only the missing tiles
    assert _match(full, untiled).min() >= 0.95
    with pytest.raises(InstannoError, match="another run"):
        _tiled(ann, checkpoint=ckpt, tile_size=256)


def test_cancel_before_start_returns_nothing(ann):
    out = _tiled(ann, cancel=lambda: True)
    assert len(out) == 0


class RaisesOnTile(NCCMatcher):
    """Raises for one window (recognised by its exact pixels) with a chosen message."""

    bad: np.ndarray | None = None
    message = "sensor glitch"

    def find(self, reference):
        if self.bad is not None and self.gray.shape == self.bad.shape \
                and np.array_equal(self.gray, self.bad):
            raise RuntimeError(self.message)
        return super().find(reference)


def _gray(window):
    y0, y1, x0, x1 = window
    return to_rgb01(IMAGE[y0:y1, x0:x1], VR).mean(axis=2)


def test_a_failing_tile_is_reported_and_retried_on_resume(untiled, tmp_path):
    ann = Annotator(matcher="ncc", outliner="otsu", device="cpu")
    tile = plan_tiles((SIZE, SIZE), TILE, 32)[6]
    ann.matcher = RaisesOnTile()
    ann.matcher.bad = _gray(tile.window)
    ckpt = tmp_path / "ckpt"
    with pytest.warns(UserWarning, match="1 of 16 tiles failed .*sensor glitch"):
        out = _tiled(ann, checkpoint=ckpt)
    assert len(list((ckpt / "tiles").glob("*.npz"))) == 15
    assert 0 < len(untiled) - len(out) <= 12
    ann.matcher.bad = None
    assert _match(_tiled(ann, checkpoint=ckpt), untiled).min() >= 0.95


def test_out_of_memory_tile_is_split(untiled):
    class SmallOnly(NCCMatcher):
        def find(self, reference):
            if min(self.gray.shape) > 150:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return super().find(reference)

    ann = Annotator(matcher="ncc", outliner="otsu", device="cpu")
    ann.matcher = SmallOnly()
    with pytest.warns(UserWarning, match="out of memory; retrying it as four smaller tiles"):
        out = _tiled(ann)
    assert _match(out, untiled).min() >= 0.95


def test_out_of_memory_on_the_gpu_even_when_split_runs_on_the_cpu(untiled):
    class GpuFull(NCCMatcher):
        device = "cuda"

        def to(self, device):
            self.device = device
            return self

        def find(self, reference):
            if self.device != "cpu":
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 MiB")
            return super().find(reference)

    ann = Annotator(matcher="ncc", outliner="otsu", device="cpu")
    ann.matcher = GpuFull()
    with pytest.warns(UserWarning, match="out of memory even when split; retrying it on the CPU"):
        out = _tiled(ann, workers=1)
    assert _match(out, untiled).min() >= 0.95


def test_distributed_client(ann, untiled):
    distributed = pytest.importorskip("distributed")
    with distributed.Client(processes=False, n_workers=1, threads_per_worker=2,
                            dashboard_address=None) as client:
        assert _match(_tiled(ann, scheduler=client), untiled).min() >= 0.95


def test_bad_input(ann):
    with pytest.raises(InstannoError, match="outside"):
        find_similar_tiled(ann, IMAGE, (600, 600, 620, 620))
    with pytest.raises(InstannoError, match="2D plane"):
        find_similar_tiled(ann, np.zeros((4, 64, 64, 5)), (1, 1, 5, 5))
    with pytest.raises(InstannoError, match="scheduler"):
        _tiled(ann, scheduler=42)


def test_table_stream_and_exports(ann, untiled, tmp_path):
    from napari_instanno.io.coco import read_coco
    from napari_instanno.io.geojson import read_geojson
    from napari_instanno.io.table import read_table, table_to_coco, table_to_geojson

    table = tmp_path / "out.parquet"
    assert len(_tiled(ann, table=table, collect=False)) == 0
    back = read_table(table)
    assert _match(back, untiled).min() >= 0.95
    gj = table_to_geojson(table, tmp_path / "out.geojson")
    assert len(read_geojson(gj)) == len(untiled)
    coco = table_to_coco(table, tmp_path / "out.json", {"height": SIZE, "width": SIZE})
    assert len(read_coco(coco)[0][1]) == len(untiled)
    assert json.loads(coco.read_text())["categories"][0]["name"] == "object"


@pytest.fixture(scope="module")
def learned():
    """The shipped models in float32 (the tiling logic must give the same numbers; reduced
    precision: ``test_learned_tiled_agree_in_the_default_precision``), the nuclei sample (small
    nuclei: the matcher upscales) and its whole-image result."""
    from napari_instanno.samples import nuclei_sample

    image, ref = nuclei_sample()
    ann = Annotator(matcher="learned", outliner="learned", device="cpu", precision="float32")
    assert ann.matcher.scale_for(ref) > 1
    untiled = ann.set_image(image).find_similar(ref, score_threshold=0.5)
    assert len(untiled) >= 10
    return ann, image, ref, untiled


def test_learned_models_tiled_agree_with_untiled(learned, monkeypatch):
    """The shipped matcher upscales this sample's small nuclei; tiles must still see the same
    features (origins on the upscaled feature grid, attention peak fixed near the reference)."""
    from napari_instanno.inference import policy

    ann, image, ref, untiled = learned
    tiled = find_similar_tiled(ann, image, ref, tile_size=96, score_threshold=0.5, workers=1)
    assert _match(untiled, tiled, image.shape[:2]).min() >= 0.95
    # above the pixel budget, find_similar itself goes through tiles, with the same result
    monkeypatch.setattr(policy, "MAX_MATCH_PIXELS", 200 * 200)
    reads = _record_reads(monkeypatch)
    auto = ann.find_similar(ref, score_threshold=0.5)
    assert len(reads) >= 2 and _match(untiled, auto, image.shape[:2]).min() >= 0.95


def test_learned_tiled_agree_where_the_model_sees_the_image_at_a_fractional_scale(learned):
    """A smaller reference: the model sees the image at 1.5x (the fine matcher) or 2.75x (the
    stride-8 one alone); tile origins must still fall on its feature grid."""
    ann, image, ref, _ = learned
    small = np.asarray(ref, float) + [3, 3, -3, -3]  # about 14 px
    assert ann.matcher.image_scale(small) in (1.5, 2.75)
    untiled = ann.set_image(image).find_similar(small, score_threshold=0.5)
    tiled = find_similar_tiled(ann, image, small, tile_size=96, score_threshold=0.5, workers=1)
    assert len(untiled) >= 10 and _match(untiled, tiled, image.shape[:2]).min() >= 0.95


def test_learned_tiled_agree_in_the_default_precision(learned):
    """In the default precision (bfloat16 on CPUs with AMX) rounding differs between a tile and
    the whole image: the same instances, outlines within a few pixels."""
    _, image, ref, _ = learned
    ann = Annotator(matcher="learned", outliner="learned", device="cpu")
    untiled = ann.set_image(image).find_similar(ref, score_threshold=0.5)
    tiled = find_similar_tiled(ann, image, ref, tile_size=96, score_threshold=0.5, workers=1)
    ious = _match(untiled, tiled, image.shape[:2])
    assert ious.mean() >= 0.98 and ious.min() >= 0.9


def test_batches_stack_only_windows_of_one_shape():
    tiles = plan_tiles((300, 250), 64, 32)
    groups = batches(tiles, 4)
    assert sorted(t.index for g in groups for t in g) == list(range(len(tiles)))
    assert max(len(g) for g in groups) == 4 and len(groups) < len(tiles)
    for g in groups:
        assert len({(t.window[1] - t.window[0], t.window[3] - t.window[2]) for t in g}) == 1
    assert [len(g) for g in batches(tiles, 1)] == [1] * len(tiles)


def test_learned_batched_tiles_agree_and_fall_back_on_out_of_memory(learned, monkeypatch):
    """Tiles matched in batches (as on a GPU) give the one-by-one result; a batch that runs out
    of memory is redone tile by tile, and the run says so."""
    from napari_instanno.inference.learned_matcher import LearnedMatcher

    ann, image, ref, _ = learned
    sizes: list[int] = []  # 64-px tiles: the four inner windows have one shape
    find_batch = LearnedMatcher.find_batch

    def spy(self, images, reference):
        sizes.append(len(images))
        return find_batch(self, images, reference)

    monkeypatch.setattr(LearnedMatcher, "find_batch", spy)
    one = find_similar_tiled(ann, image, ref, tile_size=64, score_threshold=0.5, workers=1,
                             batch_size=1)
    assert sizes == []
    batched = find_similar_tiled(ann, image, ref, tile_size=64, score_threshold=0.5, workers=2,
                                 batch_size=4)
    assert max(sizes) == 4
    assert len(batched) == len(one) and _match(one, batched, image.shape[:2]).min() >= 0.99
    np.testing.assert_allclose(batched.scores, one.scores, atol=1e-4)

    def out_of_memory(self, images, reference):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")

    monkeypatch.setattr(LearnedMatcher, "find_batch", out_of_memory)
    with pytest.warns(UserWarning, match="batch of 4 tiles ran out of memory; running them one"):
        again = find_similar_tiled(ann, image, ref, tile_size=64, score_threshold=0.5,
                                   workers=1, batch_size=4)
    assert len(again) == len(one) and _match(one, again, image.shape[:2]).min() >= 0.99
