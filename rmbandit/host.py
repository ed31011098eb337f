"""The host process's memory allocator, tuned for XLA:CPU.

XLA:CPU allocates the temporaries of each call of a compiled program as one buffer: 1.5 GB
for the SmolLM2 DPO step.  glibc serves a buffer that large with mmap and unmaps it when
it is freed, so every call faults all of it back in, a zeroed page at a time (360,000
page faults a step, measured).  ``retain_freed_memory`` has glibc keep what it frees for
the next call instead.  It is an application's choice (the ``rmbandit`` command makes it),
never made by importing the library."""
from __future__ import annotations

import ctypes
import ctypes.util

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8


def retain_freed_memory() -> bool:
    """glibc: serve every allocation from one heap (one arena, no mmap) and never hand
    freed memory back to the kernel, so a buffer freed by one call is reused by the next
    without page faults.  The process then holds its peak memory, as a training run does
    anyway.  Call it first thing, before JAX runs anything: a thread that has allocated
    already keeps its own arena and its mmap.  Returns whether it applied (False off glibc)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1))
    return all(mallopt(option, value) == 1 for option, value in settings)
