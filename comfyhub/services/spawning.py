"""What every start of a ComfyUI process has in common, a project's (starts.py) and a
warm one's (pool.py): its name and URL, the port it gets, its GPU, environment and
arguments, and how to read a lost bind race in its last words."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sqlalchemy.exc import IntegrityError

from comfyhub.config import Settings
from comfyhub.launchers import Launcher
from comfyhub.net.ports import port_is_free

LOG_TAIL_LINES = 20
LOST_BIND_MARKERS = ("address already in use", "eaddrinuse", "errno 98", "only one usage of each socket address")


def instance_name(user_id: int, project_id: int) -> str:
    return f"u{user_id}-p{project_id}"


def comfy_url(project_id: int) -> str:
    """Where the browser opens the instance: through the authenticated proxy."""
    return f"/comfy/{project_id}/"


def candidate_ports(port_range: tuple[int, int], taken: set[int], tried: set[int]):
    """Ports to try, lowest first, skipping those held by records or already tried."""
    low, high = port_range
    for port in range(low, high + 1):
        if port not in taken and port not in tried:
            yield port


async def reserve_port(
    settings: Settings, taken: set[int], tried: set[int], record: Callable[[int], Awaitable[bool]]
) -> int | None:
    """The lowest free port of the range that `record(port)` wrote into the start's row;
    None when the range has none left, or when `record` says the start was overtaken.

    The caller holds the process's port lock; across processes, the unique index on live
    ports settles a race (IntegrityError: the other process recorded it first).
    """
    for port in candidate_ports(settings.port_range, taken, tried):
        if not port_is_free(settings.comfyui_listen, port):
            tried.add(port)  # a foreign listener: skip it for this start
            continue
        try:
            return port if await record(port) else None
        except IntegrityError:
            tried.add(port)  # another backend process recorded it first
    return None


async def launch_options(
    settings: Settings, launcher: Launcher, pick_gpu: Callable[[], Awaitable[str | None]]
) -> tuple[str | None, dict[str, str], list[str]]:
    """(GPU, environment, extra arguments) of one start, the same for a project's and a
    warm instance: the GPU picked here unless the launcher assigns them (Ray)."""
    extra = list(settings.extra_args)
    env = {"PYTHONUNBUFFERED": "1"}
    if launcher.assigns_gpus:
        gpu, cpu_only = None, settings.comfyui_gpus_per_instance == 0
    else:
        gpu = await pick_gpu()
        cpu_only = gpu is None
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
    if cpu_only and "--cpu" not in extra:
        extra.append("--cpu")  # no GPU for it: ComfyUI would fail looking for CUDA
    return gpu, env, extra


def lost_bind_race(log_tail: str) -> bool:
    """Whether a child's last words say its port was taken after we chose it."""
    lowered = log_tail.lower()
    return any(marker in lowered for marker in LOST_BIND_MARKERS)
