"""Shared fixtures: synthetic scenes and paths to the shared data."""

from __future__ import annotations

import os
from pathlib import Path

# One torch thread: on a 2-core machine with any other load, a second OpenMP thread waiting on a
# busy core makes small models 10-30x slower. Set before torch is imported (kernels inherit it).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import pytest

import napari_instanno.napari  # noqa: F401  (hides triton before any viewer exists; see there)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def disc_scene(size: int = 128, radius: int = 8, spacing: int = 32, noise: float = 0.02,
               seed: int = 0) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """A dark image with bright discs on a grid; returns the image and the (row, col) centres."""
    rng = np.random.default_rng(seed)
    rr, cc = np.mgrid[:size, :size]
    img = np.zeros((size, size), np.float32)
    centres = []
    for r in range(spacing // 2, size, spacing):
        for c in range(spacing // 2, size, spacing):
            img[(rr - r) ** 2 + (cc - c) ** 2 <= radius**2] = 1.0
            centres.append((r + 0.5, c + 0.5))
    img += rng.normal(0, noise, img.shape).astype(np.float32)
    return img, centres


@pytest.fixture
def discs() -> tuple[np.ndarray, list[tuple[float, float]]]:
    return disc_scene()


@pytest.fixture
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"the shared data folder {SHARED} is missing; tests need ../shared/data")
    return SHARED
