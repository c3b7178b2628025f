"""Window reads from any large 2D image, never loading it whole.

``as_source`` wraps numpy, dask, zarr (v2 / v3) arrays, OME-Zarr groups and napari multiscale
lists (one level picked), image paths (TIFF through tifffile's zarr store, zarr, OME-Zarr) and
rasterio datasets (GeoTIFF and anything GDAL reads, through windows) in one small interface:
``shape`` (H, W), ``read(y0, y1, x0, x1)`` -> numpy (h, w) or (h, w, C), and ``sample()`` for the
normalisation range. Images with more than three channels are read as their first three, the ones
``napari_instanno.image.to_rgb01`` uses.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InstannoError
from ..image import channel_range

RASTERIO_SUFFIXES = (".vrt", ".jp2", ".img", ".ecw", ".nitf")
SAMPLE_PIXELS = 1_000_000


class SourceError(InstannoError):
    """The image could not be read (a store that vanished, a broken file)."""


class Source:
    """An (H, W) or (H, W, C) array-like read window by window.

    ``overview`` is an optional coarser level of the same image used for the value sample.
    """

    def __init__(self, array: Any, overview: Any = None) -> None:
        shape = tuple(int(s) for s in array.shape)
        if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] > max(4, min(shape[:2]))):
            raise InstannoError(  # more channels than rows or columns: a (Z, H, W) stack
                f"image has shape {shape}; pass one 2D plane (H, W) or (H, W, C) with C channels "
                "last (for stacks, pick one plane)")
        if min(shape) < 1:
            raise InstannoError(f"image of shape {shape} is empty")
        self.array = array
        self.overview = overview
        self.shape: tuple[int, int] = shape[:2]
        self.dtype = np.dtype(array.dtype)
        self._rgb = (slice(0, 3),) if len(shape) == 3 and shape[2] > 3 else ()
        self.roots = _store_roots(array)

    def _get(self, arr: Any, index: tuple) -> np.ndarray:
        out = arr[index]
        if hasattr(out, "compute"):  # dask: read in this thread, no nested pool
            out = out.compute(scheduler="sync")
        return np.asarray(out)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """The window rows ``y0:y1``, columns ``x0:x1`` as numpy; ``SourceError`` if unreadable."""
        self.check_alive()
        try:
            return self._get(self.array, (slice(y0, y1), slice(x0, x1), *self._rgb))
        except InstannoError:
            raise
        except Exception as err:
            raise SourceError(f"cannot read image window [{y0}:{y1}, {x0}:{x1}]: {err}") from err

    def check_alive(self) -> None:
        """Raise ``SourceError`` when a local store behind the array has disappeared."""
        for root in self.roots:
            if not Path(root).exists():
                raise SourceError(f"the image store {root} has disappeared")

    def sample(self, pixels: int = SAMPLE_PIXELS) -> np.ndarray:
        """At most ~``pixels`` pixels spread over the image, read cheaply.

        The overview level when there is one; an in-memory array strided; otherwise a grid of
        small windows (so a chunked store is touched in few chunks, not read through).
        """
        if self.overview is not None:
            ov = self.overview
            step = max(1, int(np.ceil(np.sqrt(ov.shape[0] * ov.shape[1] / pixels))))
            return self._get(ov, (slice(None, None, step), slice(None, None, step)))
        h, w = self.shape
        step = max(1, int(np.ceil(np.sqrt(h * w / pixels))))
        if isinstance(self.array, np.ndarray):
            return self.array[::step, ::step]
        if h * w <= pixels:
            return self.read(0, h, 0, w)
        n = 8
        side = int(min(128, h // n, w // n, np.sqrt(pixels / n**2)))
        ys = np.linspace(0, h - side, n).astype(int)
        xs = np.linspace(0, w - side, n).astype(int)
        rows = [np.concatenate([self.read(y, y + side, x, x + side) for x in xs], axis=1)
                for y in ys]
        return np.concatenate(rows, axis=0)

    def value_range(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel (low, high) shared by every tile, from ``sample()``."""
        return channel_range(self.sample())

    def float_range(self, value_range: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """``value_range`` (per-channel low, high; None: ``value_range()``) as float32 arrays,
        what every window of a run is normalised with."""
        if value_range is None:
            value_range = self.value_range()
        return np.asarray(value_range[0], np.float32), np.asarray(value_range[1], np.float32)


class RasterioSource(Source):
    """A raster read through rasterio windows; one dataset handle per thread (GDAL is not
    thread-safe), reopened from the path after pickling."""

    def __init__(self, path: str | Path) -> None:
        import rasterio

        self.path = str(path)
        self._local = threading.local()
        with rasterio.open(self.path) as ds:
            self.count = ds.count
            h, w, dt = ds.height, ds.width, ds.dtypes[0]
            self.transform, self.crs = ds.transform, ds.crs
        self.array = None
        self.overview = None
        self.shape = (h, w)
        self.dtype = np.dtype(dt)
        self.bands = list(range(1, min(self.count, 3) + 1))

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_local"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def _dataset(self) -> Any:
        ds = getattr(self._local, "ds", None)
        if ds is None:
            import rasterio

            ds = self._local.ds = rasterio.open(self.path)
        return ds

    def check_alive(self) -> None:
        if not Path(self.path).exists():
            raise SourceError(f"the image {self.path} has disappeared")

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        from rasterio.windows import Window

        self.check_alive()
        try:
            data = self._dataset().read(self.bands, window=Window(x0, y0, x1 - x0, y1 - y0))
        except Exception as err:
            raise SourceError(f"cannot read {self.path} window [{y0}:{y1}, {x0}:{x1}]: {err}"
                              ) from err
        return data[0] if len(self.bands) == 1 else np.moveaxis(data, 0, -1)

    def sample(self, pixels: int = SAMPLE_PIXELS) -> np.ndarray:
        from rasterio.enums import Resampling

        h, w = self.shape
        f = max(1.0, np.sqrt(h * w / pixels))
        data = self._dataset().read(self.bands, out_shape=(len(self.bands), max(1, int(h / f)),
                                                           max(1, int(w / f))),
                                    resampling=Resampling.nearest)
        return data[0] if len(self.bands) == 1 else np.moveaxis(data, 0, -1)


def _store_root(array: Any) -> str | None:
    """The local folder behind a zarr array (v2 or v3), if any."""
    store = getattr(array, "store", None)
    root = getattr(store, "root", None) or getattr(store, "path", None)
    if root is None or not isinstance(root, (str, Path)) or "://" in str(root):
        return None
    return str(root)


def _store_roots(array: Any) -> list[str]:
    """The local zarr folders an array reads from: its own, or those a dask graph wraps."""
    root = _store_root(array)
    if root is not None:
        return [root]
    layers = getattr(getattr(array, "dask", None), "layers", {})
    found = {r for name, layer in layers.items() if name.startswith("original-")  # from_zarr
             for value in layer.values() if (r := _store_root(value)) is not None}
    return sorted(found)


def _levels(image: Any) -> list[Any] | None:
    """The levels of a multiscale image (napari list or OME-Zarr group), finest first."""
    if isinstance(image, Sequence) and not isinstance(image, (str, bytes)) and image \
            and all(hasattr(a, "shape") for a in image):
        return list(image)
    from ..io.images import ome_levels

    return ome_levels(image)


def as_source(image: Any, level: int = 0) -> Source:
    """Wrap ``image`` (array, multiscale list / OME-Zarr group, path, rasterio dataset)."""
    if isinstance(image, Source):
        return image
    if hasattr(image, "read") and hasattr(image, "name") and hasattr(image, "count"):
        return RasterioSource(image.name)  # an open rasterio dataset
    if isinstance(image, (str, Path)):
        path = Path(image)
        if path.suffix.lower() in RASTERIO_SUFFIXES:
            return RasterioSource(path)
        from ..io.images import open_image

        return as_source(open_image(path, level=level).data)
    levels = _levels(image)
    if levels is not None:
        if not 0 <= level < len(levels):
            raise InstannoError(f"the image has {len(levels)} levels; level {level} does not exist")
        base, coarse = levels[level], levels[-1]
        return Source(base, coarse if coarse is not base else None)
    if not hasattr(image, "shape") or not hasattr(image, "__getitem__"):
        image = np.asarray(image)
    return Source(image)
