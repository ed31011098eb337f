"""Process-wide settings the ``rmbandit`` command makes for itself: the memory allocator,
tuned for XLA:CPU, and a persistent compilation cache.  Each is an application's choice,
never made by importing the library.

The allocator.  XLA:CPU allocates the temporaries of each call of a compiled program as
one buffer: 1.5 GB for the SmolLM2 DPO step.  glibc serves a buffer that large with mmap
and unmaps it when it is freed, so every call faults all of it back in, a zeroed page at a
time (360,000 page faults a step, measured).  ``retain_freed_memory`` has glibc keep what it frees for
the next call instead.

The compilation cache.  Each new shape of a batch (prompt width, real response tokens)
compiles the sampler and the step again: 16-40 s each for SmolLM2 on this CPU, 50-90 s at
8B on a GPU.  ``use_compile_cache`` keeps the compiled programs on disk (JAX's persistent
cache), so a resumed run, a rerun or another run of the same shapes loads them instead.
XLA:CPU compiles for the host's own instruction set, which JAX's cache key does not name:
the programs go to a subdirectory per CPU model and feature set (``host_key``), so a cache
on a shared disk never hands one CPU another's code."""
from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import pathlib
import platform
import warnings

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


COMPILE_CACHE_VARIABLE = "RMBANDIT_COMPILE_CACHE"     # a directory, or "off"
COMPILE_CACHE_BYTES = 4 << 30                         # least recently used programs go beyond this


def default_compile_cache() -> pathlib.Path:
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base) / "rmbandit" / "xla"


def host_key(cpuinfo: str | None = None) -> str:
    """The machine type and a digest of the CPU's model and feature flags (Linux's
    /proc/cpuinfo; elsewhere ``platform.processor()``): equal on hosts that can run each
    other's XLA:CPU programs."""
    if cpuinfo is None:
        try:
            cpuinfo = pathlib.Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = platform.processor()
    fields = {}
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), value.strip())        # the first CPU's
    described = "\n".join(fields.get(name, "") for name in ("model name", "flags", "Features", "CPU part"))
    return f"{platform.machine() or 'unknown'}-{hashlib.sha256(described.encode()).hexdigest()[:12]}"


def use_compile_cache(setting: str | None = None) -> pathlib.Path | None:
    """Turn on JAX's persistent compilation cache in ``setting`` (default: the
    ``RMBANDIT_COMPILE_CACHE`` variable, else ``default_compile_cache()``) / ``host_key()``;
    "off" leaves it off; an unwritable directory is an error where asked for, a warning (and
    no cache) at the default place.  A cache directory set through JAX itself
    (``JAX_COMPILATION_CACHE_DIR``, ``jax.config``) is kept as it is.  Call it before JAX
    compiles anything.  Returns the directory in use, or None."""
    import jax

    if jax.config.jax_compilation_cache_dir:
        return pathlib.Path(jax.config.jax_compilation_cache_dir)
    setting = os.environ.get(COMPILE_CACHE_VARIABLE) if setting is None else setting
    if setting is not None and setting.strip().lower() in ("off", "0", "false", "no", "none", ""):
        return None
    directory = (pathlib.Path(setting).expanduser() if setting else default_compile_cache()) / host_key()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        problem = (f"cannot create the compilation cache {directory} ({err.strerror}); point "
                   f"{COMPILE_CACHE_VARIABLE} at a writable directory, or set it to off")
        if setting:                 # asked for: an error; the default place: run without the cache
            raise ValueError(f"{COMPILE_CACHE_VARIABLE}: {problem}") from None
        warnings.warn(f"running without a compilation cache: {problem}", stacklevel=2)
        return None
    jax.config.update("jax_compilation_cache_dir", str(directory))
    if jax.config.jax_compilation_cache_max_size == -1:       # JAX's default: no limit
        jax.config.update("jax_compilation_cache_max_size", COMPILE_CACHE_BYTES)
    return directory
