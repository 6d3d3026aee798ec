"""Keep freed memory for reuse: one start-up call that halves the time of a 256×256 convolution on a CPU.

A convolution over a 256×256 batch writes tens of MB and frees them a moment later. glibc's malloc, by default,
hands a block that large to the kernel (a fresh `mmap`, or a heap trimmed after the free), so the next layer's
block comes back as new pages that the kernel must fault in and zero, one 4 KiB page at a time. With the compact
autoencoder on 2 cores that kernel time was half of an encode and 60 % of a decode; told to keep what it frees,
malloc reuses the same pages and the encode went from 72 to 35 ms an image, the decode from 310 to 130 ms
(benchmarks/bench_autoencoder.py --malloc measures it on your machine).

The price: a process keeps its peak memory until it exits instead of returning it between layers. Every script
calls `keep_freed_memory()` once at start-up (`tinyldm.runs.run_cli`). Elsewhere than Linux with glibc (macOS,
Windows, musl) it does nothing.
"""

import ctypes
import ctypes.util

# mallopt(3) parameters (glibc's malloc.h) and the values we set.
M_TRIM_THRESHOLD = -1  # free memory at the top of the heap is returned to the kernel above this many bytes
M_TOP_PAD = -2  # extra bytes requested from the kernel whenever the heap grows, kept for later requests
M_MMAP_THRESHOLD = -3  # requests at least this large get their own mmap (released on free)
KEEP = 2**31 - 1  # the largest value mallopt's int takes: ~2 GiB
PAD = 2**28  # 256 MiB


def keep_freed_memory() -> bool:
    """Serve large blocks from the heap and keep freed memory there (glibc only) → True if set."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc: no mallopt
        return False
    # Setting any of these also turns off glibc's dynamic mmap threshold, which would otherwise move again.
    return all(mallopt(param, value) == 1 for param, value in
               ((M_MMAP_THRESHOLD, KEEP), (M_TRIM_THRESHOLD, KEEP), (M_TOP_PAD, PAD)))
