import numpy as np
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_instanno.inference.duplicates import (
    DUPLICATE_IOU,
    NESTED_SHARE,
    duplicates_suppressed,
    same_object,
)


def square(r, c, side):
    return np.array([[r, c], [r, c + side], [r + side, c + side], [r + side, c]], float)


def test_overlapping_and_nested_outlines_keep_the_better_score():
    polys = [square(0, 0, 10), square(1, 1, 10),  # IoU 0.68: one object
             square(30, 30, 12), square(33, 33, 4),  # a fragment inside (IoU 0.11)
             square(60, 60, 10), square(60, 67, 10),  # neighbours touching over 30 %: both kept
             np.array([[80.0, 80.0], [85.0, 85.0]])]  # no area: never suppressed
    scores = np.array([0.6, 0.9, 0.7, 0.8, 0.5, 0.4, 0.3])
    assert duplicates_suppressed(polys, scores).tolist() == [1, 3, 4, 5, 6]


def test_self_intersecting_and_empty_inputs():
    bowtie = np.array([[0.0, 0.0], [10.0, 10.0], [0.0, 10.0], [10.0, 0.0]])
    assert duplicates_suppressed([bowtie, bowtie + 0.1], np.array([0.2, 0.3])).tolist() == [1]
    assert duplicates_suppressed([], np.zeros(0)).tolist() == []


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40), st.integers(2, 15),
                          st.floats(0, 1)), min_size=1, max_size=12))
def test_no_duplicate_pair_survives_and_each_removal_has_a_better_partner(boxes):
    polys = [square(r, c, s) for r, c, s, _ in boxes]
    scores = np.array([sc for *_, sc in boxes])
    keep = duplicates_suppressed(polys, scores)
    geoms = [shapely.Polygon(p) for p in polys]

    def same(i, j):
        inter = geoms[i].intersection(geoms[j]).area
        small = min(geoms[i].area, geoms[j].area)
        return inter > DUPLICATE_IOU * geoms[i].union(geoms[j]).area or inter > NESTED_SHARE * small

    assert (np.diff(scores[keep]) <= 0).all()
    assert not any(same(i, j) for i in keep for j in keep if i < j)
    for j in set(range(len(polys))) - set(keep.tolist()):
        assert any(same(i, j) and scores[i] >= scores[j] for i in keep)


def test_same_object_finds_the_outline_already_there():
    there = [square(0, 0, 10), square(30, 30, 12), square(60, 60, 10)]
    new = [square(1, 1, 10),  # that first square again, a little off
           square(33, 33, 4),  # a fragment inside the second
           square(60, 67, 10),  # a neighbour of the third, touching it
           square(90, 90, 5)]  # nothing there
    assert same_object(new, there).tolist() == [0, 1, -1, -1]
    assert same_object(new, []).tolist() == [-1] * 4
