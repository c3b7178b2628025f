"""*Fine-tune on accepted*: the accepted shapes of the current image train the matcher (and the
contour regressor, when at least three of them are outlines rather than boxes) in the
background into a new model folder (``training.finetune.finetune_models``), which joins the
widget's model choice and is chosen.

The folder goes next to the last annotations file the widget saved, else into the per-user
folder (``user_models_dir``); never into the shipped models. The shapes are copied when the job
starts: nothing on the layer changes. Mixed into ``FindSimilarWidget`` (``FineTuneActions``).
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InstannoError
from ..geometry import polygon_area, polygon_box
from ..inference.policy import IN_MEMORY_PIXELS, default_halo
from ..inference.seams import box_core, window
from ..instances import Instances
from ..models.weights import holds_weights
from ..training.finetune import CONTOUR_STEPS, MIN_INSTANCES, STEPS
from .prompts import runs_tiled

USER_MODELS_ENV = "INSTANNO_USER_MODELS"
ELSEWHERE = "elsewhere.txt"  # in user_models_dir: the model folders made next to saved files
SHIPPED = ("shipped", "")  # the model choice's first entry: (label, folder "" = the shipped one)


def user_models_dir() -> Path:
    """Where fine-tuned model folders go when no annotations were saved: $INSTANNO_USER_MODELS,
    else the platform's per-user data folder (``napari-instanno/models``)."""
    from platformdirs import user_data_dir

    root = os.environ.get(USER_MODELS_ENV) or Path(user_data_dir("napari-instanno")) / "models"
    return Path(root).resolve()


def _label(folder: Path) -> str:
    return folder.name if folder.parent == user_models_dir() else f"{folder.parent.name}/{folder.name}"


def folder_choices() -> list[tuple[str, str]]:
    """The model choice: the shipped weights, then every model folder in ``user_models_dir`` and
    those made elsewhere (listed in its ``elsewhere.txt``) that still hold weights."""
    root = user_models_dir()
    listed = (root / ELSEWHERE).read_text().splitlines() if (root / ELSEWHERE).is_file() else []
    found = [*sorted(root.iterdir()), *map(Path, dict.fromkeys(listed))] if root.is_dir() else []
    return [SHIPPED, *((_label(p), str(p)) for p in found
                       if holds_weights(p))]


def remember(folder: Path) -> None:
    """List a model folder made outside ``user_models_dir`` so that later sessions offer it."""
    root = user_models_dir()
    if folder.parent != root:
        root.mkdir(parents=True, exist_ok=True)
        with open(root / ELSEWHERE, "a") as fh:
            fh.write(f"{folder}\n")


def new_folder(parent: Path, stem: str) -> Path:
    """``parent/stem``, or ``stem-2``, ``stem-3``..., the first name not taken."""
    stem = re.sub(r"[^\w.-]+", "_", stem).strip("._") or "model"
    k, path = 1, parent / stem
    while path.exists():
        k += 1
        path = parent / f"{stem}-{k}"
    return path


def _is_box(poly: np.ndarray) -> bool:
    """Whether a ring is an axis-aligned rectangle (a box drawn, not an outline)."""
    if len(poly) > 5:
        return False
    x0, y0, x1, y1 = polygon_box(poly)
    return polygon_area(poly) >= 0.98 * (x1 - x0) * (y1 - y0)


def training_set(inst: Instances, plane: tuple[int, ...] = ()) -> tuple[Instances, int]:
    """The accepted instances of ``inst`` on ``plane`` (a stack's layer holds every plane's), the
    rectangles among them kept as boxes only; and how many are outlines."""
    keep = inst.status == "accepted"
    if plane and "plane" in inst.properties:
        keep &= inst.properties["plane"] == plane[0]
    acc = inst[keep]
    polys = [np.zeros((0, 2)) if _is_box(p) else p for p in acc.polygons]
    out = Instances(polygons=polys, boxes=acc.boxes, scores=acc.scores,
                    category_ids=acc.category_ids, categories=acc.categories, status=acc.status)
    return out, sum(len(p) >= 3 for p in polys)


def training_window(inst: Instances, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1): the part of an image of ``shape`` that fine-tuning on ``inst`` reads from
    a lazy image, every box plus the tiler's halo for the largest (``policy.default_halo``);
    ``InstannoError`` when it is larger than ``IN_MEMORY_PIXELS``."""
    b = np.asarray(inst.boxes, dtype=np.float64).reshape(-1, 4)
    halo = default_halo(b[int(np.argmax(np.max(b[:, 2:] - b[:, :2], axis=1)))])
    y0, y1, x0, x1 = window(box_core(b), halo, shape)
    if (y1 - y0) * (x1 - x0) > IN_MEMORY_PIXELS:
        side = int(IN_MEMORY_PIXELS ** 0.5)
        raise InstannoError(f"fine-tune: the accepted shapes spread over {x1 - x0}x{y1 - y0} "
                            f"pixels of this image; accept shapes within {side}x{side} of "
                            "one another (un-accept the far ones with N)")
    return y0, y1, x0, x1


def shifted(inst: Instances, y0: int, x0: int) -> Instances:
    """``inst`` in the frame of a window whose corner is (``y0``, ``x0``)."""
    return Instances(polygons=[p - [y0, x0] if len(p) else p for p in inst.polygons],
                     boxes=inst.boxes - [x0, y0, x0, y0], scores=inst.scores,
                     category_ids=inst.category_ids, categories=inst.categories,
                     status=inst.status)


def fine_tune(plane: np.ndarray, inst: Instances, out: Path, steps: dict[str, int],
              base: str | None, source: str, report: Callable, cancelled: Callable
              ) -> dict[str, Path] | None:
    """Fine-tune on ``inst`` in ``plane`` into ``out`` (the background work; ``source`` says
    in the cards where the shapes came from); None if cancelled."""
    import tifffile

    from ..io.coco import write_coco
    from ..training.finetune import Cancelled, finetune_models

    def on_step(done: int, total: int) -> None:
        report(done, total)
        if cancelled():
            raise Cancelled

    report(0, sum(steps.values()))
    with tempfile.TemporaryDirectory(prefix="instanno-finetune-") as tmp:
        (Path(tmp) / "images").mkdir()
        tifffile.imwrite(Path(tmp) / "images" / "image.tif", plane)
        h, w = plane.shape[:2]
        write_coco(Path(tmp) / "accepted.json",
                   [({"id": 1, "file_name": "image.tif", "height": h, "width": w}, inst)])
        try:
            made = finetune_models(Path(tmp) / "accepted.json", Path(tmp) / "images", out, steps,
                                   base=base or None, on_step=on_step)
        except Cancelled:
            return None
    for kind in steps:
        with open(out / f"{kind}.md", "a") as card:
            card.write(f"- From the napari widget: {source} (the files above were a temporary "
                       "copy)\n")
    return made


class FineTuneActions:
    """The *Fine-tune on accepted* action of ``FindSimilarWidget`` (see the module docstring)."""

    def fine_tune_accepted(self, steps: int | None = None) -> Any:
        """Fine-tune on the accepted shapes of the current image (``steps`` per model, default
        ``finetune.STEPS`` / ``CONTOUR_STEPS``) into a new model folder, then choose it; returns
        the started worker. Fewer than 3 accepted shapes: ``InstannoError``."""
        plane, indices, _, names = self._context()
        results = self._target()
        train, outlined = training_set(results.instances(), indices)
        if len(train) < MIN_INSTANCES:
            raise InstannoError(f"fine-tuning needs at least {MIN_INSTANCES} accepted shapes on "
                                f"this image, {results.layer.name!r} has {len(train)}: accept "
                                "more first (Y, or Accept all)")
        where, window = "", None
        if runs_tiled(self.image_layer, plane):  # the window around the accepted shapes
            window = y0, y1, x0, x1 = training_window(train, plane.shape[:2])
            train, where = shifted(train, y0, x0), f", window x {x0}-{x1} y {y0}-{y1}"
        kinds = {"matcher": steps or STEPS}
        if outlined >= MIN_INSTANCES:
            kinds["contour"] = steps or CONTOUR_STEPS
        saved = self._saved_to
        out = new_folder(saved.resolve().parent, f"{saved.stem}-model") if saved is not None \
            else new_folder(user_models_dir(), f"{self.image_layer.name}-model")
        t0 = time.monotonic()
        source = (f"{len(train)} accepted shapes of {results.layer.name!r}, image "
                  f"{self.image_layer.name!r}" + (f" plane {indices}" if indices else "") + where)

        def work(report: Callable, cancelled: Callable) -> dict[str, Path] | None:
            from ..inference.sources import as_source

            data = np.asarray(plane) if window is None else as_source(plane).read(*window)
            return fine_tune(data, train, out, kinds, names[2], source, report, cancelled)

        def done(made: dict[str, Path] | None) -> None:
            if made is None:
                return
            remember(out)
            label = _label(out)
            self._models.set_choice(label, str(out))
            if self._matcher.value not in ("learned", "guarded"):  # those use the folder
                self._matcher.value = "learned"
            if "contour" in kinds:
                self._outliner.value = "learned"
            self._models.value = str(out)
            what = " and the contour regressor" if "contour" in kinds else ""
            self._say(f"fine-tuned the matcher{what} on {len(train)} accepted shapes in "
                      f"{time.monotonic() - t0:.0f} s; now using models '{label}' ({out})")

        return self._jobs.start("Fine-tune", work, done)
