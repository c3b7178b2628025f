"""Never worse than template matching: the learned matcher, checked against what the image shows.

For each reference, ``GuardedMatcher`` gathers evidence near it before trusting the learned
matcher: it must find the reference itself (a detection with IoU >= 0.5 scoring at least
``min_self_score``) or be confident somewhere around it (a detection scoring at least
``min_top_score``). When neither holds, the learned matcher is off its domain and the
reference is matched with normalised cross-correlation (NCC) instead; the learned detections
NCC does not have follow NCC's, ranked below them (``after_ncc``). The thresholds were chosen
on the val folders (``benchmarks/bench_generalisation.py``, model card). The decision is made
once per reference, in ``embed_reference``, on a window around the reference, and travels with
it (``GuardedReference.method``), so every tile of a tiled run takes the same path; the Annotator
copies it onto the result (``Instances.properties["matched_by"]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..geometry import box_iou
from ..instances import Instances

EVIDENCE_WINDOW = 4.0  # half-side of the evidence window, in reference sides ...
EVIDENCE_HALF = (64, 384)  # ... kept within these many pixels


@dataclass
class GuardedReference:
    """A reference for both matchers, the path chosen for it and the evidence behind the choice."""

    method: str  # "learned" or "ncc"
    learned: Any
    ncc: np.ndarray
    evidence: dict[str, float] = field(default_factory=dict)


class GuardedMatcher:
    """The learned matcher where the evidence supports it, NCC template matching elsewhere.

    Same interface as the learned matcher (``set_image``, ``embed_reference``, ``find``,
    ``find_batch``, ``scale_for``, ``image_scale``, ``reference_extent``, ``to``); other keyword
    arguments go to ``LearnedMatcher``. ``last_method`` and ``last_evidence`` describe the latest reference.
    """

    def __init__(self, device: str = "cpu", weights: str | Path | None = None,
                 min_self_score: float = 0.2, min_top_score: float = 0.5,
                 **kwargs: Any) -> None:
        from .baselines import NCCMatcher
        from .learned_matcher import LearnedMatcher

        self.learned = LearnedMatcher(device=device, weights=weights, **kwargs)
        self.ncc = NCCMatcher()
        self.min_self_score = float(min_self_score)
        self.min_top_score = float(min_top_score)
        self.last_method: str | None = None
        self.last_evidence: dict[str, float] = {}
        self._found: tuple[int, np.ndarray, np.ndarray] | None = None  # (reference id, result)

    @property
    def device(self) -> str:
        return self.learned.device

    def to(self, device: str) -> GuardedMatcher:
        """Run the learned matcher on ``device`` from now on."""
        self.learned.to(device)
        return self

    def scale_for(self, box: np.ndarray) -> float:
        return self.learned.scale_for(box)

    def image_scale(self, box: np.ndarray) -> float:
        return self.learned.image_scale(box)

    def reference_extent(self, box: np.ndarray) -> float:
        return self.learned.reference_extent(box)

    def set_image(self, rgb: np.ndarray) -> None:
        self.learned.set_image(rgb)
        self.ncc.set_image(np.asarray(rgb, dtype=np.float32))
        self._found = None

    def embed_reference(self, ref_box: np.ndarray) -> GuardedReference:
        """Both matchers' references, and the path chosen from the evidence near ``ref_box``."""
        box = np.asarray(ref_box, dtype=np.float64).reshape(4)
        learned = self.learned.embed_reference(box)
        boxes, scores = self.learned.find(learned)
        ref = GuardedReference("learned", learned, self.ncc.embed_reference(box))
        ref.evidence = self.evidence(box, boxes, scores)
        ok = (ref.evidence["self_score"] >= self.min_self_score
              or ref.evidence["top_score"] >= self.min_top_score)
        ref.method = "learned" if ok else "ncc"
        self.last_method, self.last_evidence = ref.method, ref.evidence
        self._found = (id(ref), boxes, scores)
        return ref

    def evidence(self, box: np.ndarray, boxes: np.ndarray, scores: np.ndarray
                 ) -> dict[str, float]:
        """``self_score``: the learned score of the reference itself (0 when not found);
        ``top_score``: the best learned score in the window around it (``EVIDENCE_WINDOW``
        reference sides, the same in a tile as in the whole image)."""
        iou = box_iou(box[None], boxes)[0] if len(boxes) else np.zeros(0)
        self_score = float(scores[iou >= 0.5].max()) if (iou >= 0.5).any() else 0.0
        side = float(max(box[2] - box[0], box[3] - box[1]))
        half = float(np.clip(EVIDENCE_WINDOW * side, *EVIDENCE_HALF))
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        near = (np.abs(centres - [cx, cy]) < half).all(1)
        top_score = float(scores[near].max()) if near.any() else 0.0
        return {"self_score": self_score, "top_score": top_score}

    def find(self, reference: GuardedReference) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (N, 4) and scores (N,) from the path chosen for ``reference``, best first."""
        if self._found is not None and self._found[0] == id(reference):
            learned = self._found[1], self._found[2]  # found while gathering the evidence
        else:
            learned = self.learned.find(reference.learned)
        if reference.method == "ncc":
            return after_ncc(self.ncc.find(reference.ncc), learned, self.ncc.threshold)
        return learned

    def find_batch(self, images: list[np.ndarray], reference: GuardedReference
                   ) -> list[tuple[np.ndarray, np.ndarray]]:
        """``find`` on each of several RGB [0, 1] images of one shape (tiles)."""
        learned = self.learned.find_batch(images, reference.learned)
        if reference.method == "learned":
            return learned
        out = []
        for im, found in zip(images, learned, strict=True):
            m = type(self.ncc)(threshold=self.ncc.threshold)
            m.set_image(np.asarray(im, dtype=np.float32))
            out.append(after_ncc(m.find(reference.ncc), found, self.ncc.threshold))
        return out


def after_ncc(ncc: tuple[np.ndarray, np.ndarray], learned: tuple[np.ndarray, np.ndarray],
              floor: float) -> tuple[np.ndarray, np.ndarray]:
    """NCC's detections, then the learned ones NCC does not have (box IoU < 0.5), their scores
    scaled below ``floor`` (NCC's lowest score) so that they rank after every NCC match."""
    (nb, ns), (lb, ls) = ncc, learned
    if len(lb) and len(nb):
        new = box_iou(lb, nb).max(1) < 0.5
        lb, ls = lb[new], ls[new]
    return np.concatenate([nb.reshape(-1, 4), lb]), np.concatenate([ns, ls * floor])


def label_method(inst: Instances, reference: Any) -> Instances:
    """``inst`` with ``properties["matched_by"]`` set to the path a guarded ``reference`` took
    (unchanged for other matchers' references)."""
    method = getattr(reference, "method", None)
    if method is not None:
        inst.properties["matched_by"] = np.full(len(inst), method, dtype=object)
    return inst
