"""Several references of one kind, and negatives: what the user wants and what they do not.

Any matcher works: each positive reference is matched on its own and the detections of all of
them are pooled: the places are the union after non-maximum suppression, each scored by
``POOLING``: ``"max"``, the best score of any positive there; ``"mean"``, the mean over the
positives (0 where one finds nothing); ``"looks"``, the positives grouped into looks (positives
that find one another on the image they were drawn on: ``looks``), the mean within each look and
the best look; ``"blend"`` (the default), half the best look's score and half the best
positive's. Max keeps every reference's false matches, mean loses a second reference of another
look; by looks keeps fewer of the false matches (F1 of what is shown higher on every val folder
after 3 rounds) at a slightly lower AP50 (RESULTS.md "Session 9"); the blend keeps max's AP50
(within 0.01 on every val folder) with most of the looks' cleaner set (F1@50 after 3 rounds
+0.01 to +0.13: ``benchmarks/bench_corrections.py --pooling``, RESULTS.md "Session 19"). Each
negative is matched the same way; a candidate is dropped where a negative's detection at the
same place (box IoU >= ``SAME_PLACE``) scores higher than the candidate's pooled score
(``pool``), and wherever it is a negative box itself (``not_negative``). ``PooledMatcher``
wraps a matcher so that the tiler (``tiling.find_similar_tiled``) runs a ``ReferenceSet`` tile
by tile like a single reference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InstannoError
from ..geometry import box_iou, nms
from ..image import check_box
from .components import DEFAULT_MIN_SCORE

SAME_PLACE = 0.5  # box IoU above which two detections are the same object
CONFLICT_IOU = 0.5  # a negative this close to a positive is the same object: a contradiction
# a negative must out-score the positives by this much to drop a candidate: the learned matcher
# scores a rejected near-miss (a box half on a nucleus) about as high as the positives on every
# nucleus, and without a margin such a negative drops true matches at random
NEGATIVE_MARGIN = 0.2
MAX_SIZE_RATIO = 6.0  # the largest positive's side over the smallest's (geometric mean sides)
MAX_IMAGE_SHARE = 0.5  # a reference covering more of the image leaves no room for others
# references whose own image scales (``scale_for``) are within this factor of the median one's
# share one feature pass (``shared_box``); the others keep their own scale: at the median's, a
# reference 5x larger or smaller is far outside the sizes the matcher was trained on, and its
# boxes and false matches spoil the pooled result (bench_corrections: a second reference lost
# crowdai-buildings 5 of 36 buildings and added 12 badly placed boxes at one shared scale, none
# lost with its own)
SHARED_SCALE = 1.5
POOLING = "blend"  # how several positives' scores combine: "max", "mean", "looks" or "blend"
BY_LOOK = ("looks", "blend")  # the poolings that group the positives into looks
# a positive that finds another where the user would see it makes the two one look
# (bench_corrections: 0.15 about the same; 0.5 lost the F1 gain on buildings; 0.7 is max)
LOOK_SCORE = DEFAULT_MIN_SCORE


def as_boxes(boxes: Any, what: str) -> np.ndarray:
    """(k, 4) float boxes from one (x0, y0, x1, y1) box or a sequence of them (None: none)."""
    if boxes is None:
        return np.zeros((0, 4))
    try:
        arr = np.asarray(boxes, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise InstannoError(f"{what} must be (x0, y0, x1, y1) boxes of 4 numbers each") from err
    if arr.size == 0:
        return np.zeros((0, 4))
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise InstannoError(f"{what} must be (x0, y0, x1, y1) boxes of 4 numbers each, "
                            f"got an array of shape {arr.shape}")
    return arr


def side(boxes: np.ndarray) -> np.ndarray:
    """Geometric-mean side of each (x0, y0, x1, y1) box."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.sqrt(np.clip(b[:, 2] - b[:, 0], 1e-6, None) * np.clip(b[:, 3] - b[:, 1], 1e-6, None))


def image_share(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The share of an image of ``shape`` (H, W) that each (x0, y0, x1, y1) box covers."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) / float(shape[0] * shape[1])


def check_references(refs: Any, negatives: Any, shape: tuple[int, int]
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(positives (k, 4), negatives (m, 4)), each checked against an image of ``shape`` (H, W)
    and clipped to it; a one-line ``InstannoError`` for a contradiction or a mixed set."""
    pos = as_boxes(refs, "reference boxes")
    if not len(pos):
        raise InstannoError("no reference box: give at least one box around an instance")
    many = len(pos) > 1
    pos = np.stack([check_box(b, shape, f"reference box {i + 1}" if many else "reference box")
                    for i, b in enumerate(pos)])
    neg = as_boxes(negatives, "negative boxes")
    if len(neg):
        neg = np.stack([check_box(b, shape, f"negative box {i + 1}") for i, b in enumerate(neg)])
    share = image_share(pos, shape)
    if share.max() > MAX_IMAGE_SHARE:
        i = int(share.argmax())
        name = f"reference box {i + 1}" if many else "the reference box"
        raise InstannoError(
            f"{name} covers {share[i]:.0%} of the {shape[1]}x{shape[0]} image, leaving no room "
            "for similar instances; draw the box around one instance")
    sides = side(pos)
    if sides.max() > MAX_SIZE_RATIO * sides.min():
        i, j = int(sides.argmax()), int(sides.argmin())
        raise InstannoError(
            f"reference boxes {j + 1} and {i + 1} differ in size by {sides[i] / sides[j]:.0f}x "
            f"(at most {MAX_SIZE_RATIO:.0f}x): references must be one kind of object; "
            "run the sizes separately")
    if len(neg):
        iou = box_iou(neg, pos)
        if iou.max() >= CONFLICT_IOU:
            n, p = np.unravel_index(int(iou.argmax()), iou.shape)
            raise InstannoError(
                f"negative box {n + 1} covers reference box {p + 1} (IoU {iou[n, p]:.2f}): an "
                "object cannot be both wanted and not wanted; remove one of the two")
    return pos, neg


def representative(boxes: np.ndarray) -> np.ndarray:
    """The box of median size: what the tiling plan and the matcher's scale are chosen for."""
    order = np.argsort(side(boxes), kind="stable")
    return np.asarray(boxes, dtype=np.float64)[order[(len(order) - 1) // 2]]


def shared_box(matcher: Any, boxes: np.ndarray, factor: float = SHARED_SCALE) -> np.ndarray:
    """The box whose scale several references share (``one_scale``, the tiler's plan): of the
    boxes whose own scale (``scale_for``) is within ``factor`` of the median box's, the one the
    matcher upscales most, so that none of them is matched on a coarser feature grid than its
    own, where small objects merge (bench_corrections, 30 dsb2018/val images after 3 rounds:
    held-out AP50 0.855 at the median's scale, 0.876 at the finest; RESULTS.md "Session 19").
    The median box for matchers that do not rescale."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    median = representative(boxes)
    learned = getattr(matcher, "learned", matcher)
    if len(boxes) < 2 or not hasattr(learned, "scale_for"):
        return median
    own = np.array([learned.scale_for(b) for b in boxes])
    at = learned.scale_for(median)
    near = np.flatnonzero(np.maximum(own, at) / np.minimum(own, at) <= factor)
    return boxes[near[int(np.argmax(own[near]))]]


def smallest(boxes: np.ndarray) -> np.ndarray:
    """The smallest box: the one a rescaling matcher upscales most, whose feature pass decides
    whether the whole image fits (``policy.tiling_plan``)."""
    return np.asarray(boxes, dtype=np.float64)[int(np.argmin(side(boxes)))]


@dataclass
class ReferenceSet:
    """The matcher's references for the positive and negative boxes (usable on any image)."""

    positives: list[Any]
    negatives: list[Any] = field(default_factory=list)
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    negative_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    # a look id per positive (``looks``), decided on the image the boxes were drawn on; None:
    # not decided, each positive its own look
    look: np.ndarray | None = None

    @property
    def method(self) -> str | None:
        """The path a guarded matcher takes for the set (None for other matchers)."""
        return getattr(self.positives[0], "method", None) if self.positives else None


def agree_on_method(refs: ReferenceSet) -> ReferenceSet:
    """One path for every reference of a guarded matcher: the learned one when at least half of
    the positives' evidence supports it, else NCC (pooled scores must come from one matcher)."""
    methods = [getattr(r, "method", None) for r in refs.positives]
    if methods and all(m is not None for m in methods):
        chosen = "learned" if 2 * methods.count("learned") >= len(methods) else "ncc"
        for r in refs.positives + refs.negatives:
            r.method = chosen
    return refs


def embed_references(embed: Any, boxes: np.ndarray, negative_boxes: np.ndarray,
                     matcher: Any = None, shared: float = SHARED_SCALE) -> ReferenceSet:
    """The references of each box: ``embed`` is a matcher (its current image) or a function of
    one box giving its reference (``matcher``: the one it uses). They are embedded at the scale
    of ``shared_box`` where theirs is within ``shared`` of it
    (``one_scale``; the tiler passes ``inf``: its tiles are planned for one scale)."""
    one = getattr(embed, "embed_reference", embed)
    with one_scale(embed if matcher is None else matcher, boxes, shared):
        refs = ReferenceSet([one(b) for b in boxes], [one(b) for b in negative_boxes],
                            np.asarray(boxes, float).reshape(-1, 4),
                            np.asarray(negative_boxes, float).reshape(-1, 4))
    return agree_on_method(refs)


@contextmanager
def one_scale(matcher: Any, boxes: np.ndarray, shared: float = SHARED_SCALE
              ) -> Iterator[None]:
    """Inside the block, a matcher that rescales the image for each reference (the learned one,
    also behind a guard: ``scale_shared``) uses the scale of ``shared_box`` for every box whose
    own scale is within a factor ``shared`` of it: one feature pass serves those instead of one
    per scale."""
    learned = getattr(matcher, "learned", matcher)
    if len(boxes) < 2 or not hasattr(learned, "scale_shared"):
        yield
        return
    with learned.scale_shared(shared_box(learned, boxes), shared):
        yield


def _scale(reference: Any) -> float:
    """The image scale a reference is matched at (1 for matchers that do not rescale)."""
    ref = getattr(reference, "learned", reference)
    return float(ref.get("scale", 1.0)) if isinstance(ref, dict) else 1.0


def looks(found: Sequence[tuple[np.ndarray, np.ndarray]], boxes: np.ndarray) -> np.ndarray:
    """A look id per positive from each one's (boxes, scores) on the image of its ``boxes``:
    two positives are of one look where either finds the other (a detection at its box, box IoU
    >= ``SAME_PLACE``, scoring at least ``LOOK_SCORE``), and looks are the connected groups of
    that relation."""
    from scipy.sparse.csgraph import connected_components

    boxes = np.asarray(boxes, float).reshape(-1, 4)
    same = np.eye(len(boxes), dtype=bool)
    for i, (b, sc) in enumerate(found):
        b, sc = np.asarray(b, float).reshape(-1, 4), np.asarray(sc, float).reshape(-1)
        if len(b):
            at = np.where(box_iou(boxes, b) >= SAME_PLACE, sc[None], 0.0).max(1)
            same[i] |= at >= LOOK_SCORE
    return connected_components(same | same.T, directed=False)[1]


def pool(positive: Sequence[tuple[np.ndarray, np.ndarray]],
         negative: Sequence[tuple[np.ndarray, np.ndarray]] = (), nms_iou: float = SAME_PLACE,
         look: Sequence[int] | None = None, blend: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Boxes and scores, best first, from each reference's (boxes, scores): the positives'
    union after NMS, each place scored by the mean over the positives of each look (``look``:
    a look id per positive; None: each its own look) and the best look (``blend``: the mean of
    that and the best positive's score), minus the candidates a negative scores higher at the
    same place."""
    boxes = np.concatenate([np.asarray(b, float).reshape(-1, 4) for b, _ in positive] or
                           [np.zeros((0, 4))])
    scores = np.concatenate([np.asarray(s, float).reshape(-1) for _, s in positive] or
                            [np.zeros(0)])
    keep = nms(boxes, scores, nms_iou)
    boxes, scores = boxes[keep], scores[keep]
    look = np.arange(len(positive)) if look is None else np.asarray(look)
    if len(boxes) and len(set(look.tolist())) < len(positive):
        per = np.stack([  # each reference's score at each candidate (0 where it misses)
            np.where(box_iou(boxes, np.asarray(b, float).reshape(-1, 4)) >= SAME_PLACE,
                     np.asarray(sc, float).reshape(-1)[None], 0.0).max(1)
            if len(b) else np.zeros(len(boxes)) for b, sc in positive])
        by_look = np.max([per[look == g].mean(0) for g in np.unique(look)], axis=0)
        scores = (by_look + scores) / 2 if blend else by_look
    if len(boxes) and len(negative):
        nb = np.concatenate([np.asarray(b, float).reshape(-1, 4) for b, _ in negative])
        ns = np.concatenate([np.asarray(s, float).reshape(-1) for _, s in negative])
        if len(nb):
            iou = box_iou(boxes, nb)
            against = np.where(iou >= SAME_PLACE, ns[None, :], 0.0).max(1)
            ok = against <= scores + NEGATIVE_MARGIN
            boxes, scores = boxes[ok], scores[ok]
    order = np.argsort(-scores, kind="stable")
    return boxes[order], scores[order]


def find_references(matcher: Any, refs: ReferenceSet, home: bool = False
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (N, 4) and scores (N,) of everything like the positives and unlike the negatives
    in ``matcher``'s current image, best first. ``home``: that image is the one the boxes were
    drawn on, so the positives' looks are decided there (``decide_looks``) unless they are."""
    found = {}  # by scale, so that each scale's features are computed once
    refs_all = list(enumerate(refs.positives + refs.negatives))
    for i, r in sorted(refs_all, key=lambda item: _scale(item[1])):
        found[i] = matcher.find(r)
    n = len(refs.positives)
    positive = [found[i] for i in range(n)]
    if home:
        decide_looks(refs, positive.__getitem__)
    return pool(positive, [found[i] for i in range(n, len(refs_all))],
                float(getattr(matcher, "nms_iou", SAME_PLACE)), **pooling(refs))


def decide_looks(refs: ReferenceSet, find: Callable[[int], tuple[np.ndarray, np.ndarray]]
                 ) -> None:
    """Set ``refs.look`` (``looks``) where ``POOLING`` pools by look, there are several positives
    and no looks yet; ``find(i)``: positive ``i``'s (boxes, scores) on the image its box was
    drawn on, in that image's pixels."""
    if pools_by_look(refs.positives) and refs.look is None:
        refs.look = looks([find(i) for i in range(len(refs.positives))], refs.boxes)


def pools_by_look(positives: Sequence[Any]) -> bool:
    """Whether these positives are pooled by their looks (several, and ``POOLING`` says so)."""
    return POOLING in BY_LOOK and len(positives) > 1


def with_positives(refs: ReferenceSet, more: list[Any]) -> ReferenceSet:
    """``refs`` with ``more`` positives (no boxes on the reference image), each its own look."""
    look = refs.look
    if look is not None and more:
        look = np.concatenate([look, look.max() + 1 + np.arange(len(more))])
    return ReferenceSet(refs.positives + more, refs.negatives, look=look)


def pooling(refs: ReferenceSet) -> dict[str, Any]:
    """How ``pool`` combines these positives (``POOLING``): the look of each (one look for all
    with ``"mean"``, the decided ones by look, each its own otherwise: None) and ``blend``."""
    if POOLING == "mean":
        return {"look": np.zeros(len(refs.positives), dtype=int), "blend": False}
    return {"look": refs.look if POOLING in BY_LOOK else None, "blend": POOLING == "blend"}


def not_negative(boxes: np.ndarray, negative_boxes: np.ndarray) -> np.ndarray:
    """Whether each box (N, 4) is other than every negative box (box IoU < ``SAME_PLACE``)."""
    boxes = np.asarray(boxes, float).reshape(-1, 4)
    if not len(boxes) or not len(negative_boxes):
        return np.ones(len(boxes), dtype=bool)
    return box_iou(boxes, negative_boxes).max(1) < SAME_PLACE


class PooledMatcher:
    """A matcher whose ``find`` (and ``find_batch``, where the wrapped one has it) takes a
    ``ReferenceSet``; everything else is the wrapped matcher's (``inner``)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        if name == "inner" or name.startswith("__"):  # not set yet (copy / unpickle)
            raise AttributeError(name)
        if name == "find_batch" and hasattr(self.inner, "find_batch"):
            return self._find_batch
        return getattr(self.inner, name)

    def find(self, refs: ReferenceSet) -> tuple[np.ndarray, np.ndarray]:
        return find_references(self.inner, refs)

    def _find_batch(self, images: list[np.ndarray], refs: ReferenceSet
                    ) -> list[tuple[np.ndarray, np.ndarray]]:
        nms_iou = float(getattr(self.inner, "nms_iou", SAME_PLACE))
        pos = [self.inner.find_batch(images, r) for r in refs.positives]
        neg = [self.inner.find_batch(images, r) for r in refs.negatives]
        return [pool([p[i] for p in pos], [n[i] for n in neg], nms_iou, **pooling(refs))
                for i in range(len(images))]
