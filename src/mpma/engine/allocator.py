"""``run.retain_freed_memory``: keep the memory a training step frees inside the process.

A step allocates and frees the same large tensors every time: gradients, autocast's bf16 copies of
the weights, activations. glibc's malloc hands freed memory back to the kernel as soon as the free
space at the heap's top passes its trim threshold (128 KiB at first), and serves blocks above its
mmap threshold (128 KiB, growing to at most 32 MiB) with fresh ``mmap`` calls that are unmapped on
free. The next step then touches new pages again, one page fault per 4 KiB, and that time lands on
whichever op writes first: the weight casts and gradient copies of a bf16 step above all.

Measured on a 2-core AMX host with ``benchmarks/allocator.py`` (1 thread; each setting in fresh
processes, alternated; medians of 5 steps; benchmarks/README.md "Allocator"), glibc's defaults
against the trim threshold at 2 GiB and the mmap threshold fixed at 32 MiB: on the idle machine
``base`` at batch 2 1.16x faster in fp32 and 1.18x in bf16, ``small`` at batch 32 1.07x, ``tiny``
at batch 64 1.11x; beside two other jobs base's bf16 step 1.44x (4.59 against 3.19 s). The price:
the process keeps what it freed, so its resident memory stays at its peak between steps instead of
dipping (the peak itself does not grow: the same blocks are reused).

Only glibc has these knobs (``mallopt``); on other C libraries (macOS, musl) this is a no-op that
says so. The settings are process-wide and last for the life of the process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

# mallopt(3) parameter numbers (glibc malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD_BYTES = 2**31 - 1  # the largest an int allows: free heap top up to 2 GiB stays with the process
MMAP_THRESHOLD_BYTES = 32 * 2**20  # glibc's own upper bound for its dynamic threshold: blocks below it reuse the heap


def _glibc():
    """The process's glibc (``ctypes.CDLL``) when it offers ``mallopt``, else None."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()  # glibc only: raises AttributeError elsewhere
        return libc if hasattr(libc, "mallopt") else None
    except (OSError, AttributeError):
        return None


@functools.lru_cache(maxsize=None)
def retain_freed_memory() -> bool:
    """Raise glibc's trim threshold and fix its mmap threshold (see the module docstring); once per process.

    Returns:
        True when both settings took effect; False on a C library without ``mallopt`` or when glibc
        refused a value (logged at info level either way).
    """
    log = logging.getLogger("mpma")
    libc = _glibc()
    if libc is None:
        log.info("run.retain_freed_memory: not glibc, so the C allocator is left as it is")
        return False
    done = (libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
            and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1)
    log.info("run.retain_freed_memory: %s", "freed memory stays in the process (glibc trim threshold 2 GiB, "
             "mmap threshold 32 MiB)" if done else "glibc refused the mallopt settings; allocator unchanged")
    return done
