"""The learned one-shot matcher behind the ``Matcher`` protocol (``models/matcher.safetensors``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InstannoError
from ..models.matcher import MatcherConfig, OneShotMatcher
from ..models.weights import load_safetensors, models_dir, shipped_path

PAD = 32


def load_matcher(weights: str | Path | None = None, device: str = "cpu") -> OneShotMatcher:
    """The matcher from ``weights`` (default: the shipped checkpoint), in eval mode on ``device``."""
    from safetensors import safe_open

    path = Path(weights) if weights is not None else shipped_path("matcher")
    if path is None or not path.is_file():
        raise InstannoError(
            f"matcher weights not found ({path or models_dir() / 'matcher.safetensors'}); "
            "train them with `instanno train matcher --config configs/matcher.yaml` "
            "or choose matcher='ncc'")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as err:
        raise InstannoError(f"cannot read matcher weights {path}: {err}") from err
    cfg = MatcherConfig.from_dict(json.loads(meta.get("config", "{}")))
    model = OneShotMatcher(cfg, pretrained=False)
    load_safetensors(model, path)
    return model.eval().to(device)


class LearnedMatcher:
    """Cross-attention matcher: ``set_image`` caches the backbone features, prompts are cheap.

    ``threshold`` is the lowest score kept, ``max_detections`` the most boxes returned and
    ``nms_iou`` the overlap above which the weaker of two boxes is dropped.
    """

    def __init__(self, device: str = "cpu", weights: str | Path | None = None,
                 threshold: float = 0.05, max_detections: int = 1000, nms_iou: float = 0.5,
                 **_: object) -> None:
        self.device = device
        self.model = load_matcher(weights, device)
        self.threshold = threshold
        self.max_detections = max_detections
        self.nms_iou = nms_iou
        self.features: dict | None = None
        self.shape: tuple[int, int] | None = None

    def set_image(self, rgb: np.ndarray) -> None:
        """Compute and cache the features of an RGB [0, 1] (H, W, 3) image (padded internally)."""
        rgb = np.asarray(rgb, dtype=np.float32)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or min(rgb.shape[:2]) < 1:
            raise InstannoError(f"the matcher needs an (H, W, 3) RGB image, got {rgb.shape}")
        h, w = rgb.shape[:2]
        x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]
        x = F.pad(x, (0, -w % PAD, 0, -h % PAD)).to(self.device)
        with torch.inference_mode():
            self.features = self.model.features(x)
        self.shape = (h, w)

    def _need_image(self) -> dict:
        if self.features is None:
            raise InstannoError("no image set on the matcher; call set_image first")
        return self.features

    def embed_reference(self, ref_box: np.ndarray) -> dict[str, Any]:
        """Pooled reference features per scale and the box size (usable on any image)."""
        feats = self._need_image()
        box = torch.as_tensor(np.asarray(ref_box, dtype=np.float32).reshape(1, 4),
                              device=self.device)
        if not (box[0, 2] > box[0, 0] and box[0, 3] > box[0, 1]):
            raise InstannoError(f"reference box {np.asarray(ref_box).tolist()} is empty")
        with torch.inference_mode():
            return self.model.embed_reference(feats, box)

    def find(self, reference: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (N, 4) x0y0x1y1 and scores (N,) of every match in the current image, best first."""
        feats = self._need_image()
        with torch.inference_mode():
            boxes, scores = self.model.detect(feats, reference, self.threshold,
                                              self.max_detections, self.nms_iou)[0]
        boxes, scores = boxes.cpu().double().numpy(), scores.cpu().double().numpy()
        h, w = self.shape
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        inside = (cx < w) & (cy < h)
        boxes, scores = boxes[inside], scores[inside]
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        return boxes, scores
