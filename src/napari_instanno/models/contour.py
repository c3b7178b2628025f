"""The contour regressor: box -> polygon by iterative vertex refinement (Deep Snake family).

A crop around the box (``context`` times its size, resized to ``crop_size``) goes through the shared
MobileNetV2 backbone; shallow and deep features are fused into one map at stride 2. The polygon
starts as the ellipse inscribed in the box (or a given polygon, for ``refine``) with ``n_vertices``
vertices; each of ``iterations`` snake heads samples the features at the vertices and predicts a
move per vertex with circular 1-D convolutions over the ring.

Inside the model, polygons are (row, col) in *crop units*: the crop covers [0, crop_size)^2 in the
pixel-corner frame. ``crop_boxes`` / ``to_crop`` / ``from_crop`` convert to and from image pixels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from .backbone import Backbone


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class CircConv(nn.Module):
    """Circular 1-D convolution over the ring of vertices, with BatchNorm and ReLU."""

    def __init__(self, cin: int, cout: int, k: int = 5, dilation: int = 1) -> None:
        super().__init__()
        self.pad = (k // 2) * dilation
        self.conv = nn.Conv1d(cin, cout, k, dilation=dilation)
        self.norm = nn.BatchNorm1d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (self.pad, self.pad), mode="circular")
        return F.relu(self.norm(self.conv(x)))


class SnakeHead(nn.Module):
    """Per-vertex features (B, C, N) -> per-vertex moves (B, N, 2), in crop units."""

    def __init__(self, cin: int, width: int = 64, dilations: tuple[int, ...] = (1, 2, 4, 8)) -> None:
        super().__init__()
        self.head = CircConv(cin, width)
        self.blocks = nn.ModuleList(CircConv(width, width, dilation=d) for d in dilations)
        cat = width * (len(dilations) + 1)
        self.fuse = nn.Conv1d(cat, 128, 1)
        self.pred = nn.Sequential(
            nn.Conv1d(cat + 128, 128, 1), nn.ReLU(inplace=True),
            nn.Conv1d(128, 64, 1), nn.ReLU(inplace=True), nn.Conv1d(64, 2, 1))
        nn.init.zeros_(self.pred[-1].weight)
        nn.init.zeros_(self.pred[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states = [self.head(x)]
        for block in self.blocks:
            states.append(block(states[-1]) + states[-1])
        state = torch.cat(states, dim=1)
        glob = self.fuse(state).amax(dim=2, keepdim=True).expand(-1, -1, state.shape[2])
        return self.pred(torch.cat([state, glob], dim=1)).transpose(1, 2)


class ContourRegressor(nn.Module):
    """Box -> polygon. ``forward(crops, init)`` returns the polygon after every iteration."""

    def __init__(self, n_vertices: int = 64, iterations: int = 3, crop_size: int = 64,
                 context: float = 1.3, channels: int = 64, move_scale: float = 4.0,
                 pretrained: bool = True) -> None:
        super().__init__()
        self.n_vertices, self.crop_size, self.context = n_vertices, crop_size, context
        self.move_scale = move_scale
        self.backbone = Backbone(strides=(4, 8, 16), pretrained=pretrained)
        ch = self.backbone.channels
        self.stem = nn.Sequential(_conv_bn(3, 16), _conv_bn(16, 32, stride=2))
        self.deep = _conv_bn(ch[4] + ch[8] + ch[16], channels, k=1)
        self.fine = _conv_bn(channels + 32, channels, k=1)
        self.heads = nn.ModuleList(SnakeHead(channels + 4) for _ in range(iterations))

    # ----------------------------------------------------------------- geometry helpers
    def crop_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """The crop window (x0, y0, x1, y1) of each box: ``context`` times its size, same centre."""
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        half = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1.0) * self.context / 2
        return torch.cat([centre - half, centre + half], dim=1)

    def to_crop(self, poly: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        """(B, N, 2) image (row, col) -> crop units of each window."""
        origin = windows[:, None, [1, 0]]
        size = (windows[:, None, [3, 2]] - origin)
        return (poly - origin) / size * self.crop_size

    def from_crop(self, poly: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        """(B, N, 2) crop units -> image (row, col)."""
        origin = windows[:, None, [1, 0]]
        size = (windows[:, None, [3, 2]] - origin)
        return poly / self.crop_size * size + origin

    def initial_ellipse(self, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The ellipse inscribed in the box, in crop units (starts at the top, clockwise on screen)."""
        t = torch.arange(self.n_vertices, device=device, dtype=torch.float32)
        t = t * (2 * math.pi / self.n_vertices)
        radius = self.crop_size / (2 * self.context)
        centre = self.crop_size / 2
        ring = torch.stack([centre - radius * torch.cos(t), centre + radius * torch.sin(t)], dim=1)
        return ring.expand(batch, -1, -1).clone()

    def crop(self, images: torch.Tensor, windows: torch.Tensor,
             batch_index: torch.Tensor | None = None, spatial_scale: float = 1.0) -> torch.Tensor:
        """RoIAlign of each window (image pixels) to (B, 3, crop_size, crop_size)."""
        if batch_index is None:
            batch_index = torch.zeros(len(windows), device=windows.device)
        rois = torch.cat([batch_index.to(windows)[:, None], windows], dim=1)
        return roi_align(images, rois, self.crop_size, spatial_scale=spatial_scale,
                         sampling_ratio=2, aligned=True)

    # ----------------------------------------------------------------- network
    def features(self, crops: torch.Tensor) -> torch.Tensor:
        """Fused features (B, C, S/2, S/2) of RGB [0, 1] crops."""
        f = self.backbone(crops)
        size = f[4].shape[-2:]
        deep = torch.cat([f[4]] + [F.interpolate(f[s], size=size, mode="bilinear",
                                                 align_corners=False) for s in (8, 16)], dim=1)
        deep = self.deep(deep)
        stem = self.stem(crops)
        deep = F.interpolate(deep, size=stem.shape[-2:], mode="bilinear", align_corners=False)
        return self.fine(torch.cat([deep, stem], dim=1))

    def evolve(self, feats: torch.Tensor, init: torch.Tensor) -> tuple[list[torch.Tensor],
                                                                      list[torch.Tensor]]:
        """Run the iterations from ``init`` (B, N, 2) crop units: (polygons, moves) per iteration."""
        polys, moves, poly = [], [], init
        s = self.crop_size
        for head in self.heads:
            poly = poly.detach()
            grid = (poly * (2.0 / s) - 1.0).flip(-1)[:, None]  # (B, 1, N, 2) as (x, y)
            sampled = F.grid_sample(feats, grid.to(feats.dtype), mode="bilinear",
                                    padding_mode="border", align_corners=False)[:, :, 0]
            rel = (poly - poly.mean(dim=1, keepdim=True)) * (2.0 / s)
            x = torch.cat([sampled, grid[:, 0].transpose(1, 2).to(sampled.dtype),
                           rel.transpose(1, 2).to(sampled.dtype)], dim=1)
            move = head(x).float() * self.move_scale
            poly = poly + move
            polys.append(poly)
            moves.append(move)
        return polys, moves

    def forward(self, crops: torch.Tensor, init: torch.Tensor | None = None
                ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Polygons (B, N, 2) after each iteration and the moves that made them (crop units)."""
        if init is None:
            init = self.initial_ellipse(len(crops), crops.device)
        return self.evolve(self.features(crops), init)

    def config(self) -> dict[str, float]:
        """The constructor arguments that shape the weights (stored in checkpoint metadata)."""
        return {"n_vertices": self.n_vertices, "iterations": len(self.heads),
                "crop_size": self.crop_size, "context": self.context,
                "channels": self.deep[0].out_channels, "move_scale": self.move_scale}
