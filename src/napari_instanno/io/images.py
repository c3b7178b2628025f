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


def _planar_to_channels_last(arr: Any) -> Any:
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
            return OpenedImage(_planar_to_channels_last(data), *_georef(path))
        return OpenedImage(read_image_file(path))
    except InstannoError:
        raise
    except Exception as err:
        raise InstannoError(f"cannot read image {path}: {err}") from err


def ome_levels(group: Any) -> list[Any] | None:
    """The levels of an OME-Zarr multiscale group as lazy (H, W) or (H, W, C) dask arrays, finest
    first (channels moved last, leading singleton axes dropped); None if ``group`` is not one."""
    attrs = getattr(group, "attrs", None)
    if attrs is None or hasattr(group, "shape"):
        return None
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not multiscales:
        return None
    axes = [a["name"] if isinstance(a, dict) else a for a in multiscales[0].get("axes", [])]
    return [_ome_level(group[d["path"]], axes) for d in multiscales[0]["datasets"]]


def _ome_level(array: Any, axes: list[str]) -> Any:
    import dask.array as da

    data = da.from_zarr(array)
    if "c" in axes and len(axes) == data.ndim:
        data = da.moveaxis(data, axes.index("c"), -1)
    # only axes of length 1: a z / t axis longer than that stays, so a stack is never read as
    # its first plane (callers refuse it: one 2D plane is what the models take)
    while data.shape[0] == 1 and (data.ndim > 3 or (data.ndim == 3 and data.shape[-1] > 4)):
        data = data[0]
    return data


def _open_zarr(path: Path, level: int) -> Any:
    import dask.array as da
    import zarr

    node = zarr.open(str(path), mode="r")
    if hasattr(node, "shape"):
        return da.from_zarr(node)
    levels = ome_levels(node)
    if levels is not None:
        if level >= len(levels):
            raise InstannoError(f"{path} has {len(levels)} levels; level {level} does not exist")
        return levels[level]
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

            return _planar_to_channels_last(tifffile.imread(path))
        from skimage.io import imread

        return np.asarray(imread(path))
    except Exception as err:
        raise InstannoError(f"cannot read image {path}: {err}") from err
