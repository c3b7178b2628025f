"""The widget's *All planes* runs: the stack behind an image layer, track ids on the result
layer, and review of whole tracks.

An All-planes run finds the reference's kind on every plane along the image layer's first axis
(``inference.stacks``; any other leading axes stay at the displayed plane) and fills the one
result layer: each shape at its plane (``layers``: the ``plane`` property), its track id in the
``track_id`` feature and written next to it, so scrolling through the planes shows each plane's
polygons with their ids. Reviewing a track sets the status of every shape of the selected
shapes' tracks, on every plane, also of those hidden by the score threshold.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..errors import InstannoError
from ..instances import Instances
from .layers import HIDDEN, set_status
from .shapes_data import TRACK

TRACK_TEXT = {"string": "{track_id:.0f}", "size": 9, "color": "white", "anchor": "upper_left"}


def stack_of(layer: Any, indices: tuple[int, ...]) -> Any:
    """The (planes, H, W[, C]) stack along ``layer``'s first axis, its other leading axes at the
    displayed ``indices`` (a lazy array stays lazy)."""
    if not indices:
        raise InstannoError("'All planes' needs an image with planes (a z-stack or a time-lapse); "
                            "this one is a single 2D image")
    data = layer.data[0] if layer.multiscale else layer.data
    return data[(slice(None), *indices[1:])]


def summary(inst: Instances, category: str) -> str:
    """What an All-planes run found, in one line."""
    planes = len(np.unique(inst.properties.get("plane", np.zeros(0))))
    tracks = len(np.unique(inst.properties.get(TRACK, np.zeros(0))))
    return f"{len(inst)} '{category}' instances in {tracks} tracks on {planes} planes"


def show_tracks(layer: Any) -> None:
    """Write each shape's track id next to it (layers with a ``track_id`` feature)."""
    if TRACK in layer.features and len(layer.data):
        layer.text = TRACK_TEXT


def _tracks(feats: pd.DataFrame) -> np.ndarray:
    return pd.to_numeric(feats[TRACK], errors="coerce").fillna(-1).to_numpy(np.int64)


def review_tracks(layer: Any, status: str) -> int:
    """Set ``status`` on every shape of the tracks of ``layer``'s selected shapes (a selected
    shape without a track: itself), hidden ones too; returns how many shown shapes it set."""
    if TRACK not in layer.features:
        raise InstannoError("these results have no tracks: tick 'All planes' and run Find similar "
                            "on a stack first")
    selected = sorted(layer.selected_data)
    if not selected:
        return 0
    tracks = _tracks(layer.features)
    chosen = np.setdiff1d(tracks[selected], [-1])
    idx = sorted(set(selected) | set(np.flatnonzero(np.isin(tracks, chosen)).tolist()))
    set_status(layer, idx, status)
    hidden = layer.metadata.get(HIDDEN)
    if hidden and len(hidden[2]) and TRACK in hidden[2]:
        feats = hidden[2]
        feats.loc[np.isin(_tracks(feats), chosen), "status"] = status
    return len(idx)
