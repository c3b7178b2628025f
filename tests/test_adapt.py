"""Head adaptation on the user's positives and negatives (``inference.adapt``), on the shipped
matcher and the nuclei sample: it changes the result, stays within its time cap, touches only
the heatmap row of the head's output convolution, and puts the shipped weights back."""

from __future__ import annotations

import numpy as np
import pytest

from napari_instanno import Annotator
from napari_instanno.inference.adapt import SECONDS, adapted, find_adapted
from napari_instanno.inference.references import embed_references
from napari_instanno.samples import nuclei_sample


@pytest.fixture(scope="module")
def nuclei():
    image, ref = nuclei_sample()
    ann = Annotator(matcher="learned", outliner="ellipse", device="cpu").set_image(image)
    first = ann.find_similar(ref, score_threshold=0.3)
    return ann, ref, first


def test_adaptation_tunes_the_head_only_and_restores_the_weights(nuclei):
    ann, ref, first = nuclei
    matcher = ann._component("matcher")
    model = matcher.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    refs = embed_references(matcher, np.stack([ref, first.boxes[-1]]), np.zeros((0, 4)))
    last = f"head.{len(model.head) - 1}."
    with adapted(matcher, refs) as report:
        after = {k: v.clone() for k, v in model.state_dict().items()}
    changed = {k for k, v in after.items() if not np.array_equal(v, before[k])}
    assert report["steps"] >= 1 and report["seconds"] <= SECONDS + 1.0
    assert changed == {last + "weight", last + "bias"}  # the heatmap classifier only
    assert np.array_equal(after[last + "weight"][1:], before[last + "weight"][1:])
    assert all(np.array_equal(v, before[k]) for k, v in model.state_dict().items())


def test_the_adapt_switch(nuclei):
    ann, ref, first = nuclei
    two = [ref, first.boxes[len(first) // 2]]
    plain = ann.find_similar(two, score_threshold=0.3, adapt=False)
    assert ann.last_adaptation == {}
    tuned = ann.find_similar(two, score_threshold=0.3, adapt=True)
    assert ann.last_adaptation["steps"] >= 1
    assert len(plain) != len(tuned) or not np.allclose(plain.scores, tuned.scores)
    again = ann.find_similar(two, score_threshold=0.3, adapt=False)  # from the shipped weights
    np.testing.assert_allclose(again.scores, plain.scores)
    one = ann.find_similar(ref, score_threshold=0.3, adapt=True)  # nothing to adapt on
    assert ann.last_adaptation == {} and len(one) == len(first)


def test_ncc_has_nothing_to_adapt():
    image, ref = nuclei_sample()
    ann = Annotator(matcher="ncc", outliner="ellipse", device="cpu").set_image(image)
    matcher = ann._component("matcher")
    refs = embed_references(matcher, np.stack([ref, ref + 40]), np.zeros((0, 4)))
    *_, report = find_adapted(matcher, refs)
    assert report == {}


def test_references_of_similar_sizes_are_embedded_at_one_scale(nuclei):
    ann, ref, _ = nuclei
    matcher = ann._component("matcher")
    side = np.sqrt((ref[2] - ref[0]) * (ref[3] - ref[1]))
    smaller = np.array([ref[0], ref[1], ref[0] + 0.8 * side, ref[1] + 0.8 * side])
    large = np.array([100, 100, 100 + 3 * side, 100 + 3 * side])
    assert matcher.scale_for(smaller) != matcher.scale_for(ref) != matcher.scale_for(large)
    refs = embed_references(matcher, np.stack([smaller, large, ref]), np.zeros((0, 4)))
    scales = [r["scale"] for r in refs.positives]
    # within SHARED_SCALE: one pass, at the smaller one's (finer) scale
    assert scales[0] == scales[2] == matcher.scale_for(smaller)
    assert scales[1] == matcher.scale_for(large)  # 3x larger: its own scale
    assert matcher.shared_scale is None and matcher.scale_for(ref) != scales[0]  # reset
