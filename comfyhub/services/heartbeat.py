"""The heartbeat: one backend process (the lease holder) sweeps every instance each
COMFYUI_HEARTBEAT_INTERVAL_SECONDS, marks it online or offline, culls idle ones and
runs the automatic restarts that are due. Taking the lease reconciles first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from comfyhub.config import Settings
from comfyhub.launchers import Launcher
from comfyhub.metrics import Metrics
from comfyhub.models import ComfyUIService, ServiceStatus, utcnow
from comfyhub.reasons import Reason
from comfyhub.services import instances
from comfyhub.services.audit import Audit
from comfyhub.services.coordination import HeartbeatLease
from comfyhub.services.liveness import Liveness, Probe
from comfyhub.services.reconcile import Reconciler
from comfyhub.services.records import Records
from comfyhub.services.restarts import RestartRunner, restart_plan

log = logging.getLogger("comfyhub.heartbeat")


@dataclass(eq=False)
class Heartbeat:
    settings: Settings
    records: Records
    launcher: Launcher
    liveness: Liveness
    reconciler: Reconciler
    restarts: RestartRunner
    audit: Audit
    metrics: Metrics
    lease: HeartbeatLease
    stop: Callable[..., Awaitable]  # the manager's stop, for culling
    leading: bool = field(default=False, init=False)  # holds the lease and sweeps

    async def run(self) -> None:
        """Sweep every interval while holding the lease; reconcile on taking it. Runs until cancelled."""
        while True:
            try:
                if await self.lease.acquire_or_renew():
                    if not self.leading:
                        log.info("heartbeat: this process leads (%s); reconciling", self.lease.holder)
                        self.leading = True
                        await self.reconcile()
                    else:
                        await self.sweep()
                elif self.leading:
                    log.warning("heartbeat: lease lost to another process")
                    self.leading = False
            except Exception:  # noqa: BLE001 — a failed sweep (database away...) must not end the loop
                log.exception("heartbeat sweep failed; retrying next interval")
            await asyncio.sleep(self.settings.comfyui_heartbeat_interval_seconds)

    async def reconcile(self) -> None:
        """Adopt processes missing from their records, then sweep (which resolves abandoned starts)."""
        await self.reconciler.adopt_orphans()
        await self.sweep()

    async def sweep(self) -> dict[str, int]:
        """Check every watched instance concurrently; mark it online or offline.

        Each check is bounded by COMFYUI_HEALTH_TIMEOUT_SECONDS, so one hung instance
        costs the sweep at most one timeout, whatever the number of instances. Starts
        that nobody is running any more (their backend died) are resolved too.
        """
        records = await self.records.watched()
        await self.reconciler.resolve_abandoned_starts(await self.records.starting_ids())
        await self.launcher.refresh([h for h in map(self.liveness.handle, records) if h is not None])
        probes = await asyncio.gather(*(self.liveness.probe(r) for r in records))
        counts = {"online": 0, "offline": 0}
        now = utcnow()
        idle = []
        updates: list[tuple[ComfyUIService, dict]] = []
        for record, probe in zip(records, probes, strict=False):
            counts["online" if probe.healthy else "offline"] += 1
            if probe.healthy:
                values = dict(status=ServiceStatus.ONLINE, last_heartbeat=now, last_error="", reason="")
                if self._idle_too_long(record, now):
                    idle.append(record)
            elif record.status == ServiceStatus.OFFLINE and (probe.exited is None or record.pid is None):
                continue  # already offline: keep the first, most precise reason
            else:
                values = await self._lost(record, probe, now)
            updates.append((record, values))
        await self.records.update_many(updates)
        await asyncio.gather(*(self._cull_if_idle(r) for r in idle))
        await self.restarts.run_due(now)
        return counts

    async def _lost(self, record: ComfyUIService, probe: Probe, now) -> dict:
        """The values that mark a record offline (and plan its restart when it died)."""
        self.metrics.health_failures.inc()
        values = dict(status=ServiceStatus.OFFLINE, last_error=probe.why, reason=probe.reason)
        if probe.exited is not None:
            # The process is gone: forget it, so nothing ever signals that pid again.
            values.update(pid=None, launcher_state=None)
            values.update(restart_plan(self.settings, record, now))
            await asyncio.to_thread(instances.mark_event, record.log_path, probe.why)
            await self.audit.record("crash", record.project_id, record.user_id, "system", "offline", probe.why)
        log.warning("project %s: offline: %s", record.project_id, probe.why)
        return values

    # --- idle culling ----------------------------------------------------------------------

    def _idle_too_long(self, record: ComfyUIService, now) -> bool:
        timeout = self.settings.comfyui_idle_timeout_seconds
        if not timeout:
            return False
        last = record.last_activity or record.started_at
        return last is not None and (now - last).total_seconds() >= timeout

    async def _cull_if_idle(self, record: ComfyUIService) -> None:
        """Stop an idle instance — unless ComfyUI has queued or running work."""
        queue = await self.liveness.queue(record)
        if queue is None:
            return  # cannot tell: never cull on a guess
        if queue.get("queue_running") or queue.get("queue_pending"):
            await self.records.note_activity(record.project_id)  # a job is activity too
            return
        log.info("project %s: idle for %ss, stopping", record.project_id, self.settings.comfyui_idle_timeout_seconds)
        self.metrics.culls.inc()
        await self.stop(record.project_id, reason=Reason.IDLE, actor="system")
