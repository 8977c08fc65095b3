"""LocalLauncher: ComfyUI as a subprocess of the backend, on this machine."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path

import psutil

from comfyhub.launchers import process
from comfyhub.launchers.base import Exit, Handle, LaunchSpec, argv_value


class LocalLauncher:
    """Spawns ComfyUI with subprocess; children of this backend are reaped here.

    Processes adopted after a backend restart are not our children: their exit code
    is unknown and they are watched through psutil only.
    """

    name = "local"
    runs_here = True
    assigns_gpus = False  # the manager picks the GPU (services/gpus.py)

    def __init__(self, connect_host: str = "127.0.0.1"):
        self.connect_host = connect_host
        self._children: dict[int, subprocess.Popen] = {}

    async def start(self, spec: LaunchSpec, on_wait=None) -> Handle:
        # Fork+exec takes milliseconds but is a system call chain: keep it off the loop.
        spawning = asyncio.ensure_future(asyncio.to_thread(self._spawn, spec))
        try:
            proc = await asyncio.shield(spawning)
        except asyncio.CancelledError:
            # The contract: a cancelled start leaves nothing running.
            proc = await spawning
            process.signal_group(proc.pid, signal.SIGKILL)
            await asyncio.to_thread(proc.wait)
            raise
        self._children[proc.pid] = proc
        return Handle(
            pid=proc.pid,
            create_time=process.create_time(proc.pid, time.time()),
            cmdline=list(spec.argv),
            host=self.connect_host,
            port=spec.port,
            secret=spec.secret,
        )

    @staticmethod
    def _spawn(spec: LaunchSpec):
        delivery = process.deliver_secret(spec.base_dir, spec.secret)
        return process.spawn(spec.argv, spec.cwd, process.child_environment({**spec.env, **delivery}), spec.log_path)

    def poll(self, handle: Handle) -> Exit | None:
        child = self._children.get(handle.pid)
        if child is not None:
            code = child.poll()  # reaps: no zombie is left behind
            if code is None:
                return None
            del self._children[handle.pid]
            return Exit(code, process.describe_exit(code))
        if process.process_matches(handle.pid, handle.create_time, handle.cmdline):
            return None
        return Exit(None, "进程已不存在")

    async def stop(self, handle: Handle, grace: float = 10.0) -> None:
        for sig, wait in process.stop_steps(grace):
            if not self._signal_group(handle, sig):
                return
            if await self._wait_gone(handle, wait):
                return

    def _signal_group(self, handle: Handle, sig: int) -> bool:
        """Signal the process group, only if its leader is provably ours. False if gone."""
        if self.poll(handle) is not None:
            # Our own child that was not reaped yet still holds the pid, so it cannot
            # have been reused; anything else that exited is simply gone.
            return False
        return process.signal_group(handle.pid, sig)

    async def _wait_gone(self, handle: Handle, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        delay = 0.01
        while time.monotonic() < deadline:
            if self.poll(handle) is not None:
                return True
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)
        return self.poll(handle) is not None

    def discover(self, base_root: Path) -> list[Handle]:
        """ComfyUI processes on this machine started for an instance folder under `base_root`.

        Blocking (walks /proc): call it in a thread. Used after a restart to find
        processes whose record was never written (the backend died right after spawning).
        """
        root = str(base_root).rstrip("/") + "/"
        found = []
        for proc in psutil.process_iter(["pid", "cmdline", "create_time", "status"]):
            try:
                cmdline = proc.info["cmdline"] or []
                if proc.info["status"] == psutil.STATUS_ZOMBIE or "main.py" not in cmdline:
                    continue
                base_dir = argv_value(cmdline, "--base-directory") or ""
                port = argv_value(cmdline, "--port")
                if base_dir.startswith(root) and port and port.isdigit():
                    found.append(
                        Handle(
                            pid=proc.info["pid"],
                            create_time=proc.info["create_time"],
                            cmdline=cmdline,
                            host=self.connect_host,
                            port=int(port),
                        )
                    )
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return found

    def restore(self, state: dict) -> Handle:
        return Handle.from_state(state, default_host=self.connect_host)

    async def refresh(self, handles: list[Handle]) -> None:
        """Nothing to do: poll reads /proc live."""

    def close(self) -> None:
        """Nothing to release: the instances are independent processes."""
