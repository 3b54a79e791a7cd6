"""Keep freed memory in the C library's heap, so each chunk of a separation reuses the pages the last one used.

A separation allocates and frees the same few hundred MiB of activations for every chunk of the song. With glibc's
defaults every block above the mmap threshold (at most 32 MiB) is a fresh `mmap` and goes back to the kernel when
freed, so each chunk faults its pages in again: 0.9-1.9 million page faults and 1.7-3.1 s of kernel time per 30 s
of audio on a 2-core CPU (`python -m bench.page_faults`). With `MALLOC_REUSE=on` (the default) the
runner and the HTTP function ask glibc, through `mallopt`, to serve every block from its heap (no mmap), never to
trim the heap's top, and to use one arena; the pages are faulted in once and reused by every later chunk. The
numbers the model computes are the same; only where their memory comes from changes. A cold job's peak RSS grows
by about a tenth (1163 MiB against 1056 MiB for a 30 s song, docs/performance.md): blocks that mmap would have
placed anywhere now share one heap. Memory is not handed back to the kernel between jobs, which a pod that runs one
job, or a worker that runs the next job soon after, does not miss.

Not glibc (musl, macOS): nothing is changed and `keep_freed_memory` returns False.
"""

from __future__ import annotations

import ctypes
import logging
import threading

log = logging.getLogger("stemworker.allocator")

# mallopt parameters, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
INT_MAX = 2**31 - 1

SETTINGS = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, INT_MAX), (M_ARENA_MAX, 1))

_lock = threading.Lock()
_applied: bool | None = None


def _glibc() -> ctypes.CDLL | None:
    """This process's C library when it is glibc (it has `gnu_get_libc_version` and `mallopt`), else None."""
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    return libc


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as the module docstring says; once per process. True when every option was taken."""
    global _applied
    with _lock:
        if _applied is not None:
            return _applied
        libc = _glibc()
        if libc is None:
            log.info("MALLOC_REUSE: the C library is not glibc; allocator left as it is")
            _applied = False
            return False
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.mallopt.restype = ctypes.c_int
        refused = [param for param, value in SETTINGS if libc.mallopt(param, value) != 1]
        if refused:
            log.warning("MALLOC_REUSE: glibc refused mallopt parameters %s", refused)
        _applied = not refused
        return _applied


def apply(enabled: bool) -> bool:
    """`keep_freed_memory()` when MALLOC_REUSE is on; False (and nothing changed) when it is off."""
    return keep_freed_memory() if enabled else False
