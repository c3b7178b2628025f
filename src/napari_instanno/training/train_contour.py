"""Train the contour regressor: ``python -m napari_instanno.training.train_contour --config ...``.

Crops around every ground-truth box (with room for jitter) are cut once and cached under
``data.cache_dir``; each step jitters the boxes, re-crops with RoIAlign and augments (flips,
transposes, brightness / contrast), so epochs cost only the network. Seeded, resumable
(checkpoints in ``run_dir``), CUDA with mixed precision when available.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import InstannoError
from ..geometry import resample_polygon
from ..io.atomic import read_json
from ..models.contour import ContourRegressor
from ..models.weights import load_safetensors, save_fp16
from .datasets import CocoFolder, shared_folder
from .losses import align_start, contour_loss, rasterize
from .recipes import load_config
from .synthetic_shapes import shape_crops, texture_images

GT_POINTS = 128  # ground-truth resampling for the masks; every other point gives the N=64 targets


# ------------------------------------------------------------------------- crop cache
def _cache_source(src: dict, size: int, context: float, rng: np.random.Generator
                  ) -> dict[str, torch.Tensor]:
    from torchvision.ops import roi_align

    root = shared_folder(src["folder"])
    data = CocoFolder(root)
    anns = read_json(data.annotations, "COCO").get("annotations") or []
    if anns and not any(a.get("segmentation") for a in anns):
        raise InstannoError(f"{root} has boxes only (no annotation has a 'segmentation'): the "
                            "contour regressor learns outlines from masks or polygons; remove it "
                            "from data.sources (box-only folders can train the matcher)")
    crops, polys, boxes = [], [], []
    for sample in data.samples[:src.get("max_images")]:
        inst = sample.instances
        b = inst.boxes
        ok = np.flatnonzero(np.minimum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
                            >= src.get("min_size", 2))
        ok = ok[[len(inst.polygons[i]) >= 3 for i in ok]]
        if len(ok) == 0:
            continue
        if len(ok) > src.get("max_per_image", 10**9):
            ok = np.sort(rng.choice(ok, src["max_per_image"], replace=False))
        rgb = torch.from_numpy(np.ascontiguousarray(sample.load_rgb01().transpose(2, 0, 1)))[None]
        box = torch.as_tensor(b[ok], dtype=torch.float32)
        centre, half = (box[:, :2] + box[:, 2:]) / 2, (box[:, 2:] - box[:, :2]) * context / 2
        win = torch.cat([centre - half, centre + half], dim=1)
        rois = torch.cat([torch.zeros(len(win), 1), win], dim=1)
        crop = roi_align(rgb, rois, size, sampling_ratio=2, aligned=True)
        crops.append((crop.clamp(0, 1) * 255).round().to(torch.uint8))
        origin, extent = win[:, None, [1, 0]], win[:, None, [3, 2]] - win[:, None, [1, 0]]
        gt = torch.stack([torch.as_tensor(resample_polygon(inst.polygons[i], GT_POINTS),
                                          dtype=torch.float32) for i in ok])
        polys.append((gt - origin) / extent * size)
        boxes.append((box - win[:, [0, 1, 0, 1]]) / extent[:, 0][:, [1, 0, 1, 0]] * size)
    if not crops:
        raise InstannoError(f"{root}: no usable instance (none with a polygon and a box side of "
                            f"at least min_size={src.get('min_size', 2)} px); lower min_size or "
                            "remove the folder from data.sources")
    return {"crops": torch.cat(crops), "polys": torch.cat(polys), "boxes": torch.cat(boxes)}


def source_name(src: dict) -> str:
    """A data source's folder, or ``synthetic``."""
    return src.get("folder", "synthetic")


def load_cache(src: dict, data_cfg: dict, seed: int) -> dict[str, torch.Tensor]:
    """Cached crops (uint8), GT polygons and boxes (in cached-crop pixels) of one source.

    ``src`` holds ``folder`` and optionally ``max_images`` (the first ones), ``max_per_image``
    (a seeded random subset) and ``min_size`` (smallest box side in pixels); or ``synthetic``:
    ``count`` shapes (``synthetic_shapes.shape_crops``) textured from ``folders`` (up to
    ``max_images`` images of each), with up to ``neighbours`` other shapes around each.
    """
    src = {k: v for k, v in src.items() if k not in ("weight", "jitter")}
    key = json.dumps([src, data_cfg["cache_size"], data_cfg["cache_context"], seed, GT_POINTS, 2],
                     sort_keys=True)
    tag = source_name(src).replace("/", "_") + "_" + hashlib.sha1(key.encode()).hexdigest()[:10]
    path = Path(data_cfg["cache_dir"]) / f"{tag}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    rng = np.random.default_rng(seed)
    if "synthetic" in src:
        syn = src["synthetic"]
        images = texture_images(syn["folders"], syn.get("max_images", 40), seed)
        cache = shape_crops(images, syn["count"], seed + 1, data_cfg["cache_size"],
                            data_cfg["cache_context"], syn.get("neighbours", 3), GT_POINTS)
    else:
        cache = _cache_source(src, data_cfg["cache_size"], data_cfg["cache_context"], rng)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(cache, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)
    return cache


# ------------------------------------------------------------------------- batches
def _jitter(boxes: torch.Tensor, fraction: float, gen: torch.Generator) -> torch.Tensor:
    size = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    out = boxes + (torch.rand(boxes.shape, generator=gen) * 2 - 1) * fraction * size
    lo, hi = torch.minimum(out[:, :2], out[:, 2:]), torch.maximum(out[:, :2], out[:, 2:])
    return torch.cat([lo, torch.maximum(hi, lo + 1e-3)], dim=1)


def _distort(poly: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """User-like distorted (B, N, 2) polygons: smooth radial waves, a dragged stretch, noise."""
    b, n, _ = poly.shape
    centre = poly.mean(dim=1, keepdim=True)
    radius = (poly - centre).norm(dim=-1).mean(dim=1, keepdim=True)
    t = torch.arange(n) * (2 * math.pi / n)
    wave = torch.zeros(b, n)
    for k in (1, 2, 3, 4):
        amp = torch.rand(b, 1, generator=gen) * 0.25 / k
        phase = torch.rand(b, 1, generator=gen) * 2 * math.pi
        wave += amp * torch.cos(k * t + phase)
    direction = (poly - centre) / (poly - centre).norm(dim=-1, keepdim=True).clamp(min=1e-6)
    out = poly + direction * (wave * radius)[..., None]
    # drag a stretch of vertices (a Gaussian window around a random vertex) by a random vector
    at = torch.randint(0, n, (b, 1), generator=gen)
    gap = (torch.arange(n)[None] - at).remainder(n)
    gap = torch.minimum(gap, n - gap).float()
    width = 2 + torch.rand(b, 1, generator=gen) * n / 8
    drag = (torch.rand(b, 1, 2, generator=gen) * 2 - 1) * 0.6 * radius[..., None]
    drag = drag * (torch.rand(b, 1, 1, generator=gen) < 0.5)
    out = out + torch.exp(-(gap / width) ** 2)[..., None] * drag
    return out + torch.randn(poly.shape, generator=gen) * 0.02 * radius[..., None]


def make_batch(model: ContourRegressor, cache: dict[str, torch.Tensor], idx: torch.Tensor,
               cfg: dict, gen: torch.Generator | None, augment: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(crops, init, aligned GT (B, N, 2), GT mask) in crop units for cache rows ``idx``."""
    crops_u8, polys, boxes = cache["crops"][idx], cache["polys"][idx], cache["boxes"][idx]
    boxes = _jitter(boxes, cfg["jitter"], gen)
    init_img = None
    if augment and cfg.get("refine_prob", 0) > 0:
        refine = torch.rand(len(idx), generator=gen) < cfg["refine_prob"]
        if refine.any():
            init_img = _distort(polys[:, ::2], gen)
            rb = torch.cat([init_img[..., [1, 0]].amin(1), init_img[..., [1, 0]].amax(1)], dim=1)
            boxes = torch.where(refine[:, None], rb, boxes)
            init_img = torch.where(refine[:, None, None], init_img, torch.nan)
    windows = model.crop_boxes(boxes)
    crops = model.crop(crops_u8.float() / 255, windows, torch.arange(len(idx)))
    gt = model.to_crop(polys, windows)
    init = model.initial_ellipse(len(idx))
    if init_img is not None:
        init = torch.where(init_img.isnan(), init, model.to_crop(init_img, windows))
    s = float(model.crop_size)
    if augment:
        flip_r, flip_c, swap = (torch.rand(3, len(idx), generator=gen) < 0.5)
        crops = torch.where(flip_r[:, None, None, None], crops.flip(-2), crops)
        crops = torch.where(flip_c[:, None, None, None], crops.flip(-1), crops)
        crops = torch.where(swap[:, None, None, None], crops.transpose(-1, -2), crops)
        gt, init = (_flip_points(p, flip_r, flip_c, swap, s) for p in (gt, init))
        gain = 0.8 + 0.4 * torch.rand(len(idx), 1, 1, 1, generator=gen)
        bias = 0.1 * (torch.rand(len(idx), 1, 1, 1, generator=gen) * 2 - 1)
        mean = crops.mean(dim=(1, 2, 3), keepdim=True)
        crops = ((crops - mean) * gain + mean + bias).clamp(0, 1)
    mask = rasterize(gt, cfg.get("mask_size", 32), s)
    return crops, init, align_start(gt[:, ::2], init), mask


def _flip_points(p: torch.Tensor, flip_r: torch.Tensor, flip_c: torch.Tensor, swap: torch.Tensor,
                 s: float) -> torch.Tensor:
    p = p.clone()
    p[..., 0] = torch.where(flip_r[:, None], s - p[..., 0], p[..., 0])
    p[..., 1] = torch.where(flip_c[:, None], s - p[..., 1], p[..., 1])
    return torch.where(swap[:, None, None], p.flip(-1), p)


# ------------------------------------------------------------------------- validation
@torch.no_grad()
def crop_iou(model: ContourRegressor, cache: dict[str, torch.Tensor], cfg: dict,
             device: str, batch: int = 128) -> dict[str, float]:
    """Mean IoU in crop space (64-px rasters) of the model and of the ellipse, fixed jitter."""
    model.eval()
    gen = torch.Generator().manual_seed(1234)
    vcfg = {"jitter": cfg["jitter"], "mask_size": model.crop_size}
    ious, ell = [], []
    for start in range(0, len(cache["crops"]), batch):
        idx = torch.arange(start, min(start + batch, len(cache["crops"])))
        crops, init, _, mask = make_batch(model, cache, idx, vcfg, gen, augment=False)
        polys, _ = model(crops.to(device), init.to(device))
        s = model.crop_size
        for poly, store in ((polys[-1].cpu(), ious), (init, ell)):
            pm = rasterize(poly, s, s)
            inter, union = (pm * mask).sum((1, 2)), ((pm + mask) > 0).float().sum((1, 2))
            store.append(inter / union.clamp(min=1))
    model.train()
    return {"iou": float(torch.cat(ious).mean()), "ellipse_iou": float(torch.cat(ell).mean())}


# ------------------------------------------------------------------------- training
def build_model(cfg: dict[str, Any]) -> ContourRegressor:
    """The regressor of ``cfg["model"]``, initialised from ``cfg["init"]`` weights when set."""
    model = ContourRegressor(**cfg["model"])
    if cfg.get("init"):  # start from earlier weights (a later stage of a recipe)
        load_safetensors(model, cfg["init"])
    return model


def _sampler(sizes: list[int], weights: list[float], batch: int, gen: torch.Generator
             ) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.tensor(weights, dtype=torch.float64)
    src = torch.multinomial(w / w.sum(), batch, replacement=True, generator=gen)
    row = (torch.rand(batch, generator=gen, dtype=torch.float64)
           * torch.tensor(sizes, dtype=torch.float64)[src]).long()
    return src, row


def train(config: str | Path, resume: bool = True, device: str | None = None,
          overrides: list[str] | None = None,
          on_step: Callable[[int, int], None] | None = None) -> Path:
    """Train from a YAML recipe; returns the path of the saved fp16 safetensors weights.
    ``on_step(step, steps)`` runs after each step (it may raise to stop the run)."""
    from tqdm import tqdm

    cfg = load_config(config, overrides)
    tcfg, dcfg = cfg["train"], cfg["data"]
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(int(cfg.get("threads", 1)))
    torch.manual_seed(cfg["seed"])
    caches = [load_cache(src, dcfg, cfg["seed"]) for src in dcfg["sources"]]
    val = load_cache(dcfg["val"], dcfg, cfg["seed"])
    vjit = dcfg["val"].get("jitter", 0.1)
    sizes = [len(c["crops"]) for c in caches]
    print(f"training crops per source: {dict(zip(map(source_name, dcfg['sources']), sizes))}; "
          f"val crops: {len(val['crops'])}", flush=True)

    model = build_model(cfg).to(device)
    backbone = [p for n, p in model.named_parameters() if n.startswith("backbone.")]
    heads = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    opt = torch.optim.AdamW([{"params": backbone, "lr": tcfg["backbone_lr"]},
                             {"params": heads, "lr": tcfg["lr"]}],
                            weight_decay=tcfg["weight_decay"])
    base_lrs = [g["lr"] for g in opt.param_groups]
    steps, warm = int(tcfg["steps"]), int(tcfg.get("warmup", 0))
    use_amp = device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    gen = torch.Generator().manual_seed(cfg["seed"])
    run_dir = Path(cfg["run_dir"])
    ckpt = run_dir / "last.ckpt"
    step, history = 0, []
    if resume and ckpt.is_file():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        step, history = state["step"], state["history"]
        print(f"resumed from {ckpt} at step {step}", flush=True)
    run_dir.mkdir(parents=True, exist_ok=True)

    def save_ckpt() -> None:
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
                    "step": step, "history": history, "config": cfg}, tmp)
        tmp.replace(ckpt)

    model.train()
    last_save, bar = time.time(), tqdm(total=steps, initial=step, mininterval=30, ascii=True)
    while step < steps:
        scale = min(1.0, (step + 1) / max(warm, 1)) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for g, lr in zip(opt.param_groups, base_lrs):
            g["lr"] = lr * scale
        src, row = _sampler(sizes, [s["weight"] for s in dcfg["sources"]],
                            tcfg["batch_size"], gen)
        parts = [make_batch(model, caches[k], row[src == k], tcfg, gen)
                 for k in range(len(caches)) if (src == k).any()]
        crops, init, gt, mask = (torch.cat(x).to(device) for x in zip(*parts))
        with torch.autocast("cuda", enabled=use_amp):
            polys, moves = model(crops, init)
        loss, terms = contour_loss(polys, moves, gt, mask, extent=model.crop_size,
                                   alpha=tcfg["alpha"], use_cos=tcfg["use_cos"])
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.get("grad_clip", 5.0))
        scaler.step(opt)
        scaler.update()
        step += 1
        if on_step is not None:
            on_step(step, steps)
        bar.update(1)
        bar.set_postfix({k: round(v, 3) for k, v in terms.items()}, refresh=False)
        if step % tcfg["val_every"] == 0 or step == steps:
            metrics = crop_iou(model, val, {"jitter": vjit}, device)
            history.append({"step": step, **terms, **metrics})
            print(f"\nstep {step}: {json.dumps(history[-1])}", flush=True)
        if time.time() - last_save > 60 * tcfg["checkpoint_minutes"] or step == steps:
            save_ckpt()
            last_save = time.time()
    bar.close()
    out = Path(cfg["output"])
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"model": json.dumps(model.config()), "steps": str(step),
            "recipe": json.dumps(cfg, sort_keys=True), "history": json.dumps(history[-3:])}
    save_fp16(model.cpu(), out, meta)
    print(f"saved {out}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line: ``--config``, ``--no-resume``, ``--device``, ``--set key=value``."""
    ap = argparse.ArgumentParser(prog="train_contour", description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--no-resume", action="store_true")
    ap.add_argument("--device", default=None)
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    metavar="KEY=VALUE", help="override a config entry, e.g. train.use_cos=false")
    args = ap.parse_args(argv)
    train(args.config, resume=not args.no_resume, device=args.device, overrides=args.overrides)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
