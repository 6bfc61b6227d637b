"""Keep freed heap memory in the process, so that big numpy buffers are reused instead of faulted in again.

glibc serves every allocation above its mmap threshold (at most 32 MiB by default) with a fresh
``mmap`` and unmaps it on ``free``; a thread's own malloc arena cannot hold such a buffer at all
(its heaps are at most 64 MiB), so it is mmapped whatever the threshold. Privacy amplification of a
metro-bb84 block (44 Mbit → 7.7 Mbit, three float64 FFTs of 4.6·10⁷ points) allocates ≈ 1.2 GB
per hash, and the kernel zeroes all of it again on every block: measured here 2.2 s of user CPU
plus 2.0 s of system CPU per hash, against 2.2 s + 0.0 s once freed memory is kept
(docs/benchmarks.md). So processes that hash block-sized strings (the post-processing runtime,
``qkdops replay``, the benches) use one arena, serve allocations up to 1 GiB from the heap and
never trim it: resident memory stays at its high-water mark (≈ 2.5 GB with metro-bb84 on bits,
both ends hashing at once) instead of being returned and re-faulted every block.

``mallopt`` parameters: glibc ``malloc/malloc.h`` (``M_TRIM_THRESHOLD`` −1, ``M_MMAP_THRESHOLD``
−3, ``M_ARENA_MAX`` −8), documented in mallopt(3).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import sys

__all__ = ["retain_freed_memory"]

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_THRESHOLD, 1 << 30), (_M_TRIM_THRESHOLD, -1))
"""One arena for all threads (set first: it applies to threads that have not allocated yet), heap
allocations up to 1 GiB, and no trimming of the heap top."""


@functools.cache
def retain_freed_memory() -> bool:
    """Apply the settings above once per process; False where the C library is not glibc (no effect).

    Threads that already allocated keep their arena, so the post-processing runtime calls this
    before it starts its worker threads.
    """
    if not sys.platform.startswith("linux"):
        return False
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    applied = all(mallopt(param, value) == 1 for param, value in _SETTINGS)
    log.debug("malloc: freed memory kept for reuse: %s", applied)
    return applied
