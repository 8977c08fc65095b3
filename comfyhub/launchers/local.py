"""LocalLauncher: ComfyUI as a subprocess of the backend, on this machine."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import subprocess
import time

from pathlib import Path

import psutil

from comfyhub.launchers.base import Exit, Handle, LaunchError, LaunchSpec, argv_value

# Creation times come from /proc with clock-tick resolution; allow for float rounding.
_CREATE_TIME_TOLERANCE = 0.05


def _reset_child_signals() -> None:
    """Runs in the child before exec.

    An ignored SIGINT survives exec: when comfyhub itself runs with SIGINT ignored
    (started with `&` from a script), ComfyUI would ignore the clean-stop signal too.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _stop_signals_ignored() -> bool:
    """A handled signal returns to default at exec; only an ignored one is inherited."""
    return signal.SIG_IGN in (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))


def process_matches(pid: int, create_time: float, cmdline: list[str]) -> bool:
    """Whether `pid` is still the very process that was started: same creation time, same command."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return abs(proc.create_time() - create_time) < _CREATE_TIME_TOLERANCE and proc.cmdline() == cmdline
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


class LocalLauncher:
    """Spawns ComfyUI with subprocess; children of this backend are reaped here.

    Processes adopted after a backend restart are not our children: their exit code
    is unknown and they are watched through psutil only.
    """

    name = "local"

    def __init__(self, connect_host: str = "127.0.0.1"):
        self.connect_host = connect_host
        self._children: dict[int, subprocess.Popen] = {}

    async def start(self, spec: LaunchSpec) -> Handle:
        try:
            spec.log_path.parent.mkdir(parents=True, exist_ok=True)
            log = open(spec.log_path, "ab", buffering=0)
        except OSError as exc:
            raise LaunchError(f"无法写入日志文件：{exc.strerror}") from None
        try:
            # Fork+exec takes milliseconds but is a system call chain: keep it off the loop.
            proc = await asyncio.to_thread(self._spawn, spec, log)
        finally:
            log.close()
        self._children[proc.pid] = proc
        try:
            create_time = psutil.Process(proc.pid).create_time()
        except psutil.NoSuchProcess:
            create_time = time.time()  # already gone; poll() reports the exit code
        return Handle(pid=proc.pid, create_time=create_time, cmdline=list(spec.argv),
                      host=self.connect_host, port=spec.port)

    @staticmethod
    def _spawn(spec: LaunchSpec, log) -> subprocess.Popen:
        try:
            return subprocess.Popen(
                spec.argv,
                cwd=spec.cwd,
                env=spec.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() signals the group
                # Only when needed: any preexec_fn turns the fast vfork spawn into a full
                # fork of the backend (~20 ms for a 240 MB process, measured).
                preexec_fn=_reset_child_signals if _stop_signals_ignored() else None,
                close_fds=True,
            )
        except FileNotFoundError:
            raise LaunchError(f"找不到 ComfyUI 程序：{spec.argv[0]}（检查 COMFYUI_PYTHON / COMFYUI_REPO_PATH）") from None
        except PermissionError:
            raise LaunchError(f"ComfyUI 程序不可执行：{spec.argv[0]}（检查 COMFYUI_PYTHON 的权限）") from None
        except NotADirectoryError:
            raise LaunchError(f"COMFYUI_REPO_PATH 不是目录：{spec.cwd}") from None
        except OSError as exc:
            if exc.errno == errno.ENOEXEC:
                raise LaunchError(f"ComfyUI 程序格式无效：{spec.argv[0]}") from None
            raise LaunchError(f"无法启动 ComfyUI：{exc.strerror}") from None

    def poll(self, handle: Handle) -> Exit | None:
        child = self._children.get(handle.pid)
        if child is not None:
            code = child.poll()  # reaps: no zombie is left behind
            if code is None:
                return None
            del self._children[handle.pid]
            return Exit(code, _describe(code))
        if process_matches(handle.pid, handle.create_time, handle.cmdline):
            return None
        return Exit(None, "进程已不存在")

    async def stop(self, handle: Handle, grace: float = 10.0) -> None:
        for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, grace / 2), (signal.SIGKILL, grace / 2)):
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
        try:
            os.killpg(handle.pid, sig)
        except ProcessLookupError:
            return False
        except PermissionError:
            # Not a group we lead (e.g. adopted process that changed group): the process only.
            try:
                os.kill(handle.pid, sig)
            except ProcessLookupError:
                return False
        return True

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
                    found.append(Handle(pid=proc.info["pid"], create_time=proc.info["create_time"],
                                        cmdline=cmdline, host=self.connect_host, port=int(port)))
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return found

    def restore(self, state: dict) -> Handle:
        return Handle(
            pid=int(state["pid"]),
            create_time=float(state["create_time"]),
            cmdline=list(state["cmdline"]),
            host=state.get("host") or self.connect_host,
            port=int(state["port"]),
            extra=dict(state.get("extra") or {}),
        )


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"被信号 {signal.Signals(-code).name} 终止"
        except ValueError:
            return f"被信号 {-code} 终止"
    return f"退出码 {code}"
