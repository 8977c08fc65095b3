"""Sharing the event loop: work over many items done in slices, with a turn of the loop
between slices (`map_in_slices`), or started a group at a time (`paced`), so that no
single turn holds every user's request back for long.

A turn spent on one user's thousand rows is a stall for all the others: every request
that arrives meanwhile waits it out (measured at a thousand instances: docs/benchmarks.md,
"Scale").
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

# Items per slice: a few hundred microseconds to a couple of milliseconds of work each.
SLICE = 200


async def map_in_slices(fn: Callable[[T], R], items: Iterable[T], size: int = SLICE) -> list[R]:
    """[fn(item) for item in items], yielding to the loop after every `size` items."""
    out: list[R] = []
    for i, item in enumerate(items):
        if i and i % size == 0:
            await asyncio.sleep(0)
        out.append(fn(item))
    return out


async def paced(fn: Callable[[T], Awaitable[R]], items: Sequence[T], group: int, tick: float) -> list[R]:
    """[await fn(item) for item in items], run concurrently but started `group` at a time,
    `tick` seconds apart: a thousand started together would be a thousand callbacks in one
    turn, then a thousand answers in the next. Cancelling it cancels every one started."""
    started: list[asyncio.Future[R]] = []
    try:
        for i in range(0, len(items), group):
            if i:
                await asyncio.sleep(tick)
            started += [asyncio.ensure_future(fn(item)) for item in items[i : i + group]]
        return list(await asyncio.gather(*started))
    finally:
        for future in started:
            future.cancel()  # a no-op for those done; the rest must not outlive a cancelled call
