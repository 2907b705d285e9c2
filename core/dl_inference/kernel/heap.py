"""The serving process's heap kept off the request path: Python's cyclic garbage
collector, and the C allocator's habit of returning large freed blocks to the system.

A serving process holds for its whole life hundreds of thousands of objects (modules,
the Python side of loaded models, the servers' own), and every full collection walks all
of them: with the peers' MLP loaded, about 110 ms on a 2-core machine, during which no
request moves, every few seconds under load. None of them becomes garbage while its model
is served, so after start-up they are frozen (``gc.freeze``: a generation the collector
never walks) and only what requests allocate is collected. When models change (a version
retired, loaded or reloaded) the heap is settled again: unfrozen, collected once (what a
retired version left in reference cycles is freed, not kept forever), and frozen.

Only the serving process freezes (:func:`freeze`, from ``Server.run``); elsewhere (tests
and tools that start a server in their own process) :func:`settle` does nothing.

glibc's allocator maps a large block (128 KiB and up, a threshold it raises as such blocks
are freed) with its own ``mmap`` and unmaps it when freed, and gives the top of a heap
back once more than a threshold of it is free. A model's batch allocates and frees blocks
of megabytes each execution (merged inputs, a network's activations): given back, each
is mapped again by page faults the next time. A small CNN's batch of 16 took about 2,500
page faults per forward pass in a thread, and 17-23 ms instead of 12-13.
:func:`keep_freed_memory` (the serving process and model instance processes, at start)
fixes both thresholds at what glibc's own rule reaches after freeing a 32 MiB block: freed
blocks up to 32 MiB stay in the process for the next batch, memory stays bounded by the
largest batches served.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os

# How long after a change the heap is settled: the coroutines that made the change (and
# whose frames still hold the retired version) have returned by then, and several changes
# of one scan are settled once.
SETTLE_AFTER_S = 1.0

# glibc's mallopt parameters, and the largest mmap threshold it accepts on 64-bit systems.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 2 * MMAP_THRESHOLD
# Set by the operator: glibc reads them itself, and they win.
MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")

_frozen = False
_pending: asyncio.TimerHandle | None = None


def freeze() -> None:
    """Collect once, then freeze every object alive: the serving process, after start-up."""
    global _frozen
    gc.collect()
    gc.freeze()
    _frozen = True


def settle() -> None:
    """Free what left, freeze what stays (a no-op until :func:`freeze`)."""
    global _pending
    _pending = None
    if not _frozen:
        return
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def settle_soon() -> None:
    """After models changed: :func:`settle` once, :data:`SETTLE_AFTER_S` later on the
    running event loop (a version retired now is still referenced by the frames that
    retired it: freezing it then would keep its memory for good)."""
    global _pending
    if not _frozen or _pending is not None:
        return
    _pending = asyncio.get_running_loop().call_later(SETTLE_AFTER_S, settle)


def frozen() -> bool:
    """Whether this process froze its heap."""
    return _frozen


def keep_freed_memory() -> bool:
    """Keep freed blocks of up to :data:`MMAP_THRESHOLD` for reuse instead of giving them
    back to the system (glibc only; not when the operator set ``MALLOC_MMAP_THRESHOLD_`` or
    ``MALLOC_TRIM_THRESHOLD_``). Returns whether the allocator was set so."""
    if any(name in os.environ for name in MALLOC_ENV):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc: its allocator has its own policy
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
