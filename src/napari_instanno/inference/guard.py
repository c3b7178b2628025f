"""Never worse than template matching: the learned matcher, checked against what the image shows.

For each reference, ``GuardedMatcher`` gathers evidence near it before trusting the learned
matcher: the learned matcher must find the reference itself (a detection with IoU >= 0.5 scoring
at least ``min_self_score``), and it must agree with normalised cross-correlation (NCC): of the
confident NCC matches around the reference (NCC >= ``ncc_confident``), at least ``min_agreement``
must be among its detections. When a check fails, the learned matcher is off its domain and the
reference is matched with NCC instead. The decision is made once per reference, in
``embed_reference``, on a window around the reference, and travels with it
(``GuardedReference.method``), so every tile of a tiled run takes the same path; the Annotator
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
    ``find_batch``, ``scale_for``, ``reference_extent``, ``to``); other keyword arguments go to
    ``LearnedMatcher``. ``last_method`` and ``last_evidence`` describe the latest reference.
    """

    def __init__(self, device: str = "cpu", weights: str | Path | None = None,
                 min_self_score: float = 0.3, min_agreement: float = 0.5,
                 ncc_confident: float = 0.6, **kwargs: Any) -> None:
        from .baselines import NCCMatcher
        from .learned_matcher import LearnedMatcher

        self.learned = LearnedMatcher(device=device, weights=weights, **kwargs)
        self.ncc = NCCMatcher()
        self.min_self_score = float(min_self_score)
        self.min_agreement = float(min_agreement)
        self.ncc_confident = float(ncc_confident)
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
        ref.evidence = self.evidence(box, boxes, scores, ref.ncc)
        ok = (ref.evidence["self_score"] >= self.min_self_score
              and ref.evidence["agreement"] >= self.min_agreement)
        ref.method = "learned" if ok else "ncc"
        self.last_method, self.last_evidence = ref.method, ref.evidence
        self._found = (id(ref), boxes, scores)
        return ref

    def evidence(self, box: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
                 template: np.ndarray) -> dict[str, float]:
        """``self_score``: the learned score of the reference itself (0 when not found);
        ``ncc_matches``: confident NCC matches other than the reference in the window around it;
        ``agreement``: the share of those the learned matcher finds (1 when there are none)."""
        iou = box_iou(box[None], boxes)[0] if len(boxes) else np.zeros(0)
        self_score = float(scores[iou >= 0.5].max()) if (iou >= 0.5).any() else 0.0
        gray = self.ncc.gray
        h, w = gray.shape
        side = float(max(box[2] - box[0], box[3] - box[1]))
        half = float(np.clip(EVIDENCE_WINDOW * side, *EVIDENCE_HALF))
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        x0, x1 = max(int(cx - half), 0), min(int(np.ceil(cx + half)), w)
        y0, y1 = max(int(cy - half), 0), min(int(np.ceil(cy + half)), h)
        local = type(self.ncc)(threshold=self.ncc_confident)
        local.gray = gray[y0:y1, x0:x1]
        nb, _ = local.find(template)
        nb = nb + [x0, y0, x0, y0]
        others = nb[box_iou(box[None], nb)[0] < 0.5] if len(nb) else nb
        confident = boxes[scores >= self.min_self_score]
        if len(others) == 0:
            agreement = 1.0
        elif len(confident) == 0:
            agreement = 0.0
        else:
            agreement = float((box_iou(others, confident).max(1) >= 0.3).mean())
        return {"self_score": self_score, "ncc_matches": float(len(others)),
                "agreement": agreement}

    def find(self, reference: GuardedReference) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (N, 4) and scores (N,) from the path chosen for ``reference``."""
        if reference.method == "ncc":
            return self.ncc.find(reference.ncc)
        if self._found is not None and self._found[0] == id(reference):
            return self._found[1], self._found[2]  # found while gathering the evidence
        return self.learned.find(reference.learned)

    def find_batch(self, images: list[np.ndarray], reference: GuardedReference
                   ) -> list[tuple[np.ndarray, np.ndarray]]:
        """``find`` on each of several RGB [0, 1] images of one shape (tiles)."""
        if reference.method == "learned":
            return self.learned.find_batch(images, reference.learned)
        out = []
        for im in images:
            m = type(self.ncc)(threshold=self.ncc.threshold)
            m.set_image(np.asarray(im, dtype=np.float32))
            out.append(m.find(reference.ncc))
        return out


def label_method(inst: Instances, reference: Any) -> Instances:
    """``inst`` with ``properties["matched_by"]`` set to the path a guarded ``reference`` took
    (unchanged for other matchers' references)."""
    method = getattr(reference, "method", None)
    if method is not None:
        inst.properties["matched_by"] = np.full(len(inst), method, dtype=object)
    return inst
