"""A new reference on the same image reuses the outlines of the candidates already outlined."""

from __future__ import annotations

import numpy as np

from napari_instanno.inference.annotator import Annotator
from napari_instanno.inference.outline_memo import REUSE_IOU, OutlineMemo
from napari_instanno.samples import nuclei_sample


class Counting:
    """An outliner stand-in that records which boxes it was asked for."""

    def __init__(self) -> None:
        self.asked: list[np.ndarray] = []

    def __call__(self, boxes: np.ndarray) -> list[np.ndarray]:
        self.asked.append(np.asarray(boxes).copy())
        return [np.array([[b[1], b[0]], [b[3], b[0]], [b[3], b[2]]], float) for b in boxes]


def test_a_box_like_a_remembered_one_reuses_its_outline_and_others_are_outlined() -> None:
    memo, fn = OutlineMemo(), Counting()
    first = memo.outline(np.array([[0, 0, 20, 20], [50, 50, 70, 70]], float), fn)
    again = memo.outline(np.array([[0.5, 0, 20, 20.5], [100, 100, 120, 120]], float), fn)
    np.testing.assert_array_equal(again[0], first[0])  # IoU 0.95 >= REUSE_IOU: the first outline
    again[0][0, 0] = -1.0  # editing what came back leaves the remembered outline alone
    np.testing.assert_array_equal(memo.outline(np.array([[0, 0, 20, 20.0]]), fn)[0], first[0])
    assert len(fn.asked) == 2 and fn.asked[1].tolist() == [[100, 100, 120, 120]]
    shifted = memo.outline(np.array([[3, 0, 23, 20]], float), fn)  # IoU 0.74: outlined anew
    assert not np.array_equal(shifted[0], first[0]) and len(fn.asked) == 3 and len(memo) == 4
    memo.clear()
    memo.outline(np.array([[0, 0, 20, 20]], float), fn)
    assert len(fn.asked) == 4 and 0.74 < REUSE_IOU <= 0.95


def test_annotator_outlines_only_new_candidates_for_a_second_reference() -> None:
    image, box = nuclei_sample()
    ann = Annotator(matcher="ncc", outliner="otsu", device="cpu").set_image(image)
    calls = Counting()
    real = ann.outliner.outline
    ann.outliner.outline = lambda boxes: (calls(boxes), real(boxes))[1]
    first = ann.find_similar(box, score_threshold=0.4)
    n_first = sum(len(b) for b in calls.asked)
    assert n_first >= len(first) > 5  # (duplicate outlines of one object are dropped after)
    second = ann.find_similar(box, score_threshold=0.4)  # the same reference: nothing new
    assert sum(len(b) for b in calls.asked) == n_first
    for a, b in zip(first.polygons, second.polygons, strict=True):
        np.testing.assert_array_equal(a, b)
    ann.set_image(image)  # a new image forgets every outline
    ann.find_similar(box, score_threshold=0.4)
    assert sum(len(b) for b in calls.asked) == 2 * n_first
