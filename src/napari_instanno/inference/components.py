"""The two pluggable parts of the Annotator: a matcher (finds boxes) and an outliner (draws polygons).

Both see the image once through ``set_image`` (float32 RGB in [0, 1], (H, W, 3)) and cache what they
compute from it, so each new prompt is cheap. Boxes are (x0, y0, x1, y1); polygons (row, col); both in
the pixel-corner frame of ``geometry``.
"""

from __future__ import annotations

import warnings
from typing import Any, Protocol

import numpy as np

DEFAULT_MIN_SCORE = 0.3  # what the widget shows and predict / demo keep by default; the API keeps all


def upscale_factor(matcher: Any, box: np.ndarray) -> float:
    """How much ``matcher`` rescales the image its model sees for reference ``box`` (1 unless it
    has ``image_scale``, as the learned matcher does for small and large references)."""
    image_scale = getattr(matcher, "image_scale", None)
    return 1.0 if image_scale is None else float(image_scale(box))


def warn_if_capped(found: int, cap: int, name: str) -> None:
    """Warn that a matcher returned its maximum number of boxes (more may be in the image)."""
    if found >= cap:
        warnings.warn(f"the {name} matcher stopped at its limit of {cap} detections; the image may "
                      "hold more: raise the limit or run it tiled (find_similar_tiled)",
                      stacklevel=3)


class Matcher(Protocol):
    """Finds every instance similar to a reference box."""

    def set_image(self, rgb: np.ndarray) -> None: ...

    def embed_reference(self, ref_box: np.ndarray) -> Any:
        """What the matcher keeps of the reference in ``ref_box`` of the current image.

        It holds the reference's size too, so it can be used on other images (tiles) as it is.
        """
        ...

    def find(self, reference: Any) -> tuple[np.ndarray, np.ndarray]:
        """(N, 4) boxes and (N,) scores in [0, 1] in the current image, best first."""
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
