"""The shared backbone: MobileNetV2 (ImageNet-initialised) giving features at strides 4-32."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import mobilenet_v2

from .weights import imagenet_state_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# MobileNetV2 ``features`` index after which each stride ends, and its channel count.
_MNV2_TAPS = {4: (3, 24), 8: (6, 32), 16: (13, 96), 32: (17, 320)}


class Backbone(nn.Module):
    """Multi-scale features of an RGB [0, 1] image batch (B, 3, H, W).

    ``strides`` picks the outputs (a subset of 4, 8, 16, 32); layers past the deepest are dropped.
    ``channels[s]`` gives each output's width. ``pretrained`` loads ImageNet weights offline.
    """

    def __init__(self, strides: tuple[int, ...] = (8, 16, 32), pretrained: bool = True,
                 arch: str = "mobilenet_v2") -> None:
        super().__init__()
        if arch != "mobilenet_v2":
            raise ValueError(f"unknown backbone {arch!r}; available: mobilenet_v2")
        net = mobilenet_v2()
        if pretrained:
            net.load_state_dict(imagenet_state_dict(arch))
        self.strides = tuple(sorted(strides))
        last = _MNV2_TAPS[self.strides[-1]][0]
        self.body = net.features[: last + 1]
        self.taps = {_MNV2_TAPS[s][0]: s for s in self.strides}
        self.channels = {s: _MNV2_TAPS[s][1] for s in self.strides}
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        x = (x - self.mean) / self.std
        out = {}
        for i, layer in enumerate(self.body):
            x = layer(x)
            if i in self.taps:
                out[self.taps[i]] = x
        return out
