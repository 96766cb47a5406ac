"""Opt-in glibc allocator tuning for CPU runs that allocate many large activation tensors.

Two opposite settings, for two kinds of work (both process-wide, so never applied implicitly by the
library; the ``train`` command applies :func:`return_freed_memory` to its own process):

glibc serves blocks above 128 KiB-32 MiB with ``mmap`` and gives freed memory back to the OS at once, so a
forward pass that keeps every activation alive (``run_with_cache`` over all sites, recording a store)
page-faults on hundreds of MB of fresh memory each batch. Keeping freed memory in the heap removes that
cost: on a 2-core machine ``run_with_cache`` over all sites of ViT-S/16 (batch 32) went from 1.3-1.8x
to 1.06x the plain forward (:func:`keep_freed_memory`).

SAE training is the other case: its big (batch, d_sae) tensors are mmapped either way, but when a
mmapped block of up to 32 MiB is freed (a (batch, d_in) tensor) glibc raises its mmap threshold to that
size, so the (batch, d_in) tensors after it come from the heap, which fragments and is not given back:
measured on ViT-B activations (batch 4096, d_sae 6144) that held 260-340 MiB of freed memory and set the
peak RSS. :func:`return_freed_memory` pins the threshold low, at no measurable cost in step time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def keep_freed_memory(*, mmap_threshold: int = 32 * 2**20, trim_threshold: int = 4 * 2**30) -> bool:
    """Ask glibc to serve blocks up to ``mmap_threshold`` from the heap and keep up to ``trim_threshold``
    bytes of freed memory for reuse. Returns False (and does nothing) where glibc is not the allocator."""
    return _mallopt(
        "kept for reuse",
        (_M_MMAP_THRESHOLD, mmap_threshold),
        (_M_TRIM_THRESHOLD, trim_threshold),
        (_M_TOP_PAD, 64 * 2**20),
    )


def return_freed_memory(*, mmap_threshold: int = 2**20) -> bool:
    """Ask glibc to serve every block above ``mmap_threshold`` with its own ``mmap`` (given back to the OS
    when freed) for the rest of the process, instead of raising that threshold as it goes. Returns False
    (and does nothing) where glibc is not the allocator."""
    return _mallopt("given back", (_M_MMAP_THRESHOLD, mmap_threshold))


def _mallopt(what: str, *settings: tuple[int, int]) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    path = ctypes.util.find_library("c")
    if path is None:
        return False
    libc = ctypes.CDLL(path)
    if not hasattr(libc, "mallopt"):
        return False
    ok = all(libc.mallopt(param, value) for param, value in settings)
    logger.debug("glibc allocator: freed large blocks %s: %s", what, ok)
    return bool(ok)
