"""Process-level settings that the `embedrl` command applies before it starts any work.

glibc returns freed memory to the kernel eagerly: blocks above a (dynamic) size threshold are unmapped when
freed, and the top of the heap is trimmed when enough of it is free. An encode or evaluation run allocates the
same few tens of megabytes of pixel values, index buffers and activations for every batch, so each batch faults
those pages in again and the kernel zeroes them again (about 36,000 page faults per pass of
`benchmarks/bench_encode.py`). Keeping freed memory in the process for reuse removes that cost; the price is
that the resident size stays near its peak for the rest of the process, which is how a batch job or a server
behaves anyway. Library users decide for their own processes: `embedrl.runtime.keep_freed_memory()`.
"""

from __future__ import annotations

import ctypes
import os
import sys

# Set to 1 to leave the C allocator's settings alone in `embedrl` commands.
KEEP_ALLOCATOR_DEFAULTS_ENV = "EMBEDRL_MALLOC_DEFAULTS"

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(
    top_pad: int = 256 << 20, trim_threshold: int = 1 << 30, mmap_threshold: int = 32 << 20
) -> bool:
    """Tell glibc's malloc to keep freed memory for reuse; returns whether every setting was accepted.

    - `mmap_threshold`: blocks below it come from the heap, so they can be reused (32 MiB is glibc's maximum on
      64-bit; fixing it also stops glibc from adjusting it);
    - `trim_threshold`: free memory at the top of the heap is given back only beyond this;
    - `top_pad`: the heap grows in steps of this much address space (pages are still faulted in on first use).

    A no-op returning False off Linux, on a C library without `mallopt` (musl), or when
    `EMBEDRL_MALLOC_DEFAULTS=1`.
    """
    if os.environ.get(KEEP_ALLOCATOR_DEFAULTS_ENV) == "1" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    settings = (
        (_M_MMAP_THRESHOLD, mmap_threshold),
        (_M_TRIM_THRESHOLD, trim_threshold),
        (_M_TOP_PAD, top_pad),
    )
    return all(mallopt(parameter, value) == 1 for parameter, value in settings)
