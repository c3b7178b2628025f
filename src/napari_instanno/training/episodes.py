"""Episodes for the one-shot matcher, sampled from any number of COCO folders.

An episode is a search crop, every instance of one category in it (the targets) and a reference
instance of that category (a fixed-size crop, see ``models.matcher.crop_reference``), usually from
the same image, sometimes from another. Other categories, and distractors pasted from other data
sets, are negatives. Augmentations: scale (0.5-2x), flips, 90-degree rotations, brightness,
contrast, gamma, channel permutations, grey and inverted images.

*Synthetic exemplar episodes* (``EpisodeConfig.synthetic``, the share of them) teach the generic
skill, "find what looks like the reference", on any kind: one object (an instance's mask, or the
crop of a box for box-only data) is pasted several to dozens of times, each copy transformed
(scale, rotation, flips, mild colour / blur changes; touching or partly covering each other), onto
a background from another folder, with distractors of other kinds; the targets are every copy
that stays visible (``synthetic``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torchvision.ops import roi_align

from ..errors import InstannoError
from ..geometry import polygon_to_mask
from ..models.matcher import MatcherConfig, reference_windows
from .datasets import CocoFolder
from .synthetic import Cutout, cut_object, paste_scene


@dataclass
class Episode:
    """One training example (float32 arrays; boxes x0y0x1y1 in their crop's pixels)."""

    image: np.ndarray       # (3, S, S) search crop, RGB [0, 1]
    boxes: np.ndarray       # (N, 4) every target in the search crop
    ref_crop: np.ndarray    # (3, R, R) the reference crop
    ref_local: np.ndarray   # (4,) the reference box inside ``ref_crop``
    ref_size: np.ndarray    # (2,) the reference's (w, h) at the search crop's scale
    source: str = ""


@dataclass
class EpisodeConfig:
    """Sampler settings (the ``episodes`` section of configs/matcher.yaml)."""

    crop: int = 256
    scale: tuple[float, float] = (0.5, 2.0)
    ref_side: tuple[float, float] = (6.0, 128.0)   # reference's longer side after scaling (px)
    other_image: float = 0.2        # reference from another image of the same folder
    empty_crop: float = 0.1         # crop at a random place (may hold no target)
    distractors: float = 0.5        # chance of pasting distractors of other kinds
    max_distractors: int = 4
    min_visible: float = 0.4        # a cut target counts when this much of its box is in the crop
    bank_per_folder: int = 400
    weights: dict[str, float] = field(default_factory=dict)
    synthetic: float = 0.0          # share of synthetic exemplar episodes
    synthetic_weights: dict[str, float] = field(default_factory=dict)  # object folders (default: weights)
    synth_ref_side: tuple[float, float] = (28.0, 128.0)  # the reference copy's longer side (px)
    max_upscale: float = 4.0        # an object is enlarged by at most this much
    copies: tuple[int, int] = (2, 30)
    copy_scale: tuple[float, float] = (0.6, 1.6)  # each copy's size relative to the reference
    max_overlap: float = 0.25       # of the smaller box, between copies (touching, partly covered)
    min_visible_copy: float = 0.6   # a copy is a target while this much of it is visible
    other_canvas: float = 0.3       # the reference pasted on its own background
    rival: float = 0.0              # chance of a second kind pasted as many times as the targets
    soft_distractors: bool = False  # distractors' edges softened like the targets' (synthetic)


def _rgb_uint8(sample) -> np.ndarray:
    return (sample.load_rgb01() * 255 + 0.5).astype(np.uint8)


def _crop(img: np.ndarray, win: np.ndarray, out: int) -> torch.Tensor:
    """``roi_align`` of window ``win`` (x0, y0, x1, y1) of a uint8 (H, W, 3) image -> (3, out, out).

    Only the part of the image under the window is converted; outside the image is black.
    """
    h, w = img.shape[:2]
    x0, y0 = max(int(np.floor(win[0])) - 1, 0), max(int(np.floor(win[1])) - 1, 0)
    x1, y1 = min(int(np.ceil(win[2])) + 1, w), min(int(np.ceil(win[3])) + 1, h)
    if x1 <= x0 or y1 <= y0:
        return torch.zeros(3, out, out)
    sub = torch.from_numpy(np.ascontiguousarray(img[y0:y1, x0:x1])).permute(2, 0, 1).float() / 255
    roi = torch.tensor([[0, win[0] - x0, win[1] - y0, win[2] - x0, win[3] - y0]],
                       dtype=torch.float32)
    ratio = max(1, int(np.ceil((win[2] - win[0]) / out)))
    return roi_align(sub[None], roi, out, 1.0, min(ratio, 4), aligned=True)[0]


def _geometric(x: torch.Tensor, boxes: np.ndarray, k: int, fx: bool, fy: bool
               ) -> tuple[torch.Tensor, np.ndarray]:
    """Rotate a square (C, S, S) crop by k*90 degrees and flip it; boxes follow."""
    s = x.shape[-1]
    b = boxes.reshape(-1, 4).copy()
    for _ in range(k % 4):  # counter-clockwise: (x, y) -> (y, s - x)
        x = torch.rot90(x, 1, (1, 2))
        b = np.stack([b[:, 1], s - b[:, 2], b[:, 3], s - b[:, 0]], 1)
    if fx:
        x = x.flip(2)
        b = np.stack([s - b[:, 2], b[:, 1], s - b[:, 0], b[:, 3]], 1)
    if fy:
        x = x.flip(1)
        b = np.stack([b[:, 0], s - b[:, 3], b[:, 2], s - b[:, 1]], 1)
    return x, b


class EpisodeSampler:
    """Random episodes from COCO folders; ``sample(rng)`` -> ``Episode``.

    ``folders`` maps a name to a folder path or a ``CocoFolder``. Images are cached as uint8 once
    loaded, and instances met along the way fill a bank of distractors (masked patches).
    """

    def __init__(self, folders: dict[str, str | Path | CocoFolder], matcher_cfg: MatcherConfig,
                 cfg: EpisodeConfig | None = None) -> None:
        self.cfg = cfg or EpisodeConfig()
        self.mcfg = matcher_cfg
        self.folders = {n: f if isinstance(f, CocoFolder) else CocoFolder(f)
                        for n, f in folders.items()}
        self.names = list(self.folders)
        w = np.array([self.cfg.weights.get(n, 1.0) for n in self.names], dtype=np.float64)
        self.weights = w / w.sum()
        # per folder: indices of images with instances, and per category the images holding it
        self.usable: dict[str, list[int]] = {}
        self.by_cat: dict[str, dict[int, list[int]]] = {}
        for n, f in self.folders.items():
            self.usable[n] = [i for i, s in enumerate(f.samples) if len(s.instances)]
            cats: dict[int, list[int]] = {}
            for i in self.usable[n]:
                for c in np.unique(f.samples[i].instances.category_ids):
                    cats.setdefault(int(c), []).append(i)
            self.by_cat[n] = cats
        self._images: dict[tuple[str, int], np.ndarray] = {}
        self.bank: dict[str, list[tuple[int, np.ndarray, np.ndarray]]] = {n: [] for n in self.names}

    def image(self, name: str, i: int) -> np.ndarray:
        key = (name, i)
        if key not in self._images:
            self._images[key] = _rgb_uint8(self.folders[name].samples[i])
        return self._images[key]

    def _fill_bank(self, name: str, i: int, img: np.ndarray, rng: np.random.Generator) -> None:
        bank = self.bank[name]
        inst = self.folders[name].samples[i].instances
        for j in rng.choice(len(inst), size=min(3, len(inst)), replace=False):
            poly = inst.polygons[j]
            x0, y0, x1, y1 = np.round(inst.boxes[j]).astype(int)
            x0, y0 = max(x0, 0), max(y0, 0)
            x1, y1 = min(x1, img.shape[1]), min(y1, img.shape[0])
            if x1 - x0 < 4 or y1 - y0 < 4 or len(poly) < 5:  # boxes-only data has 4-vertex rings
                continue
            mask = polygon_to_mask(poly - [y0, x0], (y1 - y0, x1 - x0))
            if mask.mean() < 0.2:
                continue
            entry = (int(inst.category_ids[j]), img[y0:y1, x0:x1].copy(), mask)
            if len(bank) < self.cfg.bank_per_folder:
                bank.append(entry)
            else:
                bank[rng.integers(len(bank))] = entry

    def sample(self, rng: np.random.Generator) -> Episode:
        if self.cfg.synthetic > 0 and len(self.names) > 1 and rng.random() < self.cfg.synthetic:
            return self.sample_synthetic(rng)
        cfg = self.cfg
        name = self.names[rng.choice(len(self.names), p=self.weights)]
        folder = self.folders[name]
        i = self.usable[name][rng.integers(len(self.usable[name]))]
        inst = folder.samples[i].instances
        cat = int(rng.choice(np.unique(inst.category_ids)))
        idx = np.flatnonzero(inst.category_ids == cat)
        img = self.image(name, i)
        self._fill_bank(name, i, img, rng)

        # the reference: another image of the same category sometimes, else one of the targets
        ref_i, ref_img, ref_boxes = i, img, inst.boxes[idx]
        others = [j for j in self.by_cat[name][cat] if j != i]
        if others and rng.random() < cfg.other_image:
            ref_i = others[rng.integers(len(others))]
            ref_img = self.image(name, ref_i)
            ri = folder.samples[ref_i].instances
            ref_boxes = ri.boxes[ri.category_ids == cat]
        sizes = ref_boxes[:, 2:] - ref_boxes[:, :2]
        ok = np.flatnonzero(sizes.min(1) >= 3)
        ref_box = ref_boxes[ok[rng.integers(len(ok))] if len(ok) else rng.integers(len(ref_boxes))]
        ref_w, ref_h = np.maximum(ref_box[2:] - ref_box[:2], 1.0)

        # scale: 0.5-2x, kept so that the reference's longer side stays in ``ref_side``
        s = float(np.exp(rng.uniform(*np.log(cfg.scale))))
        side = max(ref_w, ref_h)
        s = float(np.clip(s, cfg.ref_side[0] / side, cfg.ref_side[1] / side))

        # the search window (image pixels), around a random target or anywhere
        half = cfg.crop / s / 2
        hh, ww = img.shape[:2]
        if rng.random() < cfg.empty_crop:
            c = rng.uniform([0, 0], [ww, hh])
        else:
            b = inst.boxes[idx[rng.integers(len(idx))]]
            c = (b[:2] + b[2:]) / 2 + rng.uniform(-0.7, 0.7, 2) * half
            # keep the window inside a large image; let it cover all of a small one
            lim = np.array([ww, hh], dtype=np.float64)
            c = np.where(lim > 2 * half, np.clip(c, half, lim - half),
                         np.clip(c, lim - half, half))
        win = np.array([c[0] - half, c[1] - half, c[0] + half, c[1] + half])
        search = _crop(img, win, cfg.crop)

        boxes = (inst.boxes[idx] - win[[0, 1, 0, 1]]) * s
        clipped = boxes.clip(0, cfg.crop)
        area = np.prod(boxes[:, 2:] - boxes[:, :2], 1).clip(min=1e-6)
        carea = np.prod((clipped[:, 2:] - clipped[:, :2]).clip(min=0), 1)
        boxes = clipped[carea / area >= cfg.min_visible]

        # the reference crop (the same window rule as at inference, at the search scale)
        rwin = reference_windows(torch.from_numpy(ref_box[None] * s).float(), self.mcfg)[0].numpy()
        ref_crop = _crop(ref_img, rwin / s, self.mcfg.ref_size)
        rscale = self.mcfg.ref_size / (rwin[2] - rwin[0])
        ref_local = (ref_box * s - rwin[[0, 1, 0, 1]]) * rscale

        if rng.random() < cfg.distractors:
            search = self._paste(search, boxes, name, cat, s * side, rng)

        return _finish(search, boxes, ref_crop, ref_local, np.array([ref_w, ref_h]) * s, rng,
                       f"{name}:{i}->{ref_i}")

    def _background(self, name: str, rng: np.random.Generator) -> torch.Tensor:
        """A random (3, S, S) window of an image of folder ``name``, at a scale of 0.5-2x."""
        f = self.folders[name]
        img = self.image(name, int(rng.integers(len(f.samples))))
        hh, ww = img.shape[:2]
        s = max(float(np.exp(rng.uniform(np.log(0.5), np.log(2.0)))), self.cfg.crop / min(hh, ww))
        half = self.cfg.crop / s / 2
        c = rng.uniform([half, half], [max(ww - half, half), max(hh - half, half)])
        return _crop(img, np.array([c[0] - half, c[1] - half, c[0] + half, c[1] + half]),
                     self.cfg.crop)

    def _cutout(self, rng: np.random.Generator) -> tuple[str, int, int, Cutout]:
        """A random object (folder, image, category, cutout) from the synthetic object folders."""
        names = self.names
        w = np.array([self.cfg.synthetic_weights.get(n, self.cfg.weights.get(n, 1.0)) for n in names])
        for _try in range(20):
            name = names[rng.choice(len(names), p=w / w.sum())]
            i = self.usable[name][rng.integers(len(self.usable[name]))]
            inst = self.folders[name].samples[i].instances
            j = int(rng.integers(len(inst)))
            img = self.image(name, i)
            self._fill_bank(name, i, img, rng)
            cut = cut_object(img, inst.polygons[j], inst.boxes[j])
            if cut is not None:
                return name, i, int(inst.category_ids[j]), cut
        raise InstannoError("no object large enough to paste in the episode folders")

    def _alpha(self, mask: np.ndarray) -> np.ndarray:
        """A distractor's alpha: its mask, softened like a target's when ``soft_distractors``."""
        if not self.cfg.soft_distractors:
            return mask.astype(np.float32)
        from scipy.ndimage import gaussian_filter
        return gaussian_filter(mask.astype(np.float32), 0.6)

    def _rival(self, name: str, cat: int, rng: np.random.Generator) -> Cutout | None:
        """An object of another kind than (``name``, ``cat``), cut like the targets' object."""
        for _try in range(5):
            other, _, other_cat, cut = self._cutout(rng)
            if (other, other_cat) != (name, cat):
                return cut
        return None

    def sample_synthetic(self, rng: np.random.Generator) -> Episode:
        """A synthetic exemplar episode: copies of one object on another folder's background."""
        cfg = self.cfg
        for _try in range(10):
            name, i, cat, obj = self._cutout(rng)
            others = [n for n in self.names if n != name]
            bg = self._background(others[rng.integers(len(others))], rng)
            side = max(obj.inside.shape)
            hi = min(cfg.synth_ref_side[1], cfg.max_upscale * side)
            lo = min(cfg.synth_ref_side[0], hi)
            ref_side = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
            pool = [e for n in self.names for e in self.bank[n] if n != name or e[0] != cat]
            dis = []
            if pool and rng.random() < cfg.distractors:
                for _ in range(int(rng.integers(1, cfg.max_distractors + 1))):
                    _, patch, mask = pool[rng.integers(len(pool))]
                    dis.append(Cutout(patch, self._alpha(mask), mask))
            rival = self._rival(name, cat, rng) if rng.random() < cfg.rival else None
            scene = paste_scene(bg, obj, ref_side, cfg, rng, dis, rival)
            if scene.ref >= 0:
                break
        else:
            raise InstannoError("could not paste a synthetic scene; check the episode settings")
        boxes = scene.boxes
        ref_img, ref_box = scene.image, boxes[scene.ref]
        if rng.random() < cfg.other_canvas:  # the reference on a background of its own
            one = EpisodeConfig(**{**cfg.__dict__, "copies": (1, 1), "max_overlap": 0.0})
            alone = paste_scene(self._background(self.names[rng.integers(len(self.names))], rng),
                                obj, ref_side, one, rng)
            if alone.ref >= 0:
                ref_img, ref_box = alone.image, alone.boxes[alone.ref]
        rwin = reference_windows(torch.from_numpy(ref_box[None]).float(), self.mcfg)[0].numpy()
        ratio = max(1, min(int(np.ceil((rwin[2] - rwin[0]) / self.mcfg.ref_size)), 4))
        roi = torch.tensor([[0, *rwin]], dtype=torch.float32)
        ref_crop = roi_align(ref_img[None], roi, self.mcfg.ref_size, 1.0, ratio, aligned=True)[0]
        ref_local = (ref_box - rwin[[0, 1, 0, 1]]) * (self.mcfg.ref_size / (rwin[2] - rwin[0]))
        return _finish(scene.image, boxes, ref_crop, ref_local,
                       (ref_box[2:] - ref_box[:2]).astype(np.float64), rng,
                       f"synthetic:{name}:{i}:{cat}")

    def _paste(self, search: torch.Tensor, boxes: np.ndarray, name: str, cat: int, ref_side: float,
               rng: np.random.Generator) -> torch.Tensor:
        """Paste masked patches of other kinds (other folders or categories) away from targets."""
        pool = [(n, e) for n in self.names for e in self.bank[n] if n != name or e[0] != cat]
        if not pool:
            return search
        out = search.clone()
        s = out.shape[-1]
        for _ in range(int(rng.integers(1, self.cfg.max_distractors + 1))):
            _, (_, patch, mask) = pool[rng.integers(len(pool))]
            f = ref_side * float(np.exp(rng.uniform(np.log(0.5), np.log(2.0)))) / max(patch.shape[:2])
            ph = int(np.clip(round(patch.shape[0] * f), 3, s // 2))
            pw = int(np.clip(round(patch.shape[1] * f), 3, s // 2))
            for _try in range(5):
                y, x = int(rng.integers(0, s - ph + 1)), int(rng.integers(0, s - pw + 1))
                if len(boxes) == 0:
                    break
                ix = (np.minimum(boxes[:, 2], x + pw) - np.maximum(boxes[:, 0], x)).clip(min=0)
                iy = (np.minimum(boxes[:, 3], y + ph) - np.maximum(boxes[:, 1], y)).clip(min=0)
                barea = np.prod(boxes[:, 2:] - boxes[:, :2], 1).clip(min=1)
                if (ix * iy / barea).max() < 0.2:
                    break
            else:
                continue
            p = torch.from_numpy(np.ascontiguousarray(patch)).permute(2, 0, 1).float()[None] / 255
            m = torch.from_numpy(mask.astype(np.float32))[None, None]
            p = torch.nn.functional.interpolate(p, (ph, pw), mode="bilinear", align_corners=False)
            m = torch.nn.functional.interpolate(m, (ph, pw), mode="bilinear", align_corners=False)
            region = out[:, y:y + ph, x:x + pw]
            out[:, y:y + ph, x:x + pw] = region * (1 - m[0]) + p[0] * m[0]
        return out


def _finish(search: torch.Tensor, boxes: np.ndarray, ref_crop: torch.Tensor, ref_local: np.ndarray,
            size: np.ndarray, rng: np.random.Generator, tag: str) -> Episode:
    """The episode, after one random rotation / flip of the search crop and the reference alike
    and the colour changes; ``size`` is the reference's (w, h) in search-crop pixels."""
    k, fx, fy = int(rng.integers(4)), bool(rng.random() < 0.5), bool(rng.random() < 0.5)
    search, boxes = _geometric(search, boxes, k, fx, fy)
    ref_crop, rl = _geometric(ref_crop, ref_local, k, fx, fy)
    if k % 2:
        size = size[::-1].copy()
    search, ref_crop = _colour([search, ref_crop], rng)
    return Episode(search.numpy(), boxes.astype(np.float32), ref_crop.numpy(),
                   rl[0].astype(np.float32), size.astype(np.float32), tag)


def _colour(images: list[torch.Tensor], rng: np.random.Generator) -> list[torch.Tensor]:
    """The same random colour change on every image: channels, grey, invert, gamma, contrast."""
    perm = rng.permutation(3) if rng.random() < 0.5 else np.arange(3)
    grey = rng.random() < 0.15
    invert = rng.random() < 0.1
    gamma = float(np.exp(rng.uniform(-0.4, 0.4)))
    contrast = float(np.exp(rng.uniform(-0.3, 0.3)))
    bright = float(rng.uniform(-0.1, 0.1))
    out = []
    for x in images:
        x = x[perm]
        if grey:
            x = x.mean(0, keepdim=True).expand(3, -1, -1)
        if invert:
            x = 1 - x
        x = x.clamp(0, 1) ** gamma
        x = ((x - 0.5) * contrast + 0.5 + bright).clamp(0, 1)
        out.append(x.contiguous())
    return out
