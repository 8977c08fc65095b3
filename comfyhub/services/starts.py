"""Starting an instance: single flight, claim, port, spawn, readiness, failure.

- One start per project: concurrent opens in this process join one in-flight start
  (a `Flight`); across backend processes a per-project lock serialises them, and the
  start re-checks the record once it holds it (invariant 1).
- The claim bumps the record's generation; everything the start writes afterwards is
  conditional on it, so a start that was overtaken (stopped, restarted elsewhere)
  changes nothing and stops its own process (invariant 1).
- Ports: chosen under a lock among ports no live record holds and nobody listens on;
  a partial unique index on live ports backs this up across processes; a child that
  lost the bind race is retried on the next port (invariant 3).
- Every start ends in `online` or `failed` by COMFYUI_STARTUP_TIMEOUT_SECONDS; a child
  that exits early fails at once with its exit and its log tail (invariant 4).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comfyhub.config import Settings
from comfyhub.launchers import Exit, Handle, Launcher, LaunchError, LaunchSpec, PortInUse
from comfyhub.launchers.base import comfyui_argv
from comfyhub.metrics import Metrics
from comfyhub.models import ComfyUIService, ServiceStatus, utcnow
from comfyhub.net.endpoint import new_secret
from comfyhub.reasons import NOT_READY, NOT_SPAWNED, Reason, words
from comfyhub.services import instances
from comfyhub.services.admission import STARTING, Admission
from comfyhub.services.audit import Audit
from comfyhub.services.coordination import ProjectLocks
from comfyhub.services.gpus import GpuPicker
from comfyhub.services.liveness import Liveness
from comfyhub.services.records import WATCHED, Records
from comfyhub.services.spawning import (
    LOG_TAIL_LINES,
    comfy_url,
    instance_name,
    launch_options,
    lost_bind_race,
    reserve_port,
)
from comfyhub.services.tasks import uncancellable

log = logging.getLogger("comfyhub.starts")

MAX_BIND_ATTEMPTS = 5
# Polling while a start waits: a refused connection costs ~0.1 ms, so polling often is
# cheap and keeps the added start latency small (1 s polling cost ~0.6 s per start).
READY_POLL_SECONDS = 0.01


_DONE: Any = object()  # _warm_start: the start is over


class _StopRequested(Exception):
    """A stop arrived while the launcher was still starting the process."""


@dataclass
class Flight:
    """The one start of a project running in this process; every open joins it."""

    task: asyncio.Task
    stop_requested: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class _Outcome:
    """How a start ended, for the audit trail."""

    outcome: str  # online, failed, cancelled, overtaken
    detail: str


@dataclass(eq=False)
class Starts:
    settings: Settings
    records: Records
    launcher: Launcher
    liveness: Liveness
    admission: Admission
    locks: ProjectLocks
    audit: Audit
    metrics: Metrics
    gpus: GpuPicker
    closing: asyncio.Event  # set at backend shutdown: starts waiting for resources give up
    flights: dict[int, Flight] = field(default_factory=dict, init=False)
    _port_lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)
    # The warm pool (pool.py), set by the manager: a start takes a warm instance first.
    pool: Any = field(default=None, init=False)

    # --- flights ---------------------------------------------------------------------------

    def flight(self, user_id: int, project_id: int, actor: str, manual: bool) -> Flight:
        """Join the project's start in this process, or begin one.

        `manual`: a person asked (their click resets the automatic-restart count).
        """
        flight = self.flights.get(project_id)
        if flight is None:
            task = asyncio.create_task(
                self._run(user_id, project_id, actor, manual), name=f"comfyhub-start-{project_id}"
            )
            flight = self.flights[project_id] = Flight(task)
            task.add_done_callback(lambda _t, f=flight: self._forget(project_id, f))
        return flight

    def _forget(self, project_id: int, flight: Flight) -> None:
        if self.flights.get(project_id) is flight:
            del self.flights[project_id]

    async def interrupt(self, project_id: int) -> None:
        """Ask the project's running start (if any) to give up, and wait until it has."""
        flight = self.flights.get(project_id)
        if flight is not None:
            flight.stop_requested.set()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.shield(flight.task)

    async def cancel_all(self) -> None:
        """Backend shutdown: cancel every start; the records keep their pids for reconcile."""
        flights = list(self.flights.values())
        for flight in flights:
            flight.task.cancel()
        await asyncio.gather(*(f.task for f in flights), return_exceptions=True)

    # --- one start -------------------------------------------------------------------------

    async def _run(self, user_id: int, project_id: int, actor: str, manual: bool) -> None:
        """One start at a time per project across all backend processes."""
        async with self.locks.hold(project_id):
            record = await self.records.get(project_id)
            if record is not None and record.status in WATCHED and await self.liveness.answers(record):
                # Another worker started it while this one waited for the lock.
                await self.records.update_seen(record, WATCHED, status=ServiceStatus.ONLINE, last_error="", reason="")
                return
            # Limits and the claim together, so that concurrent starts cannot both pass a
            # limit; a warm instance is taken in the same turn (it adds no instance), or,
            # when only warm ones fill COMFYUI_MAX_INSTANCES, one is evicted for this start.
            taken = evicted = None
            async with self.admission.exclusive():
                crowded = await self.admission.check_limits(user_id, project_id)
                generation, old_state = await self.records.claim(
                    user_id, project_id, self.launcher.name, manual, self.admission.start_detail()
                )
                if self.pool is not None:
                    taken = await self.pool.take(project_id, generation)
                    if taken is None and crowded:
                        evicted = await self.pool.evict()
            if evicted is not None:
                await self.pool.stop(evicted)
            old_state = await self._warm_start(taken, old_state, actor)
            if old_state is _DONE:
                return
            flight = self.flights[project_id]
            got, waited = await self.admission.take_slot(flight.stop_requested)
            if not got:
                return  # stopped while queued
            try:
                if waited:
                    await self.records.update(project_id, generation, status_detail=STARTING)
                old = self.liveness.handle_of(old_state)
                result = await self._start(user_id, project_id, generation, old)
            finally:
                self.admission.release_slot()
            await self.audit.record("start", project_id, user_id, actor, result.outcome, result.detail)

    async def _warm_start(self, taken: ComfyUIService | None, old_state: dict | None, actor: str):
        """Bind a taken warm instance to its project and record it online: _DONE; or, when
        there was none or it could not be bound (then it is stopped), the launcher state
        the cold start has to stop first."""
        if taken is None:
            return old_state
        old = self.liveness.handle_of(old_state)
        if old is not None:
            await self.launcher.stop(old, self.settings.comfyui_stop_grace_seconds)
        project_id, generation = taken.project_id, taken.generation
        if await self.pool.bind_taken(taken):
            if await self._write_online(project_id, generation):
                log.info("project %s: took warm instance on port %s (pid %s)", project_id, taken.port, taken.pid)
                await self.audit.record(
                    "start", project_id, taken.user_id, actor, "online", f"预热实例，端口 {taken.port}，pid {taken.pid}"
                )
            else:
                await self.pool.stop(self.liveness.handle(taken))
            return _DONE
        log.warning("project %s: the warm instance could not be bound; starting one", project_id)
        return None  # bind_taken stopped it

    async def _start(self, user_id: int, project_id: int, generation: int, old: Handle | None) -> _Outcome:
        """Run one claimed start to its end."""
        deadline = time.monotonic() + self.settings.comfyui_startup_timeout_seconds
        grace = self.settings.comfyui_stop_grace_seconds
        handle: Handle | None = None
        log_path = None
        try:
            if old is not None:
                await self.launcher.stop(old, grace)
            base_dir = await asyncio.to_thread(instances.prepare_instance_dir, self.settings, user_id, project_id)
            tried: set[int] = set()
            for _attempt in range(MAX_BIND_ATTEMPTS):
                port = await self._reserve_port(project_id, generation, tried)
                if port is None:
                    return await self._fail(project_id, generation, Reason.NO_PORT)
                tried.add(port)
                spawned_at = time.monotonic()
                try:
                    handle, log_path = await self._spawn(user_id, project_id, generation, port, base_dir, deadline)
                except PortInUse as exc:
                    log.info("project %s: %s, trying another", project_id, exc)
                    continue
                except _StopRequested:
                    return _Outcome("cancelled", "启动中被停止")
                if handle is None:
                    return _Outcome("overtaken", "启动已被其他操作取代")
                ready = await self._wait_ready(handle, str(base_dir), deadline, project_id)
                if ready == "ready":
                    if not await self._write_online(project_id, generation):
                        await self.launcher.stop(handle, grace)
                        return _Outcome("overtaken", "启动已被其他操作取代")
                    self.metrics.start_seconds.observe(time.monotonic() - spawned_at)
                    log.info("project %s: online on port %s (pid %s)", project_id, port, handle.pid)
                    return _Outcome("online", f"端口 {port}，pid {handle.pid}")
                if ready == "stop":
                    await self.launcher.stop(handle, grace)
                    return _Outcome("cancelled", "启动中被停止")
                if ready == "timeout":
                    await self.launcher.stop(handle, 2.0)
                    return await self._fail(project_id, generation, Reason.START_TIMEOUT, log_path, what=NOT_READY)
                last_words = await asyncio.to_thread(instances.tail, log_path, LOG_TAIL_LINES)
                if lost_bind_race(last_words):
                    log.warning("project %s: port %s was taken during start, retrying", project_id, port)
                    continue
                return await self._fail(project_id, generation, Reason.EXITED, log_path, exit=ready.reason)
            return await self._fail(project_id, generation, Reason.PORT_CONTESTED, log_path)
        except LaunchError as exc:
            return await self._fail(project_id, generation, exc.reason, said=str(exc))
        except OSError as exc:
            return await self._fail(project_id, generation, Reason.INSTANCE_DIR, detail=exc.strerror)
        except asyncio.CancelledError:
            raise  # backend shutting down: the record keeps the pid; reconcile resolves it
        except Exception:
            log.exception("project %s: start failed unexpectedly", project_id)
            if handle is not None:
                await self.launcher.stop(handle, 2.0)
            return await self._fail(project_id, generation, Reason.INTERNAL)

    async def _reserve_port(self, project_id: int, generation: int, tried: set[int]) -> int | None:
        """Record a free port for this start; None when the range has none (or overtaken)."""
        async with self._port_lock:
            taken = await self.records.live_ports(except_project=project_id)
            return await reserve_port(
                self.settings, taken, tried, lambda port: self.records.update(project_id, generation, port=port)
            )

    async def _spawn(
        self, user_id: int, project_id: int, generation: int, port: int, base_dir: Path, deadline: float
    ) -> tuple[Handle | None, Path]:
        """Spawn the process and record it; (None, log) when the start was overtaken meanwhile."""
        s = self.settings
        gpu, env, extra = await launch_options(s, self.launcher, self._pick_gpu)
        argv = comfyui_argv(s.comfyui_python, s.comfyui_listen, port, base_dir, extra)
        log_path = instances.log_path(s, user_id, project_id, port)
        try:
            await asyncio.to_thread(instances.mark_start, log_path, port, argv)
        except OSError as exc:
            raise LaunchError(f"无法写入日志目录：{exc.strerror}", Reason.LOG_DIR) from None
        spec = LaunchSpec(
            argv=argv,
            cwd=s.comfyui_repo_path,
            env=env,
            log_path=log_path,
            port=port,
            base_dir=base_dir,
            name=instance_name(user_id, project_id),
            secret=new_secret(),  # per start: kept in launcher_state, proved by the instance's answers
        )
        # Spawning and recording belong together: once spawned, the pid must reach the
        # record even if this task is cancelled, or the process would be an orphan.
        handle = await uncancellable(self._spawn_and_record(spec, project_id, generation, gpu or "", deadline))
        return handle, log_path

    async def _spawn_and_record(
        self, spec: LaunchSpec, project_id: int, generation: int, gpu: str, deadline: float
    ) -> Handle | None:
        handle = await self._launch(spec, project_id, generation, deadline)
        if self.launcher.assigns_gpus:  # on a cluster the GPU id alone is ambiguous: say which node
            gpu = f"{handle.gpu} @ {handle.host}" if handle.gpu else ""
        recorded = await self.records.update(
            project_id,
            generation,
            pid=handle.pid,
            launcher_state=handle.state(),
            log_path=str(spec.log_path),
            base_dir=str(spec.base_dir),
            host=handle.host,
            comfy_url=comfy_url(project_id),
            gpu=gpu,
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
            await self.records.update(project_id, generation, status_detail=reason)

        flight = self.flights.get(project_id)
        start = asyncio.ensure_future(self.launcher.start(spec, on_wait=on_wait))
        interrupts = [asyncio.ensure_future(self.closing.wait())]
        if flight is not None:
            interrupts.append(asyncio.ensure_future(flight.stop_requested.wait()))
        try:
            await asyncio.wait(
                {start, *interrupts}, timeout=max(0.0, deadline - time.monotonic()), return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in interrupts:
                waiter.cancel()
        if start.done():
            return start.result()
        start.cancel()  # the launcher leaves nothing running
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await start
        if self.closing.is_set():
            raise asyncio.CancelledError
        if flight is not None and flight.stop_requested.is_set():
            raise _StopRequested
        what = f"仍在{waiting}" if waiting else NOT_SPAWNED
        raise LaunchError(words(Reason.START_TIMEOUT, limit=self._limit(), what=what), Reason.START_TIMEOUT)

    async def _pick_gpu(self) -> str | None:
        if self.settings.comfyui_gpus == "none":
            return None
        per_gpu: dict[str, int] = {}
        for gpu in await self.records.live_gpus():
            per_gpu[gpu] = per_gpu.get(gpu, 0) + 1
        return await asyncio.to_thread(self.gpus.pick, per_gpu)

    async def _wait_ready(self, handle: Handle, base_dir: str, deadline: float, project_id: int) -> str | Exit:
        """'ready', 'timeout', 'stop' (a stop was asked for) or the child's Exit."""
        flight = self.flights.get(project_id)
        check_timeout = min(self.settings.comfyui_health_timeout_seconds, 1.0)
        health = self.liveness.health
        while True:
            exit_info = self.launcher.poll(handle)
            if exit_info is not None:
                return exit_info
            if flight is not None and flight.stop_requested.is_set():
                return "stop"
            left = deadline - time.monotonic()
            if left <= 0:
                return "timeout"
            if await health.is_ours(handle.endpoint, base_dir, timeout=min(check_timeout, left)):
                return "ready"
            await asyncio.sleep(min(READY_POLL_SECONDS, max(0.0, deadline - time.monotonic())))

    async def _write_online(self, project_id: int, generation: int) -> bool:
        now = utcnow()
        written = await self.records.update(
            project_id,
            generation,
            status=ServiceStatus.ONLINE,
            status_detail="",
            comfy_url=comfy_url(project_id),  # a cold start wrote it at spawn, a warm one takes it here
            last_heartbeat=now,
            last_activity=now,
        )
        if written:
            self.liveness.confirm(project_id, generation)  # it answered just now
        return written

    async def _fail(
        self, project_id: int, generation: int, reason: Reason, log_path: Path | None = None, said: str = "", **params
    ) -> _Outcome:
        """Record the failure: its reason, its words (`said`, or made from `params`) and the
        log's last lines."""
        if reason == Reason.START_TIMEOUT:
            params.setdefault("limit", self._limit())
        said = said or words(reason, **params)
        detail = said
        if log_path:
            last = await asyncio.to_thread(instances.tail, log_path, LOG_TAIL_LINES)
            if last:
                detail = f"{said}\n--- 日志最后 {LOG_TAIL_LINES} 行 ---\n{last}"
            await asyncio.to_thread(instances.mark_event, log_path, f"start failed: {said}")
        log.warning("project %s: start failed: %s", project_id, said)
        await self.records.update(
            project_id, generation, status=ServiceStatus.FAILED, status_detail="", last_error=detail, reason=reason
        )
        self.metrics.start_failures.labels(reason.value).inc()
        return _Outcome("failed", said)

    def _limit(self) -> int:
        return int(self.settings.comfyui_startup_timeout_seconds)
