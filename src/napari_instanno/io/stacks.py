"""Stacks and series as planes: a (Z / T, H, W[, C]) array, TIFF or zarr, or a folder / glob of
2D images, read one plane at a time.

Axes: without ``axes`` a 3D array is (plane, H, W) (the first axis is the plane axis); TIFF and
OME-Zarr files say their own axes when they know them (a TIFF with OME or ImageJ metadata, the
OME-Zarr ``axes``). ``axes`` names every axis with one of T or Z (the plane axis), Y, X and
optionally C (channels), e.g. ``TYX``, ``ZYXC``, ``TCYX``; other size-1 axes may be named too.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InstannoError
from .images import TIFF_SUFFIXES, ZARR_SUFFIXES, read_image_file

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp") + TIFF_SUFFIXES
AXIS_LETTERS = "TZCYX"


@dataclass
class Planes:
    """``count`` planes; ``read(k)`` gives plane ``k`` as a numpy (H, W) or (H, W, C) array (an
    ``InstannoError`` when it cannot be read), ``shape(k)`` its (H, W) without reading its pixels
    (None when its header cannot be read), ``sources[k]`` the file it comes from."""

    count: int
    read: Callable[[int], np.ndarray]
    shape: Callable[[int], tuple[int, int] | None]
    sources: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.count

    def image_info(self, k: int, shape: tuple[int, ...] | None = None) -> dict[str, Any]:
        """COCO image info of plane ``k``: its source file name, the plane index, its size."""
        info: dict[str, Any] = {"file_name": Path(self.sources[k]).name if self.sources else f"plane_{k}",
                                "plane": k}
        if shape is not None:
            info.update(height=int(shape[0]), width=int(shape[1]))
        return info


def arrange_axes(array: Any, axes: str | None, what: str = "the stack") -> Any:
    """``array`` (numpy, dask or zarr) as (planes, H, W[, C]) following ``axes`` (module
    docstring); dask and zarr stay lazy."""
    import dask.array as da

    if isinstance(array, np.ndarray) or hasattr(array, "dask"):
        arr = array
    elif hasattr(array, "chunks"):  # a zarr array
        arr = da.from_zarr(array)
    else:
        arr = np.asarray(array)
    shape = tuple(int(s) for s in arr.shape)
    if axes is None:
        if arr.ndim == 3:
            return arr
        if arr.ndim == 2:
            raise InstannoError(f"{what} has shape {shape}: one 2D image, not a stack of planes")
        raise InstannoError(f"{what} has {arr.ndim} dimensions {shape}: say which axis is which "
                            "with axes (--axes), e.g. TYXC, ZCYX or TZYX")
    letters = axes.upper()
    if len(letters) != arr.ndim or len(set(letters)) != len(letters) \
            or set(letters) - set(AXIS_LETTERS) or not {"Y", "X"} <= set(letters):
        raise InstannoError(f"axes {axes!r} do not fit {what} of shape {shape}: give one letter "
                            f"per axis ({arr.ndim}), each once, from {AXIS_LETTERS}, with Y and X")
    sizes = dict(zip(letters, shape, strict=True))
    named = [a for a in "TZ" if a in sizes]
    planar = [a for a in named if sizes[a] > 1] or named[:1]
    if len(planar) != 1:
        problem = "holds both T and Z" if planar else "has no plane axis (T or Z)"
        raise InstannoError(f"axes {axes!r}: {what} of shape {shape} {problem}; give a stack "
                            "with one plane axis (take one time point or one z first)")
    order = [letters.index(planar[0]), letters.index("Y"), letters.index("X")]
    if "C" in letters:
        order.append(letters.index("C"))
    rest = [i for i in range(arr.ndim) if i not in order]  # the other of T / Z: size 1
    arr = arr.transpose(order + rest)
    return arr.reshape(arr.shape[:len(order)])


def array_planes(array: Any, axes: str | None = None, source: str | None = None) -> Planes:
    """The planes of an array (see ``arrange_axes``); ``source`` names its file."""
    arr = arrange_axes(array, axes)
    n, size = int(arr.shape[0]), (int(arr.shape[1]), int(arr.shape[2]))
    return Planes(n, lambda k: np.asarray(arr[k]), lambda k: size, [source] * n if source else [])


def _file_axes(path: Path) -> str | None:
    """The axes a TIFF's metadata gives (OME / ImageJ), when they are all ones we know."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        axes = tif.series[0].axes.replace("S", "C")
    return axes if set(axes) <= set(AXIS_LETTERS) else None


def _zarr_array(path: Path, level: int) -> tuple[Any, str | None]:
    """A zarr array (or an OME-Zarr group's ``level``) and the axes its metadata gives."""
    import zarr

    node = zarr.open(str(path), mode="r")
    if hasattr(node, "shape"):
        return node, None
    attrs = dict(node.attrs)
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if multiscales:
        datasets = multiscales[0]["datasets"]
        if level >= len(datasets):
            raise InstannoError(f"{path} has {len(datasets)} levels; level {level} does not exist")
        names = [a["name"] if isinstance(a, dict) else a for a in multiscales[0].get("axes", [])]
        axes = "".join(str(n)[:1].upper() for n in names) or None
        return node[datasets[level]["path"]], axes
    arrays = sorted(k for k, _ in node.arrays())
    if not arrays:
        raise InstannoError(f"{path} is a zarr group without arrays")
    return node[arrays[0]], None


def is_series(path: str | Path) -> bool:
    """Whether ``path`` names a series of image files: a glob pattern or a folder not a zarr."""
    text = str(path)
    if glob.has_magic(text):
        return True
    p = Path(text)
    return p.is_dir() and not text.lower().rstrip("/").endswith(ZARR_SUFFIXES) and not any(
        (p / m).exists() for m in (".zarray", ".zgroup", "zarr.json"))


def open_stack(path: str | Path, axes: str | None = None, level: int = 0) -> Planes:
    """The planes of a TIFF or zarr stack, read lazily (see the module docstring for ``axes``)."""
    import dask.array as da

    path = Path(path)
    if not path.exists():
        raise InstannoError(f"stack {path} does not exist; check the path")
    if path.is_file() and not path.name.lower().endswith(TIFF_SUFFIXES + ZARR_SUFFIXES):
        raise InstannoError(f"{path} is one 2D image, not a stack: stacks are TIFF or zarr files, "
                            "or a folder or glob of images")
    try:
        if path.name.lower().endswith(TIFF_SUFFIXES):
            import tifffile
            import zarr

            node = zarr.open(tifffile.imread(path, aszarr=True, level=level), mode="r")
            array = node if hasattr(node, "shape") else node[str(level)]
            found = _file_axes(path)
        else:
            array, found = _zarr_array(path, level)
        data = da.from_zarr(array)
    except InstannoError:
        raise
    except Exception as err:
        raise InstannoError(f"cannot read stack {path}: {err}") from err
    if axes is not None or found is None or len(found) != data.ndim:
        return array_planes(data, axes, path.name)
    try:
        return array_planes(data, found, path.name)
    except InstannoError as err:
        raise InstannoError(f"{path.name}: {err} (its axes, {found}, from the file's metadata; "
                            "pass --axes to say otherwise)") from None


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def series_files(pattern: str | Path) -> list[Path]:
    """The image files of a folder or glob pattern, in natural order (img2 before img10)."""
    text = str(pattern)
    if Path(text).is_dir():
        files = [p for p in Path(text).iterdir() if p.name.lower().endswith(IMAGE_SUFFIXES)]
    else:
        files = [Path(p) for p in glob.glob(text)]
    files = sorted((p for p in files if p.is_file()), key=lambda p: _natural(str(p)))
    if not files:
        raise InstannoError(f"{pattern} matches no image files; check the folder or pattern "
                            "(quote it so the shell does not expand it)")
    return files


def open_series(pattern: str | Path) -> Planes:
    """The images of a folder or glob pattern as planes, one file each (read when asked for)."""
    files = series_files(pattern)
    return Planes(len(files), lambda k: read_image_file(files[k]), lambda k: _file_shape(files[k]),
                  [str(f) for f in files])


def _file_shape(path: Path) -> tuple[int, int] | None:
    """(H, W) from an image file's header; None when it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except Exception:  # unreadable: the run reports it when it reads the plane
        return None
