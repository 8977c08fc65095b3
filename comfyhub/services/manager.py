"""ServiceManager: the one entry point to the lifecycle of every project's ComfyUI.

Routes call `ensure`, `stop`, `get` and `log_tail`; the proxy calls `touch`; the app's
lifespan calls `startup` and `shutdown`. Nothing else starts or stops an instance or
writes its record. The work is done by small owners, each in its own module:

| module        | owns                                                           |
| ------------- | -------------------------------------------------------------- |
| records.py    | the `comfyui_services` rows: the only writer; notifies listeners |
| admission.py  | instance limits (429) and this process's start slots (排队中)   |
| starts.py     | single flight, claim, port, spawn, readiness, failure           |
| heartbeat.py  | the lease loop, the sweep (online/offline), idle culling        |
| pool.py       | warm instances: refills, claims, binding, eviction              |
| reconcile.py  | abandoned starts and processes missing from their records       |
| restarts.py   | the automatic-restart plan (pure) and its runner                |
| audit.py      | the events table                                                |
| liveness.py   | is a record's process alive, and is it ours                     |
| launchers/    | how a process runs (local subprocess or Ray actor)              |
| outputs/      | generation records: history pulled before every stop (`stop`)   |

Where each invariant (docs/architecture.md) is kept:

1. One live instance per project: starts.py (single flight, per-project lock, claim by
   generation); records.py (every later write conditional on the generation);
   reconcile.py (duplicates found after a restart are stopped).
2. A pid is signalled only when provably ours: the launcher's `poll`/`stop` check
   creation time and command line; liveness.py asks it before anything else.
3. A port belongs to one live instance: starts.py (`_reserve_port`, bind-race retry),
   backed by the partial unique index on live ports (models.py).
4. Every start ends `online` or `failed` in time, early exits fail fast: starts.py.
5. A backend restart loses nothing: reconcile.py, heartbeat.py (reconcile on taking
   the lease), coordination.py (the lease).
6. Only the owner: `ensure` checks ownership here; the API and proxy check it too.
7. Nothing a user generated is deleted: no code path removes an instance folder
   (instances.py only creates).
8. Nothing ComfyUI finished goes unrecorded: `stop` pulls the history before the
   process is signalled (culls, deletes and admin stops all come through it), and the
   output sync (outputs/sync.py) scans the files of every instance that went down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from comfyhub.config import Settings
from comfyhub.launchers import Launcher, make_launcher
from comfyhub.messages import PROJECT_NOT_FOUND
from comfyhub.metrics import Metrics
from comfyhub.models import ComfyUIService, Event, Project, ServiceStatus
from comfyhub.outputs.client import InstanceUnreachable
from comfyhub.outputs.sync import Instance, OutputSync
from comfyhub.reasons import Reason
from comfyhub.services import instances
from comfyhub.services.admission import Admission
from comfyhub.services.audit import Audit
from comfyhub.services.coordination import HeartbeatLease, ProjectLocks
from comfyhub.services.errors import FORBIDDEN, NO_FREE_PORT, NOT_CONFIGURED, NOT_CONFIGURED_HINT, ServiceError
from comfyhub.services.gpus import GpuPicker
from comfyhub.services.health import HealthChecker
from comfyhub.services.heartbeat import Heartbeat
from comfyhub.services.liveness import Liveness
from comfyhub.services.pool import Pool
from comfyhub.services.prober import Prober
from comfyhub.services.reconcile import Reconciler
from comfyhub.services.records import WATCHED, Records
from comfyhub.services.restarts import RestartRunner
from comfyhub.services.spawning import comfy_url
from comfyhub.services.starts import Starts
from comfyhub.services.tasks import BackgroundTasks

log = logging.getLogger("comfyhub.manager")

# Proxied traffic marks activity; one write per instance per this many seconds at most.
ACTIVITY_WRITE_SECONDS = 5.0
# The last history pull before a stop: long enough for thousands of entries, bounded so
# that a hung instance cannot hold a stop (its files are still scanned afterwards).
FINAL_PULL_SECONDS = 30.0


class ServiceManager:
    def __init__(
        self,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        launcher: Launcher | None = None,
        metrics: Metrics | None = None,
    ):
        self.settings = settings
        self.sessions = sessions
        self.metrics = metrics or Metrics()
        self.launcher = launcher or make_launcher(settings)
        self.health = HealthChecker(settings.comfyui_health_timeout_seconds)
        self.records = Records(sessions)
        self.audit = Audit(sessions)
        self.background = BackgroundTasks()
        self._closing = asyncio.Event()
        self._loop_task: asyncio.Task | None = None
        self._sync_task: asyncio.Task | None = None
        self._pool_task: asyncio.Task | None = None
        self.outputs = OutputSync(settings, sessions)
        self._touched: dict[int, float] = {}
        locks = ProjectLocks(sessions.kw["bind"])
        self.liveness = Liveness(self.launcher, self.health)
        self.prober = Prober()
        admission = Admission(settings, self.records, locks, runs_here=self.launcher.runs_here)
        self.starts = Starts(
            settings,
            self.records,
            self.launcher,
            self.liveness,
            admission,
            locks,
            self.audit,
            self.metrics,
            GpuPicker(settings.comfyui_gpus),
            self._closing,
        )
        self.pool = Pool(
            settings,
            self.records,
            self.launcher,
            self.liveness,
            admission,
            self.metrics,
            self.starts._pick_gpu,
            self.starts._port_lock,  # one lock for every port chosen in this process
            self._closing,
        )
        self.starts.pool = self.pool
        reconciler = Reconciler(settings, self.records, self.launcher, self.liveness, locks, self.starts, self.pool)
        restarts = RestartRunner(settings, self.records, self.starts, self.metrics, self.background.spawn)
        interval = settings.comfyui_heartbeat_interval_seconds
        # The holder renews every sweep; a dead holder's lease lapses after a few missed sweeps.
        lease = HeartbeatLease(sessions, "heartbeat", ttl_seconds=max(2.5 * interval, 3.0))
        self.heartbeat = Heartbeat(
            settings,
            self.records,
            self.launcher,
            self.liveness,
            reconciler,
            restarts,
            self.audit,
            self.metrics,
            lease,
            stop=self.stop,
            prober=self.prober,
        )

    @property
    def listeners(self) -> list:
        """Called with a project id after its record changed (the proxy drops its cached route)."""
        return self.records.listeners

    # --- app lifespan ----------------------------------------------------------------------

    async def startup(self) -> None:
        """Start the heartbeat; its first sweep (in the lease holder) reconciles the records."""
        self._loop_task = asyncio.create_task(self.heartbeat.run(), name="comfyhub-heartbeat")
        # The output sync follows the lease: one process pulls every instance's history.
        self._sync_task = asyncio.create_task(
            self.outputs.run(lambda: self.heartbeat.leading), name="comfyhub-output-sync"
        )
        # So does the warm pool: one process refills it, so several never over-fill it.
        self._pool_task = asyncio.create_task(self.pool.run(lambda: self.heartbeat.leading), name="comfyhub-pool")

    async def shutdown(self) -> None:
        """Stop background work. Instances keep running unless configured otherwise."""
        self._closing.set()  # starts still waiting for resources give up now
        for task in (self._loop_task, self._sync_task, self._pool_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._loop_task = self._sync_task = self._pool_task = None
        await self.starts.cancel_all()
        await self.pool.cancel()
        await self.background.wait()
        if self.settings.comfyui_stop_instances_on_exit:
            await self.stop_all(Reason.BACKEND_EXIT)
            await self.pool.stop_all()
        if self.heartbeat.leading:
            with contextlib.suppress(Exception):
                await self.heartbeat.lease.release()  # let another worker take over at once
        await self.outputs.close()
        await self.starts.locks.close()
        await self.prober.aclose()
        await self.health.aclose()
        self.launcher.close()

    # --- open ------------------------------------------------------------------------------

    async def ensure(
        self, user_id: int, project: Project, actor: str = "", record: ComfyUIService | None | bool = False
    ) -> ComfyUIService:
        """Return the project's online instance, starting it if needed.

        The contract is "healthy within the last second", not "healthy now": an online
        instance whose health was confirmed less than liveness.FRESH_SECONDS ago (by the
        heartbeat, its start, an open or a proxied response, in this process) is reused
        with only the launcher's cheap check that its process is alive; otherwise it is
        checked again (one GET /system_stats). A project without a live instance takes a
        warm one from the pool when there is one (services/pool.py), or starts one.

        `record`: the project's record when the caller loaded it along with the project
        (None: it has none), so the reuse path costs no second query.
        Raises ServiceError 403 for anyone but the owner (before anything starts), 404 for
        a deleted project, 429
        over COMFYUI_MAX_INSTANCES(_PER_USER), 503 when ComfyUI is not configured or no
        port is free. A start that fails returns the record `failed` with `last_error`.
        """
        if project.owner_user_id != user_id:
            raise ServiceError(403, FORBIDDEN)
        if project.deleted_at is not None:
            raise ServiceError(404, PROJECT_NOT_FOUND)
        if record is False:
            record = await self.get(project.id)
        if record is not None and record.user_id != user_id:
            raise ServiceError(403, FORBIDDEN)
        if record is not None and record.status in WATCHED and await self.liveness.answers(record):
            if record.status != ServiceStatus.ONLINE:
                await self.records.update_seen(record, WATCHED, status=ServiceStatus.ONLINE, last_error="", reason="")
                record = await self.get(project.id)
            return record
        if not self.settings.comfyui_configured:
            raise ServiceError(503, NOT_CONFIGURED, {"hint": NOT_CONFIGURED_HINT})
        flight = self.starts.flight(user_id, project.id, actor or f"user:{user_id}", manual=True)
        # shield: a client that disconnects must not abort a start other clicks wait for.
        await asyncio.shield(flight.task)
        record = await self.get(project.id)
        if record is not None and record.status == ServiceStatus.FAILED and record.reason == Reason.NO_PORT:
            raise ServiceError(503, NO_FREE_PORT)
        return record

    # --- stop ------------------------------------------------------------------------------

    async def stop(self, project_id: int, reason: Reason = Reason.USER, actor: str = "system") -> ComfyUIService | None:
        """Stop the project's instance, waiting for its process to end. Files are kept.

        A start in progress is interrupted first. `actor` is who asked (a user name,
        `cli`, `system`); it goes to the audit trail and, for Reason.ADMIN, into the words.
        """
        await self.starts.interrupt(project_id)
        await self._final_pull(project_id)
        record, old_state = await self.records.mark_stopped(project_id, reason, actor)
        if record is None:
            return None
        old = self.liveness.handle_of(old_state)
        if old is not None:
            await self.launcher.stop(old, self.settings.comfyui_stop_grace_seconds)
            await asyncio.to_thread(instances.mark_event, record.log_path, f"stopped ({record.stopped_reason})")
            log.info("project %s: stopped (%s)", project_id, reason)
        # Files written after the last pull (or by a hung instance) are recorded from disk.
        self.outputs.scan_soon(project_id, record.user_id)
        action = "cull" if reason == Reason.IDLE else "stop"
        await self.audit.record(action, project_id, record.user_id, actor, "stopped", record.stopped_reason)
        return record

    async def _final_pull(self, project_id: int) -> None:
        record = await self.get(project_id)
        if record is None or record.status != ServiceStatus.ONLINE:
            return
        try:
            await asyncio.wait_for(self.outputs.pull(Instance.of(record)), FINAL_PULL_SECONDS)
        except (InstanceUnreachable, TimeoutError) as exc:
            log.warning(
                "project %s: history not pulled before the stop (%s); its files will be scanned", project_id, exc
            )
        except Exception:  # noqa: BLE001 — a database hiccup must not prevent a stop
            log.warning("project %s: history not pulled before the stop", project_id, exc_info=True)

    async def stop_all(self, reason: Reason) -> None:
        await asyncio.gather(*(self.stop(pid, reason) for pid in await self.records.active_ids()))

    # --- heartbeat (also called directly by tests and the CLI) -----------------------------

    async def heartbeat_once(self) -> dict[str, int]:
        """One sweep now; see Heartbeat.sweep."""
        return await self.heartbeat.sweep()

    async def reconcile(self) -> None:
        """Make the records match reality now; see Heartbeat.reconcile."""
        await self.heartbeat.reconcile()

    # --- reading ---------------------------------------------------------------------------

    async def get(self, project_id: int) -> ComfyUIService | None:
        return await self.records.get(project_id)

    async def log_tail(self, record: ComfyUIService, lines: int) -> str:
        if not record.log_path:
            return ""
        return await asyncio.to_thread(instances.tail, record.log_path, lines)

    def comfy_url(self, project_id: int) -> str:
        return comfy_url(project_id)

    async def queue(self, record: ComfyUIService) -> dict | None:
        """ComfyUI's queue of an online instance (None when it does not answer)."""
        return await self.liveness.queue(record)

    async def events(self, limit: int = 100) -> list[Event]:
        return await self.audit.events(limit)

    async def count_by_status(self) -> dict[str, int]:
        return await self.records.count_by_status()

    # --- activity --------------------------------------------------------------------------

    def touch(self, project_id: int) -> None:
        """Note proxied traffic for the idle culler; cheap enough to call per request."""
        now = time.monotonic()
        if now - self._touched.get(project_id, -ACTIVITY_WRITE_SECONDS) < ACTIVITY_WRITE_SECONDS:
            return
        self._touched[project_id] = now
        self.background.spawn(self._note_activity(project_id))

    async def _note_activity(self, project_id: int) -> None:
        try:
            await self.records.note_activity(project_id)
        except Exception:  # noqa: BLE001 — activity is best effort; the next request retries
            log.warning("could not record activity of project %s", project_id, exc_info=True)
            self._touched.pop(project_id, None)
