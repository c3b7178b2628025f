"""The learned one-shot matcher behind the ``Matcher`` protocol (``models/matcher.safetensors``)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InstannoError
from ..models.int8 import quantize_body
from ..models.matcher import MatcherConfig, OneShotMatcher
from ..models.weights import load_safetensors, models_dir, read_metadata, shipped_path
from . import views as views_module
from .components import warn_if_capped
from .precision import autocast, autocast_dtype, uses_int8
from .views import fuse, unview_boxes, view_boxes, view_image, views_for

PAD = 32
CNN_CONTEXT = 64  # pixels of context beyond which the features barely change


FINE = "matcher_fine"  # the stride-4 matcher beside a matcher's weights (configs/matcher_fine.yaml)
SHARED = "backbone"  # metadata key: "shared" when a file holds no backbone (that of the matcher
#                      beside it: ``train_matcher``'s ``share_backbone``)


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


def load_fine(weights: Path, coarse: OneShotMatcher, device: str = "cpu"
              ) -> OneShotMatcher | None:
    """The fine matcher ``matcher_fine.safetensors`` beside ``weights``, or None when there is
    none: with a backbone of its own, or (metadata ``backbone: shared``) on ``coarse``'s."""
    from safetensors.torch import load_file

    path = weights.with_name(f"{FINE}.safetensors")
    if not path.is_file():
        return None
    meta = read_metadata(path, FINE)
    if meta.get(SHARED) != "shared":
        return load_matcher(path, device)
    cfg = MatcherConfig.from_dict(json.loads(meta.get("config", "{}")))
    fine = OneShotMatcher(cfg, pretrained=False, body=coarse.backbone.body)  # its own taps
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    missing, unexpected = fine.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("backbone.") for k in missing):
        raise InstannoError(f"{path} does not fit its config ({(unexpected or missing)[0]}); "
                            "is the file corrupt?")
    fine.eval().backbone.inference_layout = True  # the shared layers are folded already
    return fine.to(device)


class LearnedMatcher:
    """Cross-attention matcher: ``set_image`` keeps the image, features are computed once per scale.

    Small references are matched on an upscaled image so that the reference is at least
    ``min_reference_side`` pixels (geometric mean of its sides), by at most ``max_upscale``: the
    features have stride 8 and tiny objects would merge. Large ones, the mirror rule, on an image
    downscaled by a power of two so that the reference is at most ``max_reference_side`` pixels,
    by at most ``max_downscale`` (the matcher is trained on references up to about 128 px).
    Where the weights' folder holds the fine matcher (``FINE``: stride 4, taught to find what
    this one finds on the image upscaled by its ``resolution``, 2), small references use it
    instead, on the image upscaled that much less (often not at all): their ``scale`` is then the
    one this matcher would see, at least the fine one's ``resolution``, and ``runner`` says which
    model runs at which image scale.
    The factor depends on the reference alone, so tiled and whole-image runs agree. Upscaling by
    ``f`` costs ``f²``; features are cached for the last scale used, so new references of a
    similar size only cost the cross-attention and heads. ``threshold`` is the lowest score kept,
    ``max_detections`` the most boxes returned and ``nms_iou`` the overlap above which the weaker
    of two boxes is dropped.
    ``views``: the most dihedral views (``inference.views``: 1, 2, 4 or 8) a reference is matched
    in, its detections fused; how many it gets depends on the pixels of the image the reference
    is embedded for (the current image's; the tiler embeds inside ``views_as_for`` the whole
    image's, so tiles get the views the whole image would) at the reference's scale.
    ``precision`` (``inference.precision``): ``"auto"`` runs the network in bfloat16 autocast on
    CPUs with AMX, float32 elsewhere, there with the backbone's costliest layers in int8 where
    the weights' folder holds their calibration (``models.int8``; ``int8`` says whether they
    do); ``"float32"`` keeps all float; ``"float16"`` is a GPU's fast path. References stay
    float32 (``test_reduced_precision_finds_the_same_nuclei_and_keeps_float32_references``).
    """

    def __init__(self, device: str = "cpu", weights: str | Path | None = None,
                 threshold: float = 0.05, max_detections: int = 5000, nms_iou: float = 0.5,
                 min_reference_side: float = 36.0, max_upscale: float = 4.0,
                 max_reference_side: float = 112.0, max_downscale: float = 4.0,
                 precision: str = "auto", views: int | None = None, **_: object) -> None:
        self.device = device
        self.precision = precision
        self.dtype = autocast_dtype(device, precision)
        self.model = load_matcher(weights, device)
        path = Path(weights) if weights is not None else shipped_path("matcher")
        self.fine = load_fine(path, self.model, device)
        # int8 layers where calibrated for these weights (``models.int8``); not under a fine
        # matcher, which taps the shared body inside the int8 span
        self.int8 = (self.fine is None and uses_int8(device, precision)
                     and quantize_body(self.model.backbone.body, path))
        self.threshold = threshold
        self.max_detections = max_detections
        self.nms_iou = nms_iou
        self.min_reference_side = float(min_reference_side)
        self.max_upscale = max(float(max_upscale), 1.0)
        self.max_reference_side = float(max_reference_side)
        self.max_downscale = max(float(max_downscale), 1.0)
        self.views = int(views_module.MOST_VIEWS if views is None else views)
        self.view_pixels: float | None = None
        self.shared_scale: tuple[float, float] | None = None  # (scale, factor): ``scale_shared``
        self.image: torch.Tensor | None = None
        self.features: dict[str, dict] = {}  # by view, at ``feature_scale``
        self.feature_scale: float | None = None
        self.shape: tuple[int, int] | None = None

    def to(self, device: str) -> LearnedMatcher:
        """Run on ``device`` from now on (features are recomputed there)."""
        self.model.to(device)
        if self.fine is not None:
            self.fine.to(device)
        self.device = device
        self.dtype = autocast_dtype(device, self.precision)
        self.features, self.feature_scale = {}, None
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
        self.features, self.feature_scale = {}, None

    def scale_for(self, box: np.ndarray) -> float:
        """The image's scale for a reference box (x0, y0, x1, y1): 1, an upscaling by a multiple
        of 1/4 (small references) or a downscaling by 1/2 or 1/4 (large ones); inside
        ``scale_shared``, the shared scale where this is within its factor of it."""
        own = self._own_scale(box)
        if self.shared_scale is None:
            return own
        common, factor = self.shared_scale
        return common if max(own, common) / min(own, common) <= factor else own

    def _own_scale(self, box: np.ndarray) -> float:
        side = float(np.sqrt(max(box[2] - box[0], 1e-6) * max(box[3] - box[1], 1e-6)))
        if self.max_reference_side > 0 and side > self.max_reference_side:
            halvings = np.ceil(np.log2(side / self.max_reference_side))
            return float(max(0.5 ** halvings, 0.5 ** np.floor(np.log2(self.max_downscale))))
        f = max(1.0, float(np.ceil(min(self.min_reference_side / side, self.max_upscale) * 4) / 4))
        if self.fine is None or f == 1:
            return f
        # a multiple of 1/2: the fine matcher's image scale is a multiple of 1/4, as the tiler needs
        return max(float(np.ceil(f * 2) / 2), self.fine.cfg.resolution)

    def image_scale(self, box: np.ndarray) -> float:
        """The scale of the image the model sees for a reference box (``runner``)."""
        return self.runner(self.scale_for(box))[1]

    def runner(self, scale: float) -> tuple[OneShotMatcher, float]:
        """The model that matches references of ``scale`` (see the class) and the scale of the
        image it sees."""
        if self.fine is not None and scale > 1:
            return self.fine, scale / self.fine.cfg.resolution
        return self.model, scale

    def _features(self, scale: float, view: str = "") -> dict:
        if self.image is None:
            raise InstannoError("no image set on the matcher; call set_image first")
        if self.feature_scale != scale:
            self.features = {}  # free the previous scale's features first
            self.feature_scale = scale
        if view not in self.features:
            self.features[view] = self._compute_features(self.image, scale, view)
        return self.features[view]

    def _compute_features(self, images: torch.Tensor, scale: float, view: str = "") -> dict:
        """Features of a (B, 3, H, W) batch for references of ``scale`` (``runner``), padded to a
        multiple of 32 and seen in ``view``."""
        model, scale = self.runner(scale)
        x = images.to(self.device)  # upscaled where the model runs: on a GPU, a 4-16x smaller copy
        if scale != 1.0:  # the exact factor: windows of an image upscale like the whole
            x = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False,
                              recompute_scale_factor=False, antialias=scale < 1)
        x = F.pad(x, (0, -x.shape[-1] % PAD, 0, -x.shape[-2] % PAD))
        with self._inference():
            return model.features(view_image(x, view))

    def _padded(self, shape: tuple[int, int], scale: float) -> tuple[int, int]:
        """(H, W) of an image of ``shape`` as the model for ``scale`` sees it: rescaled, padded."""
        scale = self.runner(scale)[1]
        h, w = (int(np.floor(n * scale)) for n in shape)
        return h + -h % PAD, w + -w % PAD

    @contextlib.contextmanager
    def scale_shared(self, box: np.ndarray, factor: float) -> Iterator[None]:
        """Inside the block, every reference whose own scale is within ``factor`` of ``box``'s
        is embedded at ``box``'s (``references.one_scale``: one feature pass serves them)."""
        self.shared_scale = (self._own_scale(box), float(factor))
        try:
            yield
        finally:
            self.shared_scale = None

    @contextlib.contextmanager
    def views_as_for(self, pixels: float) -> Iterator[None]:
        """Inside the block, references get the views an image of ``pixels`` would (the tiler:
        the whole image's, not the window's it embeds them in)."""
        self.view_pixels = float(pixels)
        try:
            yield
        finally:
            self.view_pixels = None

    def embed_reference(self, ref_box: np.ndarray) -> dict[str, Any]:
        """Pooled reference features per scale, the box size and the image scale (usable on any
        image), and the same in each further view (``views``) under ``"views"``."""
        box = np.asarray(ref_box, dtype=np.float32).reshape(4)
        if not (box[2] > box[0] and box[3] > box[1]):
            raise InstannoError(f"reference box {box.tolist()} is empty")
        scale = self.scale_for(box)
        self.check_reference_size(box, scale)
        image = self._features(scale)["image"]  # (raises when no image is set)
        pixels = float(self.view_pixels or np.prod(self.shape)) * scale ** 2
        views = views_for(pixels, self.views)
        model, model_scale = self.runner(scale)
        scaled = box.astype(np.float64) * model_scale
        with self._inference():
            # the reference crop of each view is the crop seen in that view: one batched pass
            b = torch.as_tensor(scaled, dtype=torch.float32, device=self.device)[None]
            crops, local = model.reference_crops(image, b)
            side = crops.shape[-1]
            local = local.cpu().double().numpy()
            q = model.embed_crops(
                torch.cat([view_image(crops, v) for v in views]),
                torch.as_tensor(np.concatenate([view_boxes(local, v, (side, side))
                                                for v in views]), dtype=torch.float32,
                                device=self.device),
                torch.cat([(b[:, 2:] - b[:, :2]).flip(-1) if "t" in v else b[:, 2:] - b[:, :2]
                           for v in views]))
        refs = {}
        padded = self._padded(self.shape, scale)
        for i, view in enumerate(views):
            feats = self._features(scale, view)
            at = torch.as_tensor(view_boxes(scaled, view, padded), dtype=torch.float32,
                                 device=self.device)
            one = {"q": {s: v[i:i + 1] for s, v in q["q"].items()}, "size": q["size"][i:i + 1]}
            with self._inference():
                refs[view] = _on(model.with_peaks(feats, one, (at[:, :2] + at[:, 2:]) / 2),
                                 self.device)
        first = refs.pop("")
        return {**first, "scale": scale, **({"views": refs} if refs else {})}

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
        model, scale = self.runner(self.scale_for(box))
        cfg = model.cfg
        crop = max(cfg.context * float(max(box[2] - box[0], box[3] - box[1])) * scale, cfg.min_crop)
        return (max(crop, cfg.peak_window) / 2 + CNN_CONTEXT) / scale

    def find(self, reference: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (N, 4) x0y0x1y1 and scores (N,) of every match in the current image, best first."""
        scale = float(reference.get("scale", 1.0))
        model = self.runner(scale)[0]
        found = []
        for view, ref in _views(reference):
            feats = self._features(scale, view)
            with self._inference():
                found.append(model.detect(feats, _on(ref, self.device), self.threshold,
                                               self.max_detections, self.nms_iou)[0])
        return self._in_image(self._fused(found, reference, self.shape), self.shape)

    def find_batch(self, images: list[np.ndarray], reference: dict[str, Any]
                   ) -> list[tuple[np.ndarray, np.ndarray]]:
        """``find`` on each of several RGB [0, 1] images of one shape, in one batched pass per
        view (the way tiles fill a GPU); the single-image feature cache is left alone."""
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
        model = self.runner(scale)[0]
        per_view = []
        for view, one in _views(reference):
            feats = self._compute_features(x, scale, view)
            one = _on(one, self.device)
            ref = {"q": {s: q.expand(n, -1) for s, q in one["q"].items()},
                   "size": one["size"].expand(n, -1),
                   **({"peak": {s: p.expand(n) for s, p in one["peak"].items()}}
                      if "peak" in one else {})}
            with self._inference():
                per_view.append(model.detect(feats, ref, self.threshold,
                                                  self.max_detections, self.nms_iou))
            del feats
        return [self._in_image(self._fused([f[i] for f in per_view], reference, shape[:2]),
                               shape[:2]) for i in range(n)]

    def _fused(self, found: list[tuple[torch.Tensor, torch.Tensor]], reference: dict[str, Any],
               shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Each view's detections (model pixels, in the view) back in the image's frame, those
        centred in the padding dropped, fused; in image pixels."""
        scale = float(reference.get("scale", 1.0))
        padded = self._padded(shape, scale)
        model_scale = self.runner(scale)[1]
        out = []
        for (view, _), (b, s) in zip(_views(reference), found, strict=True):
            boxes = unview_boxes(b.cpu().double().numpy(), view, padded) / model_scale
            cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
            inside = (cx >= 0) & (cy >= 0) & (cx < shape[1]) & (cy < shape[0])
            out.append((boxes[inside], s.cpu().double().numpy()[inside]))
        boxes, scores = fuse(out)
        keep = scores >= self.threshold  # a place seen in few views scores less
        return boxes[keep][:self.max_detections], scores[keep][:self.max_detections]

    def _in_image(self, found: tuple[np.ndarray, np.ndarray], shape: tuple[int, int]
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Detections with their boxes clipped to the image."""
        boxes, scores = found
        warn_if_capped(len(boxes), self.max_detections, "learned")
        h, w = shape
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        return boxes, scores


def _views(reference: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(view, that view's reference) for each view ``reference`` was embedded in, ``""`` first."""
    first = {k: v for k, v in reference.items() if k != "views"}
    return [("", first), *reference.get("views", {}).items()]


def _on(tree: Any, device: str) -> Any:
    """A reference (nested dicts of tensors) on ``device``, floats as float32."""
    if isinstance(tree, torch.Tensor):
        return tree.to(device, torch.float32 if tree.is_floating_point() else None)
    if isinstance(tree, dict):
        return {k: _on(v, device) for k, v in tree.items()}
    return tree
