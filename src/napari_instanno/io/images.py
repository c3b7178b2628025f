"""Opening images lazily: PNG / JPEG / TIFF / GeoTIFF files and zarr stores."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InstannoError

ZARR_SUFFIXES = (".zarr", ".ome.zarr")
TIFF_SUFFIXES = (".tif", ".tiff")


@dataclass
class OpenedImage:
    """An image array (numpy or dask, (H, W) or (H, W, C)) with its georeferencing, if any."""

    data: Any
    transform: Any = None
    crs: Any = None


def _channels_last(arr: Any) -> Any:
    """A planar (C, H, W) TIFF array (C <= 4) as (H, W, C); anything else as it is."""
    if arr.ndim == 3 and arr.shape[0] <= 4 < arr.shape[2]:
        return arr.transpose(1, 2, 0)
    return arr


def _georef(path: Path) -> tuple[Any, Any]:
    try:
        import rasterio
    except ImportError:
        return None, None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # plain TIFFs: NotGeoreferencedWarning
            with rasterio.open(path) as src:
                return (src.transform, src.crs) if src.crs is not None else (None, None)
    except Exception:  # not a raster rasterio understands: no georeferencing
        return None, None


def open_image(path: str | Path, level: int = 0) -> OpenedImage:
    """Open an image without loading more than it must.

    TIFF and zarr come back as dask arrays (tifffile's zarr store; OME-Zarr at ``level``);
    PNG / JPEG are read into memory. GeoTIFFs carry their affine transform and CRS.
    """
    import dask.array as da

    path = Path(path)
    if not path.exists():
        raise InstannoError(f"image {path} does not exist")
    name = path.name.lower()
    try:
        if name.endswith(ZARR_SUFFIXES) or path.is_dir():
            return OpenedImage(_open_zarr(path, level))
        if name.endswith(TIFF_SUFFIXES):
            import tifffile
            import zarr

            store = tifffile.imread(path, aszarr=True, level=level)
            arr = zarr.open(store, mode="r")
            data = da.from_zarr(arr) if hasattr(arr, "shape") else da.from_zarr(arr[str(level)])
            return OpenedImage(_channels_last(data), *_georef(path))
        return OpenedImage(read_image_file(path))
    except InstannoError:
        raise
    except Exception as err:
        raise InstannoError(f"cannot read image {path}: {err}") from err


def _open_zarr(path: Path, level: int) -> Any:
    import dask.array as da
    import zarr

    node = zarr.open(str(path), mode="r")
    if hasattr(node, "shape"):
        return da.from_zarr(node)
    multiscales = node.attrs.get("multiscales") or node.attrs.get("ome", {}).get("multiscales")
    if multiscales:
        datasets = multiscales[0]["datasets"]
        if level >= len(datasets):
            raise InstannoError(f"{path} has {len(datasets)} levels; level {level} does not exist")
        data = da.from_zarr(node[datasets[level]["path"]])
        axes = [a["name"] if isinstance(a, dict) else a for a in multiscales[0].get("axes", [])]
        if axes and axes[-2:] == ["y", "x"] and "c" in axes:
            data = da.moveaxis(data, axes.index("c"), -1)
        while data.ndim > 3 or (data.ndim == 3 and data.shape[-1] > 4 and data.shape[0] == 1):
            data = data[0]
        return data
    arrays = [k for k, v in node.arrays()]
    if not arrays:
        raise InstannoError(f"{path} is a zarr group without arrays")
    return da.from_zarr(node[sorted(arrays)[0]])


def read_image_file(path: str | Path) -> np.ndarray:
    """A PNG / JPEG / TIFF file as a numpy array, with a one-line error if it is missing or bad."""
    path = Path(path)
    if not path.is_file():
        raise InstannoError(f"image {path} is missing; check the path (or file_name in the JSON)")
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            return _channels_last(tifffile.imread(path))
        from skimage.io import imread

        return np.asarray(imread(path))
    except Exception as err:
        raise InstannoError(f"cannot read image {path}: {err}") from err
