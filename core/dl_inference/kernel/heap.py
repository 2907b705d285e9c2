"""Python's cyclic garbage collector kept off the request path.

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
"""

from __future__ import annotations

import asyncio
import gc

# How long after a change the heap is settled: the coroutines that made the change (and
# whose frames still hold the retired version) have returned by then, and several changes
# of one scan are settled once.
SETTLE_AFTER_S = 1.0

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
