"""ServiceManager: the whole lifecycle of every project's ComfyUI, in one place.

Nothing else starts, stops or changes the status of a `comfyui_services` row. Routes
call `ensure`, `stop` and `log_tail`; the app's lifespan calls `startup` and
`shutdown`; the heartbeat runs inside. The launcher (launchers/) runs the processes.

How the invariants of DESIGN.md §4 are kept:

1. One live instance per project — concurrent `ensure` calls for a project join one
   in-flight start (single flight); every status write after the claim is conditional
   on the record's `generation`, so a start that was overtaken (stopped, restarted
   elsewhere) cannot overwrite the newer state and kills its own process instead.
2. A pid is signalled only through the launcher, which checks creation time and
   command line first.
3. Ports: chosen under a lock among ports no live record holds and nobody listens
   on; a partial unique index on (port) for live rows backs this up across
   processes; a child that lost the bind race is retried on the next port.
4. Every start ends in `online` or `failed` within COMFYUI_STARTUP_TIMEOUT_SECONDS;
   an early exit fails at once with the exit code and the log tail.
7. No code path deletes an instance's folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from comfyhub.config import Settings
from comfyhub.launchers import Exit, Handle, LaunchError, Launcher, LaunchSpec, PortInUse, make_launcher
from comfyhub.launchers.base import argv_value, comfyui_argv
from comfyhub.metrics import Metrics, failure_reason
from comfyhub.models import ComfyUIService, Event, Project, ServiceStatus, utcnow
from comfyhub.services import instances
from comfyhub.services.coordination import HeartbeatLease, ProjectLocks
from comfyhub.services.errors import FORBIDDEN, NO_FREE_PORT, NOT_CONFIGURED, ServiceError
from comfyhub.services.gpus import GpuPicker
from comfyhub.services.health import HealthChecker
from comfyhub.services.ports import candidate_ports, lost_bind_race, port_is_free

log = logging.getLogger("comfyhub.manager")

S = ServiceStatus
LIVE = (S.STARTING, S.ONLINE)
WATCHED = (S.ONLINE, S.OFFLINE)
MAX_BIND_ATTEMPTS = 5
LOG_TAIL_LINES = 20
# Polling while a start waits: a refused connection costs ~0.1 ms, so polling often is
# cheap and keeps the added start latency small (the seed's 1 s polling cost ~0.6 s).
READY_POLL_SECONDS = 0.01
# Proxied traffic marks activity; one write per instance per this many seconds at most.
ACTIVITY_WRITE_SECONDS = 5.0

NOT_CONFIGURED_HINT = ("请管理员运行 .venv/bin/comfyhub comfyui install"
                       "（或在 .env 中设置 COMFYUI_REPO_PATH 和 COMFYUI_PYTHON），然后重启 comfyhub")
# Lock id for admission (limits + claim); project ids start at 1, so 0 is free.
ADMISSION_LOCK = 0
QUEUED = "排队中"
IDLE_REASON = "空闲超时"


def instance_name(user_id: int, project_id: int) -> str:
    return f"u{user_id}-p{project_id}"


def _project_of(handle: Handle, base_root) -> int | None:
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


class _StopRequested(Exception):
    """A stop arrived while the launcher was still starting the process."""


@dataclass
class _Flight:
    task: asyncio.Task
    stop_requested: asyncio.Event


class ServiceManager:
    def __init__(
        self,
        settings: Settings,
        sessions: async_sessionmaker[AsyncSession],
        launcher: Launcher | None = None,
        metrics: Metrics | None = None,
    ):
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.gpus = GpuPicker(settings.comfyui_gpus)
        self._admission = asyncio.Lock()
        self.sessions = sessions
        self.launcher = launcher or make_launcher(settings)
        # Starts running at once in this process; the rest wait (排队中). The cap protects
        # this machine's CPU from many ComfyUIs loading at once; on a cluster the starts
        # run on the nodes and the cluster's scheduler does the queueing.
        slots = settings.comfyui_max_concurrent_starts if self.launcher.runs_here else 1_000_000
        self._start_slots = asyncio.Semaphore(slots)
        self._closing = asyncio.Event()
        self.health = HealthChecker(settings.comfyui_health_timeout_seconds)
        self._flights: dict[int, _Flight] = {}
        self._port_lock = asyncio.Lock()
        self._loops: list[asyncio.Task] = []
        self.locks = ProjectLocks(sessions.kw["bind"])
        interval = settings.comfyui_heartbeat_interval_seconds
        # The holder renews every sweep; a dead holder's lease lapses after a few missed sweeps.
        self.lease = HeartbeatLease(sessions, "heartbeat", ttl_seconds=max(2.5 * interval, 3.0))
        self._leading = False
        self._touched: dict[int, float] = {}
        # Called with a project id after its record changed (the proxy drops its cached route).
        self.listeners: list = []
        self._background: set[asyncio.Task] = set()

    # --- app lifespan ---------------------------------------------------------------------

    async def startup(self) -> None:
        """Start the heartbeat; its first sweep (in the lease holder) reconciles the records."""
        self._loops.append(asyncio.create_task(self._heartbeat_loop(), name="comfyhub-heartbeat"))

    async def shutdown(self) -> None:
        """Stop background work. Instances keep running unless configured otherwise."""
        self._closing.set()  # starts still waiting for resources give up now
        for task in self._loops:
            task.cancel()
        for flight in list(self._flights.values()):
            flight.task.cancel()
        await asyncio.gather(*self._loops, *(f.task for f in self._flights.values()), *self._background,
                             return_exceptions=True)
        self._loops.clear()
        if self.settings.comfyui_stop_instances_on_exit:
            await self.stop_all("后端退出")
        if self._leading:
            with contextlib.suppress(Exception):
                await self.lease.release()  # let another worker take over at once
        await self.health.aclose()
        close = getattr(self.launcher, "close", None)
        if close is not None:
            close()

    # --- open ---------------------------------------------------------------------------

    async def ensure(self, user_id: int, project: Project, actor: str = "",
                     record: ComfyUIService | None | bool = False) -> ComfyUIService:
        """Return the project's online instance, starting it if needed (the seed's ensure).

        Raises ServiceError 403 for anyone but the owner (both of the seed's checks,
        before anything starts), 429 over COMFYUI_MAX_INSTANCES(_PER_USER), 503 when
        ComfyUI is not configured or no port is free.
        A start that fails returns the record with status `failed` and `last_error`.
        """
        if project.owner_user_id != user_id:
            raise ServiceError(403, FORBIDDEN)
        if record is False:  # the caller did not load it along with the project
            record = await self.get(project.id)
        if record is not None and record.user_id != user_id:
            raise ServiceError(403, FORBIDDEN)
        if record is not None and record.status in WATCHED and await self._answers(record):
            if record.status != S.ONLINE:
                await self._write(record.id, record.generation, WATCHED, status=S.ONLINE, last_error="")
                self._changed(project.id)
                record = await self.get(project.id)
            return record
        if not self.settings.comfyui_configured:
            raise ServiceError(503, NOT_CONFIGURED, {"hint": NOT_CONFIGURED_HINT})
        flight = self._flight(user_id, project.id, actor or f"user:{user_id}", manual=True)
        # shield: a client that disconnects must not abort a start other clicks wait for.
        await asyncio.shield(flight.task)
        record = await self.get(project.id)
        if record is not None and record.last_error == NO_FREE_PORT and record.status == S.FAILED:
            raise ServiceError(503, NO_FREE_PORT)
        return record

    def _flight(self, user_id: int, project_id: int, actor: str, manual: bool) -> _Flight:
        """Join the project's start in this process, or begin one."""
        flight = self._flights.get(project_id)
        if flight is None:
            flight = _Flight(
                asyncio.create_task(self._start_flight(user_id, project_id, actor, manual),
                                    name=f"comfyhub-start-{project_id}"),
                asyncio.Event(),
            )
            self._flights[project_id] = flight
            flight.task.add_done_callback(lambda _t, pid=project_id, f=flight: self._forget(pid, f))
        return flight

    def _forget(self, project_id: int, flight: _Flight) -> None:
        if self._flights.get(project_id) is flight:
            del self._flights[project_id]

    async def _answers(self, record: ComfyUIService) -> bool:
        """Our process is alive and answers /system_stats with our own argv."""
        handle = self._handle(record)
        if handle is None or self.launcher.poll(handle) is not None:
            return False
        return await self.health.is_ours(handle.host, handle.port, record.base_dir)

    async def _start_flight(self, user_id: int, project_id: int, actor: str, manual: bool) -> None:
        """One start at a time per project across all backend processes."""
        async with self.locks.hold(project_id):
            record = await self.get(project_id)
            if record is not None and record.status in WATCHED and await self._answers(record):
                # Another worker started it while this one waited for the lock.
                if record.status != S.ONLINE:
                    await self._write(record.id, record.generation, WATCHED, status=S.ONLINE, last_error="")
                    self._changed(project_id)
                return
            # Limits and the claim together, so that concurrent starts cannot both pass a limit.
            async with self._admission, self.locks.hold(ADMISSION_LOCK):
                await self._check_limits(user_id, project_id)
                generation, old = await self._claim(user_id, project_id, manual, queued=self._start_slots.locked())
            if not await self._take_start_slot(project_id, generation):
                return  # stopped while queued
            try:
                outcome, detail = await self._start(user_id, project_id, generation, old)
            finally:
                self._start_slots.release()
            await self.record_event("start", project_id, user_id, actor, outcome, detail)

    async def _check_limits(self, user_id: int, project_id: int) -> None:
        s = self.settings
        if not (s.comfyui_max_instances or s.comfyui_max_instances_per_user):
            return
        async with self.sessions() as db:
            rows = (await db.execute(
                select(ComfyUIService.user_id).where(ComfyUIService.status.in_(LIVE),
                                                     ComfyUIService.project_id != project_id)
            )).all()
        if s.comfyui_max_instances and len(rows) >= s.comfyui_max_instances:
            raise ServiceError(429, f"实例总数已达上限（COMFYUI_MAX_INSTANCES={s.comfyui_max_instances}），请稍后再试")
        mine = sum(1 for (uid,) in rows if uid == user_id)
        if s.comfyui_max_instances_per_user and mine >= s.comfyui_max_instances_per_user:
            raise ServiceError(
                429, f"您的实例数已达上限（COMFYUI_MAX_INSTANCES_PER_USER={s.comfyui_max_instances_per_user}），"
                     "请先停止其他项目的 ComfyUI")

    async def _take_start_slot(self, project_id: int, generation: int) -> bool:
        """Wait for a start slot (the record says 排队中 meanwhile); False if stopped while waiting."""
        if not self._start_slots.locked():
            await self._start_slots.acquire()
            return True
        flight = self._flights.get(project_id)
        acquire = asyncio.ensure_future(self._start_slots.acquire())
        stopped = asyncio.ensure_future(flight.stop_requested.wait()) if flight else asyncio.Future()
        try:
            await asyncio.wait({acquire, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if acquire.done() and not acquire.cancelled():
            if flight is not None and flight.stop_requested.is_set():
                self._start_slots.release()
                return False
            await self._write_any(project_id, generation, status_detail="启动中")
            return True
        acquire.cancel()
        return False

    async def _start(self, user_id: int, project_id: int, generation: int, old: Handle | None) -> tuple[str, str]:
        """Run one claimed start to its end; returns (outcome, detail) for the audit trail."""
        deadline = time.monotonic() + self.settings.comfyui_startup_timeout_seconds
        handle: Handle | None = None
        log_path = None
        try:
            if old is not None:
                await self.launcher.stop(old, self.settings.comfyui_stop_grace_seconds)
            base_dir = await asyncio.to_thread(instances.prepare_instance_dir, self.settings, user_id, project_id)
            tried: set[int] = set()
            for _attempt in range(MAX_BIND_ATTEMPTS):
                port = await self._reserve_port(project_id, generation, tried)
                if port is None:
                    return await self._fail(project_id, generation, NO_FREE_PORT)
                tried.add(port)
                spawned_at = time.monotonic()
                try:
                    handle, log_path = await self._spawn(user_id, project_id, generation, port, base_dir, deadline)
                except PortInUse as exc:
                    log.info("project %s: %s, trying another", project_id, exc)
                    continue
                except _StopRequested:
                    return "cancelled", "启动中被停止"
                if handle is None:
                    return "overtaken", "启动已被其他操作取代"
                outcome = await self._wait_ready(handle, str(base_dir), deadline, project_id)
                if outcome == "ready":
                    if not await self._write_online(project_id, generation):
                        await self.launcher.stop(handle, self.settings.comfyui_stop_grace_seconds)
                        return "overtaken", "启动已被其他操作取代"
                    self.metrics.start_seconds.observe(time.monotonic() - spawned_at)
                    log.info("project %s: online on port %s (pid %s)", project_id, port, handle.pid)
                    return "online", f"端口 {port}，pid {handle.pid}"
                if outcome == "stop":
                    await self.launcher.stop(handle, self.settings.comfyui_stop_grace_seconds)
                    return "cancelled", "启动中被停止"
                if outcome == "timeout":
                    await self.launcher.stop(handle, 2.0)
                    limit = int(self.settings.comfyui_startup_timeout_seconds)
                    return await self._fail(project_id, generation, f"启动超时（{limit} 秒内未就绪）", log_path)
                last_words = await asyncio.to_thread(instances.tail, log_path, LOG_TAIL_LINES)
                if lost_bind_race(last_words):
                    log.warning("project %s: port %s was taken during start, retrying", project_id, port)
                    continue
                return await self._fail(project_id, generation, f"ComfyUI 启动失败（{outcome.reason}）", log_path)
            return await self._fail(project_id, generation, "端口反复被占用，启动失败", log_path)
        except LaunchError as exc:
            return await self._fail(project_id, generation, str(exc))
        except OSError as exc:
            return await self._fail(project_id, generation, f"无法准备实例目录：{exc.strerror}")
        except asyncio.CancelledError:
            raise  # backend shutting down: the record keeps the pid; start-up reconciles it
        except Exception:
            log.exception("project %s: start failed unexpectedly", project_id)
            if handle is not None:
                await self.launcher.stop(handle, 2.0)
            return await self._fail(project_id, generation, "内部错误，启动失败")

    async def _claim(self, user_id: int, project_id: int, manual: bool, queued: bool) -> tuple[int, Handle | None]:
        """Mark the record `starting` under a new generation; return it and the old process."""
        async with self.sessions() as db:
            record = await self._load(db, project_id)
            if record is None:
                record = ComfyUIService(user_id=user_id, project_id=project_id, generation=0,
                                        launcher=self.launcher.name)
                db.add(record)
            old = self._handle(record)
            record.generation += 1
            record.status = S.STARTING
            record.status_detail = QUEUED if queued else "启动中"
            record.gpu = ""
            if manual:  # a user's own click starts the automatic-restart count afresh
                record.restart_attempts, record.next_restart_at = 0, None
            record.last_error = ""
            record.stopped_reason = ""
            record.port = None
            record.pid = None
            record.start_time = utcnow()
            record.last_activity = utcnow()
            record.launcher = self.launcher.name
            await db.commit()
        self._changed(project_id)
        return record.generation, old

    async def _reserve_port(self, project_id: int, generation: int, tried: set[int]) -> int | None:
        async with self._port_lock:
            async with self.sessions() as db:
                rows = await db.execute(
                    select(ComfyUIService.port).where(
                        ComfyUIService.status.in_(LIVE), ComfyUIService.port.is_not(None),
                        ComfyUIService.project_id != project_id,
                    )
                )
                taken = {p for (p,) in rows}
            for port in candidate_ports(self.settings.port_range, taken, tried):
                if not port_is_free(self.settings.comfyui_listen, port):
                    tried.add(port)  # a foreign listener: skip it for this start
                    continue
                try:
                    if await self._write_any(project_id, generation, port=port):
                        return port
                    return None
                except IntegrityError:
                    tried.add(port)  # another backend process recorded it first
            return None

    async def _spawn(self, user_id, project_id, generation, port, base_dir, deadline) -> tuple[Handle | None, Any]:
        s = self.settings
        extra = list(s.extra_args)
        env = {"PYTHONUNBUFFERED": "1"}
        if self.launcher.assigns_gpus:
            gpu, cpu_only = None, s.comfyui_gpus_per_instance == 0
        else:
            gpu = await self._pick_gpu()
            cpu_only = gpu is None
            if gpu is not None:
                env["CUDA_VISIBLE_DEVICES"] = gpu
        if cpu_only and "--cpu" not in extra:
            extra.append("--cpu")  # no GPU for it: ComfyUI would fail looking for CUDA
        argv = comfyui_argv(s.comfyui_python, s.comfyui_listen, port, base_dir, extra)
        log_path = instances.log_path(s, user_id, project_id, port)
        try:
            await asyncio.to_thread(instances.mark_start, log_path, port, argv)
        except OSError as exc:
            raise LaunchError(f"无法写入日志目录：{exc.strerror}") from None
        spec = LaunchSpec(argv=argv, cwd=s.comfyui_repo_path, env=env, log_path=log_path,
                          port=port, base_dir=base_dir, name=instance_name(user_id, project_id))
        # Spawning and recording belong together: once spawned, the pid must reach the
        # record even if this task is cancelled, or the process would be an orphan.
        work = asyncio.ensure_future(
            self._spawn_and_record(spec, project_id, generation, log_path, gpu or "", deadline))
        try:
            handle = await asyncio.shield(work)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await work
            raise
        return handle, log_path

    async def _spawn_and_record(self, spec: LaunchSpec, project_id: int, generation: int, log_path,
                                gpu: str, deadline: float) -> Handle | None:
        handle = await self._launch(spec, project_id, generation, deadline)
        if self.launcher.assigns_gpus:  # on a cluster the GPU id alone is ambiguous: say which node
            gpu = f"{handle.gpu} @ {handle.host}" if handle.gpu else ""
        recorded = await self._write_any(
            project_id, generation, pid=handle.pid, launcher_state=handle.state(), log_path=str(log_path),
            base_dir=str(spec.base_dir), host=handle.host, comfy_url=self.comfy_url(project_id), gpu=gpu,
        )
        if not recorded:
            await self.launcher.stop(handle, self.settings.comfyui_stop_grace_seconds)
            return None
        return handle

    async def _launch(self, spec: LaunchSpec, project_id: int, generation: int, deadline: float) -> Handle:
        """launcher.start, given up at the start deadline, on a stop or at backend shutdown.

        Only a launcher that waits for resources (Ray, for a free GPU) takes long here;
        while it waits the record says why (排队中).
        """
        waiting = ""

        async def on_wait(reason: str) -> None:
            nonlocal waiting
            waiting = reason
            await self._write_any(project_id, generation, status_detail=reason)

        flight = self._flights.get(project_id)
        start = asyncio.ensure_future(self.launcher.start(spec, on_wait=on_wait))
        interrupts = [asyncio.ensure_future(self._closing.wait())]
        if flight is not None:
            interrupts.append(asyncio.ensure_future(flight.stop_requested.wait()))
        try:
            await asyncio.wait({start, *interrupts}, timeout=max(0.0, deadline - time.monotonic()),
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in interrupts:
                waiter.cancel()
        if start.done():
            return start.result()
        start.cancel()  # the launcher leaves nothing running
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await start
        if self._closing.is_set():
            raise asyncio.CancelledError
        if flight is not None and flight.stop_requested.is_set():
            raise _StopRequested
        limit = int(self.settings.comfyui_startup_timeout_seconds)
        raise LaunchError(f"启动超时（{limit} 秒内{'仍在' + waiting if waiting else '进程未能启动'}）")

    async def _pick_gpu(self) -> str | None:
        if self.settings.comfyui_gpus == "none":
            return None
        async with self.sessions() as db:
            rows = (await db.execute(
                select(ComfyUIService.gpu).where(ComfyUIService.status.in_(LIVE), ComfyUIService.gpu != "")
            )).all()
        per_gpu: dict[str, int] = {}
        for (gpu,) in rows:
            per_gpu[gpu] = per_gpu.get(gpu, 0) + 1
        return await asyncio.to_thread(self.gpus.pick, per_gpu)

    async def _wait_ready(self, handle: Handle, base_dir: str, deadline: float, project_id: int):
        """'ready', 'timeout', 'stop' (a stop was asked for) or the child's Exit."""
        flight = self._flights.get(project_id)
        check_timeout = min(self.settings.comfyui_health_timeout_seconds, 1.0)
        while True:
            exit_info = self.launcher.poll(handle)
            if exit_info is not None:
                return exit_info
            if flight is not None and flight.stop_requested.is_set():
                return "stop"
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout"
            if await self.health.is_ours(handle.host, handle.port, base_dir, timeout=min(check_timeout, left)):
                return "ready"
            await asyncio.sleep(min(READY_POLL_SECONDS, max(0.0, deadline - time.monotonic())))

    async def _write_online(self, project_id: int, generation: int) -> bool:
        now = utcnow()
        return await self._write_any(
            project_id, generation, status=S.ONLINE, status_detail="", last_heartbeat=now, last_activity=now,
        )

    async def _fail(self, project_id: int, generation: int, reason: str, log_path=None) -> tuple[str, str]:
        detail = reason
        if log_path:
            last = await asyncio.to_thread(instances.tail, log_path, LOG_TAIL_LINES)
            if last:
                detail = f"{reason}\n--- 日志最后 {LOG_TAIL_LINES} 行 ---\n{last}"
        log.warning("project %s: start failed: %s", project_id, reason)
        if log_path:
            await asyncio.to_thread(instances.mark_event, log_path, f"start failed: {reason}")
        await self._write_any(project_id, generation, status=S.FAILED, status_detail="", last_error=detail)
        self.metrics.start_failures.labels(failure_reason(reason)).inc()
        return "failed", reason

    # --- stop ---------------------------------------------------------------------------

    async def stop(self, project_id: int, reason: str = "用户停止", actor: str = "system") -> ComfyUIService | None:
        """Stop the project's instance (waiting for the process to end). Files are kept."""
        flight = self._flights.get(project_id)
        if flight is not None:
            flight.stop_requested.set()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.shield(flight.task)
        async with self.sessions() as db:
            record = await self._load(db, project_id)
            if record is None:
                return None
            old = self._handle(record)
            record.generation += 1
            record.status = S.STOPPED
            record.status_detail = ""
            record.stopped_reason = reason
            record.pid = None
            record.launcher_state = None
            record.next_restart_at = None
            await db.commit()
        self._changed(project_id)
        if old is not None:
            await self.launcher.stop(old, self.settings.comfyui_stop_grace_seconds)
            await asyncio.to_thread(instances.mark_event, record.log_path, f"stopped ({reason})")
            log.info("project %s: stopped (%s)", project_id, reason)
        await self.record_event("cull" if reason == IDLE_REASON else "stop", project_id, record.user_id, actor,
                                "stopped", reason)
        return record

    async def stop_all(self, reason: str) -> None:
        async with self.sessions() as db:
            ids = [p for (p,) in await db.execute(
                select(ComfyUIService.project_id).where(ComfyUIService.status.in_((*LIVE, S.OFFLINE))))]
        await asyncio.gather(*(self.stop(pid, reason) for pid in ids))

    # --- heartbeat ----------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        """Sweep every interval while holding the lease; reconcile on taking it."""
        while True:
            try:
                if await self.lease.acquire_or_renew():
                    if not self._leading:
                        log.info("heartbeat: this process leads (%s); reconciling", self.lease.holder)
                        self._leading = True
                        await self.reconcile()
                    else:
                        await self.heartbeat_once()
                elif self._leading:
                    log.warning("heartbeat: lease lost to another process")
                    self._leading = False
            except Exception:  # noqa: BLE001 — a failed sweep (database away...) must not end the loop
                log.exception("heartbeat sweep failed; retrying next interval")
            await asyncio.sleep(self.settings.comfyui_heartbeat_interval_seconds)

    async def reconcile(self) -> None:
        """Make the records match reality after a backend (re)start (invariant 5).

        Running instances that are provably ours are adopted as they are; dead ones
        become offline; starts abandoned by a crashed backend are resolved; processes
        started for an instance folder but missing from their record are recorded
        (or stopped, when the record already has a live process).
        """
        await self._adopt_orphans()
        await self.heartbeat_once()

    async def heartbeat_once(self) -> dict[str, int]:
        """Check every watched instance concurrently; mark it online or offline.

        Each check is bounded by COMFYUI_HEALTH_TIMEOUT_SECONDS, so one hung instance
        costs the sweep at most one timeout, whatever the number of instances. Starts
        that nobody is running any more (their backend died) are resolved too.
        """
        async with self.sessions() as db:
            records = (await db.execute(select(ComfyUIService).where(ComfyUIService.status.in_(WATCHED)))).scalars().all()
            starting = (await db.execute(select(ComfyUIService.project_id).where(ComfyUIService.status == S.STARTING))).all()
        await asyncio.gather(*(self._resolve_abandoned_start(pid) for (pid,) in starting))
        refresh = getattr(self.launcher, "refresh", None)
        if refresh is not None:
            await refresh([h for h in map(self._handle, records) if h is not None])
        results = await asyncio.gather(*(self._probe(r) for r in records))
        counts = {"online": 0, "offline": 0}
        now = utcnow()
        idle_candidates = []
        updates: list[tuple[ComfyUIService, dict]] = []
        for record, (healthy, exited, why) in zip(records, results):
            counts["online" if healthy else "offline"] += 1
            if healthy:
                values = dict(status=S.ONLINE, last_heartbeat=now, last_error="")
                if self._idle_too_long(record, now):
                    idle_candidates.append(record)
            elif record.status == S.OFFLINE and (exited is None or record.pid is None):
                continue  # already offline: keep the first, most precise reason
            else:
                self.metrics.health_failures.inc()
                values = dict(status=S.OFFLINE, last_error=why)
                if exited is not None:
                    # The process is gone: forget it, so nothing ever signals that pid again.
                    values.update(pid=None, launcher_state=None)
                    values.update(self._restart_plan(record, now))
                    await asyncio.to_thread(instances.mark_event, record.log_path, why)
                    await self.record_event("crash", record.project_id, record.user_id, "system", "offline", why)
                log.warning("project %s: offline: %s", record.project_id, why)
            updates.append((record, values))
        await self._write_many(updates)
        await asyncio.gather(*(self._cull_if_idle(r) for r in idle_candidates))
        await self._run_due_restarts(now)
        return counts

    # --- idle culling ---------------------------------------------------------------------

    def _idle_too_long(self, record: ComfyUIService, now) -> bool:
        timeout = self.settings.comfyui_idle_timeout_seconds
        if not timeout:
            return False
        last = record.last_activity or record.start_time
        return last is not None and (now - last).total_seconds() >= timeout

    async def _cull_if_idle(self, record: ComfyUIService) -> None:
        """Stop an idle instance — unless ComfyUI has queued or running work."""
        queue = await self.health.get_json(record.host or "127.0.0.1", record.port, "/queue")
        if queue is None:
            return  # cannot tell: never cull on a guess
        if queue.get("queue_running") or queue.get("queue_pending"):
            await self._write_activity(record.project_id)  # a job is activity too
            return
        log.info("project %s: idle for %ss, stopping", record.project_id, self.settings.comfyui_idle_timeout_seconds)
        self.metrics.culls.inc()
        await self.stop(record.project_id, reason=IDLE_REASON, actor="system")

    # --- automatic restarts -------------------------------------------------------------

    def _restart_plan(self, record: ComfyUIService, now) -> dict:
        """When a died instance is restarted (COMFYUI_AUTO_RESTART), or that we give up."""
        s = self.settings
        if not s.comfyui_auto_restart:
            return {}
        window_start, attempts = record.restart_window_start, record.restart_attempts or 0
        if window_start is None or (now - window_start).total_seconds() > s.comfyui_restart_window_seconds:
            window_start, attempts = now, 0
        if attempts >= s.comfyui_restart_max_failures:
            return dict(status=S.FAILED, next_restart_at=None, restart_window_start=window_start,
                        last_error=self._gave_up(attempts))
        delay = s.comfyui_restart_backoff_seconds * (2 ** attempts)
        return dict(next_restart_at=now + timedelta(seconds=delay), restart_window_start=window_start,
                    restart_attempts=attempts)

    def _gave_up(self, attempts: int) -> str:
        window = int(self.settings.comfyui_restart_window_seconds)
        return f"{window} 秒内自动重启 {attempts} 次仍失败，已放弃；请查看日志后手动打开"

    async def _run_due_restarts(self, now) -> None:
        if not self.settings.comfyui_auto_restart:
            return
        async with self.sessions() as db:
            due = (await db.execute(
                select(ComfyUIService).where(ComfyUIService.next_restart_at.is_not(None),
                                             ComfyUIService.next_restart_at <= now,
                                             ComfyUIService.status.in_((S.OFFLINE, S.FAILED)))
            )).scalars().all()
        for record in due:
            if record.project_id in self._flights:
                continue
            await self._write_any(record.project_id, record.generation, next_restart_at=None,
                                  restart_attempts=(record.restart_attempts or 0) + 1)
            self.metrics.restarts.inc()
            log.info("project %s: automatic restart %s", record.project_id, (record.restart_attempts or 0) + 1)
            flight = self._flight(record.user_id, record.project_id, "自动重启", manual=False)
            flight.task.add_done_callback(
                lambda _t, pid=record.project_id: self._spawn_background(self._after_restart(pid)))

    async def _after_restart(self, project_id: int) -> None:
        """A restart that failed is tried again later, until the limit."""
        record = await self.get(project_id)
        if record is None or record.status != S.FAILED:
            return
        plan = self._restart_plan(record, utcnow())
        if plan.get("status") == S.FAILED:
            plan["last_error"] = f"{plan['last_error']}\n{record.last_error}"
        await self._write_any(project_id, record.generation, **plan)
        self._changed(project_id)

    def _spawn_background(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- audit and metrics --------------------------------------------------------------

    async def record_event(self, action: str, project_id: int | None, user_id: int | None, actor: str,
                           outcome: str, detail: str = "") -> None:
        try:
            async with self.sessions() as db:
                db.add(Event(action=action, project_id=project_id, user_id=user_id, actor=actor[:64],
                             outcome=outcome[:32], detail=detail[:2000]))
                await db.commit()
        except Exception:  # noqa: BLE001 — the audit trail must never break the lifecycle
            log.warning("could not record event %s for project %s", action, project_id, exc_info=True)

    async def events(self, limit: int = 100) -> list[Event]:
        async with self.sessions() as db:
            return list((await db.execute(select(Event).order_by(Event.id.desc()).limit(limit))).scalars())

    async def count_by_status(self) -> dict[str, int]:
        from sqlalchemy import func

        async with self.sessions() as db:
            rows = (await db.execute(
                select(ComfyUIService.status, func.count()).group_by(ComfyUIService.status))).all()
        return {status: n for status, n in rows}

    async def _probe(self, record: ComfyUIService) -> tuple[bool, Exit | None, str]:
        """(healthy, how it exited if it did, why not healthy)."""
        handle = self._handle(record)
        if handle is None:
            return False, None, record.last_error or "没有进程记录"
        exit_info = self.launcher.poll(handle)
        if exit_info is not None:
            return False, exit_info, f"ComfyUI 已退出（{exit_info.reason}）"
        if await self.health.is_ours(handle.host, handle.port, record.base_dir):
            return True, None, ""
        return False, None, "健康检查失败：/system_stats 无响应"

    async def _resolve_abandoned_start(self, project_id: int) -> None:
        """A `starting` record whose start no process is running: finish it one way or the other."""
        if project_id in self._flights:
            return
        async with self.locks.hold(project_id, wait=False) as free:
            if not free or project_id in self._flights:
                return  # a start is in progress (here or in another worker)
            record = await self.get(project_id)
            if record is None or record.status != S.STARTING:
                return
            handle = self._handle(record)
            alive = handle is not None and self.launcher.poll(handle) is None
            if alive and await self.health.is_ours(handle.host, handle.port, record.base_dir):
                log.info("project %s: adopted an instance whose start outlived its backend", project_id)
                await self._write_online(project_id, record.generation)
                return
            if alive:
                await self.launcher.stop(handle, self.settings.comfyui_stop_grace_seconds)
            await self._write_any(project_id, record.generation, status=S.FAILED, pid=None, launcher_state=None,
                                  last_error="启动被中断：后端在启动过程中退出，请重新打开")

    async def _adopt_orphans(self) -> None:
        """Processes started for an instance folder that their record does not name."""
        discover = getattr(self.launcher, "discover", None)
        if discover is None:
            return
        for handle in await asyncio.to_thread(discover, self.settings.comfyui_instance_base_dir):
            project_id = _project_of(handle, self.settings.comfyui_instance_base_dir)
            if project_id is None or project_id in self._flights:
                continue
            async with self.locks.hold(project_id, wait=False) as free:
                if free:
                    await self._adopt_one(project_id, handle)

    async def _adopt_one(self, project_id: int, handle: Handle) -> None:
        record = await self.get(project_id)
        recorded = self._handle(record) if record is not None else None
        if recorded is not None and recorded.same_process(handle):
            return  # not an orphan
        recorded_alive = recorded is not None and self.launcher.poll(recorded) is None
        base_dir = argv_value(handle.cmdline, "--base-directory")
        if record is None or recorded_alive or not await self.health.is_ours(handle.host, handle.port, base_dir):
            # A duplicate, an instance of a deleted project, or one that does not answer: stop it.
            log.warning("project %s: stopping unrecorded instance pid %s", project_id, handle.pid)
            await self.launcher.stop(handle, self.settings.comfyui_stop_grace_seconds)
            return
        log.info("project %s: recording running instance pid %s found without a record", project_id, handle.pid)
        try:
            await self._write_any(
                project_id, record.generation, status=S.ONLINE, status_detail="", pid=handle.pid,
                launcher_state=handle.state(), port=handle.port, host=handle.host, base_dir=base_dir,
                comfy_url=self.comfy_url(project_id), last_heartbeat=utcnow(), last_error="",
                log_path=str(instances.log_path(self.settings, record.user_id, project_id, handle.port)),
            )
        except IntegrityError:
            await self.launcher.stop(handle, self.settings.comfyui_stop_grace_seconds)

    # --- reading ------------------------------------------------------------------------

    async def get(self, project_id: int) -> ComfyUIService | None:
        async with self.sessions() as db:
            return await self._load(db, project_id)

    async def log_tail(self, record: ComfyUIService, lines: int) -> str:
        if not record.log_path:
            return ""
        return await asyncio.to_thread(instances.tail, record.log_path, lines)

    def comfy_url(self, project_id: int) -> str:
        """Where the browser opens the instance: through the authenticated proxy."""
        return f"/comfy/{project_id}/"

    # --- activity -----------------------------------------------------------------------

    def touch(self, project_id: int) -> None:
        """Note proxied traffic for the idle culler; cheap enough to call per request."""
        now = time.monotonic()
        if now - self._touched.get(project_id, -ACTIVITY_WRITE_SECONDS) < ACTIVITY_WRITE_SECONDS:
            return
        self._touched[project_id] = now
        self._spawn_background(self._write_activity(project_id))

    async def _write_activity(self, project_id: int) -> None:
        try:
            async with self.sessions() as db:
                await db.execute(
                    update(ComfyUIService).where(ComfyUIService.project_id == project_id).values(last_activity=utcnow())
                )
                await db.commit()
        except Exception:  # noqa: BLE001 — activity is best effort; the next request retries
            log.warning("could not record activity of project %s", project_id, exc_info=True)
            self._touched.pop(project_id, None)

    def _changed(self, project_id: int) -> None:
        for listener in self.listeners:
            listener(project_id)

    # --- record helpers -----------------------------------------------------------------

    def _handle(self, record: ComfyUIService) -> Handle | None:
        if not record.launcher_state:
            return None
        try:
            return self.launcher.restore(record.launcher_state)
        except (KeyError, TypeError, ValueError):
            return None

    @staticmethod
    async def _load(db: AsyncSession, project_id: int) -> ComfyUIService | None:
        return (
            await db.execute(select(ComfyUIService).where(ComfyUIService.project_id == project_id))
        ).scalar_one_or_none()

    async def _write_any(self, project_id: int, generation: int, **values) -> bool:
        """Update the record if it is still at `generation`; False when overtaken."""
        async with self.sessions() as db:
            result = await db.execute(
                update(ComfyUIService)
                .where(ComfyUIService.project_id == project_id, ComfyUIService.generation == generation)
                .values(updated_at=utcnow(), **values)
            )
            await db.commit()
        self._changed(project_id)
        return result.rowcount == 1

    async def _write_many(self, updates: list[tuple[ComfyUIService, dict]]) -> None:
        """A sweep's results in one transaction, each still conditional on what was seen."""
        if not updates:
            return
        async with self.sessions() as db:
            for record, values in updates:
                await db.execute(
                    update(ComfyUIService)
                    .where(ComfyUIService.id == record.id, ComfyUIService.generation == record.generation,
                           ComfyUIService.status.in_(WATCHED))
                    .values(updated_at=utcnow(), **values)
                )
            await db.commit()
        for record, _values in updates:
            self._changed(record.project_id)

    async def _write(self, record_id: int, generation: int, statuses, **values) -> bool:
        """Update only if generation and status are still what the caller saw."""
        async with self.sessions() as db:
            result = await db.execute(
                update(ComfyUIService)
                .where(ComfyUIService.id == record_id, ComfyUIService.generation == generation,
                       ComfyUIService.status.in_(statuses))
                .values(updated_at=utcnow(), **values)
            )
            await db.commit()
            return result.rowcount == 1
