"""The learned matcher's head tuned for a few seconds on the user's positives and negatives.

``adapted(matcher, refs)`` fine-tunes the heatmap classifier of the detection head (row 0 of its
output convolution: a linear map of the head's last features; never the backbone, the attention,
the offsets or the box sizes, so localisation is untouched) on the current image's cached
features, starting from the loaded weights every time, and puts those weights back on exit:
nothing is saved. Each labelled object gives a window of the feature maps around it; every
positive reference is run on every window (the attention is normalised by each reference's own
peak, so a window behaves as in the whole image). The heatmap logit is pushed up at the
positives' centre cells, down at the negatives' centre cells, and kept where it was everywhere
else in the windows (unlabelled objects there may be wanted too). A fixed number of Adam steps,
stopped early at a time cap. (Tuning the attention and the whole head moved the peaks off the
objects and lost most true matches on dsb2018/val: ``benchmarks/bench_corrections.py``.)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from .references import ReferenceSet, find_references

ADAPT_BY_DEFAULT = False  # no steady gain in benchmarks/RESULTS.md (bench_corrections.py)

STEPS = 30  # Adam steps ...
SECONDS = 2.0  # ... stopped at this many seconds (with the set-up, <= 3 s on a 1024² image)
LR = 2e-3
KEEP = 1.0  # weight of keeping the unlabelled cells' logits where they were
MAX_PAIRS = 32  # (window, reference) pairs per step; a random subset when there are more
WINDOW_CELLS = 16  # smallest window side in stride-8 cells


def learned_part(matcher: Any, refs: ReferenceSet) -> Any:
    """The learned matcher behind ``matcher`` that ``refs`` run on, or None (NCC, a baseline,
    or a guard that chose NCC)."""
    if refs.method == "ncc":
        return None
    learned = getattr(matcher, "learned", matcher)
    return learned if hasattr(learned, "model") and hasattr(learned, "_features") else None


def worth_adapting(refs: ReferenceSet) -> bool:
    """Adaptation needs at least two positives or one negative."""
    return len(refs.positives) >= 2 or len(refs.negatives) >= 1


@contextmanager
def adapted(matcher: Any, refs: ReferenceSet, steps: int = STEPS, seconds: float = SECONDS,
            lr: float = LR, seed: int = 0) -> Iterator[dict[str, float]]:
    """``matcher`` with its head tuned on ``refs`` inside the block, its weights restored after.

    Yields a report (``steps`` run, ``seconds`` taken, ``loss`` before and after); empty when
    nothing was tuned (fewer than two positives and no negative, or no learned matcher).
    """
    learned = learned_part(matcher, refs)
    if learned is None or not worth_adapting(refs):
        yield {}
        return
    import torch

    model = learned.runner(_scale(refs))[0]
    last = model.head[-1]  # the output convolution; its row 0 gives the heatmap logit
    params = [last.weight, last.bias]
    saved = [p.detach().clone() for p in params]
    hooks = [p.register_hook(_heatmap_row_only) for p in params]
    try:
        yield _fit(learned, refs, params, steps, seconds, lr, seed)
    finally:
        for h in hooks:
            h.remove()
        with torch.no_grad():
            for p, s in zip(params, saved, strict=True):
                p.copy_(s)


def _scale(refs: ReferenceSet) -> float:
    """The scale the first positive reference was embedded at: the one that is tuned for."""
    return float(getattr(refs.positives[0], "learned", refs.positives[0]).get("scale", 1.0))


def _heatmap_row_only(grad: Any) -> Any:
    """The gradient of the output convolution for the heatmap row only (offsets, sizes fixed)."""
    out = grad.clone()
    out[1:] = 0
    return out


def find_adapted(matcher: Any, refs: ReferenceSet, adapt: bool = True
                 ) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """``references.find_references`` on the image the boxes of ``refs`` were drawn on (the
    matcher holds it), with the head tuned on ``refs`` first when ``adapt`` and there is
    something to tune (see ``adapted``); also returns its report."""
    learned = learned_part(matcher, refs)
    if not adapt or learned is None or not worth_adapting(refs):
        return (*find_references(matcher, refs, home=True), {})
    plain = ReferenceSet([getattr(r, "learned", r) for r in refs.positives],
                         [getattr(r, "learned", r) for r in refs.negatives],
                         refs.boxes, refs.negative_boxes, refs.look)
    with adapted(learned, plain) as report:
        return (*find_references(learned, plain, home=True), report)


def _fit(learned: Any, refs: ReferenceSet, params: list, steps: int, seconds: float, lr: float,
         seed: int) -> dict[str, float]:
    import torch
    import torch.nn.functional as F

    t0 = time.perf_counter()
    scale = _scale(refs)
    model, model_scale = learned.runner(scale)
    pos_refs = [getattr(r, "learned", r) for r in refs.positives]
    pos_refs = [r for r in pos_refs if float(r.get("scale", 1.0)) == scale]
    feats = learned._features(scale)["feats"]
    fine, coarse = min(feats), max(feats)
    ratio = coarse // fine
    h, w = feats[fine].shape[-2:]
    cell = float(fine) / model_scale  # image pixels per fine cell

    def centres(boxes: np.ndarray) -> np.ndarray:  # (n, 2) (row, col) in fine cells
        b = np.asarray(boxes, float).reshape(-1, 4)
        return np.stack([(b[:, 1] + b[:, 3]) / 2, (b[:, 0] + b[:, 2]) / 2], 1) / cell

    pos_c, neg_c = centres(refs.boxes), centres(refs.negative_boxes)
    longest = float(np.max(np.r_[refs.boxes[:, 2:] - refs.boxes[:, :2]].ravel())) / cell
    side = int(np.ceil(max(WINDOW_CELLS, 2 * longest) / ratio) * ratio)
    side_h, side_w = min(side, h // ratio * ratio), min(side, w // ratio * ratio)
    labelled = np.concatenate([pos_c, neg_c])
    r0 = np.clip(np.round(labelled[:, 0] - side_h / 2) // ratio * ratio, 0, h - side_h).astype(int)
    c0 = np.clip(np.round(labelled[:, 1] - side_w / 2) // ratio * ratio, 0, w - side_w).astype(int)
    crops = {s: torch.cat([feats[s][:, :, r // (s // fine):(r + side_h) // (s // fine),
                                    c // (s // fine):(c + side_w) // (s // fine)]
                           for r, c in zip(r0, c0, strict=True)]).float()  # trained in float32
             for s in feats}
    # per window: +1 at positive centre cells, 0 near negative centres, None elsewhere
    target = torch.zeros(len(labelled), side_h, side_w)
    weight = torch.zeros(len(labelled), side_h, side_w)
    for k, (r, c) in enumerate(zip(r0, c0, strict=True)):
        for (pr, pc) in pos_c:
            i, j = int(pr) - r, int(pc) - c
            if 0 <= i < side_h and 0 <= j < side_w:
                target[k, i, j], weight[k, i, j] = 1.0, 1.0
        for (nr, nc) in neg_c:
            i, j = int(nr) - r, int(nc) - c
            if 0 <= i < side_h and 0 <= j < side_w and target[k, i, j] == 0:
                weight[k, i, j] = 1.0
    pairs = [(k, q) for k in range(len(labelled)) for q in range(len(pos_refs))]
    rng = np.random.default_rng(seed)
    device = feats[fine].device
    target, weight = target.to(device), weight.to(device)
    labels = weight > 0

    def batch(idx: list[tuple[int, int]]) -> tuple[dict, dict, torch.Tensor]:
        win = torch.as_tensor([k for k, _ in idx], device=device)
        q = [pos_refs[j] for _, j in idx]
        ref = {"q": {s: torch.cat([r["q"][s] for r in q]).clone() for s in feats},
               "size": torch.cat([r["size"] for r in q]).clone(),
               "peak": {s: torch.cat([r["peak"][s].reshape(-1) for r in q]).clone() for s in feats}}
        return {"feats": {s: crops[s][win] for s in feats}}, ref, win

    fixed = pairs if len(pairs) <= MAX_PAIRS else None
    with torch.no_grad():
        base = {}
        for start in range(0, len(pairs), MAX_PAIRS):
            chunk = pairs[start:start + MAX_PAIRS]
            f, ref, _ = batch(chunk)
            for p, logit in zip(chunk, model.forward_maps(f, ref)[:, 0], strict=True):
                base[p] = logit
    opt = torch.optim.Adam(params, lr=lr)
    report = {"steps": 0.0}
    with torch.enable_grad():
        for step in range(int(steps)):
            if time.perf_counter() - t0 > seconds:
                break
            idx = fixed or [pairs[i] for i in rng.choice(len(pairs), MAX_PAIRS, replace=False)]
            f, ref, win = batch(idx)
            logit = model.forward_maps(f, ref)[:, 0]
            old = torch.stack([base[p] for p in idx])
            lab = labels[win]
            fit = F.binary_cross_entropy_with_logits(logit[lab], target[win][lab])
            keep = F.mse_loss(logit[~lab], old[~lab]) if (~lab).any() else logit.sum() * 0
            loss = fit + KEEP * keep
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step == 0:
                report["loss_before"] = float(loss.detach())
            report.update(steps=float(step + 1), loss_after=float(loss.detach()))
    report["seconds"] = time.perf_counter() - t0
    return report
