"""The launcher protocol: the only code that knows *how* a ComfyUI process runs.

The lifecycle (comfyhub/services/) decides *when* an instance starts and stops and
owns its record; a launcher only runs processes. `Launcher` below declares every
method the lifecycle calls, with when it is called and what it returns. A launcher
reports a failure through `LaunchError`, whose `reason` is a `Reason` code and whose
message is a Chinese sentence a user can act on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from comfyhub.net.endpoint import Endpoint, binding_of, secret_of
from comfyhub.reasons import Reason


class LaunchError(Exception):
    """The process could not be spawned; the message is shown to the user.

    `reason` says what kind of failure it was, for behaviour and metrics (never the text).
    """

    def __init__(self, message: str, reason: Reason = Reason.LAUNCH_FAILED):
        super().__init__(message)
        self.reason = reason


class PortInUse(LaunchError):
    """The port is taken where the process would run; the manager tries another."""


@dataclass(frozen=True)
class LaunchSpec:
    """Everything needed to run one instance, independent of where it runs.

    ``env`` holds only what comfyhub sets (CUDA_VISIBLE_DEVICES, PYTHONUNBUFFERED); the
    launcher adds it to the environment of the machine the process runs on.
    """

    argv: list[str]
    cwd: Path
    env: dict[str, str]
    log_path: Path
    port: int
    base_dir: Path
    name: str = ""  # stable per project (u{user}-p{project}): names the instance where it runs
    # The instance secret (comfyhub/net/endpoint.py). Never in argv or env: the launcher
    # writes it to a 0600 file where the process runs and names the file in
    # COMFYHUB_SECRET_FILE (process.deliver_secret).
    secret: str = field(default="", repr=False)


@dataclass
class Handle:
    """A started process: enough to find, check and signal it again later."""

    pid: int
    create_time: float
    cmdline: list[str]
    host: str
    port: int
    extra: dict = field(default_factory=dict)
    gpu: str = ""  # set by launchers that assign GPUs themselves
    secret: str = field(default="", repr=False)  # the instance secret; "" for older records
    binding: int | None = None  # the project it was bound to after its start (a warm pool's)

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.host, self.port, self.secret, self.binding)

    def state(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict, default_host: str = "127.0.0.1") -> Handle:
        return cls(
            pid=int(state["pid"]),
            create_time=float(state["create_time"]),
            cmdline=list(state["cmdline"]),
            host=state.get("host") or default_host,
            port=int(state["port"]),
            extra=dict(state.get("extra") or {}),
            gpu=str(state.get("gpu") or ""),
            secret=secret_of(state),
            binding=binding_of(state),
        )

    def same_process(self, other: Handle) -> bool:
        # Creation times come from /proc with clock-tick resolution; allow for float rounding.
        return (self.host, self.pid) == (other.host, other.pid) and abs(self.create_time - other.create_time) < 0.05


@dataclass(frozen=True)
class Exit:
    """How a process ended. ``code`` is None when it is unknown (not our child)."""

    code: int | None
    reason: str = ""


class Launcher(Protocol):
    """What every launcher provides; the lifecycle calls nothing else."""

    name: str
    """Stored with each record (`local`, `ray`)."""

    runs_here: bool
    """True when the processes run on this machine. Their starts then share its CPUs, so
    the lifecycle caps how many run at once; a cluster's scheduler does that itself."""

    assigns_gpus: bool
    """True when the launcher chooses GPUs itself (Ray does). The lifecycle then neither
    picks one nor sets CUDA_VISIBLE_DEVICES, and records `Handle.gpu` instead."""

    async def start(self, spec: LaunchSpec, on_wait: Callable[[str], Awaitable[None]] | None = None) -> Handle:
        """Spawn ComfyUI for one instance; return its Handle as soon as the process exists.

        Called once per start attempt, after the port was reserved. It does not wait for
        health. The process appends stdout and stderr to `spec.log_path` and runs in its
        own process group with SIGINT at its default disposition. A launcher that has to
        wait for resources (a free GPU on a cluster) awaits `on_wait(reason)` once, so
        the record can say why the start waits. The call may be cancelled at any point,
        and a cancelled start leaves nothing running.

        Raises `PortInUse` when the port is taken where the process would run (the
        lifecycle tries another), `LaunchError` when it cannot be spawned at all.
        """
        ...

    def poll(self, handle: Handle) -> Exit | None:
        """None while the process runs *and* is provably the one started (pid, creation
        time and command line match); an `Exit` once it has ended or the pid now belongs
        to something else. Called at any time, as often as needed; never blocks."""
        ...

    async def stop(self, handle: Handle, grace: float = 10.0) -> None:
        """End the process and its group: SIGINT, then SIGTERM, then SIGKILL, waiting up
        to `grace` seconds between steps without blocking the event loop. A process whose
        identity does not match is never signalled. Returns once it is gone (or was
        never ours)."""
        ...

    def restore(self, state: dict) -> Handle:
        """Rebuild a Handle from `Handle.state()` as saved in a record (after a backend
        restart, or in another worker). Does not check liveness (call `poll`); never blocks."""
        ...

    async def refresh(self, handles: list[Handle]) -> None:
        """Bring `poll`'s answers for `handles` up to date. Called by the heartbeat before
        each sweep; a launcher whose `poll` reads live state has nothing to do."""
        ...

    def discover(self, base_root: Path) -> list[Handle]:
        """The processes running for instance folders under `base_root`, whether or not a
        record names them (found after a backend died between spawn and record).
        Blocking: called in a thread, by reconcile when this process starts leading."""
        ...

    def close(self) -> None:
        """Release what the launcher holds (threads, connections). Called once, at backend
        shutdown; the instances keep running."""
        ...


# In the instance folder: the ComfyUI path config that adds comfyhub's extension
# (services/instances.py writes it, with the extension beside it, before every start).
EXTENSION_CONFIG = ".comfyhub/extra_model_paths.yaml"


def comfyui_argv(python: Path, listen: str, port: int, base_dir: Path, extra_args: list[str]) -> list[str]:
    """ComfyUI's command line for one instance, with its own database inside the instance dir.

    ComfyUI's own SQLite database otherwise lands in the install's shared user/ folder.
    The path config loads comfyhub's extension from the instance folder, beside (not into)
    the shared custom nodes.
    """
    return [
        str(python),
        "main.py",
        "--listen",
        listen,
        "--port",
        str(port),
        "--disable-auto-launch",
        "--base-directory",
        str(base_dir),
        "--database-url",
        f"sqlite:///{base_dir / 'user' / 'comfyui.db'}",
        "--extra-model-paths-config",
        str(base_dir / EXTENSION_CONFIG),
        *extra_args,
    ]


def with_argv_value(argv: list[str], name: str, value: str) -> list[str]:
    """A copy of `argv` with the value after `name` replaced (appended when absent)."""
    out = list(argv)
    for i, current in enumerate(out[:-1]):
        if current == name:
            out[i + 1] = value
            return out
    return [*out, name, value]


def argv_value(argv: list, name: str) -> str | None:
    """The value after `name` in a command line, or None."""
    for i, value in enumerate(argv[:-1]):
        if value == name:
            return str(argv[i + 1])
    return None
