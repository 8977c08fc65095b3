"""RayLauncher: each instance is a detached named actor on a Ray cluster (docs/cluster.md).

The actor (ray_actor.py) asks Ray for COMFYUI_GPUS_PER_INSTANCE GPUs and no CPU, starts
ComfyUI on its node listening on the node's address, and reports node IP, port, pid
and the GPUs Ray gave it. Ray's scheduler is the GPU queue: an actor that finds no
free GPU stays pending, which the manager shows as 排队中 (on_wait) until it is placed,
stopped or the start times out.

Names: actor ``comfyui-u{user}-p{project}`` in namespace ``comfyhub``. Ray keeps names
unique, so there is at most one actor per project in the cluster, and a restarted
backend finds its instances again by name.

Everything that talks to the cluster blocks, so it runs in threads; ``poll`` must not
block at all, so it answers from states a watcher thread refreshes every
WATCH_INTERVAL_SECONDS (the first poll of a handle answers None: not known to be dead).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from dataclasses import dataclass

# This process is a Ray driver, and a driver ends its own process once the cluster's head
# (GCS) has been unreachable for gcs_rpc_server_reconnect_timeout_s (60 s by default;
# measured: "GCS may have been killed ... The program will terminate"). Here the driver
# is the comfyhub backend, which must outlive the head. Ray reads the setting when it is
# imported, hence before the import; the value is a year, not "forever", to stay an integer
# Ray accepts.
os.environ["RAY_gcs_rpc_server_reconnect_timeout_s"] = str(365 * 24 * 3600)
# Ray's crash handler would take over the backend's SIGTERM: a plain stop (systemd, a
# restart) then prints a native stack trace and, now and then, ends in SIGABRT instead of
# the clean exit uvicorn makes — measured in the stop-on-exit test. The backend is a web
# server that handles its own signals; only Ray's own processes keep the handler.
os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")

import ray  # noqa: E402
from ray.exceptions import ActorUnavailableError, RayActorError, RayError  # noqa: E402

from comfyhub.config import Settings  # noqa: E402
from comfyhub.launchers.base import Exit, Handle, LaunchError, LaunchSpec, PortInUse  # noqa: E402
from comfyhub.launchers.process import describe_exit  # noqa: E402
from comfyhub.launchers.ray_actor import ComfyUIActor  # noqa: E402
from comfyhub.launchers.ray_check import unreachable  # noqa: E402
from comfyhub.reasons import Reason  # noqa: E402

log = logging.getLogger("comfyhub.ray")

NAMESPACE = "comfyhub"
ACTOR_PREFIX = "comfyui-"
# A start not placed within this long is reported as waiting (排队中).
QUEUE_NOTICE_SECONDS = 1.0
WATCH_INTERVAL_SECONDS = 0.5
# Handles nobody polled for this long are no longer watched.
WATCH_FORGET_SECONDS = 600
ACTOR_GONE = "Ray actor 已终止（所在节点失联，或被结束）"


def actor_name(instance: str) -> str:
    return ACTOR_PREFIX + instance


@dataclass
class _Watched:
    name: str
    polled_at: float
    actor: object | None = None


class RayLauncher:
    name = "ray"
    runs_here = False  # on the nodes: Ray's scheduler queues the starts
    assigns_gpus = True

    def __init__(self, settings: Settings):
        self.address = settings.ray_address
        self.gpus_per_instance = settings.comfyui_gpus_per_instance
        self._connect_lock = threading.Lock()
        self._connected = False
        self._remote = None
        self._gcs_address = ""
        self._lock = threading.Lock()
        self._watched: dict[str, _Watched] = {}  # actor id → what to watch
        self._states: dict[str, Exit | None] = {}  # actor id → None (runs) or how it ended
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._watcher: threading.Thread | None = None

    # --- connection -------------------------------------------------------------------

    def _connect(self) -> None:
        """Join the cluster once per process (blocking)."""
        with self._connect_lock:
            if self._connected:
                return
            if not ray.is_initialized():
                problem = unreachable(self.address)
                if problem:
                    raise LaunchError(f"无法连接 Ray 集群（RAY_ADDRESS={self.address}）：{problem}")
                try:
                    ray.init(
                        address=self.address, namespace=NAMESPACE, log_to_driver=False, logging_level=logging.WARNING
                    )
                except (ConnectionError, RuntimeError, ValueError) as exc:
                    raise LaunchError(f"无法连接 Ray 集群（RAY_ADDRESS={self.address}）：{exc}") from None
            self._remote = ray.remote(ComfyUIActor)
            self._gcs_address = ray.get_runtime_context().gcs_address
            self._connected = True

    def _connect_and_check(self) -> None:
        """Connected, and the head answers now: with the head away every Ray call would
        wait for it, and a start would only end at its timeout without saying why."""
        self._connect()
        problem = unreachable(self._gcs_address)
        if problem:
            raise LaunchError(f"Ray 集群的 head 无法连接（{problem}）：请检查 Ray head 节点")

    def _ensure_watcher(self) -> None:
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch_loop, name="comfyhub-ray-watch", daemon=True)
            self._watcher.start()

    def close(self) -> None:
        """Stop watching (the actors keep running; they are detached)."""
        self._closed.set()
        self._wake.set()

    # --- start --------------------------------------------------------------------------

    async def start(self, spec: LaunchSpec, on_wait=None) -> Handle:
        await asyncio.to_thread(self._connect_and_check)
        name = actor_name(spec.name)
        actor = await asyncio.to_thread(self._create_actor, name)
        ref = actor.start.remote(
            spec.argv,
            str(spec.cwd),
            spec.env,
            str(spec.log_path),
            spec.port,
            str(spec.base_dir),
            spec.name,
            spec.secret,
        )
        started = asyncio.wrap_future(ref.future())
        try:
            try:
                info = await asyncio.wait_for(asyncio.shield(started), QUEUE_NOTICE_SECONDS)
            except TimeoutError:
                reason = await asyncio.to_thread(self._wait_reason)
                if on_wait is not None:
                    await on_wait(reason)
                info = await started
        except LaunchError:
            started.cancel()
            await asyncio.to_thread(self._kill, actor)
            raise
        except asyncio.CancelledError:
            started.cancel()
            await asyncio.shield(asyncio.to_thread(self._kill, actor))  # nothing stays pending or running
            raise
        except RayError as exc:
            await asyncio.to_thread(self._kill, actor)
            raise LaunchError(f"Ray actor 启动失败：{type(exc).__name__}") from None
        if "error" in info or info.get("port_in_use"):
            await asyncio.to_thread(self._kill, actor)
            if info.get("port_in_use"):
                raise PortInUse(f"端口 {spec.port} 在节点 {info['host']} 上已被占用")
            raise LaunchError(info["error"], Reason(info.get("reason", Reason.LAUNCH_FAILED)))
        handle = Handle.from_state(info)
        handle.secret = spec.secret
        handle.extra["actor"] = name
        handle.extra["actor_id"] = actor._actor_id.hex()
        self._track(handle, actor)
        return handle

    def _create_actor(self, name: str):
        """A fresh actor for the instance; a leftover of the same name is killed first.

        A leftover is a start its backend abandoned (it died while the actor waited for
        a GPU); the manager already stopped the previous process of this project.
        """
        try:
            ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
            log.warning("killed leftover actor %s", name)
        except ValueError:
            pass
        deadline = time.monotonic() + 10
        while True:
            try:
                return self._remote.options(
                    name=name,
                    namespace=NAMESPACE,
                    lifetime="detached",
                    num_cpus=0,
                    num_gpus=self.gpus_per_instance,
                    max_restarts=0,
                ).remote()
            except ValueError:  # the killed leftover still holds the name for a moment
                if time.monotonic() > deadline:
                    raise LaunchError(f"Ray actor 名称 {name} 仍被占用，请稍后重试") from None
                time.sleep(0.05)

    def _wait_reason(self) -> str:
        """Why the actor is not placed yet; LaunchError when it never can be."""
        need = self.gpus_per_instance
        if need > 0:
            largest = max((n["Resources"].get("GPU", 0) for n in ray.nodes() if n.get("Alive")), default=0)
            if largest < need:
                raise LaunchError(
                    f"集群中没有 GPU 数达到 COMFYUI_GPUS_PER_INSTANCE={need:g} 的节点"
                    f"（单个节点最多 {largest:g} 个），该实例无法启动"
                )
            if ray.available_resources().get("GPU", 0) < need:
                return "排队中（等待空闲 GPU）"
        return "排队中（等待 Ray 集群资源）"

    @staticmethod
    def _kill(actor) -> None:
        try:
            ray.kill(actor, no_restart=True)
        except (RayError, ValueError):
            pass

    # --- poll ---------------------------------------------------------------------------

    def poll(self, handle: Handle) -> Exit | None:
        actor_id = handle.extra.get("actor_id")
        if not actor_id:
            return Exit(None, "没有 Ray actor 记录")
        with self._lock:
            watched = self._watched.get(actor_id)
            if watched is None:
                self._watched[actor_id] = _Watched(handle.extra.get("actor", ""), time.monotonic())
                self._ensure_watcher()
                self._wake.set()
            else:
                watched.polled_at = time.monotonic()
            return self._states.get(actor_id)

    async def refresh(self, handles: list[Handle]) -> None:
        """Bring poll's answers for `handles` up to date now (before a heartbeat sweep)."""
        for handle in handles:
            self.poll(handle)  # starts watching the ones seen for the first time
        await asyncio.to_thread(self._refresh)

    def _track(self, handle: Handle, actor) -> None:
        with self._lock:
            actor_id = handle.extra["actor_id"]
            self._watched[actor_id] = _Watched(handle.extra["actor"], time.monotonic(), actor)
            self._states[actor_id] = None
            self._ensure_watcher()

    def _watch_loop(self) -> None:
        failing = ""
        while not self._closed.is_set():
            try:
                self._connect()
                self._refresh()
                failing = ""
            except Exception as exc:  # noqa: BLE001 — the cluster may be away; keep watching
                if repr(exc) != failing:  # once per kind of failure, not every half second
                    log.warning("refreshing Ray actor states failed: %r", exc)
                failing = repr(exc)
            self._wake.wait(WATCH_INTERVAL_SECONDS)
            self._wake.clear()

    def _refresh(self) -> None:
        now = time.monotonic()
        with self._lock:
            for actor_id in [a for a, w in self._watched.items() if now - w.polled_at > WATCH_FORGET_SECONDS]:
                del self._watched[actor_id]
                self._states.pop(actor_id, None)
            todo = [(a, w) for a, w in self._watched.items() if self._states.get(a) is None]
        pending = {}
        for actor_id, watched in todo:
            if watched.actor is None:
                watched.actor = self._lookup(watched.name, actor_id)
                if watched.actor is None:
                    self._set_state(actor_id, Exit(None, ACTOR_GONE))
                    continue
            pending[watched.actor.poll.remote()] = actor_id
        if not pending:
            return
        ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=2.0)
        for ref in ready:
            actor_id = pending[ref]
            try:
                code = ray.get(ref)
            except ActorUnavailableError:
                continue  # unreachable for now, not known dead: the health check decides
            except RayActorError:
                self._set_state(actor_id, Exit(None, ACTOR_GONE))
                continue
            if code is not None:
                self._set_state(actor_id, Exit(code, describe_exit(code)))

    def _set_state(self, actor_id: str, state: Exit) -> None:
        with self._lock:
            if actor_id in self._watched:
                self._states[actor_id] = state

    @staticmethod
    def _lookup(name: str, actor_id: str):
        """The live actor called `name`, if it is still the one with `actor_id`."""
        try:
            actor = ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            return None
        return actor if actor._actor_id.hex() == actor_id else None

    # --- stop ---------------------------------------------------------------------------

    async def stop(self, handle: Handle, grace: float = 10.0) -> None:
        actor_id = handle.extra.get("actor_id", "")
        await asyncio.to_thread(self._connect)
        actor = await asyncio.to_thread(self._lookup, handle.extra.get("actor", ""), actor_id)
        if actor is None:
            return  # gone already, or the name now belongs to a newer actor: never touch that
        if handle.pid:  # a started process: let ComfyUI end cleanly before the actor goes
            try:
                await asyncio.wait_for(asyncio.wrap_future(actor.stop.remote(grace).future()), 2 * grace + 10)
            except (RayError, TimeoutError):
                pass
        await asyncio.to_thread(self._kill, actor)  # frees its GPU
        self._set_state(actor_id, Exit(None, "已停止"))

    # --- after a backend restart ----------------------------------------------------------

    def restore(self, state: dict) -> Handle:
        return Handle.from_state(state, default_host="")

    def discover(self, base_root) -> list[Handle]:
        """Every comfyhub actor in the cluster (blocking).

        A started one gives its process; one still waiting for placement gives a
        handle with pid 0 that names the instance, so that the manager can stop it
        when no start is waiting for it any more.
        """
        self._connect()
        asked = {}
        for entry in ray.util.list_named_actors(all_namespaces=True):
            if entry.get("namespace") != NAMESPACE or not entry["name"].startswith(ACTOR_PREFIX):
                continue
            try:
                actor = ray.get_actor(entry["name"], namespace=NAMESPACE)
                asked[actor.describe.remote()] = (entry["name"], actor)
            except (ValueError, AttributeError):
                continue  # ended meanwhile, or not one of ours
        # One deadline for all: an actor still waiting for a GPU never answers.
        ready, _ = ray.wait(list(asked), num_returns=len(asked), timeout=5) if asked else ([], [])
        found = []
        for ref, (name, actor) in asked.items():
            info = None
            if ref in ready:
                try:
                    info = ray.get(ref)
                except RayError:
                    continue  # ended meanwhile
            if info is None:  # not placed yet, or placed but never started: names its instance only
                info = {
                    "pid": 0,
                    "create_time": 0,
                    "cmdline": [],
                    "host": "",
                    "port": 0,
                    "extra": {"instance": name[len(ACTOR_PREFIX) :]},
                }
            handle = Handle.from_state(info)
            handle.extra.update(actor=name, actor_id=actor._actor_id.hex())
            found.append(handle)
        return found
