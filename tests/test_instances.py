import numpy as np
import pytest

from napari_instanno import Instances
from napari_instanno.geometry import (
    boundary_f_score,
    ellipse_polygon,
    mask_iou,
    mask_to_polygon,
    polygon_area,
    polygon_box,
    polygon_to_mask,
    resample_polygon,
    simplify,
)


def square(r0, c0, size):
    return np.array([[r0, c0], [r0, c0 + size], [r0 + size, c0 + size], [r0 + size, c0]], float)


def test_square_geometry_uses_pixel_corners():
    poly = square(2, 3, 4)
    assert polygon_area(poly) == 16
    assert polygon_box(poly).tolist() == [3, 2, 7, 6]
    mask = polygon_to_mask(poly, (10, 10))
    assert mask.sum() == 16 and mask[2:6, 3:7].all()


def test_mask_polygon_round_trip_keeps_the_pixels():
    rr, cc = np.mgrid[:40, :40]
    mask = (rr - 20) ** 2 + (cc - 18) ** 2 <= 81
    poly = mask_to_polygon(mask)
    assert mask_iou(polygon_to_mask(poly, mask.shape), mask) > 0.95
    assert mask_to_polygon(np.zeros((5, 5), bool)) is None


def test_resample_and_simplify():
    poly = square(0, 0, 10)
    pts = resample_polygon(poly, 40)
    assert pts.shape == (40, 2)
    assert np.allclose(np.diff(np.vstack([pts, pts[:1]]), axis=0).__abs__().sum(1), 1.0)
    dense = resample_polygon(poly, 200)
    assert len(simplify([dense], 0.1)[0]) == 4
    ell = ellipse_polygon(np.array([0, 0, 20, 10]), 64)
    assert polygon_box(ell) == pytest.approx([0, 0, 20, 10], abs=0.05)


def test_boundary_f_score_perfect_and_shifted():
    m = np.zeros((30, 30), bool)
    m[5:20, 5:20] = True
    assert boundary_f_score(m, m, 1) == 1.0
    shifted = np.roll(m, 3, axis=1)
    assert boundary_f_score(shifted, m, 1) < 0.7
    assert boundary_f_score(shifted, m, 3) > boundary_f_score(shifted, m, 1)


def test_instances_columns_subset_and_concat():
    a = Instances(polygons=[square(0, 0, 4), square(10, 10, 4)], scores=[0.9, 0.2],
                  categories={1: "cell"})
    assert a.boxes.shape == (2, 4) and a.status.tolist() == ["proposed"] * 2
    sub = a[a.scores > 0.5]
    assert len(sub) == 1 and sub.scores[0] == 0.9
    b = Instances(polygons=[square(5, 5, 2)], categories={1: "nucleus"})
    both = Instances.concat([a, b])
    assert both.category_names == ["cell", "cell", "nucleus"]
    assert len(set(both.category_ids.tolist())) == 2
    with pytest.raises(ValueError, match="status"):
        Instances(polygons=[square(0, 0, 2)], status=["maybe"])


def test_label_image_round_trip():
    labels = np.zeros((50, 50), np.int32)
    labels[5:15, 5:15] = 1
    labels[30:45, 20:40] = 2
    inst = Instances.from_label_image(labels)
    assert len(inst) == 2
    back = inst.to_label_image(labels.shape)
    for i in (1, 2):
        assert mask_iou(back == i, labels == i) > 0.95
    assert inst.to_masks(labels.shape).shape == (2, 50, 50)


def test_from_masks_keeps_each_mask():
    a = np.zeros((30, 30), bool)
    a[2:10, 3:12] = True
    b = np.zeros((30, 30), bool)
    b[15:28, 15:20] = True
    inst = Instances.from_masks([a, b, np.zeros((30, 30), bool)], category="cell")
    assert len(inst) == 2 and inst.category_names == ["cell", "cell"]
    assert mask_iou(inst.to_masks((30, 30))[1], b) > 0.95


def donut_and_islands():
    """A label-free mask: a square with a hole holding an island, and a second region."""
    m = np.zeros((40, 40), bool)
    m[2:20, 2:20] = True
    m[6:14, 6:14] = False
    m[9:11, 9:11] = True
    m[25:35, 25:30] = True
    return m


def test_masks_keep_holes_and_parts():
    from shapely.geometry import MultiPolygon

    m = donut_and_islands()
    inst = Instances.from_masks([m])
    geom = inst.geometries[0]
    assert isinstance(geom, MultiPolygon) and len(geom.geoms) == 3
    assert sorted(len(p.interiors) for p in geom.geoms) == [0, 0, 1]
    assert (inst.to_masks(m.shape)[0] == m).all()
    # area of the whole geometry (hole subtracted, parts added), box around all parts
    assert inst.areas[0] == pytest.approx(geom.area) and abs(inst.areas[0] - m.sum()) < 5
    assert inst.boxes[0].tolist() == [2, 2, 30, 35]  # pixel corners
    # polygons: the exterior of the largest part, (row, col), no closing vertex
    assert polygon_box(inst.polygons[0]).tolist() == [2, 2, 20, 20]
    labels = np.where(m, 3, 0).astype(np.int32)
    from_labels = Instances.from_label_image(labels)
    assert (from_labels.to_label_image(m.shape) > 0).sum() == m.sum()
    assert inst[[0]].geometries[0].equals(geom)
    assert Instances.concat([inst, inst]).geometries[1].equals(geom)


def test_simple_polygons_give_geometries_and_the_other_way():
    from shapely.geometry import Polygon

    sq = square(2, 3, 4)
    inst = Instances(polygons=[sq])
    assert inst.geometries[0].equals(Polygon(sq[:, ::-1])) and inst.areas[0] == 16
    back = Instances(geometries=[Polygon(sq[:, ::-1], [[(4, 3), (5, 3), (5, 4)]])])
    assert np.array_equal(back.polygons[0], sq)  # exact, same vertex order
    assert back.areas[0] == 15.5
    with pytest.raises(ValueError, match="geometries"):
        Instances(geometries=["not a polygon"])


def test_exported_leaves_rejected_out():
    inst = Instances(polygons=[square(0, 0, 2)] * 3, status=["accepted", "rejected", "proposed"])
    assert inst.num_rejected == 1
    assert inst.exported().status.tolist() == ["accepted", "proposed"]
    assert len(inst.exported(include_rejected=True)) == 3
