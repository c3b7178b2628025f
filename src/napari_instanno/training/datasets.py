"""COCO folders as training / evaluation data: images normalised, instances as ``Instances``."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from ..errors import InstannoError
from ..image import to_rgb01
from ..instances import Instances
from ..io.coco import read_coco
from ..io.images import read_image_file

SHARED_DATA = Path(__file__).resolve().parents[4] / "shared" / "data"


@dataclass
class Sample:
    """One image of a COCO folder: its info dict, its ground truth, and a lazy RGB [0, 1] image."""

    info: dict
    instances: Instances
    folder: CocoFolder

    def load_rgb01(self) -> np.ndarray:
        """The image as float32 (H, W, 3) in [0, 1] (see ``image.to_rgb01``)."""
        return to_rgb01(self.folder.read_raw(self.info))


class CocoFolder:
    """A folder with ``annotations.json`` and ``images/``: the format of ``../shared/data``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        ann = self.root / "annotations.json"
        if not ann.is_file():
            raise InstannoError(f"{self.root} is not a COCO folder: {ann} is missing")
        self.annotations = ann

    @cached_property
    def samples(self) -> list[Sample]:
        """Every image with its instances (RLE masks are turned into polygons once, here)."""
        return [Sample(info, inst, self) for info, inst in read_coco(self.annotations)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]

    @staticmethod
    def read_raw(info: dict) -> np.ndarray:
        """The image file of ``info`` as a numpy array (raises if it is missing)."""
        return read_image_file(info["path"])


def shared_folder(name: str) -> Path:
    """``../shared/data/<name>`` next to this checkout (e.g. ``dsb2018/val``)."""
    return SHARED_DATA / name
