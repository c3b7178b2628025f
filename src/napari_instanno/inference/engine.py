"""Running tile tasks with dask: local threads by default, or a ``dask.distributed`` cluster.

``run_tasks`` streams each tile's outcome back to ``on_outcome`` as it finishes, keeps a bounded
number of tiles in flight (memory stays bounded), and stops submitting when ``cancel()`` says so
or ``on_outcome`` returns True.
"""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import queue
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import InstannoError

LOCAL_SCHEDULERS = {"threads", "threading", "sync", "synchronous", "single-threaded"}

# token -> idle component copies; a task borrows one so no two threads share a stateful model.
_POOLS: dict[str, queue.SimpleQueue] = {}
_POOLS_LOCK = threading.Lock()


@contextmanager
def borrow(token: str, prototype: Any, seed: Any = None) -> Iterator[Any]:
    """An independent copy of ``prototype`` for this thread, returned to the pool afterwards."""
    with _POOLS_LOCK:
        pool = _POOLS.get(token)
        if pool is None:
            pool = _POOLS[token] = queue.SimpleQueue()
            if seed is not None:
                pool.put(seed)
    try:
        item = pool.get_nowait()
    except queue.Empty:
        item = copy.deepcopy(prototype)
    try:
        yield item
    finally:
        pool.put(item)


def _libc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, where the C library is glibc (Linux); None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # musl and others have no malloc_trim
        return None


_TRIM = _libc_trim()


def give_back_memory() -> None:
    """Return the heap memory freed by the last tile to the system. glibc keeps freed blocks in
    its per-thread arenas, so without this a tiled run's resident memory grows to the sum of
    every thread's largest tile rather than what is in use (a no-op off glibc)."""
    if _TRIM is not None:
        _TRIM(0)


def release(token: str) -> None:
    """Drop the component copies of a finished run."""
    with _POOLS_LOCK:
        _POOLS.pop(token, None)


def resolve(scheduler: Any) -> tuple[str, Any]:
    """("local", dask scheduler name) or ("distributed", Client) for ``scheduler``.

    None -> local threads; a local name ("threads", "sync"); a ``distributed.Client``; or an
    address such as ``"tcp://10.0.0.5:8786"`` (a Client is opened on it; close it with the run).
    """
    if scheduler is None:
        return "local", "threads"
    if isinstance(scheduler, str):
        if scheduler in LOCAL_SCHEDULERS:
            return "local", "threads" if scheduler in ("threads", "threading") else "sync"
        try:
            from distributed import Client
        except ImportError as err:
            raise InstannoError("a scheduler address needs dask.distributed: "
                                "pip install distributed") from err
        try:
            return "distributed", Client(scheduler, timeout="20s", set_as_default=False)
        except (OSError, TimeoutError) as err:
            raise InstannoError(f"cannot reach the dask scheduler at {scheduler}: {err}") from err
    if hasattr(scheduler, "submit") and hasattr(scheduler, "scatter"):
        return "distributed", scheduler
    raise InstannoError(
        f"scheduler {scheduler!r} is not understood; pass None, 'threads', 'sync', a "
        "dask.distributed Client or a scheduler address"
    )


def run_tasks(fn: Callable[[Any, Any], Any], job: Any, items: list[Any], *, scheduler: Any,
              workers: int, cancel: Callable[[], bool] | None,
              on_outcome: Callable[[Any], bool]) -> bool:
    """Run ``fn(job, item)`` for every item; returns True when stopped early."""
    kind, target = resolve(scheduler)
    if kind == "local":
        return _run_local(fn, job, items, target, workers, cancel, on_outcome)
    owns = isinstance(scheduler, str)
    try:
        return _run_distributed(fn, job, items, target, cancel, on_outcome)
    finally:
        if owns:
            target.close()


def _cancelled(cancel: Callable[[], bool] | None) -> bool:
    return bool(cancel is not None and cancel())


def _run_local(fn: Callable, job: Any, items: list[Any], name: str, workers: int,
               cancel: Callable[[], bool] | None, on_outcome: Callable[[Any], bool]) -> bool:
    import dask

    workers = max(1, workers) if name == "threads" else 1
    for start in range(0, len(items), workers):
        if _cancelled(cancel):
            return True
        wave = [dask.delayed(fn, pure=False)(job, it) for it in items[start:start + workers]]
        for outcome in dask.compute(*wave, scheduler=name, num_workers=workers):
            if on_outcome(outcome):
                return True
    return False


def _run_distributed(fn: Callable, job: Any, items: list[Any], client: Any,
                     cancel: Callable[[], bool] | None, on_outcome: Callable[[Any], bool]
                     ) -> bool:
    from distributed import as_completed

    job_future = client.scatter(job, broadcast=True, hash=False)
    in_flight = 2 * max(1, sum(client.nthreads().values()))
    todo = iter(items)
    done = as_completed(loop=client.loop)  # this client's, not a default one (there may be none)
    for _, it in zip(range(in_flight), todo, strict=False):
        done.add(client.submit(fn, job_future, it, pure=False))
    stopped = False
    try:
        for future in done:
            if on_outcome(future.result()) or _cancelled(cancel):
                stopped = True
                break
            nxt = next(todo, None)
            if nxt is not None:
                done.add(client.submit(fn, job_future, nxt, pure=False))
    finally:
        pending = list(done.futures)
        if pending:
            client.cancel(pending)
        client.run(release, job.token)
    return stopped
