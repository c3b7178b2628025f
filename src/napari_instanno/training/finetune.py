"""Fine-tune the matcher on the user's own annotations (a COCO file, e.g. the widget's save).

``finetune_matcher`` starts from the shipped weights (or ``base``), trains on episodes drawn
from the user's images only (``train_matcher.train`` with a recipe written next to the result)
and writes a model folder: ``matcher.safetensors`` (fp16) and ``matcher.md``, a card saying what
it was trained on. ``Annotator(models=FOLDER)`` and ``instanno predict --models FOLDER`` use
it. It never writes into the shipped models folder.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from ..errors import InstannoError
from ..models.weights import models_dir, read_metadata, shipped_path

MIN_INSTANCES = 3
STEPS = 300  # a few minutes on one CPU core at batch 4


def prepare(annotations: str | Path, images: str | Path, work: Path) -> tuple[Path, int, int]:
    """A COCO folder in ``work`` whose image paths point into ``images``; (folder, images,
    instances). One-line errors for missing images and too few instances."""
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
    for im in imgs:
        path = images / im["file_name"]
        im["file_name"] = str((path if path.is_file() else images / Path(path).name).resolve())
    work.mkdir(parents=True, exist_ok=True)
    (work / "annotations.json").write_text(json.dumps(data))
    return work, len(imgs), len(anns)


def finetune_matcher(annotations: str | Path, images: str | Path, out: str | Path,
                     steps: int = STEPS, device: str | None = None,
                     base: str | Path | None = None) -> Path:
    """Fine-tune the matcher on ``annotations`` (images in ``images``); returns the weights in
    the model folder ``out``."""
    import yaml

    from .train_matcher import train

    out = Path(out)
    if out.resolve() == models_dir().resolve():
        raise InstannoError(f"--out {out} is the shipped models folder; choose a new folder")
    if (out / "matcher.safetensors").exists():
        raise InstannoError(f"{out / 'matcher.safetensors'} exists; choose a new --out folder")
    base = Path(base) if base is not None else shipped_path("matcher")
    if base is None or not base.is_file():
        raise InstannoError("no matcher weights to start from; pass base= or ship models/")
    if int(steps) < 1:
        raise InstannoError(f"steps must be at least 1, got {steps}")
    out.mkdir(parents=True, exist_ok=True)
    folder, n_images, n_instances = prepare(annotations, images, out / "run" / "data")
    recipe = {
        "seed": 0, "threads": 1, "output_dir": str(out / "run"), "init": str(base),
        "pretrained": False, "steps": int(steps), "batch_size": 4, "lr": 2.0e-4,
        "backbone_lr": 5.0e-5, "weight_decay": 1.0e-4, "warmup": min(20, int(steps)),
        "dense_regression": 0.2, "freeze_layers": 4, "checkpoint_minutes": 3,
        "model": json.loads(read_metadata(base, "matcher").get("config", "{}")),
        "episodes": {"crop": 256, "scale": [0.5, 2.0], "ref_side": [6, 128],
                     "other_image": 0.2 if n_images > 1 else 0.0, "empty_crop": 0.1,
                     "distractors": 0.0},
        "data": {"user": {"path": str(folder), "weight": 1.0}}, "data_root": "/",
    }
    config = out / "recipe.yaml"
    config.write_text(yaml.safe_dump(recipe, sort_keys=False))
    t0 = time.perf_counter()
    weights = Path(shutil.move(str(train(config, resume=False, device=device)),
                               out / "matcher.safetensors"))
    minutes = (time.perf_counter() - t0) / 60
    (out / "matcher.md").write_text(
        "# Model card: matcher fine-tuned on your annotations\n\n"
        f"- Trained on: `{Path(annotations).resolve()}` ({n_instances} instances in {n_images} "
        f"images from `{Path(images).resolve()}`)\n"
        f"- Started from: `{base}`; {int(steps)} steps, batch 4, lr 2e-4 (backbone 5e-5), "
        f"{minutes:.1f} min on {device or 'the default device'}; recipe: `recipe.yaml`\n"
        "- Use: `Annotator(models=\"" + str(out) + "\")` or `instanno predict --models "
        f"{out}`. Not evaluated: check it on images you did not train on.\n")
    shutil.rmtree(out / "run" / "data", ignore_errors=True)
    (out / "run" / "last.pt").unlink(missing_ok=True)
    return weights
