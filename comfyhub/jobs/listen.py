"""Wake the job runner the moment a project's ComfyUI finishes a prompt.

The runner polls every ACTIVE_TICK (0.2 s), refilling at most COMFYHUB_JOB_QUEUE_DEPTH
items a tick: on its own it sustains depth / tick = 10 items a second, and items
shorter than that (tick / depth = 0.1 s) leave ComfyUI idle between them. ComfyUI says
when its queue changes, on its WebSocket: `status` with `exec_info.queue_remaining`,
sent to every socket, and sent after a finished prompt's history entry is written
(PromptQueue.task_done, then queue_updated). A fall in that count means a prompt left
the queue: the runner's next tick runs at once, finds the outcome in the history and
refills, while ComfyUI runs the item that was waiting.

The poll stays what the runner relies on; a socket only makes a tick early. A listener
that cannot connect, or loses its socket, ends quietly; the runner asks for another at
its next step, at most every RETRY_SECONDS.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterable

from websockets.asyncio.client import connect

from comfyhub.net.endpoint import Endpoint

log = logging.getLogger("comfyhub.jobs")

RETRY_SECONDS = 5.0
CONNECT_TIMEOUT = 5.0


def queue_remaining(message: str | bytes) -> int | None:
    """`queue_remaining` of a `status` message; None for any other message."""
    if isinstance(message, bytes):
        return None  # previews: binary, and never a status
    try:
        event = json.loads(message)
        remaining = event["data"]["status"]["exec_info"]["queue_remaining"] if event.get("type") == "status" else None
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    return remaining if type(remaining) is int else None


class QueueListeners:
    """One WebSocket per project with live jobs, each setting `wake` when its queue shrinks."""

    def __init__(self, wake: asyncio.Event):
        self.wake = wake
        self._tasks: dict[int, tuple[tuple[Endpoint, int], asyncio.Task]] = {}
        self._tried: dict[int, float] = {}

    def follow(self, project_id: int, target: Endpoint, run: int) -> None:
        """Listen to this run of the project's instance (once; again after a lost socket)."""
        key = (target, run)
        current = self._tasks.get(project_id)
        if current is not None and current[0] == key and not current[1].done():
            return
        now = time.monotonic()
        if now - self._tried.get(project_id, -RETRY_SECONDS) < RETRY_SECONDS:
            return
        if current is not None:
            current[1].cancel()
        self._tried[project_id] = now
        task = asyncio.create_task(self._listen(project_id, target), name=f"comfyhub-job-listen-{project_id}")
        self._tasks[project_id] = (key, task)

    def keep_only(self, project_ids: Iterable[int]) -> None:
        """Stop listening to projects that have nothing live any more."""
        keep = set(project_ids)
        for project_id in [p for p in self._tasks if p not in keep]:
            self._tasks.pop(project_id)[1].cancel()
            self._tried.pop(project_id, None)

    async def close(self) -> None:
        tasks = [task for _, task in self._tasks.values()]
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _listen(self, project_id: int, target: Endpoint) -> None:
        url = f"ws://{target.authority}/ws?clientId=comfyhub-jobs-{project_id}"
        last: int | None = None
        try:
            async with connect(
                url,
                open_timeout=CONNECT_TIMEOUT,
                compression=None,
                proxy=None,
                additional_headers=target.headers(),
            ) as socket:
                async for message in socket:
                    remaining = queue_remaining(message)
                    if remaining is None:
                        continue
                    if last is not None and remaining < last:
                        self.wake.set()
                    last = remaining
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 — refused, closed, a bad handshake: the poll goes on
            log.debug("project %s: ComfyUI's WebSocket: %s", project_id, exc)
