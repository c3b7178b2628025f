"""``stand_ins``: finishing the waiting candidates in any number of steps gives what outlining
every candidate at once gives (property test on random overlapping boxes)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_instanno.inference.duplicates import duplicates_suppressed
from napari_instanno.inference.stand_ins import FLAG, finished, stand_ins, waiting
from napari_instanno.instances import Instances


def _outline(boxes: np.ndarray) -> list[np.ndarray]:
    """A deterministic outliner: each box's rectangle, (row, col)."""
    return [np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]]) for x0, y0, x1, y1 in boxes]


def _all_at_once(boxes: np.ndarray, scores: np.ndarray) -> Instances:
    polys = _outline(boxes)
    keep = duplicates_suppressed(polys, scores)
    return Instances(polygons=[polys[i] for i in keep], boxes=boxes[keep], scores=scores[keep])


def _lazy(boxes: np.ndarray, scores: np.ndarray, first: float) -> Instances:
    """What ``find_similar(outline_threshold=first)`` gives: outlined >= first, stand-ins below."""
    now = scores >= first
    shown = _all_at_once(boxes[now], scores[now])
    shown.properties[FLAG] = np.ones(len(shown), bool)
    rest = Instances(polygons=stand_ins(boxes[~now]), boxes=boxes[~now], scores=scores[~now],
                     properties={FLAG: np.zeros(int((~now).sum()), bool)})
    return Instances.concat([shown, rest])


def _step(inst: Instances, min_score: float) -> Instances:
    todo = waiting(inst, min_score)
    return finished(inst, todo, _outline(inst.boxes[todo]))


boxes_st = st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60), st.integers(4, 20),
                              st.integers(4, 20), st.floats(0.0, 1.0)), min_size=1, max_size=25,
                    unique_by=lambda r: r[4])  # distinct scores: one greedy order


@settings(max_examples=60, deadline=None)
@given(boxes_st, st.floats(0.0, 1.0), st.lists(st.floats(0.0, 1.0), max_size=3))
def test_finishing_in_steps_equals_outlining_everything(rows, first, later):
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h, _ in rows], float)
    scores = np.array([s for *_, s in rows])
    inst = _lazy(boxes, scores, first)
    assert (inst.scores[waiting(inst)] < first).all()
    assert list(inst.scores[waiting(inst)]) == sorted(inst.scores[waiting(inst)], reverse=True)
    for t in sorted(later, reverse=True):  # the slider going down in steps
        todo = waiting(inst, t)
        inst = _step(inst, t)
        flag = inst.properties[FLAG]
        assert (inst.scores[~flag] < min(first, t)).all()  # what is still waiting is below it
        if len(todo):
            assert list(inst.scores) == sorted(inst.scores, reverse=True)  # best first
    inst = _step(inst, 0.0)
    full = _all_at_once(boxes, scores)
    assert inst.properties[FLAG].all()
    order = np.argsort(-full.scores, kind="stable")
    np.testing.assert_array_equal(np.sort(inst.scores)[::-1], full.scores[order])
    got = {tuple(b) for b in inst.boxes.tolist()}
    assert got == {tuple(b) for b in full.boxes.tolist()}


def test_nothing_waiting_is_returned_as_is():
    box = np.array([[0, 0, 5, 5.0]])
    inst = Instances(polygons=_outline(box), boxes=box, scores=np.array([0.9]))
    assert not len(waiting(inst)) and finished(inst, waiting(inst), []) is inst
