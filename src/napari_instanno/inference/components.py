"""The two pluggable parts of the Annotator: a matcher (finds boxes) and an outliner (draws polygons).

Both see the image once through ``set_image`` (float32 RGB in [0, 1], (H, W, 3)) and cache what they
compute from it, so each new prompt is cheap. Boxes are (x0, y0, x1, y1); polygons (row, col); both in
the pixel-corner frame of ``geometry``.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Matcher(Protocol):
    """Finds every instance similar to a reference box."""

    def set_image(self, rgb: np.ndarray) -> None: ...

    def find(self, ref_box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 4) boxes and (N,) scores in [0, 1], best first, including the reference's own."""
        ...


class Outliner(Protocol):
    """Turns boxes into polygons and snaps user-edited polygons to the object."""

    def set_image(self, rgb: np.ndarray) -> None: ...

    def outline(self, boxes: np.ndarray) -> list[np.ndarray]:
        """One polygon per box."""
        ...

    def refine(self, polygons: list[np.ndarray]) -> list[np.ndarray]:
        """Each polygon moved onto the object boundary near it."""
        ...
