"""Shared fixtures: synthetic scenes, a small georeferenced GeoTIFF, and the shared data."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# One torch thread: on a 2-core machine with any other load, a second OpenMP thread waiting on a
# busy core makes small models 10-30x slower. Set before torch is imported (kernels inherit it).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# int8 layers are kept in a cache folder between runs (``models.int8.cache_dir``): the tests' own,
# never the user's
os.environ.setdefault("NAPARI_INSTANNO_CACHE", tempfile.mkdtemp(prefix="instanno-test-cache-"))

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
def geo_folder(tmp_path: Path) -> Path:
    """A COCO folder made on the spot: ``images/discs.tif``, a georeferenced GeoTIFF (EPSG:32632,
    10 m pixels, origin 512410 E / 6247200 N, 128 rows x 104 columns, 3 uint16 bands scaled 1x, 2x,
    3x so their order shows), and ``annotations.json`` with its 12 discs as pixel polygons."""
    import rasterio
    from rasterio.crs import CRS
    from rasterio.transform import from_origin
    from skimage.measure import label

    from napari_instanno.instances import Instances
    from napari_instanno.io.coco import write_coco

    img, _ = disc_scene(size=128)
    img = np.clip(img[:, :104], 0, 1)
    h, w = img.shape
    bands = np.stack([(img * 1000 + 100) * (k + 1) for k in range(3)]).astype(np.uint16)
    folder = tmp_path / "geo"
    (folder / "images").mkdir(parents=True)
    with rasterio.open(folder / "images" / "discs.tif", "w", driver="GTiff", width=w, height=h,
                       count=3, dtype="uint16", crs=CRS.from_epsg(32632),
                       transform=from_origin(512410.0, 6247200.0, 10.0, 10.0)) as dst:
        dst.write(bands)
    fields = Instances.from_label_image(label(img > 0.5), category="field")
    write_coco(folder / "annotations.json",
               [({"id": 1, "file_name": "images/discs.tif", "height": h, "width": w}, fields)])
    return folder


@pytest.fixture
def shared_data(request: pytest.FixtureRequest) -> Path:
    """``../shared/data`` for tests marked ``needs_shared``. Skipped where the folder is absent (a
    plain clone); with ``INSTANNO_REQUIRE_SHARED=1`` (CI) its absence is a failure instead."""
    if request.node.get_closest_marker("needs_shared") is None:
        pytest.fail("a test using the shared_data fixture must be marked @pytest.mark.needs_shared")
    if not SHARED.is_dir():
        if os.environ.get("INSTANNO_REQUIRE_SHARED") == "1":
            pytest.fail(f"{SHARED} is missing and INSTANNO_REQUIRE_SHARED=1")
        pytest.skip(f"needs_shared: {SHARED} is absent (the training data is not in the repository)")
    return SHARED


def docked_widget(viewer, sample: str = "nuclei", matcher: str = "ncc", outliner: str = "otsu"):
    """``viewer`` with a sample (image + preset reference box) and the Find similar widget docked,
    set to ``matcher`` / ``outliner`` (NCC + Otsu: fast and deterministic); returns the widget."""
    from napari_instanno.napari.widgets import FindSimilarWidget

    viewer.open_sample("napari-instanno", sample)
    widget = FindSimilarWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget._matcher.value, widget._outliner.value = matcher, outliner
    return widget
