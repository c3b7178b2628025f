"""Out-of-memory handling for tile runs: one way to detect it, one way to fall back."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` says the host or the GPU ran out of memory."""
    import torch

    return isinstance(err, (MemoryError, torch.OutOfMemoryError))


def with_oom_fallback(run: Callable[[], T], fallback: Callable[[BaseException], T]) -> T:
    """``run()``; if it runs out of memory, ``fallback(error)`` instead (other errors propagate)."""
    try:
        return run()
    except Exception as err:
        if not is_out_of_memory(err):
            raise
        error = err
    return fallback(error)


@contextmanager
def on_cpu(components: tuple[Any, ...], notes: list[str]) -> Iterator[None]:
    """Move the components that have ``to(device)`` to the CPU, and back afterwards (where the
    GPU still has no room for them, that copy stays on the CPU and a note says so)."""
    movable = [(c, getattr(c, "device", None)) for c in components if hasattr(c, "to")]
    for c, _ in movable:
        c.to("cpu")
    try:
        yield
    finally:
        for c, device in movable:
            with_oom_fallback(lambda c=c, d=device: c.to(d or "cpu"), lambda _: notes.append(
                "no GPU memory to move a model copy back; it goes on on the CPU"))
