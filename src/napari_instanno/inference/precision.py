"""The float type the learned models run in: one rule for the matcher and the outliner.

``"auto"`` (the default) runs the networks' convolutions in bfloat16 autocast on a CPU with AMX
(Intel Sapphire Rapids and later: oneDNN's bfloat16 convolutions there are about twice as fast)
and in float32 elsewhere. Measured on the first 25 dsb2018/val images (evaluate protocol, learned
matcher + outliner): bbox AP50 0.855 float32 -> 0.855 bfloat16, segm AP 0.425 -> 0.426. The
contour regressor's snake steps (vertex sampling, the moves) stay float32 in every mode.
Where ``"auto"`` runs float32 on a CPU, the matcher's costliest backbone layers run in int8
(``models.int8``; ``uses_int8``); ``"float32"`` keeps every layer float.
"""

from __future__ import annotations

import contextlib

import torch

from ..errors import InstannoError

PRECISIONS = ("auto", "float32", "bfloat16", "float16")


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (what makes bfloat16 fast for oneDNN)."""
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(device: str, precision: str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; None: plain float32."""
    if precision not in PRECISIONS:
        raise InstannoError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    if precision == "auto":
        on_cpu = torch.device(device).type == "cpu"
        return torch.bfloat16 if on_cpu and cpu_has_amx() else None
    return {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[precision]


def uses_int8(device: str, precision: str) -> bool:
    """Whether the matcher's backbone runs its int8 layers (``models.int8``): ``"auto"`` on a
    CPU that runs float32 there (no AMX), where PyTorch quantises for x86."""
    from ..models.int8 import available

    auto_float = precision == "auto" and autocast_dtype(device, precision) is None
    return auto_float and torch.device(device).type == "cpu" and available()


def autocast(device: str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on ``device``'s kind, or nothing when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)
