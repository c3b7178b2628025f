"""Train the one-shot matcher episodically: ``python -m napari_instanno.training.train_matcher``.

The recipe is a YAML file (configs/matcher.yaml). Seeded, resumable (``<output_dir>/last.pt`` is
written every few minutes, with the optimiser and random states), CUDA with mixed precision when
present. The result is ``<output_dir>/matcher.safetensors`` (fp16, architecture in its metadata).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..inference.learned_matcher import SHARED
from ..models.matcher import MatcherConfig, OneShotMatcher
from ..models.weights import save_fp16
from .datasets import shared_folder
from .episodes import Episode, EpisodeConfig, EpisodeSampler
from .recipes import load_config


def make_targets(boxes: list[np.ndarray], ref_size: torch.Tensor, shape: tuple[int, int],
                 stride: int, dense: float = 0.0
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gaussian centre heatmap (B, h, w), regression targets (B, 4, h, w) and weights (B, h, w).

    Regression: the offset of the centre from the cell's centre (dx, dy, in cells) and
    log(w / w_ref), log(h / h_ref). Only centre cells are trained, unless ``dense`` > 0: then also
    every cell whose heatmap value is at least ``dense`` (for the nearest object, weighted by the
    heatmap), so a peak one cell off the centre still decodes to the right box.
    """
    b, (h, w) = len(boxes), shape
    heat = torch.zeros(b, h, w)
    reg = torch.zeros(b, 4, h, w)
    mask = torch.zeros(b, h, w)
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    for i, bx in enumerate(boxes):
        if len(bx) == 0:
            continue
        t = torch.from_numpy(bx).float()
        cx, cy = (t[:, 0] + t[:, 2]) / 2 / stride, (t[:, 1] + t[:, 3]) / 2 / stride
        bw, bh = (t[:, 2] - t[:, 0]).clamp(min=1), (t[:, 3] - t[:, 1]).clamp(min=1)
        sigma = (0.15 * torch.sqrt(bw * bh) / stride).clamp(min=0.4)
        d2 = (xs[None] - cx[:, None, None]) ** 2 + (ys[None] - cy[:, None, None]) ** 2
        g = torch.exp(-d2 / (2 * sigma[:, None, None] ** 2))
        heat[i], owner = g.max(0)
        if dense > 0:
            near = heat[i] >= dense
            k = owner[near]
            mask[i][near] = heat[i][near]
            reg[i, 0][near] = cx[k] - xs[near]
            reg[i, 1][near] = cy[k] - ys[near]
            reg[i, 2][near] = torch.log(bw[k] / ref_size[i, 0])
            reg[i, 3][near] = torch.log(bh[k] / ref_size[i, 1])
        c = cx.long().clamp(0, w - 1)
        r = cy.long().clamp(0, h - 1)
        heat[i, r, c] = 1.0
        mask[i, r, c] = 1.0
        reg[i, 0, r, c] = cx - c - 0.5
        reg[i, 1, r, c] = cy - r - 0.5
        reg[i, 2, r, c] = torch.log(bw / ref_size[i, 0])
        reg[i, 3, r, c] = torch.log(bh / ref_size[i, 1])
    return heat, reg, mask


def matcher_loss(maps: torch.Tensor, heat: torch.Tensor, reg: torch.Tensor, mask: torch.Tensor,
                 size_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """CenterNet focal loss on the heatmap plus L1 on offset and log size at the centres."""
    logit = maps[:, 0].float()
    p = torch.sigmoid(logit)
    pos = heat.eq(1).float()
    npos = pos.sum().clamp(min=1)
    logp, log1mp = F.logsigmoid(logit), F.logsigmoid(-logit)
    pos_loss = -(pos * (1 - p) ** 2 * logp).sum()
    neg_loss = -((1 - pos) * (1 - heat) ** 4 * p ** 2 * log1mp).sum()
    focal = (pos_loss + neg_loss) / npos
    err = (maps[:, 1:].float() - reg).abs() * mask[:, None]
    wsum = mask.sum().clamp(min=1)
    off = err[:, :2].sum() / wsum
    size = err[:, 2:].sum() / wsum
    return {"loss": focal + off + size_weight * size, "focal": focal, "offset": off, "size": size}


def distill_loss(maps: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Keep a teacher's behaviour on these episodes: the heatmap's KL divergence (per-pixel
    Bernoulli) and L1 on offset and log size weighted by the teacher's heatmap, both normalised
    by the teacher's total heatmap mass (about its number of detections)."""
    s, t = maps.float(), teacher.float()
    pt = torch.sigmoid(t[:, 0])
    kl = F.binary_cross_entropy_with_logits(s[:, 0], pt, reduction="none") \
        - F.binary_cross_entropy_with_logits(t[:, 0], pt, reduction="none")
    reg = ((s[:, 1:] - t[:, 1:]).abs().sum(1) * pt).sum()
    return (kl.sum() + reg) / pt.sum().clamp(min=1.0)


def teacher_maps(teacher: OneShotMatcher, upscale: float, images: torch.Tensor,
                 crops: torch.Tensor, local: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """A teacher's head outputs on episodes it sees ``upscale`` times larger (as it sees small
    references at inference), on the grid of a student whose stride is ``upscale`` times finer.
    The reference crops are the same: the student's ``min_crop`` is the teacher's / ``upscale``."""
    if upscale != 1.0:
        images = F.interpolate(images, scale_factor=upscale, mode="bilinear", align_corners=False)
    return teacher.forward_maps(teacher.features(images),
                                teacher.embed_crops(crops, local, sizes * upscale))


def collate(episodes: list[Episode], device: str) -> dict[str, Any]:
    def stack(name: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([getattr(e, name) for e in episodes])).to(device)

    return {"image": stack("image"), "ref_crop": stack("ref_crop"),
            "ref_local": stack("ref_local"), "ref_size": stack("ref_size"),
            "boxes": [e.boxes for e in episodes], "sources": [e.source for e in episodes]}


def build(cfg: dict[str, Any], pretrained: bool = True) -> tuple[OneShotMatcher, EpisodeSampler]:
    """The model and the episode sampler of a recipe."""
    mcfg = MatcherConfig.from_dict(cfg.get("model", {}))
    model = OneShotMatcher(mcfg, pretrained=pretrained)
    for p in model.backbone.body[: cfg.get("freeze_layers", 0)].parameters():
        p.requires_grad_(False)
    root = Path(cfg.get("data_root") or shared_folder(""))
    folders = {}
    for name, spec in cfg["data"].items():
        spec = spec if isinstance(spec, dict) else {"path": spec}
        folders[name] = root / spec["path"]
    ecfg = dict(cfg.get("episodes", {}))
    ecfg["weights"] = {n: float(s.get("weight", 1.0)) for n, s in cfg["data"].items()
                       if isinstance(s, dict)}
    ecfg["synthetic_weights"] = {n: float(s.get("synthetic_weight", s.get("weight", 1.0)))
                                 for n, s in cfg["data"].items() if isinstance(s, dict)}
    for key in ("scale", "ref_side", "synth_ref_side", "copies", "copy_scale"):
        if key in ecfg:
            ecfg[key] = tuple(ecfg[key])
    return model, EpisodeSampler(folders, mcfg, EpisodeConfig(**ecfg))


def _lr_factor(step: int, steps: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(steps - warmup, 1)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def train(config: str | Path, resume: bool = True, device: str | None = None,
          overrides: list[str] | None = None,
          on_step: Callable[[int, int], None] | None = None) -> Path:
    """Train the matcher from a recipe (``key=value`` overrides); returns the fp16 weights' path.
    ``on_step(step, steps)`` runs after each step (it may raise to stop the run)."""
    from tqdm import tqdm

    cfg = load_config(config, overrides)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(int(cfg.get("threads", 1)))
    seed = int(cfg.get("seed", 0))
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    out_dir = Path(cfg.get("output_dir", "runs/matcher"))
    out_dir.mkdir(parents=True, exist_ok=True)
    model, sampler = build(cfg, pretrained=cfg.get("pretrained", True))
    if cfg.get("init"):  # start from earlier weights (a later stage of a recipe)
        init_from(model, cfg["init"], cfg.get("backbone_from"))
    model.to(device).train()
    teachers = _teachers(cfg.get("distill"), device)
    bb = [p for p in model.backbone.parameters() if p.requires_grad]
    rest = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    lr = float(cfg.get("lr", 1e-3))
    opt = torch.optim.AdamW([{"params": rest, "lr": lr},
                             {"params": bb, "lr": float(cfg.get("backbone_lr", lr / 5))}],
                            weight_decay=float(cfg.get("weight_decay", 1e-4)))
    base_lrs = [g["lr"] for g in opt.param_groups]
    amp = device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    rng = np.random.default_rng(seed)
    steps, bs = int(cfg.get("steps", 2000)), int(cfg.get("batch_size", 8))
    warmup = int(cfg.get("warmup", 100))
    ckpt = out_dir / "last.pt"
    step = 0
    if resume and ckpt.is_file():
        state = torch.load(ckpt, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        scaler.load_state_dict(state["scaler"])
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        step = state["step"]
    log = open(out_dir / "train.log", "a")  # noqa: SIM115 - closed below
    every = float(cfg.get("checkpoint_minutes", 3)) * 60
    last_save = time.monotonic()
    bar = tqdm(total=steps, initial=step, desc="matcher", mininterval=10)
    while step < steps:
        for g, base in zip(opt.param_groups, base_lrs):
            g["lr"] = base * _lr_factor(step, steps, warmup)
        batch = collate([sampler.sample(rng) for _ in range(bs)], device)
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            feats = model.features(batch["image"])
            ref = model.embed_crops(batch["ref_crop"], batch["ref_local"], batch["ref_size"])
            maps = model.forward_maps(feats, ref)
        heat, reg, mask = make_targets(batch["boxes"], batch["ref_size"].cpu(), maps.shape[-2:],
                                       model.stride, float(cfg.get("dense_regression", 0.0)))
        losses = matcher_loss(maps, heat.to(device), reg.to(device), mask.to(device),
                              float(cfg.get("size_weight", 1.0)))
        distill = []
        for teacher, distilled, weight, up in teachers:
            keep = torch.tensor([not distilled or src.split(":")[0] in distilled
                                 for src in batch["sources"]], device=device)
            if not keep.any():
                continue
            with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                t_maps = teacher_maps(teacher, up, batch["image"][keep], batch["ref_crop"][keep],
                                      batch["ref_local"][keep], batch["ref_size"][keep])
            distill.append(weight * distill_loss(maps[keep], t_maps))
        if teachers:
            losses["distill"] = sum(distill, maps.sum() * 0.0)
            losses["loss"] = losses["loss"] + losses["distill"]
        opt.zero_grad(set_to_none=True)
        scaler.scale(losses["loss"]).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        scaler.step(opt)
        scaler.update()
        step += 1
        if on_step is not None:
            on_step(step, steps)
        bar.update(1)
        if step % 20 == 0 or step == steps:
            vals = {k: round(float(v.detach()), 4) for k, v in losses.items()}
            bar.set_postfix(vals)
            log.write(json.dumps({"step": step, "time": time.time(), **vals}) + "\n")
            log.flush()
        if time.monotonic() - last_save > every or step == steps:
            _save_checkpoint(ckpt, model, opt, scaler, rng, step)
            last_save = time.monotonic()
    bar.close()
    log.close()
    meta = {"config": json.dumps(model.cfg.to_dict()), "steps": str(step),
            "recipe": Path(config).name}
    if cfg.get("share_backbone"):  # frozen: the init's backbone, left out of the file
        meta[SHARED] = "shared"
        return save_fp16(model, out_dir / "matcher.safetensors", meta, leave_out="backbone.")
    return save_fp16(model, out_dir / "matcher.safetensors", meta)


def init_from(model: OneShotMatcher, path: str | Path, backbone_from: str | Path | None = None
              ) -> None:
    """Start ``model`` from the weights at ``path``; when they lack a stride the model has (a
    stride-4 matcher from a stride-8 one), that stride's attention starts as the next coarser
    one's and its projection afresh. ``backbone_from``: the weights whose backbone to take (for
    ``path`` saved without one, ``share_backbone``)."""
    from safetensors.torch import load_file

    state, own = load_file(str(path)), model.state_dict()
    if backbone_from is not None:
        state.update({k: v for k, v in load_file(str(backbone_from)).items()
                      if k.startswith("backbone.")})
    if set(state) == set(own):  # the same architecture: every entry, shapes checked
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
        return
    strides = [str(s) for s in model.strides]
    for key, value in own.items():
        src = key
        if key not in state and key.startswith("attn."):
            s = key.split(".")[1]
            src = key.replace(f"attn.{s}.", f"attn.{strides[strides.index(s) + 1]}.", 1)
        if src in state and state[src].shape == value.shape:
            own[key] = state[src].to(value.dtype)
    model.load_state_dict(own)


def _teachers(spec: dict[str, Any] | list[dict[str, Any]] | None, device: str
              ) -> list[tuple[OneShotMatcher, set[str], float, float]]:
    """The recipe's ``distill`` section, one teacher or a list of them: each a frozen teacher
    (``teacher``: weights), the data folders whose real episodes it teaches (``folders``; none:
    every episode, synthetic ones included), its loss weight (``weight``) and how much it sees
    the episodes upscaled (``upscale``: 2 teaches a stride-4 matcher what the stride-8 one finds
    on the image upscaled 2x)."""
    from ..inference.learned_matcher import load_matcher

    out = []
    for one in ([spec] if isinstance(spec, dict) else spec or []):
        teacher = load_matcher(one["teacher"], device)
        for p in teacher.parameters():
            p.requires_grad_(False)
        out.append((teacher, set(one.get("folders", [])), float(one.get("weight", 1.0)),
                    float(one.get("upscale", 1.0))))
    return out


def _save_checkpoint(path: Path, model, opt, scaler, rng, step: int) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                "scaler": scaler.state_dict(), "rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(), "step": step}, tmp)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/matcher.yaml")
    parser.add_argument("--no-resume", action="store_true", help="start over")
    parser.add_argument("--device", default=None)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override recipe entries, e.g. output_dir=/tmp/run")
    args = parser.parse_args(argv)
    print(train(args.config, resume=not args.no_resume, device=args.device, overrides=args.set))


if __name__ == "__main__":
    main()
