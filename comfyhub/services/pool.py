"""The warm pool: ComfyUIs started, healthy and belonging to no one, each taken by the
next project opened (COMFYUI_WARM_POOL_SIZE).

A warm instance is a row of `comfyui_services` without a project (records.py), so the
live-port index covers it like any other instance (invariant 3). It runs in its own
folder, COMFYUI_INSTANCE_BASE_DIR/pool/w{port}, with the shared custom_nodes/ and
models/ linked in as for a project, and logs to `comfy_pool_{port}_{tag}.log`, a file
of its own: a project that claims it shows that log (its record's `log_path`).

- Refills: only the heartbeat lease holder starts warm instances (`run` follows
  `leading`), one at a time, and only when a start slot is free at once: a refill never
  queues ahead of a user (the start cap, 排队中, serves users first). Counting and adding
  a row happen under the admission lock, across workers, so the pool never over-fills,
  and never past COMFYUI_MAX_INSTANCES. A refill that fails backs off, doubling up to
  MAX_BACKOFF_SECONDS, so a broken ComfyUI is not restarted in a loop.
- Claims (`take`, from starts.py): the open of a project without a live instance deletes
  a warm online row and gives its process and port to the project's record in one
  transaction (records.take_warm): of two opens, one takes it. Then the instance is
  bound (`bind`): its output/input/temp/user folders become the project's, so files land
  where a cold start puts them. A warm instance is bound once and never rebound; one
  that cannot be bound is stopped, and the open falls back to a cold start.
- Room: at COMFYUI_MAX_INSTANCES, a user's start stops a warm instance (`evict`) rather
  than answer 429.
- Health: the leader checks every warm instance each TICK_SECONDS (the launcher's poll,
  and a health check every heartbeat interval); one that died, or stopped answering, is
  stopped and replaced. A warm start whose backend died is finished by the next leader:
  adopted when it answers, stopped otherwise; a process under pool/ that no row names is
  stopped (`adopt_orphans`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from comfyhub.config import Settings
from comfyhub.launchers import Handle, Launcher, LaunchError, LaunchSpec, PortInUse
from comfyhub.launchers.base import argv_value, comfyui_argv
from comfyhub.metrics import Metrics
from comfyhub.models import ComfyUIService, ServiceStatus, utcnow
from comfyhub.net.endpoint import new_secret
from comfyhub.services import instances
from comfyhub.services.admission import Admission
from comfyhub.services.binding import bind
from comfyhub.services.liveness import Liveness
from comfyhub.services.records import Records
from comfyhub.services.spawning import LOG_TAIL_LINES, launch_options, lost_bind_race, reserve_port
from comfyhub.services.tasks import uncancellable

log = logging.getLogger("comfyhub.pool")

POOL_DIR = "pool"
TICK_SECONDS = 1.0  # the leader looks at the pool this often (one small query)
MAX_BACKOFF_SECONDS = 60.0
READY_POLL_SECONDS = 0.02
GONE_CHECK_SECONDS = 0.5  # while loading, whether the row is still there (evicted?)
MAX_BIND_ATTEMPTS = 5


def pool_root(settings: Settings) -> Path:
    return settings.comfyui_instance_base_dir / POOL_DIR


def pool_dir(settings: Settings, port: int) -> Path:
    """A warm instance's folder, named by its port: no two live instances share a port,
    so no two share a folder, and the folders are as many as the ports at most."""
    return pool_root(settings) / f"w{port}"


def is_pool_dir(settings: Settings, base_dir: str | None) -> bool:
    return bool(base_dir) and Path(base_dir).parent == pool_root(settings)


def pool_log_path(settings: Settings, port: int) -> Path:
    """A new log per warm instance (a random tag: ids and ports come back), so that the
    log a project shows after claiming one holds that process's lines only."""
    return settings.comfyui_log_dir / f"comfy_pool_{port}_{secrets.token_hex(4)}.log"


def prepare_pool_dir(settings: Settings, port: int) -> Path:
    """A clean pool folder: what an earlier warm instance on this port left (its own
    ComfyUI database, temp files) is removed. Nothing of a user's is ever here: a bound
    instance writes into its project's folder."""
    base = pool_dir(settings, port)
    for sub in ("input", "output", "user", "temp"):
        shutil.rmtree(base / sub, ignore_errors=True)
    base.mkdir(parents=True, exist_ok=True)
    # The same layout and links as a project's folder (instances.py).
    instances.link_shared(settings, base)
    return base


@dataclass(eq=False)
class Pool:
    settings: Settings
    records: Records
    launcher: Launcher
    liveness: Liveness
    admission: Admission
    metrics: Metrics
    pick_gpu: Callable[[], Awaitable[str | None]]
    port_lock: asyncio.Lock
    closing: asyncio.Event
    _refill: asyncio.Task | None = field(default=None, init=False)
    _wake: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _failures: int = field(default=0, init=False)
    _retry_at: float = field(default=0.0, init=False)
    _checked_at: dict[int, float] = field(default_factory=dict, init=False)  # warm id → last health check
    _mine: set[int] = field(default_factory=set, init=False)  # warm ids this process is starting
    refills: int = field(default=0, init=False)  # warm instances this process made ready

    @property
    def size(self) -> int:
        return self.settings.comfyui_warm_pool_size if self.settings.comfyui_configured else 0

    # --- the leader's loop -------------------------------------------------------------

    async def run(self, leading: Callable[[], bool]) -> None:
        """Tend the pool every TICK_SECONDS (or when woken) while this process leads."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TICK_SECONDS):
                    await self._wake.wait()
            self._wake.clear()
            if not leading():
                continue
            try:
                await self.tend()
            except Exception:  # noqa: BLE001 — a database hiccup must not end the loop
                log.warning("warm pool: tending failed; retrying", exc_info=True)

    def wake(self) -> None:
        """Look at the pool now (a warm instance was taken)."""
        self._wake.set()

    async def tend(self) -> None:
        """Drop warm instances that died or stopped answering; start one if the pool is short."""
        for row in await self.records.warm():
            await self._check(row)
        idle = self._refill is None or self._refill.done()
        if idle and self.size and time.monotonic() >= self._retry_at:
            self._refill = asyncio.create_task(self._refill_one(), name="comfyhub-pool-refill")

    async def _check(self, row: ComfyUIService) -> None:
        if row.status == ServiceStatus.STARTING:
            if row.id not in self._mine:
                await self._resolve_abandoned(row)
            return
        handle = self.liveness.handle(row)
        now = time.monotonic()
        if self.liveness.alive(handle):
            if now - self._checked_at.get(row.id, 0.0) < self.settings.comfyui_heartbeat_interval_seconds:
                return
            if await self.liveness.health.is_ours(handle.endpoint, row.base_dir):
                self._checked_at[row.id] = now
                return
            why = "不再响应"
        else:
            why = "进程已退出"
        log.warning("warm instance %s (port %s): %s; replacing it", row.id, row.port, why)
        await asyncio.to_thread(instances.mark_event, row.log_path, f"warm instance dropped: {why}")
        await self._drop(row.id, handle, status=ServiceStatus.ONLINE)

    async def _resolve_abandoned(self, row: ComfyUIService) -> None:
        """A warm start no process runs any more (its backend died): adopt or stop it."""
        handle = self.liveness.handle(row)
        alive = self.liveness.alive(handle)
        if alive and await self.liveness.health.is_ours(handle.endpoint, row.base_dir):
            if await self.records.update_warm(row.id, status=ServiceStatus.ONLINE, last_heartbeat=utcnow()):
                log.info("warm instance %s: adopted after its start outlived its backend", row.id)
            return
        age = (utcnow() - (row.started_at or utcnow())).total_seconds()
        if (alive or row.pid is None) and age < self._start_timeout():
            return  # still loading (or still spawning in a worker that just lost the lease): wait
        await self._drop(row.id, handle, status=ServiceStatus.STARTING)

    async def _drop(self, warm_id: int, handle: Handle | None, status: str | None = None) -> None:
        """Delete a warm instance's row and stop its process (if this process deleted the row).
        Its log stays: it tells why the instance was dropped."""
        state = await self.records.drop_warm(warm_id, status)
        self._checked_at.pop(warm_id, None)
        if state is None:
            return  # taken or dropped by someone else meanwhile
        handle = handle or self.liveness.handle_of(state)
        if handle is not None:
            await self.launcher.stop(handle, self.settings.comfyui_stop_grace_seconds)

    # --- refilling ---------------------------------------------------------------------

    async def _refill_one(self) -> None:
        if not await self.admission.try_slot():
            return  # every start slot is busy: users first
        try:
            async with self.admission.exclusive():
                if not await self._short():
                    return
                warm_id = await self.records.add_warm(self.launcher.name)
            self._mine.add(warm_id)
            try:
                outcome = await self._start(warm_id)
            finally:
                self._mine.discard(warm_id)
        finally:
            self.admission.release_slot()
        if outcome == "gone":
            return  # evicted for a user meanwhile: not a failure
        if outcome == "ready":
            self._failures, self._retry_at = 0, 0.0
            self.refills += 1
            self.wake()  # maybe still short
        else:
            self._failures += 1
            delay = min(MAX_BACKOFF_SECONDS, 2.0 ** min(self._failures, 6))
            self._retry_at = time.monotonic() + delay
            log.warning("warm pool: a start failed (%s in a row); next try in %.0f s", self._failures, delay)

    async def _short(self) -> bool:
        """Whether one more warm instance fits: under the pool size and the instance limit."""
        warm = await self.records.warm_count()
        if warm >= self.size:
            return False
        limit = self.settings.comfyui_max_instances
        if limit:
            users = len(await self.records.live_owners(except_project=0))
            return users + warm < limit
        return True

    async def _start(self, warm_id: int) -> str:
        """Start one warm instance: "ready" (online), "gone" (its row was dropped meanwhile,
        to make room for a user) or "failed"; nothing is left running but a ready one."""
        deadline = time.monotonic() + self._start_timeout()
        handle: Handle | None = None
        log_path: Path | None = None
        try:
            tried: set[int] = set()
            for _attempt in range(MAX_BIND_ATTEMPTS):
                port = await self._reserve_port(warm_id, tried)
                if port is None:
                    log.info("warm pool: no free port for a warm instance")
                    break
                tried.add(port)
                try:
                    handle, log_path = await self._spawn(warm_id, port)
                except PortInUse:
                    continue
                if handle is None:
                    return "gone"  # evicted while spawning: the spawn stopped it
                ready = await self._wait_ready(handle, warm_id, deadline)
                if ready == "ready":
                    now = utcnow()
                    if await self.records.update_warm(warm_id, status=ServiceStatus.ONLINE, last_heartbeat=now):
                        self._checked_at[warm_id] = time.monotonic()
                        log.info("warm instance %s: ready on port %s (pid %s)", warm_id, port, handle.pid)
                        return "ready"
                    ready = "gone"
                if ready == "gone":
                    await self.launcher.stop(handle, self.settings.comfyui_stop_grace_seconds)
                    return "gone"
                await self.launcher.stop(handle, 2.0)
                handle = None
                last_words = await asyncio.to_thread(instances.tail, log_path, LOG_TAIL_LINES)
                if not lost_bind_race(last_words):
                    break
        except (LaunchError, OSError) as exc:
            log.warning("warm pool: could not start a warm instance: %s", exc)
        except asyncio.CancelledError:
            raise  # shutdown: the row keeps the pid; the next leader resolves it
        except Exception:
            log.exception("warm pool: a start failed unexpectedly")
            if handle is not None:
                await self.launcher.stop(handle, 2.0)
        await self._drop(warm_id, None)
        return "failed"

    async def _reserve_port(self, warm_id: int, tried: set[int]) -> int | None:
        async with self.port_lock:
            taken = await self.records.live_ports(except_project=None)
            return await reserve_port(
                self.settings, taken, tried, lambda port: self.records.update_warm(warm_id, port=port)
            )

    async def _spawn(self, warm_id: int, port: int) -> tuple[Handle | None, Path]:
        s = self.settings
        base_dir = await asyncio.to_thread(prepare_pool_dir, s, port)
        gpu, env, extra = await launch_options(s, self.launcher, self.pick_gpu)
        argv = comfyui_argv(s.comfyui_python, s.comfyui_listen, port, base_dir, extra)
        log_path = pool_log_path(s, port)
        await asyncio.to_thread(instances.mark_start, log_path, port, argv)
        spec = LaunchSpec(
            argv=argv,
            cwd=s.comfyui_repo_path,
            env=env,
            log_path=log_path,
            port=port,
            base_dir=base_dir,
            name=f"pool-w{port}",
            secret=new_secret(),  # as for any start: kept in the row, proved by every answer
        )
        # As for a project: once spawned, the pid reaches the row even if this is cancelled.
        return await uncancellable(self._spawn_and_record(spec, warm_id, gpu or "")), log_path

    async def _spawn_and_record(self, spec: LaunchSpec, warm_id: int, gpu: str) -> Handle | None:
        handle = await self.launcher.start(spec)
        if self.launcher.assigns_gpus:
            gpu = f"{handle.gpu} @ {handle.host}" if handle.gpu else ""
        recorded = await self.records.update_warm(
            warm_id,
            pid=handle.pid,
            launcher_state=handle.state(),
            log_path=str(spec.log_path),
            base_dir=str(spec.base_dir),
            host=handle.host,
            gpu=gpu,
        )
        if not recorded:  # evicted while spawning
            await self.launcher.stop(handle, self.settings.comfyui_stop_grace_seconds)
            return None
        return handle

    async def _wait_ready(self, handle: Handle, warm_id: int, deadline: float) -> str:
        """ "ready", "failed" (exited, timed out, shutdown) or "gone" (its row was dropped)."""
        base_dir = argv_value(handle.cmdline, "--base-directory") or ""
        looked = time.monotonic()
        while not self.closing.is_set():
            if self.launcher.poll(handle) is not None:
                return "failed"
            left = deadline - time.monotonic()
            if left <= 0:
                return "failed"
            if await self.liveness.health.is_ours(handle.endpoint, base_dir, timeout=min(1.0, left)):
                return "ready"
            if time.monotonic() - looked >= GONE_CHECK_SECONDS:
                looked = time.monotonic()
                if not await self.records.warm_exists(warm_id):
                    return "gone"  # a user's start dropped it to make room: stop loading now
            await asyncio.sleep(READY_POLL_SECONDS)
        return "failed"

    def _start_timeout(self) -> float:
        return self.settings.comfyui_startup_timeout_seconds

    # --- claims (called by starts.py) -----------------------------------------------------

    async def take(self, project_id: int, generation: int) -> ComfyUIService | None:
        """Give a warm online instance to the project's claimed record (atomic); None if
        there is none to take. Call under the admission lock, right after the claim."""
        if not self.size:
            return None
        for row in await self.records.warm():
            if row.status != ServiceStatus.ONLINE or not self.liveness.alive(self.liveness.handle(row)):
                continue
            record = await self.records.take_warm(row.id, project_id, generation, {"binding": project_id})
            # (launcher_state["binding"]: every check of it expects that binding from then on)
            if record is not None:
                self._checked_at.pop(row.id, None)
                self.wake()
                return record
        return None

    async def bind_taken(self, record: ComfyUIService) -> bool:
        """Bind a taken instance to its project: True when it is now the project's."""
        handle = self.liveness.handle(record)
        if handle is None:
            return False
        try:
            dirs = await asyncio.to_thread(instances.project_dirs, self.settings, record.user_id, record.project_id)
            await bind(handle.endpoint, record.project_id, record.user_id, dirs)
            bound = True
        except Exception as exc:  # noqa: BLE001 — any failure (BindError, a full disk...): stop it, start cold
            log.warning("project %s: binding a warm instance failed: %s", record.project_id, exc)
            bound = False
        if bound:
            await asyncio.to_thread(
                instances.mark_event, record.log_path, f"bound to user {record.user_id}, project {record.project_id}"
            )
        else:
            await self.launcher.stop(handle, self.settings.comfyui_stop_grace_seconds)
        return bound

    async def evict(self) -> Handle | bool | None:
        """Drop one warm instance to make room for a user's start (starting ones first);
        its process, for `stop` (called outside the admission lock), or None: none left."""
        rows = sorted(await self.records.warm(), key=lambda r: r.status != ServiceStatus.STARTING)
        for row in rows:
            state = await self.records.drop_warm(row.id)
            if state is None:
                continue
            log.info("warm instance %s (port %s): stopped to make room for a user", row.id, row.port)
            await asyncio.to_thread(_remove, row.log_path)  # it never ran anyone's work
            # A row still spawning has no state yet: its own start sees the row gone and stops it.
            return self.liveness.handle_of(state) or True
        return None

    async def stop(self, handle: Handle | bool | None) -> None:
        if isinstance(handle, Handle):
            await self.launcher.stop(handle, self.settings.comfyui_stop_grace_seconds)

    # --- shutdown ------------------------------------------------------------------------

    async def cancel(self) -> None:
        """Backend shutdown: end a refill in progress (its row keeps the pid for the next leader)."""
        if self._refill is not None:
            self._refill.cancel()
            await asyncio.gather(self._refill, return_exceptions=True)
            self._refill = None

    async def stop_all(self) -> None:
        """Stop every warm instance (COMFYUI_STOP_INSTANCES_ON_EXIT)."""
        rows = await self.records.warm()
        await asyncio.gather(*(self._drop(row.id, self.liveness.handle(row)) for row in rows))

    # --- after a backend restart ---------------------------------------------------------

    async def adopt_orphans(self, found: list[Handle]) -> None:
        """Stop processes running in a pool folder that no live row names (their backend
        died between spawn and record). Called by reconcile on taking the lease."""
        root = pool_root(self.settings)
        mine = [h for h in found if is_pool_dir(self.settings, argv_value(h.cmdline, "--base-directory"))]
        if not mine:
            return
        # Offline records count: a bound instance that was slow to answer is still its project's.
        named = [self.liveness.handle(r) for r in await self.records.active_with_ports({h.port for h in mine})]
        starting_ports = await self.records.starting_ports()
        for handle in mine:
            if any(n is not None and n.same_process(handle) for n in named):
                continue
            if handle.port in starting_ports:
                continue  # a start that has not recorded its pid yet: resolved by its own check
            log.warning("stopping unrecorded warm instance pid %s in %s", handle.pid, root)
            await self.launcher.stop(handle, self.settings.comfyui_stop_grace_seconds)


def _remove(path: str | Path) -> None:
    if path:
        with contextlib.suppress(OSError):
            os.remove(path)
