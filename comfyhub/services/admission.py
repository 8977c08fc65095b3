"""Who may start now: the instance limits, and the start slots of this backend process.

Limits and the claim of a record are checked together under one lock (in this process
and, on PostgreSQL, an advisory lock across workers), so that two concurrent starts
cannot both pass a limit. Start slots cap how many starts load at once on this
machine; the others wait and their record says 排队中.
"""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

from comfyhub.config import Settings
from comfyhub.services.coordination import ProjectLocks
from comfyhub.services.errors import ServiceError
from comfyhub.services.records import Records

# Lock id for admission (limits + claim); project ids start at 1, so 0 is free.
ADMISSION_LOCK = 0
QUEUED = "排队中"
STARTING = "启动中"


class Admission:
    def __init__(self, settings: Settings, records: Records, locks: ProjectLocks, runs_here: bool):
        self.settings = settings
        self.records = records
        self.locks = locks
        self._lock = asyncio.Lock()
        # The cap protects this machine's CPU from many ComfyUIs loading at once; on a
        # cluster the starts run on the nodes and the cluster's scheduler queues them.
        self._slots = asyncio.Semaphore(settings.comfyui_max_concurrent_starts if runs_here else 1_000_000)

    @asynccontextmanager
    async def exclusive(self):
        """Hold while checking the limits and claiming the record."""
        async with self._lock, self.locks.hold(ADMISSION_LOCK):
            yield

    async def check_limits(self, user_id: int, project_id: int) -> bool:
        """Raise ServiceError 429 when one more live instance would pass a limit.

        Warm instances (the pool) count towards COMFYUI_MAX_INSTANCES but never stand in
        a user's way: True when the limit is reached only with them, so that the start
        takes one or stops one (pool.py) instead of answering 429.
        """
        s = self.settings
        if not (s.comfyui_max_instances or s.comfyui_max_instances_per_user):
            return False
        owners = await self.records.live_owners(except_project=project_id)
        if s.comfyui_max_instances and len(owners) >= s.comfyui_max_instances:
            raise ServiceError(429, f"实例总数已达上限（COMFYUI_MAX_INSTANCES={s.comfyui_max_instances}），请稍后再试")
        mine = sum(1 for uid in owners if uid == user_id)
        if s.comfyui_max_instances_per_user and mine >= s.comfyui_max_instances_per_user:
            raise ServiceError(
                429,
                f"您的实例数已达上限（COMFYUI_MAX_INSTANCES_PER_USER={s.comfyui_max_instances_per_user}），"
                "请先停止其他项目的 ComfyUI",
            )
        if not s.comfyui_max_instances:
            return False
        return len(owners) + await self.records.warm_count() >= s.comfyui_max_instances

    def start_detail(self) -> str:
        """What a record just claimed says: queued when every start slot is taken."""
        return QUEUED if self._slots.locked() else STARTING

    async def take_slot(self, stop_requested: asyncio.Event) -> tuple[bool, bool]:
        """Wait for a start slot, unless a stop comes first: (got it, had to wait)."""
        if not self._slots.locked():
            await self._slots.acquire()
            return True, False
        acquire = asyncio.ensure_future(self._slots.acquire())
        stopped = asyncio.ensure_future(stop_requested.wait())
        try:
            await asyncio.wait({acquire, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if acquire.done() and not acquire.cancelled():
            if stop_requested.is_set():
                self._slots.release()
                return False, True
            return True, True
        acquire.cancel()
        return False, True

    async def try_slot(self) -> bool:
        """A start slot if one is free now, without waiting (a refill of the warm pool:
        it never queues ahead of a user's start)."""
        if self._slots.locked():
            return False
        await self._slots.acquire()  # free: returns at once
        return True

    def release_slot(self) -> None:
        self._slots.release()
