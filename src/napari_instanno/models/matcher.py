"""The one-shot matcher: a cross-attention Siamese detector (anchor-free, CenterNet style).

The search image goes once through the shared backbone (``features``, cached by callers). The
reference is a square crop around its box with context, resized to a fixed size (``roi_align``) and
sent through the same backbone; per scale its object-pooled and crop-pooled features form ``Q``
(``embed_reference``). ``detect`` runs, per scale, ``att = softmax(FC_Q(Q) . FC_K(K) / sqrt(d))``
over the search positions (``K = V = F_search``), ``cross = att * FC_V(V)``, and concatenates the
search features, ``cross``, the channel-wise products ``FC_Q(Q) * FC_K(K)`` and the similarity map;
the scales are fused at the finest stride, where a head predicts a centre heatmap, a sub-cell offset
and the box size relative to the reference (``log(w / w_ref)``, ``log(h / h_ref)``). Peaks of the
heatmap become boxes, then NMS.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import batched_nms, roi_align

from .backbone import Backbone


@dataclass
class MatcherConfig:
    """Architecture hyper-parameters (stored in the weights' metadata)."""

    strides: tuple[int, ...] = (8, 16)
    dim: int = 64
    ref_size: int = 64          # side of the reference crop fed to the backbone
    context: float = 2.0        # crop side = context * the reference box's longer side ...
    min_crop: float = 64.0      # ... but at least this many image pixels (small objects at scale 1)
    backbone: str = "mobilenet_v2"  # or resnet18 / resnet34 / resnet50 (models.backbone.ARCHS)
    peak_window: float = 256.0  # side (model pixels) of the square holding a reference's
    #                             attention peak at inference: the training crop's side
    resolution: float = 1.0  # the image as the stride-8 matcher sees it upscaled this much (a
    #                          stride-4 matcher taught by it on 2x images, ``matcher_fine``: 2)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["strides"] = list(self.strides)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> MatcherConfig:
        d = dict(d)
        d["strides"] = tuple(d.get("strides", (8, 16)))
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def reference_windows(boxes: torch.Tensor, cfg: MatcherConfig) -> torch.Tensor:
    """Square crop windows (x0, y0, x1, y1) centred on each box (N, 4), with context."""
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    side = torch.maximum((boxes[:, 2:] - boxes[:, :2]).amax(1) * cfg.context,
                         torch.full_like(cx, cfg.min_crop))
    return torch.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], 1)


def crop_reference(images: torch.Tensor, boxes: torch.Tensor, batch_index: torch.Tensor,
                   cfg: MatcherConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference crops (N, 3, S, S) from ``images`` and each box in crop pixel coordinates."""
    win = reference_windows(boxes, cfg)
    rois = torch.cat([batch_index[:, None].to(win), win], 1)
    crops = roi_align(images, rois, cfg.ref_size, spatial_scale=1.0, sampling_ratio=2,
                      aligned=True)
    scale = cfg.ref_size / (win[:, 2] - win[:, 0])
    local = (boxes - win[:, [0, 1, 0, 1]]) * scale[:, None]
    return crops, local


class CrossAttention(nn.Module):
    """Per-scale attention of the reference query over the search positions."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc_q = nn.Linear(2 * dim, dim)
        self.fc_k = nn.Conv2d(dim, dim, 1)
        self.fc_v = nn.Conv2d(dim, dim, 1)
        self.out = nn.Sequential(nn.Conv2d(3 * dim + 1, dim, 1), nn.ReLU(inplace=True))
        self.scale = 1.0 / math.sqrt(dim)

    def similarity(self, feat: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Channel-wise products ``FC_Q(Q) * FC_K(K)`` (B, d, H, W) and their scaled sum (B, 1, H, W)."""
        corr = self.fc_q(q)[:, :, None, None] * self.fc_k(feat)
        return corr, corr.sum(1, keepdim=True) * self.scale

    def forward(self, feat: torch.Tensor, q: torch.Tensor, peak: torch.Tensor | None = None
                ) -> torch.Tensor:
        corr, sim = self.similarity(feat, q)
        # softmax over positions divided by its peak: bounded and independent of the image size.
        # ``peak`` (B,), the similarity's maximum near the reference, makes it independent of
        # the image's extent too (tiles); without it the maximum over the map is used.
        if peak is None:
            peak = sim.flatten(1).amax(1)
        att = torch.exp((sim - peak[:, None, None, None]).clamp(max=0.0))
        cross = att * self.fc_v(feat)
        # out(cat([feat, cross, corr, sim])) as a sum of per-part 1x1 convolutions, the sim part
        # folded into the corr one (sim = scale * corr summed over channels): the same function
        # without the concatenation, which is slow for channels-last maps
        conv, d = self.out[0], feat.shape[1]
        w = conv.weight
        w_corr = w[:, 2 * d:3 * d] + self.scale * w[:, 3 * d:3 * d + 1]
        y = F.conv2d(feat, w[:, :d], conv.bias) + F.conv2d(cross, w[:, d:2 * d]) \
            + F.conv2d(corr, w_corr)
        return self.out[1](y)


class OneShotMatcher(nn.Module):
    """Find every instance like a reference box: ``features`` -> ``embed_reference`` -> ``detect``.

    ``body``: another matcher's backbone layers to share (``Backbone``)."""

    def __init__(self, cfg: MatcherConfig | None = None, pretrained: bool = True,
                 body: nn.Sequential | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or MatcherConfig()
        self.backbone = Backbone(cfg.strides, pretrained=pretrained, arch=cfg.backbone, body=body)
        self.strides = self.backbone.strides
        self.stride = self.strides[0]
        d = cfg.dim
        self.proj = nn.ModuleDict({
            str(s): nn.Sequential(nn.Conv2d(self.backbone.channels[s], d, 1), nn.ReLU(inplace=True))
            for s in self.strides})
        self.attn = nn.ModuleDict({str(s): CrossAttention(d) for s in self.strides})
        self.head = nn.Sequential(
            nn.Conv2d(d + 2, d, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(d, d, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(d, 5, 1))
        nn.init.constant_(self.head[-1].bias[:1], -4.0)  # heatmap prior ~2 %

    def train(self, mode: bool = True) -> OneShotMatcher:
        super().train(mode)
        for m in self.backbone.modules():  # small batches: keep ImageNet BN statistics
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    def _project(self, images: torch.Tensor) -> dict[int, torch.Tensor]:
        f = self.backbone(images)
        return {s: self.proj[str(s)](f[s]) for s in self.strides}

    def features(self, images: torch.Tensor) -> dict:
        """Search features of an RGB [0, 1] batch (B, 3, H, W), H and W multiples of 32."""
        return {"image": images, "feats": self._project(images)}

    def embed_reference(self, features: dict, boxes: torch.Tensor,
                        batch_index: torch.Tensor | None = None) -> dict:
        """Reference query per scale (N, 2 * dim) and box size (N, 2) for boxes (N, 4) (x0y0x1y1)."""
        return self.embed_crops(*self.reference_crops(features["image"], boxes, batch_index),
                                sizes=boxes[:, 2:] - boxes[:, :2])

    def reference_crops(self, images: torch.Tensor, boxes: torch.Tensor,
                        batch_index: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed-size reference crops and the boxes inside them."""
        if batch_index is None:
            batch_index = torch.zeros(len(boxes), dtype=torch.long, device=boxes.device)
        return crop_reference(images, boxes.float(), batch_index, self.cfg)

    def embed_crops(self, crops: torch.Tensor, local: torch.Tensor, sizes: torch.Tensor) -> dict:
        """Reference from crops (N, 3, S, S), boxes in crop pixels (N, 4) and box sizes (N, 2)."""
        feats = self._project(crops)
        rois = torch.cat([torch.arange(len(local), device=local.device)[:, None].to(local),
                          local], 1)
        q = {}
        for s, f in feats.items():
            obj = roi_align(f, rois, 2, spatial_scale=1.0 / s, sampling_ratio=2,
                            aligned=True).mean((2, 3))
            q[s] = torch.cat([obj, f.mean((2, 3))], 1)
        return {"q": q, "size": sizes.float().clamp(min=1.0)}

    def with_peaks(self, features: dict, ref: dict, centres: torch.Tensor) -> dict:
        """``ref`` with each scale's attention peak fixed to the similarity's maximum over the
        ``cfg.peak_window``-pixel square around each centre (N, 2) (x, y) in batch item 0's
        pixels."""
        peaks, window = {}, self.cfg.peak_window
        for s in self.strides:
            feat = features["feats"][s]
            h, w = feat.shape[-2:]
            vals = []
            for i, (cx, cy) in enumerate(centres.tolist()):
                r0, r1 = max(int((cy - window / 2) // s), 0), min(int((cy + window / 2) // s) + 1, h)
                c0, c1 = max(int((cx - window / 2) // s), 0), min(int((cx + window / 2) // s) + 1, w)
                _, sim = self.attn[str(s)].similarity(feat[:1, :, r0:r1, c0:c1], ref["q"][s][i:i + 1])
                vals.append(sim.amax())
            peaks[s] = torch.stack(vals)
        return {**ref, "peak": peaks}

    def forward_maps(self, features: dict, ref: dict) -> torch.Tensor:
        """Raw head outputs (B, 5, H/8, W/8): heatmap logit, offset (2), log size ratio (2)."""
        out = None
        peaks = ref.get("peak", {})
        for s in reversed(self.strides):
            x = self.attn[str(s)](features["feats"][s], ref["q"][s], peaks.get(s))
            out = x if out is None else x + F.interpolate(out, size=x.shape[-2:], mode="nearest")
        size = ref["size"]
        prior = torch.stack([torch.log2(size.amax(1) / 32.0), torch.log2(size[:, 0] / size[:, 1])],
                            1)[:, :, None, None].expand(-1, -1, *out.shape[-2:]).to(out)
        # head(cat([out, prior])), its first convolution split in two (no concatenation)
        first, d = self.head[0], out.shape[1]
        layout = torch.channels_last if out.is_contiguous(memory_format=torch.channels_last) \
            else torch.contiguous_format  # adding tensors of different layouts is slow
        x = (F.conv2d(out, first.weight[:, :d], first.bias, padding=1)
             + F.conv2d(prior.contiguous(memory_format=layout), first.weight[:, d:], padding=1))
        return self.head[1:](x)

    def detect(self, features: dict, ref: dict, threshold: float = 0.05,
               max_detections: int = 1000, nms_iou: float = 0.5
               ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per batch item: boxes (N, 4) x0y0x1y1 in image pixels and scores (N,), best first."""
        return decode(self.forward_maps(features, ref), ref["size"], self.stride, threshold,
                      max_detections, nms_iou)


def decode(maps: torch.Tensor, ref_size: torch.Tensor, stride: int, threshold: float = 0.05,
           max_detections: int = 1000, nms_iou: float = 0.5
           ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Heatmap peaks (3x3 maxima) -> boxes and scores, then NMS, per batch item."""
    heat = torch.sigmoid(maps[:, 0].float())
    peak = heat == F.max_pool2d(heat[:, None], 3, 1, 1)[:, 0]
    b, h, w = heat.shape
    out = []
    for i in range(b):
        score = torch.where(peak[i], heat[i], torch.zeros_like(heat[i])).flatten()
        k = min(max_detections * 2, score.numel())
        top, idx = score.topk(k)
        keep = top >= threshold
        top, idx = top[keep], idx[keep]
        r, c = idx // w, idx % w
        reg = maps[i, 1:, r, c].float()
        cx = (c + 0.5 + reg[0]) * stride
        cy = (r + 0.5 + reg[1]) * stride
        bw = ref_size[i, 0] * torch.exp(reg[2].clamp(-4, 4))
        bh = ref_size[i, 1] * torch.exp(reg[3].clamp(-4, 4))
        boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1)
        keep = batched_nms(boxes, top, torch.zeros_like(r), nms_iou)[:max_detections]
        out.append((boxes[keep], top[keep]))
    return out
