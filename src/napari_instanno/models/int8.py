"""Int8 for the costliest layers of the matcher's backbone, on x86 CPUs.

MobileNetV2's ``features[2:7]`` (the stride-4 and stride-8 inverted residuals) take about two
thirds of the matcher's backbone time on an upscaled image and ``features[7:14]`` (stride 16)
most of the rest; in int8 (PyTorch's FX post-training quantisation, the ``x86`` engine:
per-channel weights, 7-bit activations, which do not saturate on CPUs without VNNI) they run
about 2x and 4x faster (``SPANS``, each span quantised on its own). Layers 0-1 stay float: a quantised stem's
small error is amplified by layer 1's folded depthwise weights. Only large inputs take the int8
path (``INT8_PIXELS``): there the time goes, while on small images (aerial tiles, reference
crops) float32 costs little and int8 cost the corrections benchmark on buildings (AP50 after 3
rounds 0.821 -> 0.770). The activations' ranges are
calibrated once, offline, on training images (``calibrate``; ``training/calibrate_int8.py``)
and shipped beside the weights as ``matcher.int8.json``, tied to the weights' sha256, so that
loading runs no image and every machine quantises alike. Quantising (FX tracing) takes 0.3-1 s,
so the int8 layers are kept in the user's cache folder as TorchScript (``int8_module``) and
later starts load them in ~0.05 s. Measured in ``models/matcher.md``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import os
import threading
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

# the backbone body's layers [start, stop) that run in int8, each span with the stride of its
# input (the image pixels one input pixel stands for)
SPANS = ((2, 7, 2), (7, 14, 8))
ENGINES = ("x86", "fbgemm")  # PyTorch's quantised engines for x86 CPUs
QUANT_MAX = 127  # 7-bit activations (reduce_range), the x86 engine's default
# images the model sees (after rescaling) with at least this many pixels run in int8: the
# first span's input is at stride 2, so a 1000 x 1000 image is 500 x 500 there
INT8_PIXELS = 1e6
CACHE_ENV = "NAPARI_INSTANNO_CACHE"  # overrides the cache folder (``cache_dir``)
# int8 modules kept in the cache, the most recently used (two per matcher weights, under 1 MB
# together: every fine-tuned model adds its own, the oldest go)
CACHE_KEEP = 16
SUFFIX = ".int8.json"  # beside the weights: ``matcher.safetensors`` -> ``matcher.int8.json``
# FX tracing keeps global state: matchers built in several threads at once (tile workers, the
# widget's background load) must quantise one after the other
_TRACING = threading.Lock()


def available() -> bool:
    """Whether this PyTorch quantises for an x86 CPU (elsewhere, e.g. ARM, the float path)."""
    return torch.backends.quantized.engine in ENGINES


def calibration_path(weights: Path) -> Path:
    """The calibration file beside ``weights``."""
    return weights.with_name(weights.name.split(".")[0] + SUFFIX)


def cache_dir() -> Path:
    """Where quantised layers are kept between runs: ``$NAPARI_INSTANNO_CACHE``, else
    ``napari-instanno`` in the user's cache folder (``$XDG_CACHE_HOME`` or ``~/.cache``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "napari-instanno"


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _mapping(calibrating: bool) -> Any:
    """The FX qconfig mapping: histogram observers to calibrate, min/max ones to load ranges
    into (same observers in the same places, so their names match)."""
    from torch.ao.quantization import QConfig, get_default_qconfig_mapping
    from torch.ao.quantization.observer import (
        HistogramObserver,
        MinMaxObserver,
        default_per_channel_weight_observer,
    )

    observer = HistogramObserver if calibrating else MinMaxObserver
    act = observer.with_args(dtype=torch.quint8, quant_min=0, quant_max=QUANT_MAX)
    return get_default_qconfig_mapping("x86").set_global(
        QConfig(activation=act, weight=default_per_channel_weight_observer))


def _observers(prepared: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in prepared.named_children() if n.startswith("activation_post_process")}


def _prepare(layers: nn.Module, calibrating: bool) -> nn.Module:
    from torch.ao.quantization.quantize_fx import prepare_fx

    example = torch.zeros(1, _in_channels(layers), 32, 32)
    with _TRACING, warnings.catch_warnings():  # (and FX quantisation's deprecation notices)
        warnings.simplefilter("ignore")
        return prepare_fx(copy.deepcopy(layers).to(memory_format=torch.contiguous_format).eval(),
                          _mapping(calibrating), (example,))


def _in_channels(layers: nn.Module) -> int:
    return next(m for m in layers.modules() if isinstance(m, nn.Conv2d)).in_channels


def calibrate(layers: nn.Module, inputs: Iterable[torch.Tensor]) -> dict[str, list[float]]:
    """Each activation observer's (scale, zero point) for ``layers`` (float, BatchNorms folded)
    after running ``inputs`` (their input tensors) through them."""
    prepared = _prepare(layers, calibrating=True)
    with torch.no_grad():
        for x in inputs:
            prepared(x.contiguous())
    out = {}
    for name, obs in _observers(prepared).items():
        scale, zero = obs.calculate_qparams()
        out[name] = [float(scale), int(zero)]
    return out


def quantized(layers: nn.Module, qparams: dict[str, list[float]]) -> nn.Module:
    """``layers`` converted to int8 with the activations' ``qparams`` (``calibrate``)."""
    from torch.ao.quantization.quantize_fx import convert_fx

    prepared = _prepare(layers, calibrating=False)
    observers = _observers(prepared)
    if set(observers) != set(qparams):
        raise ValueError("the int8 calibration does not fit these layers")
    for name, obs in observers.items():
        scale, zero = qparams[name]
        obs.min_val = torch.tensor(-zero * scale)
        obs.max_val = torch.tensor((QUANT_MAX - zero) * scale)
    with _TRACING, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert_fx(prepared)


def _cache_key(layers: nn.Module, qparams: dict[str, list[float]]) -> str:
    """What the int8 module depends on: PyTorch, its engine, the ranges and the float weights."""
    h = hashlib.sha256(f"{torch.__version__} {torch.backends.quantized.engine} {QUANT_MAX} "
                       f"{json.dumps(qparams, sort_keys=True)}".encode())
    for name, t in layers.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


def _load_script(source: str | io.BytesIO) -> nn.Module:
    """A TorchScript module from a file or bytes, without PyTorch's deprecation notices."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # PyTorch warns once that quantised tensors are deprecated; from C++ while loading
        # (straight to stderr), from Python here, where it is caught
        torch.quantize_per_tensor(torch.zeros(1), 1.0, 0, torch.quint8)
        return torch.jit.load(source, map_location="cpu")


def _scripted(module: nn.Module) -> nn.Module:
    """``module`` as TorchScript (it is already when it came from the cache)."""
    if isinstance(module, torch.jit.ScriptModule):
        return module
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.script(module)


def int8_module(layers: nn.Module, qparams: dict[str, list[float]]) -> nn.Module:
    """``quantized(layers, qparams)``, from the cache (``cache_dir``) where an earlier run kept
    it as TorchScript, else quantised now and kept there (where the folder is writable): no
    tracing at later starts. A damaged or unreadable cache file is quantised again."""
    path = cache_dir() / f"int8-{_cache_key(layers, qparams)}.pt"
    if path.is_file():
        try:
            module = _load_script(str(path))
            with contextlib.suppress(OSError):
                os.utime(path)  # used now: ``_prune`` keeps it
            return module
        except Exception:  # noqa: BLE001 (damaged, or another PyTorch's: quantise again)
            pass
    module = quantized(layers, qparams)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:  # written beside, then renamed: another process never reads half a file
        path.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(_scripted(module), str(tmp))
        os.replace(tmp, path)
        _prune(path.parent)
    except Exception:  # noqa: BLE001 (a read-only home, a PyTorch without TorchScript)
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return module


def _prune(folder: Path) -> None:
    """Remove all but the ``CACHE_KEEP`` most recently used int8 modules in ``folder``."""
    def used(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except OSError:  # removed meanwhile by another process
            return 0.0

    for old in sorted(folder.glob("int8-*.pt"), key=used, reverse=True)[CACHE_KEEP:]:
        with contextlib.suppress(OSError):
            old.unlink()


def _script_bytes(module: nn.Module) -> bytes | None:
    """``module`` saved as TorchScript (None where this PyTorch cannot)."""
    try:
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(_scripted(module), buf)
        return buf.getvalue()
    except Exception:  # noqa: BLE001 (a PyTorch without TorchScript: the receiver quantises)
        return None


def _unpickled(layers: nn.Module, qparams: dict[str, list[float]], input_stride: int,
               script: bytes | None) -> Int8Layers:
    """``Int8Layers`` from a pickle: the int8 module from its TorchScript bytes, where they load
    (no tracing: a dask worker may be running the matcher in another thread), else made again."""
    if script is not None:
        try:
            return Int8Layers(layers, qparams, input_stride, _load_script(io.BytesIO(script)))
        except Exception:  # noqa: BLE001 (another PyTorch's: quantise again)
            pass
    return Int8Layers(layers, qparams, input_stride)


class Int8Layers(nn.Module):
    """Float ``layers`` that run in int8 on a CPU for inputs of images of ``INT8_PIXELS`` or more
    (``input_stride``: image pixels per input pixel; ``int8``: the int8 module, default
    ``int8_module``) and as they are otherwise; pickled as the float layers,
    ``qparams`` and the int8 module as TorchScript (``_unpickled``); deep copies share the int8
    module."""

    def __init__(self, layers: nn.Module, qparams: dict[str, list[float]],
                 input_stride: int = SPANS[0][2], int8: nn.Module | None = None) -> None:
        super().__init__()
        self.layers = layers
        self.qparams = qparams
        self.input_stride = input_stride
        # not a submodule: no .to()
        object.__setattr__(self, "_int8", int8 if int8 is not None else int8_module(layers, qparams))

    def __reduce__(self) -> tuple:
        return _unpickled, (self.layers, self.qparams, self.input_stride,
                            _script_bytes(self._int8))

    def __deepcopy__(self, memo: dict) -> Int8Layers:
        """A copy sharing the (read-only) int8 module: no tracing, which patches every module's
        call while it runs and so must not happen beside inference in other threads (tiles)."""
        new = Int8Layers.__new__(Int8Layers)
        nn.Module.__init__(new)
        new.layers = copy.deepcopy(self.layers, memo)
        new.qparams = copy.deepcopy(self.qparams, memo)
        new.input_stride = self.input_stride
        object.__setattr__(new, "_int8", self._int8)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        large = x.shape[-2] * x.shape[-1] * self.input_stride ** 2 >= INT8_PIXELS
        if not large or x.device.type != "cpu" or torch.is_autocast_enabled("cpu"):
            return self.layers(x)
        return self._int8(x)


def span_key(start: int, stop: int) -> str:
    """A span's name in the calibration file: ``"2-7"``."""
    return f"{start}-{stop}"


def quantize_body(body: nn.Sequential, weights: Path) -> bool:
    """Run each span of ``SPANS`` in int8 where the calibration beside ``weights`` is for these
    weights (same sha256) and holds that span, and this PyTorch quantises for x86; in place
    (``body[start]`` becomes ``Int8Layers``, the rest of the span identities, so the taps at the
    spans' ends keep their indices). False, and ``body`` untouched, when no span is."""
    path = calibration_path(weights)
    if not available() or not path.is_file():
        return False
    cal = json.loads(path.read_text())
    spans = cal.get("spans")
    if cal.get("weights_sha256") != file_sha256(weights) or not isinstance(spans, dict):
        return False
    made = {}
    try:
        for start, stop, stride in SPANS:
            if len(body) >= stop and span_key(start, stop) in spans:
                made[start, stop] = Int8Layers(nn.Sequential(*body[start:stop]),
                                               spans[span_key(start, stop)], stride)
    except (ValueError, RuntimeError, KeyError, TypeError):  # another PyTorch's graph, a damaged file
        return False
    for (start, stop), span in made.items():
        body[start] = span
        for i in range(start + 1, stop):
            body[i] = nn.Identity()
    return bool(made)
