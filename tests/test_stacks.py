"""Stacks, time-lapses and series: one reference for every plane, tracks across planes.

Synthetic time-lapses (``stack_scenes``: soft discs drifting, appearing, disappearing) with
``ncc`` + ``otsu`` where the behaviour is the run's own, the shipped models where the targets are
about them, and a time-lapse of shifted crops of the nuclei sample.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import shapely
import zarr
from PIL import Image

from napari_instanno.errors import InstannoError
from napari_instanno.image import clip_boxes, to_rgb01
from napari_instanno.inference.annotator import Annotator
from napari_instanno.inference.baselines import NCCMatcher
from napari_instanno.inference.stacks import StackInterrupted, plane_order
from napari_instanno.inference.tracks import link_tracks
from napari_instanno.io.stacks import arrange_axes, open_series
from napari_instanno.samples import nuclei_sample

from .stack_scenes import drifting_discs, reference_box, score

PLANES = 12
STACK, DISCS = drifting_discs(planes=PLANES, n=20, drift=1.5)
REF = reference_box(DISCS[0])
CALLS: list[str] = []


class CountingNCC(NCCMatcher):
    """NCC recording each ``set_image`` and ``embed_reference``."""

    def set_image(self, rgb: np.ndarray) -> None:
        CALLS.append("image")
        super().set_image(rgb)

    def embed_reference(self, ref_box: np.ndarray) -> np.ndarray:
        CALLS.append("embed")
        return super().embed_reference(ref_box)


def _ann(counting: bool = False) -> Annotator:
    ann = Annotator(matcher="ncc", outliner="otsu", device="cpu")
    if counting:
        ann.matcher = CountingNCC()
    return ann


@pytest.fixture(scope="module")
def ncc_run():
    return _ann().find_similar_stack(STACK, REF, 0, score_threshold=0.3)


def _box(geom: shapely.Geometry) -> tuple:
    return tuple(np.round(geom.bounds, 3))


# --- the targets ---------------------------------------------------------------------------
def test_drifting_discs_found_on_every_plane_under_one_track(ncc_run):
    s = score(ncc_run, DISCS, PLANES)
    assert s.found.min() >= 0.95 and s.one_track >= 0.95 and s.extra <= 2
    assert ncc_run.properties["plane"].dtype == np.int64
    assert ncc_run.properties["track_id"].dtype == np.int64


def test_drifting_discs_with_the_shipped_models():
    ann = Annotator(device="cpu")
    inst = ann.find_similar_stack(STACK, REF, 0, score_threshold=0.3)
    s = score(inst, DISCS, PLANES)
    assert s.found.min() >= 0.95 and s.one_track >= 0.95


def test_each_plane_equals_a_single_image_run_with_the_reference_from_plane_0(ncc_run):
    ncc, ann = NCCMatcher(), _ann()
    ncc.set_image(to_rgb01(STACK[0]))
    reference = ncc.embed_reference(REF)
    for k in (0, 5, PLANES - 1):
        ncc.set_image(to_rgb01(STACK[k]))
        boxes, scores = ncc.find(reference)
        ann.set_image(STACK[k])
        single = ann.boxes_to_polygons(clip_boxes(boxes[scores >= 0.3], (0, 0, 192, 192)))
        mine = ncc_run[ncc_run.properties["plane"] == k]
        assert sorted(_box(g) for g in mine.geometries) == sorted(
            _box(shapely.Polygon(p[:, ::-1])) for p in single)


def test_reference_embedded_once_and_each_plane_set_once():
    CALLS.clear()
    _ann(counting=True).find_similar_stack(STACK[:5], REF, 2)
    assert CALLS.count("embed") == 1
    assert CALLS.count("image") == 5  # the reference plane's features serve its own run too


def test_appearing_and_disappearing_discs_start_and_end_tracks():
    stack, discs = drifting_discs(planes=PLANES, n=16, coming_going=6, seed=3)
    inst = _ann().find_similar_stack(stack, reference_box(discs[0]), 0, score_threshold=0.3)
    s = score(inst, discs, PLANES)
    assert s.found.min() >= 0.95 and s.one_track >= 0.95
    tracks = inst.properties["track_id"]
    assert len(np.unique(tracks)) == len(discs) + s.extra
    plane = inst.properties["plane"]
    real = [t for t in np.unique(tracks) if inst.scores[tracks == t].max() >= 0.5]  # not border noise
    assert len(real) == len(discs)
    assert sorted(int(plane[tracks == t].min()) for t in real) == sorted(d.first for d in discs)
    assert sorted(int(plane[tracks == t].max()) for t in real) == sorted(d.last for d in discs)


def test_a_shifted_crop_time_lapse_of_real_nuclei_matches_single_image_runs():
    image, ref = nuclei_sample()
    side, c0 = 200, 50  # crop origins (k, c0 - 2k): the nuclei move 2 px right, 1 px up a plane
    crops = np.stack([image[k:k + side, c0 - 2 * k:c0 - 2 * k + side] for k in range(6)])
    ref = ref - [c0, 0, c0, 0]
    ann = Annotator(matcher="ncc", outliner="otsu", device="cpu")
    inst = ann.find_similar_stack(crops, ref, 0, score_threshold=0.3)
    counts = np.bincount(inst.properties["plane"], minlength=len(crops))
    ann.set_image(crops[0])
    single = len(ann.find_similar(ref, score_threshold=0.3))
    assert counts[0] == single and counts.min() >= 0.8 * single
    # an object seen on every plane keeps its id: the interior nuclei are most of the tracks
    tracks, sizes = np.unique(inst.properties["track_id"], return_counts=True)
    assert (sizes == len(crops)).sum() >= 0.6 * counts.mean()
    for t in tracks[sizes == len(crops)][:5]:  # one track follows one nucleus as the crop moves
        g = inst.geometries[inst.properties["track_id"] == t]
        centres = np.array([[c.x, c.y] for c in shapely.centroid(g)])
        steps = np.diff(centres, axis=0)
        assert np.allclose(steps, [2, -1], atol=1.5)


# --- inputs --------------------------------------------------------------------------------
def test_numpy_dask_zarr_and_axes_agree(ncc_run, tmp_path):
    small = STACK[:4]
    want = sorted(_box(g) for g in ncc_run[ncc_run.properties["plane"] < 4].geometries)
    z = zarr.create_array(str(tmp_path / "s.zarr"), shape=small.shape, chunks=(1, 64, 64),
                          dtype=small.dtype)
    z[:] = small
    inputs = [(da.from_array(small, chunks=(1, 96, 96)), None), (z, None),
              (str(tmp_path / "s.zarr"), None), (small.transpose(1, 2, 0), "YXT"),
              (small[:, :, :, None].repeat(3, 3), "ZYXC"), (small[:, None], "TCYX")]
    for arr, axes in inputs:
        inst = _ann().find_similar_stack(arr, REF, 0, axes=axes, score_threshold=0.3)
        assert sorted(_box(g) for g in inst.geometries) == want, axes


def test_axes_errors_are_one_line():
    four = np.zeros((3, 2, 32, 32))
    for arr, axes, match in [(four, None, "4 dimensions.*--axes"), (four, "TZYX", "both T and Z"),
                             (four, "TYX", "do not fit"), (four[0, 0], None, "one 2D image"),
                             (four, "TQYX", "do not fit"),
                             (np.zeros((3, 8, 8)), "CYX", "no plane axis")]:
        with pytest.raises(InstannoError, match=match):
            arrange_axes(arr, axes)
    assert arrange_axes(np.zeros((1, 5, 8, 9)), "TZYX").shape == (5, 8, 9)
    assert arrange_axes(np.zeros((1, 1, 8, 9)), "TZYX").shape == (1, 8, 9)
    assert arrange_axes(four, "CZYX").shape == (2, 32, 32, 3)


def test_reference_plane_out_of_range():
    for k in (PLANES, -1):
        with pytest.raises(InstannoError, match=f"reference plane {k} is out of range.*0 to 11"):
            _ann().find_similar_stack(STACK, REF, k)


def _series(folder, stack, names=None):
    folder.mkdir(exist_ok=True)
    for k, plane in enumerate(stack):
        Image.fromarray(plane).save(folder / (names[k] if names else f"t{k}.png"))
    return folder


def test_series_of_files_in_natural_order_with_the_reference_from_another_image(tmp_path):
    names = [f"img{k}.png" for k in range(1, 6)]  # img1 .. img5: natural order, not img1, img10
    folder = _series(tmp_path / "series", STACK[1:6], names)
    Image.fromarray(STACK[0]).save(tmp_path / "ref.png")
    assert [p.rsplit("/", 1)[-1] for p in open_series(folder).sources] == names
    for spec in (folder, f"{folder}/*.png"):
        inst = _ann().find_similar_stack(spec, REF, ref_image=tmp_path / "ref.png",
                                         score_threshold=0.3)
        assert np.bincount(inst.properties["plane"]).tolist() == [20] * 5
        assert len(np.unique(inst.properties["track_id"])) == 20


def test_unreadable_files_are_skipped_with_one_warning_the_rest_done(tmp_path):
    folder = _series(tmp_path / "series", STACK[:5])
    (folder / "t2.png").write_bytes(b"not a png")
    (folder / "t3.png").write_bytes(b"")
    with pytest.warns(UserWarning, match=r"skipped 2 plane\(s\).*t2.png.*t3.png.*3 of 5 planes"):
        inst = _ann().find_similar_stack(folder, REF, 0, score_threshold=0.3)
    assert np.bincount(inst.properties["plane"]).tolist() == [20, 20, 0, 0, 20]


def test_planes_of_different_sizes_are_annotated_but_not_linked(tmp_path):
    folder = _series(tmp_path / "series", [STACK[0], STACK[1][:150, :160], STACK[2]])
    with pytest.warns(UserWarning, match=r"differ in size.*not linked"):
        inst = _ann().find_similar_stack(folder, REF, 0, score_threshold=0.3)
    assert len(set(inst.properties["plane"].tolist())) == 3
    assert len(np.unique(inst.properties["track_id"])) == len(inst)


# --- cancel, interrupt, resume -------------------------------------------------------------
def test_cancel_keeps_finished_planes_and_a_checkpoint_resumes(ncc_run, tmp_path):
    seen = []
    with pytest.warns(UserWarning, match="cancelled: 4 of 12 planes done.*rerun with it"):
        part = _ann(counting=True).find_similar_stack(
            STACK, REF, 0, score_threshold=0.3, checkpoint=tmp_path / "ck",
            progress=lambda d, t: seen.append((d, t)), cancel=lambda: len(seen) > 4)
    assert seen[0] == (0, 12) and seen[-1] == (4, 12)
    assert sorted(set(part.properties["plane"].tolist())) == [0, 1, 2, 3]
    CALLS.clear()
    full = _ann(counting=True).find_similar_stack(STACK, REF, 0, score_threshold=0.3,
                                                  checkpoint=tmp_path / "ck")
    assert CALLS.count("image") == 1 + 8  # the reference plane, then only the missing planes
    assert sorted(_box(g) for g in full.geometries) == sorted(_box(g) for g in ncc_run.geometries)
    assert (full.properties["track_id"] == ncc_run.properties["track_id"]).all()
    with pytest.raises(InstannoError, match="another run"):
        _ann(counting=True).find_similar_stack(STACK, REF, 1, checkpoint=tmp_path / "ck")


def test_ctrl_c_stops_with_the_finished_planes():
    class Interrupts(NCCMatcher):
        calls = 0

        def set_image(self, rgb):
            Interrupts.calls += 1
            if Interrupts.calls == 4:
                raise KeyboardInterrupt
            super().set_image(rgb)

    ann = _ann()
    ann.matcher = Interrupts()
    with pytest.raises(StackInterrupted, match="interrupted: 3 of 12 planes done") as err:
        ann.find_similar_stack(STACK, REF, 0, score_threshold=0.3)
    assert sorted(set(err.value.partial.properties["plane"].tolist())) == [0, 1, 2]


def test_reseeding_follows_growing_discs_that_a_fixed_template_loses():
    stack, discs = drifting_discs(planes=PLANES, n=20, growth=0.5, size=256)
    ref = reference_box(discs[0])
    fixed = score(_ann().find_similar_stack(stack, ref, 0, score_threshold=0.3), discs, PLANES)
    seeded = score(_ann().find_similar_stack(stack, ref, 0, score_threshold=0.3, reseed=True),
                   discs, PLANES)
    assert fixed.found.min() < 0.8 and fixed.found[0] == 1.0
    assert seeded.found.min() >= 0.95 and seeded.one_track >= 0.95


def test_a_reseeded_run_resumes_from_its_checkpoint(tmp_path):
    stack, discs = drifting_discs(planes=PLANES, n=20, growth=0.5, size=256)
    ref, seen = reference_box(discs[0]), []
    with pytest.warns(UserWarning, match="cancelled"):
        _ann().find_similar_stack(stack, ref, 0, score_threshold=0.3, reseed=True,
                                  checkpoint=tmp_path / "ck", progress=lambda d, t: seen.append(d),
                                  cancel=lambda: len(seen) > 6)
    resumed = _ann().find_similar_stack(stack, ref, 0, score_threshold=0.3, reseed=True,
                                        checkpoint=tmp_path / "ck")
    s = score(resumed, discs, PLANES)
    assert s.found.min() >= 0.95 and s.one_track >= 0.95


def test_reference_plane_in_the_middle_runs_outwards_and_seeds_both_ways():
    assert plane_order(5, 2) == [2, 3, 4, 1, 0]
    stack, discs = drifting_discs(planes=PLANES, n=20, growth=0.5, size=256)
    (r, c), rad = discs[0].at(6)
    ref = np.array([c - rad - 2, r - rad - 2, c + rad + 2, r + rad + 2])
    s = score(_ann().find_similar_stack(stack, ref, 6, score_threshold=0.3, reseed=True), discs,
              PLANES)
    assert s.found.min() >= 0.95 and s.one_track >= 0.95


# --- tracks --------------------------------------------------------------------------------
def _square(x: float, y: float, side: float = 10.0) -> shapely.Polygon:
    return shapely.box(x, y, x + side, y + side)


def test_link_tracks_bridges_one_missing_plane_not_two():
    planes = [0, 1, 3, 6]  # missed on plane 2 (one plane: same track), then on 4 and 5 (two)
    ids = link_tracks(planes, [_square(0, 0), _square(1, 0), _square(2, 0), _square(3, 0)])
    assert ids.tolist() == [0, 0, 0, 1]


def test_link_tracks_assigns_one_to_one():
    # b on plane 1 overlaps both a0 and a1; the assignment gives each its best partner
    planes = [0, 0, 1, 1]
    geoms = [_square(0, 0), _square(8, 0), _square(4, 0), _square(9, 0)]
    ids = link_tracks(planes, geoms)
    assert ids.tolist() == [0, 1, 0, 1]
    ids = link_tracks([0, 1, 1], [_square(0, 0), _square(1, 0), _square(0.5, 0)])
    assert len(set(ids[1:].tolist())) == 2  # two on one plane never share a track
    assert link_tracks([], []).tolist() == []


# --- formats -------------------------------------------------------------------------------
def test_coco_has_one_image_per_plane_and_reads_back_planes_and_tracks(ncc_run, tmp_path):
    import json

    from napari_instanno.io.coco import join_planes, plane_items, read_coco, write_coco

    images = [{"file_name": "stack.tif", "height": 192, "width": 192}] * PLANES + [
        {"file_name": "stack.tif", "height": 192, "width": 192}]  # a 13th plane, empty
    path = write_coco(tmp_path / "s.json", plane_items(ncc_run, images))
    data = json.loads(path.read_text())
    assert [(im["id"], im["plane"], im["file_name"]) for im in data["images"]] == [
        (k + 1, k, "stack.tif") for k in range(PLANES + 1)]
    assert all("track_id" in a and "plane" not in a for a in data["annotations"])
    back = join_planes(read_coco(path))
    assert back.properties["plane"].dtype == np.int64 and back.properties["track_id"].dtype == np.int64
    order = np.lexsort((ncc_run.scores, ncc_run.properties["plane"]))
    again = np.lexsort((back.scores, back.properties["plane"]))
    for key in ("plane", "track_id"):
        assert (back.properties[key][again] == ncc_run.properties[key][order]).all()
    assert [_box(g) for g in back.geometries[again]] == [_box(g) for g in ncc_run.geometries[order]]


def test_geojson_features_carry_plane_and_track_and_read_back(ncc_run, tmp_path):
    import json

    from napari_instanno.io.geojson import read_geojson

    path = ncc_run.to_geojson(tmp_path / "s.geojson")
    props = [f["properties"] for f in json.loads(path.read_text())["features"]]
    assert [(p["plane"], p["track_id"]) for p in props] == list(zip(
        ncc_run.properties["plane"].tolist(), ncc_run.properties["track_id"].tolist()))
    back = read_geojson(path)
    for key in ("plane", "track_id"):
        assert back.properties[key].dtype == np.int64
        assert (back.properties[key] == ncc_run.properties[key]).all()


# --- command line --------------------------------------------------------------------------
FAST = ["--matcher", "ncc", "--outliner", "otsu", "--device", "cpu", "--score-threshold", "0.5"]


def _xywh(box: np.ndarray) -> list[str]:
    return [str(v) for v in (box[0], box[1], box[2] - box[0], box[3] - box[1])]


def test_cli_stack_tiff_with_axes_writes_one_coco_image_per_plane(tmp_path, capsys):
    import json

    import tifffile

    from napari_instanno.cli import main

    tifffile.imwrite(tmp_path / "t.tif", STACK[:5].transpose(1, 2, 0))  # (Y, X, T): needs --axes
    out = tmp_path / "o.json"
    assert main(["predict", str(tmp_path / "t.tif"), "--axes", "YXT", "--ref-plane", "1",
                 "--ref-box", *_xywh(reference_box(DISCS[0])), "--out", str(out), *FAST]) == 0
    captured = capsys.readouterr()
    bar = captured.err  # the progress bar: planes done, elapsed<remaining (ETA), the rate
    assert "5/5 [" in bar and "<" in bar and ("plane/s" in bar or "s/plane" in bar)
    assert "100 instance(s) in 20 track(s) over 5 planes" in captured.out
    data = json.loads(out.read_text())
    assert [(im["plane"], im["file_name"], im["height"]) for im in data["images"]] == [
        (k, "t.tif", 192) for k in range(5)]
    assert {a["track_id"] for a in data["annotations"]} == set(range(20))
    (tmp_path / "none").mkdir()  # a stack run takes --models like any other
    assert main(["predict", str(tmp_path / "t.tif"), "--axes", "YXT", "--ref-plane", "1",
                 "--ref-box", *_xywh(reference_box(DISCS[0])), "--out", str(tmp_path / "m.json"),
                 "--models", str(tmp_path / "none"), *FAST]) == 2
    assert "holds no matcher.safetensors" in capsys.readouterr().err


def test_cli_ctrl_c_writes_the_finished_planes_and_the_checkpoint_resumes(tmp_path, monkeypatch,
                                                                          capsys):
    import tifffile

    from napari_instanno.cli import main
    from napari_instanno.inference import baselines
    from napari_instanno.io.geojson import read_geojson

    tifffile.imwrite(tmp_path / "t.tif", STACK[:6])
    calls = []
    real = baselines.NCCMatcher.set_image

    def interrupted(self, rgb):
        calls.append(1)
        if len(calls) == 4 and not out.exists():  # Ctrl-C on the first run's fourth plane
            raise KeyboardInterrupt
        real(self, rgb)

    monkeypatch.setattr(baselines.NCCMatcher, "set_image", interrupted)
    out = tmp_path / "o.geojson"
    argv = ["predict", str(tmp_path / "t.tif"), "--ref-box", *_xywh(REF), "--out", str(out),
            "--checkpoint", str(tmp_path / "ck"), *FAST]
    assert main(argv) == 130
    assert "interrupted: 3 of 6 planes done; finished planes are kept in" in capsys.readouterr().err
    assert sorted(set(read_geojson(out).properties["plane"].tolist())) == [0, 1, 2]
    calls.clear()
    assert main([*argv, "--overwrite"]) == 0
    assert len(calls) == 1 + 3  # the reference plane, then the three missing ones
    assert sorted(set(read_geojson(out).properties["plane"].tolist())) == list(range(6))


def test_cli_series_skips_unreadable_files_with_one_warning(tmp_path, capsys):
    from napari_instanno.cli import main

    folder = _series(tmp_path / "frames", STACK[:4])
    (folder / "t2.png").write_text("not an image")
    out = tmp_path / "o.json"
    assert main(["predict", f"{folder}/*.png", "--ref-image", str(folder / "t0.png"),
                 "--ref-box", *_xywh(REF), "--out", str(out), *FAST]) == 0
    captured = capsys.readouterr()
    warned = [ln for ln in captured.err.splitlines() if "warning" in ln]
    assert len(warned) == 1 and "skipped 1 plane(s) that could not be read: t2.png" in warned[0]
    assert "3 of 4 planes done" in warned[0] and "60 instance(s) in 20 track(s)" in captured.out


def test_cli_4d_stack_without_axes_is_one_line_and_file_axes_are_used(tmp_path, capsys):
    import tifffile

    from napari_instanno.cli import main

    tifffile.imwrite(tmp_path / "t.tif", np.zeros((3, 2, 64, 64), np.uint8))
    argv = ["predict", str(tmp_path / "t.tif"), "--ref-box", "5", "5", "10", "10", "--out",
            str(tmp_path / "o.json"), *FAST]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has 4 dimensions (3, 2, 64, 64): say which axis is which" in err[0]
    assert main([*argv, "--axes", "TCYX"]) == 0  # two channels, three time points
    capsys.readouterr()
    tifffile.imwrite(tmp_path / "ij.tif", np.zeros((3, 2, 64, 64), np.uint8), imagej=True,
                     metadata={"axes": "TCYX"})  # the file says its axes: no --axes needed
    assert main([*argv[:1], str(tmp_path / "ij.tif"), *argv[2:], "--overwrite"]) == 0
    assert "over 3 planes" in capsys.readouterr().out
    Image.fromarray(STACK[0]).save(tmp_path / "one.png")
    assert main([*argv[:1], str(tmp_path / "one.png"), *argv[2:], "--ref-plane", "1",
                 "--overwrite"]) == 2
    assert "one.png is one 2D image, not a stack" in capsys.readouterr().err


def test_link_tracks_on_thousands_of_instances_a_plane():
    rng = np.random.default_rng(0)
    grid = np.array([(x, y) for x in range(0, 1200, 20) for y in range(0, 1200, 20)], float)
    drift = rng.uniform(-2, 2, grid.shape)
    planes = np.repeat(np.arange(4), len(grid))
    geoms = [_square(*(p + drift[i] * t)) for t in range(4) for i, p in enumerate(grid)]
    ids = link_tracks(planes, geoms)
    assert len(grid) == 3600 and len(np.unique(ids)) == len(grid)
    assert (ids.reshape(4, -1) == ids[:len(grid)]).all()  # each square keeps its id
