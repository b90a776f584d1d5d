"""The C allocator of a learner process: keep freed memory for reuse instead of handing it back.

glibc's ``malloc`` serves every block above its mmap threshold (128 KiB to 32 MiB, adapting) with
a fresh ``mmap`` and unmaps it on ``free``; memory it frees at the top of the heap goes back to
the kernel past the trim threshold. Torch's CPU allocator calls ``malloc`` for every tensor, and a
PPO update allocates the same large tensors at every minibatch (a flat observation batch of
256 x 45,618 floats is 47 MB): each is then faulted in page by page, again, at every minibatch.
With both thresholds raised, a freed block stays in the heap and the next minibatch reuses pages
already mapped. Measured on 2 cores (``ploutos bench train --encoders-only --n-envs 8``): flat
PPO 187 -> 275 env steps/s, the shared encoder 1,182 -> 1,255.

The price is that the process keeps its peak heap until it exits: a training task's peak is
one rollout buffer plus one update, which it needs again at the next rollout anyway. Only glibc
has ``mallopt``; elsewhere (macOS, musl) nothing changes. ``hardware.keep_freed_memory: false``
turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1
"""glibc's ``mallopt`` parameter: free heap top kept before it is returned to the kernel."""
M_MMAP_THRESHOLD = -3
"""glibc's ``mallopt`` parameter: the smallest request served by its own ``mmap``."""
KEPT_BYTES = 2**30
"""Both thresholds: blocks up to 1 GiB come from the heap, and up to 1 GiB of freed top stays mapped."""


def keep_freed_memory() -> bool:
    """Raise glibc's trim and mmap thresholds for this process; whether the allocator took them.

    Call it once a process knows it will train; it affects blocks allocated from then on.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_TRIM_THRESHOLD, KEPT_BYTES)) and bool(mallopt(M_MMAP_THRESHOLD, KEPT_BYTES))
