"""Fine-tune the matcher and the contour regressor on the user's own annotations (a COCO file,
e.g. the widget's save).

``finetune_matcher`` / ``finetune_contour`` start from the shipped weights (or ``base``), train
on the user's images only (``train_matcher.train`` / ``train_contour.train`` with a recipe
written next to the result; the contour regressor's targets are the accepted polygons) and write
into a model folder: ``matcher.safetensors`` / ``contour.safetensors`` (fp16) and a card
(``matcher.md`` / ``contour.md``) saying what it was trained on. ``finetune_models`` makes a
folder with both (the widget's *Fine-tune on accepted*). ``Annotator(models=FOLDER)`` and
``instanno predict --models FOLDER`` use a folder holding either or both (the shipped file for
the one missing). Nothing is ever written into the shipped models folder; a run that fails or
is cancelled (``on_step`` raising ``Cancelled``) leaves no half-made weights behind.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import InstannoError
from ..models.weights import (
    MODEL_FILES,
    TAUGHT_FROM,
    add_metadata,
    models_dir,
    read_metadata,
    weights_file,
)

MIN_INSTANCES = 3
STEPS = 300  # matcher: a few minutes on one CPU core at batch 4
CONTOUR_STEPS = 150  # contour: about as long at batch 16
OnStep = Callable[[int, int], None]


class Cancelled(Exception):
    """Raised by an ``on_step`` callback to stop fine-tuning; nothing is kept."""


def prepare(annotations: str | Path, images: str | Path, work: Path, polygons: bool = False
            ) -> tuple[Path, int, int, int]:
    """A COCO folder in ``work`` whose image paths point into ``images``; (folder, images,
    instances, outlined instances). One-line errors for missing images and too few instances
    (with ``polygons``: too few outlined ones, box-only annotations)."""
    annotations, images = Path(annotations), Path(images)
    if not annotations.is_file():
        raise InstannoError(f"annotations {annotations} not found; give --from the COCO JSON "
                            "that the widget or `instanno predict` saved")
    if not images.is_dir():
        raise InstannoError(f"--images {images} is not a folder; give the folder holding the images")
    try:
        data = json.loads(annotations.read_text())
        imgs, anns = list(data["images"]), list(data.get("annotations", []))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InstannoError(f"{annotations} is not a COCO file (images, annotations): {err}") from err
    missing = [im["file_name"] for im in imgs if not (images / im["file_name"]).is_file()
               and not (images / Path(im["file_name"]).name).is_file()]
    if missing:
        raise InstannoError(f"{len(missing)} of the {len(imgs)} images of {annotations.name} are "
                            f"not in {images} (first: {missing[0]}); give --images the folder "
                            "holding them")
    if len(anns) < MIN_INSTANCES:
        raise InstannoError(f"fine-tuning needs at least {MIN_INSTANCES} annotated instances, "
                            f"{annotations.name} has {len(anns)}: accept or draw more first")
    outlined = sum(bool(a.get("segmentation")) for a in anns)
    if polygons and outlined < MIN_INSTANCES:
        what = "only boxes" if outlined == 0 else f"only {outlined} outlined instances"
        raise InstannoError(f"the contour regressor learns from outlines and {annotations.name} "
                            f"has {what}: outline at least {MIN_INSTANCES} (Box → polygon in the "
                            "widget, then accept), or fine-tune the matcher only")
    for im in imgs:
        path = images / im["file_name"]
        im["file_name"] = str((path if path.is_file() else images / Path(path).name).resolve())
    work.mkdir(parents=True, exist_ok=True)
    (work / "annotations.json").write_text(json.dumps(data))
    return work, len(imgs), len(anns), outlined


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _matcher_recipe(base: Path, data: Path, run: Path, steps: int, n_images: int) -> dict:
    return {
        "seed": 0, "threads": _threads(), "output_dir": str(run), "init": str(base),
        "pretrained": False, "steps": steps, "batch_size": 4, "lr": 2.0e-4,
        "backbone_lr": 5.0e-5, "weight_decay": 1.0e-4, "warmup": min(20, steps),
        "dense_regression": 0.2, "freeze_layers": 4, "checkpoint_minutes": 3,
        "model": json.loads(read_metadata(base, "matcher").get("config", "{}")),
        "episodes": {"crop": 256, "scale": [0.5, 2.0], "ref_side": [6, 128],
                     "other_image": 0.2 if n_images > 1 else 0.0, "empty_crop": 0.1,
                     "distractors": 0.0},
        "data": {"user": {"path": str(data), "weight": 1.0}}, "data_root": "/",
    }


def _contour_recipe(base: Path, data: Path, run: Path, steps: int, n_images: int) -> dict:
    model = json.loads(read_metadata(base, "contour").get("model", "{}"))
    if "crop_size" not in model:
        raise InstannoError(f"{base} has no model configuration; start from the shipped weights")
    source = {"folder": str(data), "min_size": 2}
    return {
        "seed": 0, "threads": _threads(), "init": str(base), "model": model,
        "data": {"cache_dir": str(run / "cache"), "cache_size": int(model["crop_size"] * 1.5),
                 "cache_context": 2.0, "sources": [{**source, "weight": 1.0}],
                 # crop IoU logged on a few training instances (its 96-px rasters cost memory)
                 "val": {**source, "max_images": 4, "max_per_image": 8, "jitter": 0.1}},
        "train": {"steps": steps, "batch_size": 16, "lr": 2.5e-4, "backbone_lr": 7.5e-5,
                  "weight_decay": 1.0e-4, "warmup": min(20, steps), "grad_clip": 5.0,
                  "jitter": 0.12, "refine_prob": 0.2, "alpha": 1.0, "use_cos": True,
                  "mask_size": 32, "checkpoint_minutes": 3, "val_every": steps},
        "output": str(run / "contour.safetensors"), "run_dir": str(run),
    }


def base_weights(kind: str, folder: str | Path | None = None) -> Path:
    """Where fine-tuning ``kind`` starts: ``folder``'s weights when it has them, else the shipped."""
    path = weights_file(kind, folder)
    if path is None:
        raise InstannoError(f"no {kind} weights to start from: ship models/{kind}.safetensors")
    return path


def _finetune(kind: str, annotations: str | Path, images: str | Path, out: str | Path,
              steps: int, device: str | None, base: str | Path | None,
              on_step: OnStep | None) -> Path:
    import yaml

    if kind == "matcher":
        from .train_matcher import train
    else:
        from .train_contour import train

    out = Path(out)
    if out.resolve() == models_dir().resolve():
        raise InstannoError(f"--out {out} is the shipped models folder; choose a new folder")
    target = out / f"{kind}.safetensors"
    if target.exists():
        raise InstannoError(f"{target} exists; choose a new --out folder")
    base = Path(base) if base is not None else base_weights(kind)
    if not base.is_file():
        raise InstannoError(f"no {kind} weights at {base} to start from")
    if int(steps) < 1:
        raise InstannoError(f"steps must be at least 1, got {steps}")
    made, run, config = not out.exists(), out / f"run-{kind}", out / f"{kind}_recipe.yaml"
    try:
        out.mkdir(parents=True, exist_ok=True)
        data, n_images, n_instances, n_outlined = prepare(annotations, images, run / "data",
                                                          polygons=kind == "contour")
        recipe = (_matcher_recipe if kind == "matcher" else _contour_recipe)(
            base, data, run, int(steps), n_images)
        config.write_text(yaml.safe_dump(recipe, sort_keys=False))
        t0 = time.perf_counter()
        trained = train(config, resume=False, device=device, on_step=on_step)
        if kind == "matcher" and not n_outlined:  # its boxes: all that was learned of this kind
            add_metadata(trained, {TAUGHT_FROM: "boxes"})
        weights = Path(shutil.move(str(trained), target))
    except BaseException:
        if made:
            shutil.rmtree(out, ignore_errors=True)
        else:
            shutil.rmtree(run, ignore_errors=True)
            config.unlink(missing_ok=True)
        raise
    minutes = (time.perf_counter() - t0) / 60
    count, what = ((n_outlined, "outlined instances, their polygons the targets,")
                   if kind == "contour" else (n_instances, "instances"))
    batch = recipe.get("batch_size") or recipe["train"]["batch_size"]
    (out / f"{kind}.md").write_text(
        f"# Model card: {kind} fine-tuned on your annotations\n\n"
        f"- Trained on: `{Path(annotations).resolve()}` ({count} {what} in {n_images} "
        f"images from `{Path(images).resolve()}`)\n"
        f"- Started from: `{base}`; {int(steps)} steps, batch {batch}, "
        f"{minutes:.1f} min on {device or 'the default device'}; recipe: `{config.name}`\n"
        "- Use: `Annotator(models=\"" + str(out) + "\")` or `instanno predict --models "
        f"{out}`. Not evaluated: check it on images you did not train on.\n"
        + ("- Boxes only (no outlines) in the annotations: with this folder the outlines are "
           "stretched to the matcher's boxes, unless it also holds a contour regressor "
           "fine-tuned on outlines.\n" if kind == "matcher" and not n_outlined else ""))
    for path in run.iterdir():  # keep the training log only
        if path.suffix != ".log":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    if not any(run.iterdir()):
        run.rmdir()
    return weights


def finetune_matcher(annotations: str | Path, images: str | Path, out: str | Path,
                     steps: int = STEPS, device: str | None = None,
                     base: str | Path | None = None, on_step: OnStep | None = None) -> Path:
    """Fine-tune the matcher on ``annotations`` (images in ``images``); returns the weights in
    the model folder ``out``. ``on_step(step, steps)`` follows the run (raise ``Cancelled``)."""
    return _finetune("matcher", annotations, images, out, steps, device, base, on_step)


def finetune_contour(annotations: str | Path, images: str | Path, out: str | Path,
                     steps: int = CONTOUR_STEPS, device: str | None = None,
                     base: str | Path | None = None, on_step: OnStep | None = None) -> Path:
    """Fine-tune the contour regressor on the polygons of ``annotations``; returns the weights
    in the model folder ``out`` (which may hold a fine-tuned matcher already)."""
    return _finetune("contour", annotations, images, out, steps, device, base, on_step)


def finetune_models(annotations: str | Path, images: str | Path, out: str | Path,
                    steps: dict[str, int], base: str | Path | None = None,
                    device: str | None = None, on_step: OnStep | None = None
                    ) -> dict[str, Path]:
    """A new model folder ``out`` with each kind of ``steps`` ({"matcher": n, "contour": m})
    fine-tuned, starting from the model folder ``base`` (its files, else the shipped ones);
    ``on_step(done, total)`` counts the steps of all of them. A kind not trained that ``base``
    holds is copied, so the folder keeps what it was made from. Cancelled or failed: no folder."""
    out = Path(out)
    if out.exists():
        raise InstannoError(f"{out} exists; choose a new model folder")
    total, done, made = sum(steps.values()), 0, {}

    def step(n: int, _: int) -> None:
        if on_step is not None:
            on_step(done + n, total)

    try:
        for kind in MODEL_FILES:
            if kind in steps:
                trainer = finetune_matcher if kind == "matcher" else finetune_contour
                made[kind] = trainer(annotations, images, out, steps[kind], device,
                                     base_weights(kind, base), step)
                done += steps[kind]
            elif base is not None and (Path(base) / f"{kind}.safetensors").is_file():
                out.mkdir(parents=True, exist_ok=True)
                for suffix in (".safetensors", ".md"):
                    if (Path(base) / f"{kind}{suffix}").is_file():
                        shutil.copy2(Path(base) / f"{kind}{suffix}", out / f"{kind}{suffix}")
                made[kind] = out / f"{kind}.safetensors"
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return made
