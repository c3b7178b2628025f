"""Synthetic shapes for the contour regressor: random polygons pasted into real images.

``random_shape`` draws one simple polygon of a kind in ``SHAPES`` (smooth blobs, sharp-cornered
polygons, rotated rectangles, L-shapes, elongated capsules, bent bands); ``paste`` blends a
texture into a background through the polygon's anti-aliased mask; ``shape_crops`` makes a whole
seeded set in the format of ``train_contour``'s crop cache: textures and backgrounds are windows
of different real images, neighbours of other shapes sit under and around the target, and the
target (fully visible, on top) is the polygon the regressor must find.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..geometry import fit_to_box, resample_polygon

SHAPES = ("blob", "polygon", "rectangle", "l_shape", "elongated", "bent")


def _rotate(poly: np.ndarray, rng: np.random.Generator, axis_aligned: float = 0.0) -> np.ndarray:
    """``poly`` turned by a random angle (kept as is with probability ``axis_aligned``)."""
    if rng.random() < axis_aligned:
        return poly
    a = rng.uniform(0, math.pi)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return poly @ rot.T


def random_shape(kind: str, rng: np.random.Generator) -> np.ndarray:
    """A simple (K, 2) polygon of ``kind`` (one of ``SHAPES``) around the origin, radius ~1."""
    if kind == "blob":  # star-shaped with smooth radial waves, then stretched
        t = np.linspace(0, 2 * math.pi, 96, endpoint=False)
        r = np.ones_like(t)
        for k in range(1, 6):
            r += rng.uniform(0, 0.35 / k) * np.cos(k * t + rng.uniform(0, 2 * math.pi))
        r = np.maximum(r, 0.25)
        poly = np.stack([r * np.cos(t), r * np.sin(t) * rng.uniform(0.5, 1.0)], axis=1)
        return _rotate(poly, rng)
    if kind == "polygon":  # 3-9 straight sides, sharp corners
        k = int(rng.integers(3, 10))
        t = (np.arange(k) + rng.uniform(-0.3, 0.3, k)) * (2 * math.pi / k) + rng.uniform(0, 6.3)
        r = rng.uniform(0.6, 1.0, k)
        return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
    if kind == "rectangle":
        h = rng.uniform(0.25, 1.0)
        poly = np.array([[-h, -1.0], [-h, 1.0], [h, 1.0], [h, -1.0]])
        return _rotate(poly, rng, axis_aligned=0.4)
    if kind == "l_shape":  # a rectangle less one corner rectangle (L), or a notch (U)
        a, b = rng.uniform(0.3, 0.8, 2)
        h = rng.uniform(0.5, 1.0)
        if rng.random() < 0.7:
            poly = np.array([[-h, -1], [-h, 1], [h * (1 - 2 * a), 1], [h * (1 - 2 * a), -1 + 2 * b],
                             [h, -1 + 2 * b], [h, -1]], dtype=float)
        else:
            w = b * 0.8
            poly = np.array([[-h, -1], [-h, 1], [h, 1], [h, w], [h * (1 - 2 * a), w],
                             [h * (1 - 2 * a), -w], [h, -w], [h, -1]], dtype=float)
        return _rotate(poly, rng, axis_aligned=0.4)
    if kind == "elongated":  # a capsule: aspect 3-8
        w = rng.uniform(1 / 8, 1 / 3)
        t = np.linspace(-math.pi / 2, math.pi / 2, 24)
        cap = np.stack([w * np.sin(t), (1 - w) + w * np.cos(t)], axis=1)
        return _rotate(np.concatenate([cap, -cap]), rng)
    if kind == "bent":  # a band along an arc of 60-200 degrees
        span = math.radians(rng.uniform(60, 200))
        width = rng.uniform(0.1, 0.4)
        t = np.linspace(-span / 2, span / 2, 48)
        outer = np.stack([(1 + width) * np.cos(t), (1 + width) * np.sin(t)], axis=1)
        inner = np.stack([(1 - width) * np.cos(t), (1 - width) * np.sin(t)], axis=1)[::-1]
        return _rotate(np.concatenate([outer, inner]), rng)
    raise ValueError(f"unknown shape kind {kind!r}; use one of {SHAPES}")


def soft_mask(poly: np.ndarray, size: int, blur: float = 0.0) -> np.ndarray:
    """Anti-aliased (4x supersampled) mask of ``poly`` in a ``size`` square, optionally blurred
    (PIL fills pixel centres inside, and its outline: 1/8 px wider than ``polygon_to_mask``)."""
    from PIL import Image, ImageDraw

    fine_img = Image.new("L", (4 * size, 4 * size), 0)
    ImageDraw.Draw(fine_img).polygon([(4 * c - 0.5, 4 * r - 0.5) for r, c in poly], fill=1)
    fine = np.asarray(fine_img, dtype=np.float32)
    alpha = fine.reshape(size, 4, size, 4).mean(axis=(1, 3))
    if blur > 0:
        from scipy.ndimage import gaussian_filter
        alpha = gaussian_filter(alpha, blur)
    return alpha


def paste(background: np.ndarray, texture: np.ndarray, poly: np.ndarray, blur: float = 0.0
          ) -> np.ndarray:
    """``texture`` blended into ``background`` (both (S, S, 3) float) inside ``poly``."""
    alpha = soft_mask(poly, background.shape[0], blur)[..., None]
    return background * (1 - alpha) + texture * alpha


def _window(img: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random window of ``img`` (uint8 (H, W, 3)), each side 16 px to the whole image (aspect
    up to 2), resized to ``size`` squared: float (size, size, 3) in [0, 1]."""
    h, w = img.shape[:2]
    side = rng.uniform(16, max(min(h, w), 17))
    sh = int(min(h, max(8, side * rng.uniform(0.7, 1.4))))
    sw = int(min(w, max(8, side * rng.uniform(0.7, 1.4))))
    r, c = int(rng.integers(0, h - sh + 1)), int(rng.integers(0, w - sw + 1))
    patch = torch.from_numpy(np.ascontiguousarray(img[r:r + sh, c:c + sw])).permute(2, 0, 1)
    out = F.interpolate(patch[None].float() / 255, size=(size, size), mode="bilinear",
                        align_corners=False, antialias=sh > size or sw > size)
    return out[0].permute(1, 2, 0).numpy()


def _contrast(texture: np.ndarray, background: np.ndarray, rng: np.random.Generator
              ) -> np.ndarray:
    """``texture`` given a mean brightness ``background`` differs from by 0.06-0.45."""
    gap = rng.uniform(0.06, 0.45) * rng.choice([-1.0, 1.0])
    target = float(np.clip(background.mean() + gap, 0.05, 0.95))
    if abs(target - background.mean()) < 0.04:  # no room on that side: the other one
        target = float(np.clip(background.mean() - gap, 0.05, 0.95))
    gain = rng.uniform(0.5, 1.2)
    out = (texture - texture.mean()) * gain + target
    if rng.random() < 0.3:  # a colour shift as well, the brightness kept
        shift = rng.uniform(-0.1, 0.1, 3)
        out = out + shift - shift.mean()
    return np.clip(out, 0, 1)


def _scene(images: list[np.ndarray], size: int, context: float, neighbours: int,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One crop (size, size, 3) float and its target polygon (row, col)."""
    pick = rng.choice(len(images), size=2, replace=len(images) < 2)
    background = _window(images[pick[0]], size, rng)
    texture = _contrast(_window(images[pick[1]], size, rng), background, rng)
    if rng.random() < 0.4:  # grey, like most microscopy
        background, texture = (np.repeat(x.mean(axis=2, keepdims=True), 3, axis=2)
                               for x in (background, texture))
    half, c = size / (2 * context), size / 2
    target = fit_to_box(random_shape(SHAPES[rng.integers(len(SHAPES))], rng),
                        np.array([c - half, c - half, c + half, c + half]))
    img = background
    for _ in range(int(rng.integers(0, neighbours + 1))):  # under the target, touching it
        other = random_shape(SHAPES[rng.integers(len(SHAPES))], rng)
        s = half * rng.uniform(0.5, 1.1)
        shift = rng.normal(size=2)
        shift = shift / np.linalg.norm(shift) * half * rng.uniform(1.2, 2.2)
        box = np.array([c - s, c - s, c + s, c + s]) + np.r_[shift[::-1], shift[::-1]]
        shade = texture if rng.random() < 0.6 else _contrast(texture, background, rng)
        img = paste(img, shade, fit_to_box(other, box), blur=rng.uniform(0, 1.0))
    img = paste(img, texture, target, blur=rng.uniform(0, 1.0))
    img = img + rng.normal(0, rng.uniform(0, 0.04), img.shape)
    return np.clip(img, 0, 1), target


def texture_images(folders: list[str], max_images: int, seed: int) -> list[np.ndarray]:
    """Up to ``max_images`` seeded random images (uint8 RGB) of each ``../shared/data`` folder:
    the textures and backgrounds (only the image files are read, not the annotations' masks)."""
    from ..image import to_rgb01
    from ..io.atomic import read_json
    from ..io.images import read_image_file
    from .datasets import shared_folder

    rng = np.random.default_rng(seed)
    out = []
    for name in folders:
        root = shared_folder(name)
        infos = read_json(root / "annotations.json", "COCO").get("images") or []
        for k in np.sort(rng.permutation(len(infos))[:max_images]):
            rgb = to_rgb01(read_image_file(root / infos[k]["file_name"]))
            out.append((rgb * 255).round().astype(np.uint8))
    return out


def shape_crops(images: list[np.ndarray], count: int, seed: int, size: int = 144,
                context: float = 2.0, neighbours: int = 3, points: int = 128
                ) -> dict[str, torch.Tensor]:
    """``count`` synthetic crops in the crop cache's format: ``crops`` uint8 (N, 3, size, size),
    ``polys`` (N, points, 2) targets (row, col) and ``boxes`` (N, 4) (x0, y0, x1, y1), crop pixels;
    the target's box is the central ``1 / context`` of the crop, as for the cached real crops."""
    if not images:
        raise ValueError("synthetic shapes need at least one image for textures")
    rng = np.random.default_rng(seed)
    crops, polys = [], []
    for _ in range(count):
        img, poly = _scene(images, size, context, neighbours, rng)
        crops.append(torch.from_numpy((img * 255).round().astype(np.uint8).transpose(2, 0, 1)))
        polys.append(torch.as_tensor(resample_polygon(poly, points), dtype=torch.float32))
    p = torch.stack(polys)
    boxes = torch.cat([p[..., [1, 0]].amin(1), p[..., [1, 0]].amax(1)], dim=1)
    return {"crops": torch.stack(crops), "polys": p, "boxes": boxes}
