"""The learned one-shot matcher behind the ``Matcher`` protocol (``models/matcher.safetensors``)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InstannoError
from ..models.matcher import PEAK_WINDOW, MatcherConfig, OneShotMatcher
from ..models.weights import load_safetensors, models_dir, read_metadata, shipped_path
from .components import warn_if_capped
from .precision import autocast, autocast_dtype

PAD = 32
CNN_CONTEXT = 64  # pixels of context beyond which the features barely change


def load_matcher(weights: str | Path | None = None, device: str = "cpu") -> OneShotMatcher:
    """The matcher from ``weights`` (default: the shipped checkpoint), in eval mode on ``device``."""
    path = Path(weights) if weights is not None else shipped_path("matcher")
    if path is None or not path.is_file():
        raise InstannoError(
            f"matcher weights not found ({path or models_dir() / 'matcher.safetensors'}); "
            "train them with `instanno train matcher --config configs/matcher.yaml` "
            "or choose matcher='ncc'")
    meta = read_metadata(path, "matcher")
    cfg = MatcherConfig.from_dict(json.loads(meta.get("config", "{}")))
    model = OneShotMatcher(cfg, pretrained=False)
    load_safetensors(model, path)
    model.eval().backbone.optimize_for_inference()
    return model.to(device)


class LearnedMatcher:
    """Cross-attention matcher: ``set_image`` keeps the image, features are computed once per scale.

    Small references are matched on an upscaled image so that the reference is at least
    ``min_reference_side`` pixels (geometric mean of its sides), by at most ``max_upscale``: the
    features have stride 8 and tiny objects would merge. Large ones, the mirror rule, on an image
    downscaled by a power of two so that the reference is at most ``max_reference_side`` pixels,
    by at most ``max_downscale`` (the matcher is trained on references up to about 128 px).
    The factor depends on the reference alone, so tiled and whole-image runs agree. Upscaling by
    ``f`` costs ``f²``; features are cached for the last scale used, so new references of a
    similar size only cost the cross-attention and heads. ``threshold`` is the lowest score kept,
    ``max_detections`` the most boxes returned and ``nms_iou`` the overlap above which the weaker
    of two boxes is dropped.
    ``precision`` (``inference.precision``): ``"auto"`` runs the network in bfloat16 autocast on
    CPUs with AMX, float32 elsewhere; ``"float16"`` is a GPU's fast path. References stay float32
    (``test_reduced_precision_finds_the_same_nuclei_and_keeps_float32_references``).
    """

    def __init__(self, device: str = "cpu", weights: str | Path | None = None,
                 threshold: float = 0.05, max_detections: int = 5000, nms_iou: float = 0.5,
                 min_reference_side: float = 36.0, max_upscale: float = 4.0,
                 max_reference_side: float = 112.0, max_downscale: float = 4.0,
                 precision: str = "auto", **_: object) -> None:
        self.device = device
        self.precision = precision
        self.dtype = autocast_dtype(device, precision)
        self.model = load_matcher(weights, device)
        self.threshold = threshold
        self.max_detections = max_detections
        self.nms_iou = nms_iou
        self.min_reference_side = float(min_reference_side)
        self.max_upscale = max(float(max_upscale), 1.0)
        self.max_reference_side = float(max_reference_side)
        self.max_downscale = max(float(max_downscale), 1.0)
        self.image: torch.Tensor | None = None
        self.features: dict | None = None
        self.feature_scale: float | None = None
        self.shape: tuple[int, int] | None = None

    def to(self, device: str) -> LearnedMatcher:
        """Run on ``device`` from now on (features are recomputed there)."""
        self.model.to(device)
        self.device = device
        self.dtype = autocast_dtype(device, self.precision)
        self.features = self.feature_scale = None
        return self

    def _inference(self) -> contextlib.ExitStack:
        """Inference mode, in autocast to ``self.dtype`` (``inference.precision``)."""
        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        stack.enter_context(autocast(self.device, self.dtype))
        return stack

    def set_image(self, rgb: np.ndarray) -> None:
        """Keep an RGB [0, 1] (H, W, 3) image; features are computed at the scale a reference needs."""
        rgb = np.asarray(rgb, dtype=np.float32)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or min(rgb.shape[:2]) < 1:
            raise InstannoError(f"the matcher needs an (H, W, 3) RGB image, got {rgb.shape}")
        self.image = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]
        self.shape = rgb.shape[:2]
        self.features = self.feature_scale = None

    def scale_for(self, box: np.ndarray) -> float:
        """The image's scale for a reference box (x0, y0, x1, y1): 1, an upscaling by a multiple
        of 1/4 (small references) or a downscaling by 1/2 or 1/4 (large ones)."""
        side = float(np.sqrt(max(box[2] - box[0], 1e-6) * max(box[3] - box[1], 1e-6)))
        if self.max_reference_side > 0 and side > self.max_reference_side:
            halvings = np.ceil(np.log2(side / self.max_reference_side))
            return float(max(0.5 ** halvings, 0.5 ** np.floor(np.log2(self.max_downscale))))
        f = np.ceil(min(self.min_reference_side / side, self.max_upscale) * 4) / 4
        return max(1.0, float(f))

    def _features(self, scale: float) -> dict:
        if self.image is None:
            raise InstannoError("no image set on the matcher; call set_image first")
        if self.features is None or self.feature_scale != scale:
            self.features = None  # free the previous scale's features first
            self.features = self._compute_features(self.image, scale)
            self.feature_scale = scale
        return self.features

    def _compute_features(self, images: torch.Tensor, scale: float) -> dict:
        """Features of a (B, 3, H, W) batch upscaled by ``scale`` and padded to a multiple of 32."""
        x = images.to(self.device)  # upscaled where the model runs: on a GPU, a 4-16x smaller copy
        if scale != 1.0:  # the exact factor: windows of an image upscale like the whole
            x = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False,
                              recompute_scale_factor=False, antialias=scale < 1)
        x = F.pad(x, (0, -x.shape[-1] % PAD, 0, -x.shape[-2] % PAD))
        with self._inference():
            return self.model.features(x)

    def embed_reference(self, ref_box: np.ndarray) -> dict[str, Any]:
        """Pooled reference features per scale, the box size and the image scale (usable on any image)."""
        box = np.asarray(ref_box, dtype=np.float32).reshape(4)
        if not (box[2] > box[0] and box[3] > box[1]):
            raise InstannoError(f"reference box {box.tolist()} is empty")
        scale = self.scale_for(box)
        self.check_reference_size(box, scale)
        feats = self._features(scale)
        with self._inference():
            scaled = torch.as_tensor(box * scale, device=self.device)[None]
            ref = self.model.embed_reference(feats, scaled)
            ref = self.model.with_peaks(feats, ref, (scaled[:, :2] + scaled[:, 2:]) / 2)
        return {**_on(ref, self.device), "scale": scale}

    def check_reference_size(self, box: np.ndarray, scale: float) -> None:
        """A one-line error for a reference still more than twice ``max_reference_side`` after
        the largest downscaling (the matcher was trained on references up to 128 px)."""
        side = float(np.sqrt((box[2] - box[0]) * (box[3] - box[1])))
        limit = 2 * self.max_reference_side / scale
        if self.max_reference_side > 0 and side > limit:
            raise InstannoError(
                f"the reference is {side:.0f} px across; the learned matcher takes references up "
                f"to {limit:.0f} px (the image downscaled {1 / scale:.0f}x): open a downscaled "
                "image (a lower pyramid level) or choose matcher='ncc'")

    def reference_extent(self, box: np.ndarray) -> float:
        """Half-side (image pixels) of the window around a box's centre that ``embed_reference``
        depends on: the reference crop, the attention-peak window and the CNN's context."""
        cfg, scale = self.model.cfg, self.scale_for(box)
        crop = max(cfg.context * float(max(box[2] - box[0], box[3] - box[1])) * scale, cfg.min_crop)
        return (max(crop, PEAK_WINDOW) / 2 + CNN_CONTEXT) / scale

    def find(self, reference: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (N, 4) x0y0x1y1 and scores (N,) of every match in the current image, best first."""
        scale = float(reference.get("scale", 1.0))
        feats = self._features(scale)
        reference = _on(reference, self.device)
        with self._inference():
            found = self.model.detect(feats, reference, self.threshold, self.max_detections,
                                      self.nms_iou)[0]
        return self._in_image(*found, scale, self.shape)

    def find_batch(self, images: list[np.ndarray], reference: dict[str, Any]
                   ) -> list[tuple[np.ndarray, np.ndarray]]:
        """``find`` on each of several RGB [0, 1] images of one shape, in one batched pass (the
        way tiles fill a GPU); the single-image feature cache is left alone."""
        if not images:
            return []
        shape = np.shape(images[0])
        if any(np.shape(im) != shape for im in images) or len(shape) != 3 or shape[2] != 3:
            raise InstannoError("find_batch needs RGB images (H, W, 3) of one shape, got "
                                f"{sorted({np.shape(im) for im in images})}")
        scale = float(reference.get("scale", 1.0))
        # (B, H, W, 3) viewed as (B, 3, H, W): channels-last, as the backbone runs, no copy
        x = torch.from_numpy(np.stack(images).astype(np.float32, copy=False)).permute(0, 3, 1, 2)
        n = len(images)
        feats = self._compute_features(x, scale)
        reference = _on(reference, self.device)
        ref = {"q": {s: q.expand(n, -1) for s, q in reference["q"].items()},
               "size": reference["size"].expand(n, -1),
               **({"peak": {s: p.expand(n) for s, p in reference["peak"].items()}}
                  if "peak" in reference else {})}
        with self._inference():
            found = self.model.detect(feats, ref, self.threshold, self.max_detections, self.nms_iou)
        return [self._in_image(b, s, scale, shape[:2]) for b, s in found]

    def _in_image(self, boxes: torch.Tensor, scores: torch.Tensor, scale: float,
                  shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Detections back in image pixels, those centred in the padding dropped, boxes clipped."""
        warn_if_capped(len(boxes), self.max_detections, "learned")
        boxes, scores = boxes.cpu().double().numpy() / scale, scores.cpu().double().numpy()
        h, w = shape
        cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
        inside = (cx < w) & (cy < h)
        boxes, scores = boxes[inside], scores[inside]
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        return boxes, scores


def _on(tree: Any, device: str) -> Any:
    """A reference (nested dicts of tensors) on ``device``, floats as float32."""
    if isinstance(tree, torch.Tensor):
        return tree.to(device, torch.float32 if tree.is_floating_point() else None)
    if isinstance(tree, dict):
        return {k: _on(v, device) for k, v in tree.items()}
    return tree
