"""Keep freed memory in the process instead of returning it to the OS at once.

A CPU training step allocates and frees the same few tensors of a few MB every step
(the [B, L, L] attention and its gradients). glibc serves blocks that large with fresh
``mmap`` calls and unmaps them on free, so every step pays page faults to zero-fill
them again: about a fifth of a step at the paper's sizes (measured in
``benchmarks/``). Raising glibc's mmap and trim thresholds lets those blocks be reused.
Process-wide and harmless beyond that: freed memory (up to the trim threshold) stays
mapped to the process until it exits or reuses it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 * 2**20  # glibc's documented ceiling on 64-bit
_TRIM_THRESHOLD = 512 * 2**20
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Raise glibc's malloc thresholds once per process; True when applied (Linux with
    glibc), False elsewhere (other allocators already keep freed memory)."""
    global _applied
    if _applied is None:
        _applied = False
        if sys.platform.startswith("linux"):
            name = ctypes.util.find_library("c")
            try:
                libc = ctypes.CDLL(name or "libc.so.6")
                mallopt = libc.mallopt
            except (OSError, AttributeError):  # musl and friends have no mallopt
                return False
            _applied = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(
                mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    return _applied
