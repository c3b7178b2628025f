"""Tiled runs give the heap memory each tile freed back to the system (glibc keeps it otherwise)."""

from __future__ import annotations

import ctypes
import os
import platform

import pytest

from napari_instanno.inference.engine import give_back_memory

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_freed_heap_memory_goes_back_to_the_system():
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(64 * 1024) for _ in range(3000)]  # ~190 MB below the mmap threshold
    for b in blocks:
        ctypes.memset(b, 1, 64 * 1024)
    pin = libc.malloc(64 * 1024)  # keeps the heap's top in use, so free() alone cannot shrink it
    ctypes.memset(pin, 1, 64 * 1024)
    for b in blocks:
        libc.free(b)
    kept = _rss_mb()
    give_back_memory()
    assert kept - _rss_mb() > 100  # most of the ~190 MB freed is returned
    libc.free(pin)
