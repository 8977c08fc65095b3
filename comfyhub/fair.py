"""Sharing the event loop: work over many items done in slices, with a turn of the loop
between slices, so that no single turn holds every user's request back for long.

A turn spent on one user's thousand rows is a stall for all the others: every request
that arrives meanwhile waits it out (measured at a thousand instances: docs/benchmarks.md,
"Scale").
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
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
