"""Running one ComfyUI process on the machine this code runs on.

Shared by LocalLauncher (in the backend) and the Ray actor (on a cluster node), so that
a process is spawned, recognised and stopped the same way wherever it runs.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import subprocess
from pathlib import Path

import psutil

from comfyhub.launchers.base import LaunchError
from comfyhub.reasons import Reason

# Creation times come from /proc with clock-tick resolution; allow for float rounding.
_CREATE_TIME_TOLERANCE = 0.05
_PR_SET_PDEATHSIG = 1


def child_environment(overrides: dict[str, str]) -> dict[str, str]:
    """This machine's environment for ComfyUI, without comfyhub's secrets, plus `overrides`.

    ComfyUI runs user workflows: the database URL and the secret key stay out of it.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMFYHUB_")}
    env.update(overrides)
    return env


SECRET_FILE = ".comfyhub/secret"  # in the instance folder
SECRET_FILE_ENV = "COMFYHUB_SECRET_FILE"  # read by comfyhub/comfyui_extension at import


def deliver_secret(base_dir: Path | str, secret: str) -> dict[str, str]:
    """Write the instance secret where the process runs; the environment that names it.

    A file readable by this account only (0600, in a 0700 folder) whose *path* goes in the
    environment: the secret itself never appears in `ps`, /proc/<pid>/cmdline or the log.
    Written anew (never appended) by every start. No secret: nothing (the extension then
    does nothing).
    """
    if not secret:
        return {}
    path = Path(base_dir) / SECRET_FILE
    path.parent.mkdir(mode=0o700, exist_ok=True)
    os.chmod(path.parent, 0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an older file keeps its mode on O_CREAT: make sure
        os.write(fd, secret.encode())
    finally:
        os.close(fd)
    return {SECRET_FILE_ENV: str(path)}


def read_secret(base_dir: Path | str) -> str:
    """The secret last delivered into an instance folder ("" if none): lets reconcile
    prove an unrecorded process (its backend died before writing the record) is ours."""
    try:
        return (Path(base_dir) / SECRET_FILE).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return ""


def stop_steps(grace: float) -> tuple[tuple[int, float], ...]:
    """SIGINT lets ComfyUI finish cleanly; SIGTERM and SIGKILL follow if it does not."""
    return (signal.SIGINT, grace), (signal.SIGTERM, grace / 2), (signal.SIGKILL, grace / 2)


def _stop_signals_ignored() -> bool:
    """A handled signal returns to default at exec; only an ignored one is inherited."""
    return signal.SIG_IGN in (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))


def _reset_child_signals() -> None:
    """Runs in the child before exec.

    An ignored SIGINT survives exec: when the parent runs with SIGINT ignored (comfyhub
    started with `&` from a script), ComfyUI would ignore the clean-stop signal too.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it when the parent (a Ray actor) dies.

    A backstop for an actor killed hard (node lost, `ray.kill`), which cannot stop its
    process group itself. Linux only; elsewhere the group stop is all there is.
    """
    _reset_child_signals()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def spawn(
    argv: list[str], cwd: Path, env: dict[str, str], log_path: Path, die_with_parent: bool = False
) -> subprocess.Popen:
    """Start ComfyUI in its own process group, output appended to `log_path`.

    Raises LaunchError with a reason a user can act on.
    """
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab", buffering=0)
    except OSError as exc:
        raise LaunchError(f"无法写入日志文件 {log_path}：{exc.strerror}", Reason.LOG_DIR) from None
    if die_with_parent:
        preexec = _die_with_parent
    else:
        # Only when needed: any preexec_fn turns the fast vfork spawn into a full fork
        # of the parent (~20 ms for a 240 MB backend, measured).
        preexec = _reset_child_signals if _stop_signals_ignored() else None
    try:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a stop signals the group
            preexec_fn=preexec,
            close_fds=True,
        )
    except FileNotFoundError:
        raise LaunchError(
            f"找不到 ComfyUI 程序：{argv[0]}（检查 COMFYUI_PYTHON / COMFYUI_REPO_PATH）", Reason.MISSING_EXECUTABLE
        ) from None
    except PermissionError:
        raise LaunchError(
            f"ComfyUI 程序不可执行：{argv[0]}（检查 COMFYUI_PYTHON 的权限）", Reason.MISSING_EXECUTABLE
        ) from None
    except NotADirectoryError:
        raise LaunchError(f"COMFYUI_REPO_PATH 不是目录：{cwd}", Reason.MISSING_EXECUTABLE) from None
    except OSError as exc:
        if exc.errno == errno.ENOEXEC:
            raise LaunchError(f"ComfyUI 程序格式无效：{argv[0]}", Reason.MISSING_EXECUTABLE) from None
        raise LaunchError(f"无法启动 ComfyUI：{exc.strerror}") from None
    finally:
        log.close()


def create_time(pid: int, fallback: float) -> float:
    try:
        return psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return fallback  # already gone; the exit is seen by whoever polls next


def process_matches(pid: int, started: float, cmdline: list[str]) -> bool:
    """Whether `pid` is still the very process that was started: same creation time, same command."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return abs(proc.create_time() - started) < _CREATE_TIME_TOLERANCE and proc.cmdline() == cmdline
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def signal_group(pid: int, sig: int) -> bool:
    """Signal the process group led by `pid` (or the process alone). False if it is gone.

    The caller checks identity first (process_matches / its own child).
    """
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        # Not a group we lead (e.g. adopted process that changed group): the process only.
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return False
    return True


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"被信号 {signal.Signals(-code).name} 终止"
        except ValueError:
            return f"被信号 {-code} 终止"
    return f"退出码 {code}"
