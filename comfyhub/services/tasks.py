"""Tasks of the lifecycle: fire-and-forget work (activity writes, restart follow-ups),
kept referenced so it is not garbage-collected mid-flight and awaited at shutdown; and
work that must finish even when its caller is cancelled."""

from __future__ import annotations

import asyncio
import contextlib


class BackgroundTasks:
    def __init__(self):
        self._tasks: set[asyncio.Task] = set()

    def spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def uncancellable(coro):
    """Run `coro` to its end even if the caller is cancelled meanwhile (then wait for it
    and re-raise the cancellation). For a spawn and its record: once a process is
    spawned, its pid must reach the database, or the process would be an orphan."""
    work = asyncio.ensure_future(coro)
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await work
        raise
