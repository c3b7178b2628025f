"""Checks of the command line's arguments, cheap enough to run before any model is loaded or any
pixel is read. Each raises ``InstannoError`` with one line: what is wrong and what to do."""

from __future__ import annotations

import argparse
import math
import os
import re
from pathlib import Path

import numpy as np

from .errors import InstannoError
from .image import check_box

MAX_CHANNELS = 16  # an (H, W, C) image with more "channels" than this is taken for a 3D / time stack


def output_file(path: str | Path, overwrite: bool, flag: str = "--out") -> Path:
    """``path`` may be written: its folder exists and is writable, and it is not there already
    (unless ``overwrite``, and then only a regular file is replaced)."""
    path = Path(path)
    if os.path.lexists(path):
        if not overwrite:
            raise InstannoError(f"{flag} {path} exists; pass --overwrite to replace it, or choose "
                                "another name")
        if not path.is_file() or path.is_symlink():
            raise InstannoError(f"{flag} {path} is not a regular file; choose another name")
    folder = path.parent
    if not folder.is_dir():
        raise InstannoError(f"{flag} {path}: folder {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InstannoError(f"{flag} {path}: folder {folder} is not writable; choose another one")
    return path


def output_folder(path: str | Path, flag: str) -> Path:
    """``path`` is a folder, or can be made as one (its nearest existing ancestor is writable)."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise InstannoError(f"{flag} {path} is a file, not a folder; choose another name")
        return path
    ancestor = next(p for p in path.absolute().parents if p.exists())
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise InstannoError(f"{flag} {path} cannot be created: {ancestor} is not a writable folder")
    return path


def input_file(path: str | Path, flag: str) -> Path:
    """``path`` is an existing file."""
    path = Path(path)
    if not path.is_file():
        raise InstannoError(f"{flag} {path} does not exist; check the path")
    return path


def input_folder(path: str | Path, what: str) -> Path:
    """``path`` is an existing folder."""
    path = Path(path)
    if not path.is_dir():
        raise InstannoError(f"{what} {path} is not a folder; check the path")
    return path


def positive(value: float | None, flag: str) -> None:
    """``value`` is None (not given) or a finite number above zero."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise InstannoError(f"{flag} must be a positive number, got {value}")


def non_negative(value: int, flag: str) -> None:
    """``value`` is zero or more."""
    if value < 0:
        raise InstannoError(f"{flag} must be 0 or more, got {value}")


def fraction(value: float, flag: str) -> None:
    """``value`` is a finite number from 0 to 1 (every score is)."""
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise InstannoError(f"{flag} must be a number from 0 to 1 (scores lie there), got {value}")


def box_xywh(values: list[float], flag: str) -> np.ndarray:
    """An (X, Y, W, H) box with finite numbers and a positive size, as (x0, y0, x1, y1)."""
    x, y, w, h = (float(v) for v in values)
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise InstannoError(f"{flag} {x:g} {y:g} {w:g} {h:g} holds NaN/inf; give X Y W H in pixels")
    if w <= 0 or h <= 0:
        raise InstannoError(f"{flag} {x:g} {y:g} {w:g} {h:g}: W and H must be above 0")
    return np.array([x, y, x + w, y + h])


def component(kind: str, name: str | None, table: dict[str, str]) -> None:
    """``name`` is None (the default) or one of ``table``'s keys."""
    if name is not None and name not in table:
        raise InstannoError(f"--{kind} {name!r} is unknown; choose one of {', '.join(sorted(table))}")


DEVICE = re.compile(r"(cpu|cuda|mps)(:\d+)?")  # the devices a run can use


def device(spec: str | None) -> None:
    """``spec`` is None (the default: cuda when usable) or a device present on this machine: the
    spelling is checked first, then torch is asked (cuda, mps) without loading any model."""
    if spec is None:
        return
    found = DEVICE.fullmatch(spec)
    if found is None:
        raise InstannoError(f"--device {spec!r} is not a device; use cpu, cuda or cuda:N")
    kind, index = found.group(1), found.group(2)
    if kind == "cpu":
        return
    import torch

    if kind == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise InstannoError(f"--device {spec}: no CUDA GPU is usable here; use --device cpu")
        if index is not None and int(index[1:]) >= n:
            raise InstannoError(f"--device {spec}: this machine has {n} CUDA device(s), "
                                f"cuda:0 to cuda:{n - 1}")
    elif not torch.backends.mps.is_available():
        raise InstannoError(f"--device {spec}: Apple's MPS is not usable here; use --device cpu")


def plane_shape(shape: tuple[int, ...], path: str | Path) -> tuple[int, ...]:
    """``shape`` (as read: (H, W) or (H, W, C)) is one 2D plane; 3D / time stacks are refused."""
    dims = tuple(int(s) for s in shape)
    if len(dims) == 2 or (len(dims) == 3 and dims[2] <= MAX_CHANNELS):
        if min(dims) < 1:
            raise InstannoError(f"image {path} is empty (shape {dims})")
        return dims
    raise InstannoError(
        f"image {path} has shape {dims}: a 3D / time stack, not one 2D image (H, W) or (H, W, C) "
        f"with at most {MAX_CHANNELS} channels: save one plane as a 2D image (instanno predict "
        "runs every plane of a TIFF or zarr stack)")


def image_file_shape(path: str | Path) -> tuple[int, ...]:
    """The (H, W) or (H, W, C) shape of a PNG / JPEG / other Pillow-readable file, from its header
    (no pixels read); a clear error for an empty, text or damaged file, or an animation."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InstannoError(f"image {path} does not exist; check the path")
    if path.stat().st_size == 0:
        raise InstannoError(f"image {path} is empty (0 bytes); save or copy it again")
    try:
        with Image.open(path) as im:
            w, h = im.size
            bands = len(im.getbands())
            frames = getattr(im, "n_frames", 1)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        what = "not an image" if isinstance(err, UnidentifiedImageError) else f"damaged ({err})"
        raise InstannoError(f"image {path} is {what}; pass a PNG, JPEG, TIFF or zarr image") from None
    if frames > 1:
        raise InstannoError(f"image {path} holds {frames} frames: a stack or animation, not one 2D "
                            "image: save it as a multi-page TIFF or one image per frame in a folder, "
                            "which instanno predict runs plane by plane")
    return (h, w) if bands == 1 else (h, w, bands)


def image_shape(path: str | Path, level: int = 0) -> tuple[int, ...]:
    """The (H, W) or (H, W, C) shape of the image ``instanno predict`` would read, from headers
    only: TIFF and zarr are opened lazily, other files through their header."""
    from .io.images import TIFF_SUFFIXES, ZARR_SUFFIXES, open_image

    path = Path(path)
    if not path.exists():
        raise InstannoError(f"image {path} does not exist; check the path")
    if path.is_dir() or path.name.lower().endswith(ZARR_SUFFIXES + TIFF_SUFFIXES):
        if path.is_file() and path.stat().st_size == 0:
            raise InstannoError(f"image {path} is empty (0 bytes); save or copy it again")
        return plane_shape(open_image(path, level).data.shape, path)
    return plane_shape(image_file_shape(path), path)


def _models(a: argparse.Namespace) -> None:
    from .inference.annotator import MATCHERS, OUTLINERS

    component("matcher", a.matcher, MATCHERS)
    component("outliner", a.outliner, OUTLINERS)
    if getattr(a, "models", None) is not None:
        input_folder(a.models, "--models")


def check_predict(a: argparse.Namespace) -> tuple[tuple[int, ...], np.ndarray, np.ndarray]:
    """Every argument of ``instanno predict``; returns the image's (H, W[, C]) shape, the
    (x0, y0, x1, y1) box of ``--box`` or the (k, 4) boxes of ``--ref-box`` and the (m, 4)
    ``--negative-box`` boxes."""
    output_file(a.out, a.overwrite)
    if a.table is not None:
        output_file(a.table, a.overwrite, "--table")
    if a.checkpoint is not None:
        output_folder(a.checkpoint, "--checkpoint")
    positive(a.tile_size, "--tile-size")
    positive(a.batch_size, "--batch-size")
    fraction(a.score_threshold, "--score-threshold")
    non_negative(a.level, "--level")
    negatives = np.array([box_xywh(v, "--negative-box") for v in a.negative_box or []]).reshape(-1, 4)
    if len(negatives) and a.ref_box is None:
        raise InstannoError("--negative-box goes with --ref-box (things not wanted among the matches)")
    if a.ref_box is not None:
        box = np.stack([box_xywh(v, "--ref-box") for v in a.ref_box])
    else:
        box = box_xywh(a.box, "--box")
    shape = image_shape(a.image, a.level)
    device(a.device)
    _models(a)
    if a.ref_box is not None:
        from .inference.references import check_references

        check_references(box, negatives, shape[:2])
    else:
        check_box(box, shape[:2], "--box")
    return shape, box, negatives


def check_evaluate(a: argparse.Namespace) -> None:
    """Every argument of ``instanno evaluate``, and the dataset: its annotations (checked field by
    field by ``io.coco.ground_truth``) and the header of each image they name."""
    folder = input_folder(a.dataset, "dataset")
    positive(a.max_images, "--max-images")
    if a.json is not None:
        output_file(a.json, a.overwrite, "--json")
    device(a.device)
    _models(a)
    from .io.coco import ground_truth

    annotations = folder / "annotations.json"
    if not annotations.is_file():
        raise InstannoError(f"dataset {folder} has no annotations.json; a COCO folder holds "
                            "annotations.json and images/")
    for img in ground_truth(annotations).dataset["images"][:a.max_images]:
        try:
            image_shape(folder / img["file_name"])
        except InstannoError as err:
            raise InstannoError(f"{annotations}: {err}") from None


def check_demo(a: argparse.Namespace) -> None:
    """Every argument of ``instanno demo``."""
    output_folder(a.out, "--out")
    device(a.device)
    _models(a)


def check_finetune(a: argparse.Namespace) -> None:
    """``instanno train MODEL --from``: its images and output folder given, the device, and the
    model folder to start from (``--models``) if given."""
    if a.images is None or a.out is None:
        raise InstannoError(f"fine-tuning is `instanno train {a.model} --from ANNOTATIONS.json "
                            "--images DIR --out MODEL_DIR`")
    device(a.device)
    if a.models is not None:
        input_folder(a.models, "--models")


def check_train(a: argparse.Namespace) -> None:
    """Every argument of ``instanno train`` (the recipe itself is checked when it is loaded)."""
    input_file(a.config, "--config")
    device(a.device)
