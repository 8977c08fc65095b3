"""Fire-and-forget work the lifecycle starts (activity writes, restart follow-ups), kept
referenced so it is not garbage-collected mid-flight, and awaited at shutdown."""

from __future__ import annotations

import asyncio


class BackgroundTasks:
    def __init__(self):
        self._tasks: set[asyncio.Task] = set()

    def spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def wait(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)
