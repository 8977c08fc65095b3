"""The launcher protocol: the only code that knows *how* a ComfyUI process runs.

The manager (services/manager.py) decides *when* an instance starts and stops and owns
its record; a launcher only runs processes. The contract, for every launcher:

- ``start(spec)`` spawns ComfyUI for one instance and returns a ``Handle`` as soon as
  the process exists (it does not wait for health). It raises ``LaunchError`` with a
  Chinese, user-presentable reason when the process cannot be spawned at all (missing
  interpreter, unwritable log). The process writes stdout and stderr to
  ``spec.log_path`` (appended) and runs in its own process group with SIGINT at its
  default disposition.
- ``poll(handle)`` may be called at any time, as often as needed, and never blocks:
  ``None`` while the process runs *and* is provably the one that was started (pid,
  creation time and command line match); an ``Exit`` once it has ended or the pid now
  belongs to something else.
- ``stop(handle, grace)`` ends the process and its group: SIGINT, then SIGTERM, then
  SIGKILL, waiting up to ``grace`` seconds between steps without blocking the event
  loop. A process whose identity does not match is never signalled. It returns once
  the process is gone (or was never ours).
- ``restore(state)`` rebuilds a ``Handle`` from ``Handle.state()`` saved in the record,
  after a backend restart; it does not check liveness (call ``poll``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol


class LaunchError(Exception):
    """The process could not be spawned; the message is shown to the user."""


@dataclass(frozen=True)
class LaunchSpec:
    """Everything needed to run one instance, independent of where it runs."""

    argv: list[str]
    cwd: Path
    env: dict[str, str]
    log_path: Path
    port: int
    base_dir: Path


@dataclass
class Handle:
    """A started process: enough to find, check and signal it again later."""

    pid: int
    create_time: float
    cmdline: list[str]
    host: str
    port: int
    extra: dict = field(default_factory=dict)

    def state(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Exit:
    """How a process ended. ``code`` is None when it is unknown (not our child)."""

    code: int | None
    reason: str = ""


class Launcher(Protocol):
    name: str

    async def start(self, spec: LaunchSpec) -> Handle: ...

    def poll(self, handle: Handle) -> Exit | None: ...

    async def stop(self, handle: Handle, grace: float = 10.0) -> None: ...

    def restore(self, state: dict) -> Handle: ...


def comfyui_argv(
    python: Path, listen: str, port: int, base_dir: Path, extra_args: list[str]
) -> list[str]:
    """The seed's command line, plus a database inside the instance dir.

    ComfyUI's own SQLite database otherwise lands in the install's shared user/ folder.
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
        *extra_args,
    ]


def argv_value(argv: list, name: str) -> str | None:
    """The value after `name` in a command line, or None."""
    for i, value in enumerate(argv[:-1]):
        if value == name:
            return str(argv[i + 1])
    return None
