"""How review statuses look, in napari and in the PNG overlays alike."""

from __future__ import annotations

STATUS_COLORS = {  # RGBA in [0, 1]
    "proposed": (1.0, 1.0, 0.0, 1.0),  # yellow
    "accepted": (0.0, 1.0, 0.0, 1.0),  # green
    "rejected": (1.0, 0.0, 0.0, 1.0),  # red
}
