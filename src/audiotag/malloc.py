"""glibc's allocator settings for long training runs, set from inside the process.

By default glibc serves every allocation above 128 KiB-32 MiB (a sliding threshold) with a fresh
``mmap`` and gives freed memory back at once, so each training step maps, faults in and unmaps its
activations again: on this project's VMs larger CNNs trained 1.2-1.3x slower for it (BENCHMARKS.md,
MACHINE_NOTES). The Makefile sets ``MALLOC_MMAP_MAX_=0`` and ``MALLOC_TRIM_THRESHOLD_`` in the
environment; :func:`keep_freed_memory` makes the same choice with ``mallopt`` for a process started
any other way. Importing audiotag changes nothing; the CLI calls it first thing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # malloc.h
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: keep up to 2 GiB of freed memory for reuse


def keep_freed_memory() -> bool:
    """Serve large blocks from the heap and keep freed memory for reuse (glibc only). Settings the
    environment already gives (``MALLOC_MMAP_MAX_``, ``MALLOC_TRIM_THRESHOLD_``) are left as they
    are, and ``AUDIOTAG_MALLOC=default`` keeps glibc's own. Returns whether anything was set."""
    if not sys.platform.startswith("linux") or os.environ.get("AUDIOTAG_MALLOC") == "default":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # another C library (musl): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    changed = False
    if "MALLOC_MMAP_MAX_" not in os.environ:
        changed |= bool(mallopt(M_MMAP_MAX, 0))
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        changed |= bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    return changed
