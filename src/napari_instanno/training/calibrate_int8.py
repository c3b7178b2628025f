"""Calibrate the matcher's int8 layers (``models.int8``) on training images; writes the
calibration file beside the weights.

    python -m napari_instanno.training.calibrate_int8 [--weights models/matcher.safetensors]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..models import int8
from ..models.weights import shipped_path
from .datasets import CocoFolder

# (training folder, images): a few of each kind, every one seen at scale 1 and 2 in turn
SOURCES = (("dsb2018/train", 4), ("crowdai-buildings/train", 3), ("coco128", 3),
           ("airbus-aircraft/train", 2))
CROP = 192  # each image's top-left window, pixels


def main(argv: list[str] | None = None) -> None:
    from ..inference.learned_matcher import load_matcher

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", default=None, help="matcher weights (default: the shipped ones)")
    p.add_argument("--data", default="../shared/data")
    a = p.parse_args(argv)
    weights = Path(a.weights) if a.weights else shipped_path("matcher")
    model = load_matcher(weights)
    bb = model.backbone
    images = [s.load_rgb01() for folder, n in SOURCES
              for s in CocoFolder(Path(a.data) / folder).samples[:n]]
    inputs = []  # each image at the body's input
    with torch.no_grad():
        for i, rgb in enumerate(images):
            x = torch.from_numpy(np.ascontiguousarray(rgb[:CROP, :CROP, :3].transpose(2, 0, 1)))
            x = x[None].float()
            if i % 2:
                x = F.interpolate(x, scale_factor=2.0, mode="bilinear")
            inputs.append(((x - bb.mean) / bb.std).contiguous(memory_format=torch.channels_last))
    spans, done = {}, 0  # each span calibrated on the float output of the layers before it
    for start, stop, _ in int8.SPANS:
        with torch.no_grad():
            for layer in bb.body[done:start]:
                inputs = [layer(x) for x in inputs]
        layers = torch.nn.Sequential(*bb.body[start:stop])
        spans[int8.span_key(start, stop)] = int8.calibrate(layers, inputs)
        with torch.no_grad():
            inputs = [layers(x) for x in inputs]
        done = stop
    out = int8.calibration_path(weights)
    out.write_text(json.dumps({"weights_sha256": int8.file_sha256(weights),
                               "images": [f"{f}: first {n}" for f, n in SOURCES],
                               "spans": spans}, indent=1) + "\n")
    print(f"wrote {out} ({sum(len(q) for q in spans.values())} activations in "
          f"{len(spans)} spans)")


if __name__ == "__main__":
    main()
