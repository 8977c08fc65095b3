"""Making the records match reality after a backend (re)start (invariant 5).

- A `starting` record whose start no backend process runs any more (its backend died)
  is finished one way or the other: adopted when its process is ours and healthy,
  otherwise its process is stopped and the record `failed`.
- A process started for an instance folder but missing from its record (the backend
  died between spawn and record) is recorded — or stopped, when the record already
  has a live process, the project is gone, or it does not answer as ours.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.exc import IntegrityError

from comfyhub.config import Settings
from comfyhub.launchers import Handle, Launcher
from comfyhub.launchers.base import argv_value
from comfyhub.launchers.process import read_secret
from comfyhub.models import ServiceStatus, utcnow
from comfyhub.reasons import Reason, words
from comfyhub.services import instances
from comfyhub.services.coordination import ProjectLocks
from comfyhub.services.liveness import Liveness
from comfyhub.services.records import Records
from comfyhub.services.spawning import comfy_url
from comfyhub.services.starts import Starts

if TYPE_CHECKING:
    from comfyhub.services.pool import Pool

log = logging.getLogger("comfyhub.reconcile")


def project_of(handle: Handle, base_root) -> int | None:
    """The project id from an instance folder BASE/u{user}/p{project} in a command line,
    or from the instance name a launcher keeps (a Ray actor still waiting for a GPU)."""
    base_dir = argv_value(handle.cmdline, "--base-directory")
    if base_dir:
        parts = os.path.relpath(base_dir, base_root).split(os.sep)
    else:
        parts = str(handle.extra.get("instance", "")).split("-")
    if len(parts) == 2 and parts[0].startswith("u") and parts[1].startswith("p") and parts[1][1:].isdigit():
        return int(parts[1][1:])
    return None


@dataclass(eq=False)
class Reconciler:
    settings: Settings
    records: Records
    launcher: Launcher
    liveness: Liveness
    locks: ProjectLocks
    starts: Starts
    pool: Pool | None = None

    async def resolve_abandoned_starts(self, project_ids: list[int]) -> None:
        await asyncio.gather(*(self._resolve_abandoned_start(pid) for pid in project_ids))

    async def _resolve_abandoned_start(self, project_id: int) -> None:
        if project_id in self.starts.flights:
            return
        async with self.locks.hold(project_id, wait=False) as free:
            if not free or project_id in self.starts.flights:
                return  # a start is in progress (here or in another worker)
            record = await self.records.get(project_id)
            if record is None or record.status != ServiceStatus.STARTING:
                return
            handle = self.liveness.handle(record)
            alive = self.liveness.alive(handle)
            # A taken warm instance's handle expects its binding: one never bound is not adopted.
            if alive and await self.liveness.health.is_ours(handle.endpoint, record.base_dir):
                log.info("project %s: adopted an instance whose start outlived its backend", project_id)
                now = utcnow()
                await self.records.update(
                    project_id,
                    record.generation,
                    status=ServiceStatus.ONLINE,
                    status_detail="",
                    last_heartbeat=now,
                    last_activity=now,
                )
                return
            if alive:
                await self.launcher.stop(handle, self.settings.comfyui_stop_grace_seconds)
            await self.records.update(
                project_id,
                record.generation,
                status=ServiceStatus.FAILED,
                pid=None,
                launcher_state=None,
                reason=Reason.INTERRUPTED,
                last_error=words(Reason.INTERRUPTED),
            )

    async def adopt_orphans(self) -> None:
        """Processes started for an instance folder that their record does not name."""
        found = await asyncio.to_thread(self.launcher.discover, self.settings.comfyui_instance_base_dir)
        if self.pool is not None:
            await self.pool.adopt_orphans(found)  # those in pool folders
        for handle in found:
            project_id = project_of(handle, self.settings.comfyui_instance_base_dir)
            if project_id is None or project_id in self.starts.flights:
                continue
            async with self.locks.hold(project_id, wait=False) as free:
                if free:
                    await self._adopt_one(project_id, handle)

    async def _adopt_one(self, project_id: int, handle: Handle) -> None:
        record = await self.records.get(project_id)
        recorded = self.liveness.handle(record) if record is not None else None
        if recorded is not None and recorded.same_process(handle):
            return  # not an orphan
        grace = self.settings.comfyui_stop_grace_seconds
        base_dir = argv_value(handle.cmdline, "--base-directory")
        # Its record was never written, so the secret is only in the file the launcher
        # delivered it in; an instance that has one must prove it (health.identity_is_ours).
        handle.secret = await asyncio.to_thread(read_secret, base_dir) if base_dir else ""
        if (
            record is None
            or self.liveness.alive(recorded)
            or not await self.liveness.health.is_ours(handle.endpoint, base_dir)
        ):
            # A duplicate, an instance of a deleted project, or one that does not answer: stop it.
            log.warning("project %s: stopping unrecorded instance pid %s", project_id, handle.pid)
            await self.launcher.stop(handle, grace)
            return
        log.info("project %s: recording running instance pid %s found without a record", project_id, handle.pid)
        try:
            await self.records.update(
                project_id,
                record.generation,
                status=ServiceStatus.ONLINE,
                status_detail="",
                pid=handle.pid,
                launcher_state=handle.state(),
                port=handle.port,
                host=handle.host,
                base_dir=base_dir,
                comfy_url=comfy_url(project_id),
                last_heartbeat=utcnow(),
                last_error="",
                reason="",
                log_path=str(instances.log_path(self.settings, record.user_id, project_id, handle.port)),
            )
        except IntegrityError:
            await self.launcher.stop(handle, grace)
