"""The learned outliner: the contour regressor behind the ``Outliner`` protocol."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import shapely
import torch

from ..errors import InstannoError
from ..geometry import fit_to_box, polygon_box, resample_polygon, simplify
from ..models.backbone import fold_batchnorms
from ..models.contour import ContourRegressor
from ..models.weights import load_safetensors, read_metadata, shipped_path
from .precision import autocast, autocast_dtype


def load_contour_model(weights: str | Path | None = None, device: str = "cpu"
                       ) -> ContourRegressor:
    """The contour regressor from ``weights`` (default: the shipped ``models/contour``), in eval mode."""
    path = Path(weights) if weights is not None else shipped_path("contour")
    if path is None or not path.is_file():
        raise InstannoError(
            f"contour weights not found ({path or 'models/contour.safetensors'}); train them with "
            "`instanno train contour --config configs/contour.yaml` or choose outliner='otsu'")
    shape = json.loads(read_metadata(path, "contour").get("model", "{}"))
    model = ContourRegressor(**shape, pretrained=False)
    load_safetensors(model, path)
    model.eval().backbone.optimize_for_inference()
    fold_batchnorms(model)  # the fusion layers and the snake heads' circular convolutions
    return model.to(device, memory_format=torch.channels_last)  # with channels-last crops: ~1.7x


class LearnedOutliner:
    """Box -> polygon with the contour regressor; ``refine`` restarts it from a given polygon.

    ``tolerance`` (pixels) simplifies the output with Douglas-Peucker; 0 keeps all N vertices.
    ``batch_size`` instances go through the model at once (default: 32 on the CPU, 256 on a GPU).
    ``precision`` (``inference.precision``) applies to the crop features only; the snake steps
    run in float32 (in float16, several of the sample's nuclei got polygons nowhere near them).
    ``fit_to_box``: stretch each outline of ``outline`` so that its bounds are its box (for a kind
    the regressor has not seen, whose boxes the matcher learned: ``weights.fits_outlines_to_boxes``).
    """

    def __init__(self, device: str = "cpu", weights: str | Path | None = None,
                 tolerance: float = 0.7, batch_size: int | None = None,
                 precision: str = "auto", fit_to_box: bool = False, **_: object) -> None:
        self.device = device
        self.fit_to_box = fit_to_box
        self.precision = precision
        self.dtype = autocast_dtype(device, precision)
        self.model = load_contour_model(weights, device)
        self.tolerance = tolerance
        self.batch_size = batch_size or (256 if "cuda" in str(device) else 32)
        self.image: torch.Tensor | None = None

    def to(self, device: str) -> LearnedOutliner:
        """Run on ``device`` from now on."""
        self.model.to(device)
        self.image = None if self.image is None else self.image.to(device)
        self.device = device
        self.dtype = autocast_dtype(device, self.precision)
        return self

    def set_image(self, rgb: np.ndarray) -> None:
        arr = np.ascontiguousarray(np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1))
        self.image = torch.from_numpy(arr)[None].to(self.device)

    @torch.inference_mode()
    def _run(self, boxes: np.ndarray, init: np.ndarray | None = None) -> np.ndarray:
        """(B, N, 2) image (row, col) polygons for boxes, from the ellipse or from ``init``."""
        if self.image is None:
            raise InstannoError("no image set; call set_image(rgb) first")
        m = self.model
        out = []
        for start in range(0, len(boxes), self.batch_size):
            b = torch.as_tensor(boxes[start:start + self.batch_size], dtype=torch.float32,
                                device=self.device)
            windows = m.crop_boxes(b)
            crops = m.crop(self.image, windows).contiguous(memory_format=torch.channels_last)
            if init is None:
                start_poly = m.initial_ellipse(len(b), self.device)
            else:
                chunk = torch.as_tensor(init[start:start + self.batch_size], dtype=torch.float32,
                                        device=self.device)
                start_poly = m.to_crop(chunk, windows)
            with autocast(self.device, self.dtype):
                feats = m.features(crops)
            polys, _ = m.evolve(feats.float(), start_poly)
            out.append(m.from_crop(polys[-1], windows).double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, m.n_vertices, 2))

    def outline(self, boxes: np.ndarray) -> list[np.ndarray]:
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        polys = simplify(self._run(b), self.tolerance) if len(b) else []
        if self.fit_to_box:
            polys = [fit_to_box(p, box) for p, box in zip(polys, b, strict=True)]
        return polys

    def refine(self, polygons: list[np.ndarray]) -> list[np.ndarray]:
        if not polygons:
            return []
        n = self.model.n_vertices
        ring = np.stack([resample_polygon(p, n) for p in polygons])
        turn = shapely.LinearRing(self.model.initial_ellipse(1)[0].double().numpy()).is_ccw
        ring = np.stack([r if shapely.LinearRing(r).is_ccw == turn else r[::-1] for r in ring])
        boxes = np.stack([polygon_box(p) for p in ring])
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1.0)
        return simplify(self._run(boxes, ring), self.tolerance)
