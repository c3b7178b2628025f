"""Property tests of the formats: random instances with holes and parts round-trip exactly through
COCO and GeoJSON, and random mutations of valid files raise only ``InstannoError``.

The COCO mutations reach pycocotools (RLE decoding, ``annToMask``), so they run in a subprocess
with a memory limit: a segfault or a runaway allocation fails the test instead of killing pytest.
"""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from shapely.geometry import MultiPolygon, Polygon

from napari_instanno import Instances, InstannoError
from napari_instanno.io.coco import ground_truth, read_coco, write_coco
from napari_instanno.io.geojson import from_feature_collection, read_geojson, to_feature_collection

SIZE = 400  # image side: parts live in 100-pixel cells of a 4 x 4 grid
FAST = settings(max_examples=25, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@st.composite
def star(draw: st.DrawFn, cx: float, cy: float, r_min: float, r_max: float) -> np.ndarray:
    """A star-shaped ring (x, y) around (cx, cy): 6 to 12 evenly spaced angles, random radii."""
    n = draw(st.integers(6, 12))
    radii = np.array(draw(st.lists(st.floats(r_min, r_max), min_size=n, max_size=n)))
    t = np.linspace(0, 2 * np.pi, n, endpoint=False) + draw(st.floats(0, 1))
    return np.stack([cx + radii * np.cos(t), cy + radii * np.sin(t)], axis=1)


@st.composite
def geometry(draw: st.DrawFn) -> Polygon | MultiPolygon:
    """1 to 3 disjoint parts (grid cells), each with 0 to 2 holes well inside it."""
    cells = draw(st.lists(st.integers(0, 15), min_size=1, max_size=3, unique=True))
    parts = []
    for cell in cells:
        cx, cy = 50 + 100 * (cell % 4) + draw(st.floats(-5, 5)), 50 + 100 * (cell // 4)
        # the ring holds the disc of radius 20 cos(30 deg) > 17; holes reach 8 + 4 = 12 from the centre
        shell = draw(star(cx, cy, 20, 40))
        holes = [draw(star(cx + dx, cy, 1.5, 4)) for dx in draw(st.sampled_from([(), (-8,), (-8, 8)]))]
        parts.append(Polygon(shell, holes))
    return parts[0] if len(parts) == 1 else MultiPolygon(parts)


@st.composite
def instances(draw: st.DrawFn) -> Instances:
    n = draw(st.integers(1, 4))
    names = ["cell", "debris", "nucleus"]
    return Instances(
        geometries=[draw(geometry()) for _ in range(n)],
        scores=draw(st.lists(st.floats(0, 1), min_size=n, max_size=n)),
        categories={1: "cell", 2: "debris", 3: "nucleus"},
        category_ids=draw(st.lists(st.integers(1, len(names)), min_size=n, max_size=n)),
        status=draw(st.lists(st.sampled_from(["proposed", "accepted", "rejected"]), min_size=n,
                             max_size=n)),
    )


def same(a: Instances, b: Instances, exact: bool = True) -> None:
    assert len(a) == len(b)
    for g, h in zip(a.geometries, b.geometries, strict=True):
        assert g.geom_type == h.geom_type
        if exact:
            assert shapely.equals_exact(g, h, tolerance=0), (g.wkt[:80], h.wkt[:80])
        else:
            assert shapely.equals_exact(g, h, tolerance=1e-6)
    assert np.allclose(a.boxes, b.boxes, atol=1e-9)
    assert np.array_equal(a.scores, b.scores)
    assert a.status.tolist() == b.status.tolist()
    assert a.category_names == b.category_names
    if exact:
        assert all(np.array_equal(p, q) for p, q in zip(a.polygons, b.polygons, strict=True))


@FAST
@given(inst=instances())
def test_coco_round_trip_is_exact(tmp_path, inst):
    path = write_coco(tmp_path / "a.json", [({"file_name": "a.png", "height": SIZE, "width": SIZE},
                                             inst)], overwrite=True, include_rejected=True)
    (_, back), = read_coco(path)
    same(inst, back)
    assert np.allclose(back.areas, [g.area for g in inst.geometries])
    # what other tools see: the RLE / polygons paint the same pixels as the geometry, roughly
    gt = ground_truth(path)
    for k, ann in enumerate(gt.dataset["annotations"]):
        assert abs(gt.annToMask(ann).sum() - inst.geometries[k].area) < 0.1 * inst.geometries[k].area
    kept = write_coco(tmp_path / "b.json", [({"height": SIZE, "width": SIZE}, inst)], overwrite=True)
    assert len(read_coco(kept)[0][1]) == len(inst) - inst.num_rejected


@FAST
@given(inst=instances(), scale=st.sampled_from([1.0, 10.0, 0.25]))
def test_geojson_round_trip_is_exact_in_pixels_and_close_in_map_units(tmp_path, inst, scale):
    path = inst.to_geojson(tmp_path / "a.geojson", overwrite=True, include_rejected=True)
    same(inst, read_geojson(path))
    transform = (scale, 0.0, 500000.0, 0.0, -scale, 6000000.0)
    fc = json.loads(json.dumps(to_feature_collection(inst, transform, crs="EPSG:32632")))
    back = from_feature_collection(fc, transform, crs="EPSG:32632")
    same(inst, back, exact=False)


# --- mutations -----------------------------------------------------------------------------------
HOSTILE = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
    st.text(max_size=6), st.just([]), st.just({}), st.just([[]]), st.just([1, 2, 3, 4]),
    st.lists(st.floats(-1e13, 1e13), max_size=8), st.just([[0, 0, 1e12, 0, 1e12, 1e12]]),
    st.just({"size": [10**6, 10**6], "counts": "a"}), st.just({"size": [20, 20], "counts": [400]}),
    st.just({"size": [400, 400], "counts": [5, 2**40]}),
    st.text(alphabet=[chr(c) for c in range(40, 120)], max_size=20),
    st.just(["a", 1, None]), st.just([1e300, -1e300, 0, 0, 1, 1]), st.just(10**400),
    st.just([0, 0, 10**400, 0, 1, 1]), st.just([[0, 0], [10**400, 0], [1, 1]]),
)


def mutate(data: st.DataObject, doc: object, starts: tuple[tuple, ...] = ((),)) -> object:
    """``doc`` with one value somewhere inside replaced, removed or duplicated; the walk down
    starts at one of the paths ``starts`` (to reach deep fields often)."""
    doc = copy.deepcopy(doc)
    parent, key, node = None, None, doc
    for step in data.draw(st.sampled_from(starts)):
        parent, key, node = node, step, node[step]
    while isinstance(node, dict | list) and node and data.draw(st.booleans()):
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        parent, key = node, data.draw(st.sampled_from(keys))
        node = node[key]
    if parent is None:
        return data.draw(HOSTILE)
    action = data.draw(st.sampled_from(["replace", "replace", "delete", "copy"]))
    if action == "delete":
        del parent[key]
    elif action == "copy" and isinstance(parent, list):
        parent.append(copy.deepcopy(parent[key]))
    else:
        parent[key] = data.draw(HOSTILE)
    return doc


def valid_coco(folder: Path) -> dict:
    """A COCO file with a polygon, two parts, a hole (RLE + rings), a foreign RLE and a box."""
    from pycocotools import mask as mask_utils

    square = np.array([[0, 0], [0, 30], [30, 30], [30, 0]], float)
    donut = Polygon([(100, 100), (160, 100), (160, 160), (100, 160)],
                    [[(120, 120), (130, 120), (130, 130)]])
    two = MultiPolygon([Polygon(square[:, ::-1] + 200), Polygon(square[:, ::-1] + 300)])
    inst = Instances(geometries=[Polygon(square[:, ::-1] + 5), two, donut], scores=[0.9, 0.5, 0.7])
    path = write_coco(folder / "base.json", [({"file_name": "a.png", "height": SIZE, "width": SIZE},
                                              inst)])
    doc = json.loads(path.read_text())
    m = np.zeros((SIZE, SIZE), np.uint8)
    m[50:70, 250:290] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    doc["annotations"].append({"id": 4, "image_id": 1, "category_id": 1, "iscrowd": 0,
                               "segmentation": {"size": [SIZE, SIZE],
                                                "counts": rle["counts"].decode()},
                               "area": 800.0, "bbox": [250, 50, 40, 20]})
    doc["annotations"].append({"id": 5, "image_id": 1, "category_id": 1, "segmentation": [],
                               "bbox": [10, 300, 20, 20]})
    return doc


def fuzz_coco_in_this_process(examples: int) -> None:
    """Mutate a valid COCO file ``examples`` times; read and evaluate-load each one, touching
    pycocotools; only ``InstannoError`` may come out. Run by ``test_coco_mutations`` in a child."""
    import tempfile

    folder = Path(tempfile.mkdtemp())
    base = valid_coco(folder)
    target = folder / "mutant.json"

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def run(data: st.DataObject) -> None:
        deep = ((), ("annotations",), ("annotations", 2, "instanno_rings"),
                ("annotations", 2, "segmentation"), ("annotations", 3, "segmentation"),
                ("annotations", 1, "segmentation"), ("annotations", 4))
        target.write_text(json.dumps(mutate(data, base, deep)))
        try:
            read_coco(target)
            gt = ground_truth(target)
            for ann in gt.dataset["annotations"]:
                gt.annToMask(ann)
        except InstannoError as err:
            assert "\n" not in str(err)

    run()


def test_coco_mutations_raise_only_instanno_errors_and_never_crash():
    root = Path(__file__).resolve().parents[1]
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30)); "
            "from tests.test_formats_fuzz import fuzz_coco_in_this_process as f; f(150)")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True,
                          text=True, timeout=120)
    how = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else "failed"
    assert proc.returncode == 0, f"the fuzz {how}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def valid_geojson() -> dict:
    donut = Polygon([(100, 100), (160, 100), (160, 160), (100, 160)],
                    [[(120, 120), (130, 120), (130, 130)]])
    two = MultiPolygon([Polygon([(0, 0), (5, 0), (5, 5)]), Polygon([(10, 10), (15, 10), (15, 15)])])
    return to_feature_collection(Instances(geometries=[donut, two], scores=[0.5, 1.0],
                                           status=["accepted", "proposed"]))


@settings(max_examples=300, deadline=None, database=None)
@given(data=st.data())
def test_geojson_mutations_raise_only_instanno_errors(data):
    doc = mutate(data, valid_geojson(), ((), ("features", 0, "geometry", "coordinates"),
                                         ("features", 1, "geometry"), ("features", 0, "properties")))
    try:
        inst = from_feature_collection(json.loads(json.dumps(doc)), source="mutant.geojson")
    except InstannoError as err:
        assert "mutant.geojson" in str(err) and "\n" not in str(err)
        return
    assert all(math.isfinite(v) for v in shapely.get_coordinates(inst.geometries).reshape(-1))
    assert set(inst.status) <= {"proposed", "accepted", "rejected"}
    assert "None" not in inst.category_names


@pytest.mark.parametrize("crs", ["urn:ogc:def:crs:OGC:1.3:CRS84", "EPSG:4326", "something odd"])
def test_geojson_in_map_units_needs_a_transform(crs):
    fc = valid_geojson()
    fc["crs"] = {"type": "name", "properties": {"name": crs}}
    with pytest.raises(InstannoError, match="map coordinates.*transform"):
        from_feature_collection(fc, source="lonlat.geojson")
    with pytest.raises(InstannoError, match="reproject"):
        from_feature_collection(fc, (1, 0, 0, 0, -1, 0), crs="EPSG:32632")
