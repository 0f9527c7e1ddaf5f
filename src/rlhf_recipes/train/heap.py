"""Freed CPU memory handed back to the system between the PPO loop's phases.

PyTorch's CPU tensors come from glibc's malloc. Past a first freed large block glibc raises its mmap threshold (up to
32 MiB), so the many 1-16 MiB activations of a forward and backward pass are carved from the heap, and what they
leave when freed stays resident as fragmented heap that the next phase, with other shapes, cannot fully reuse. In
float32 on the PPO bench's prompts that retention was most of the process's peak RSS; `malloc_trim(0)` after each
phase releases the heap's free pages (inside it too, through `madvise`, not only at its top). Its cost in time is
within the runs' spread, perhaps 3-4% from pages faulting in again (bench/README.md, "PPO and the heap").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _libc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None  # glibc only (not macOS, not musl)


def trim() -> bool:
    """Return the heap's free pages to the system (glibc's `malloc_trim(0)`); False where there is no glibc."""
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None else False
