"""Is a record's process alive, and is what answers on its port *ours*?

The launcher answers the first (`poll` checks pid, creation time and command line:
invariant 2); one GET /system_stats answers the second (services/health.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from comfyhub.launchers import Exit, Handle, Launcher
from comfyhub.models import ComfyUIService
from comfyhub.net.endpoint import Endpoint, binding_of, secret_of
from comfyhub.reasons import Reason, words
from comfyhub.services.health import HealthChecker


@dataclass(frozen=True, slots=True)  # slots: one object each, a thousand per sweep
class Probe:
    """One heartbeat check of one record."""

    healthy: bool
    exited: Exit | None = None  # how the process ended, if it did
    reason: Reason | None = None  # why it is not healthy
    why: str = ""  # the same, in words


class Liveness:
    def __init__(self, launcher: Launcher, health: HealthChecker):
        self.launcher = launcher
        self.health = health

    def handle(self, record: ComfyUIService) -> Handle | None:
        """The record's process as the launcher knows it; None without a usable state."""
        return self.handle_of(record.launcher_state)

    def handle_of(self, launcher_state: dict | None) -> Handle | None:
        if not launcher_state:
            return None
        try:
            return self.launcher.restore(launcher_state)
        except (KeyError, TypeError, ValueError):
            return None

    def alive(self, handle: Handle | None) -> bool:
        return handle is not None and self.launcher.poll(handle) is None

    async def answers(self, record: ComfyUIService) -> bool:
        """Our process is alive and answers /system_stats with our own argv."""
        handle = self.handle(record)
        if not self.alive(handle):
            return False
        return await self.health.is_ours(handle.endpoint, record.base_dir)

    async def queue(self, record: ComfyUIService) -> dict | None:
        """ComfyUI's /queue (`queue_running`, `queue_pending`) of an instance; None when it
        does not answer or answers something else."""
        state = record.launcher_state
        target = Endpoint(record.host or "127.0.0.1", record.port, secret_of(state), binding_of(state))
        queue = await self.health.get_json(target, "/queue")
        return queue if isinstance(queue, dict) else None

    async def probe(self, record: ComfyUIService) -> Probe:
        handle = self.handle(record)
        if handle is None:
            return Probe(False, None, Reason.NO_PROCESS, record.last_error or words(Reason.NO_PROCESS))
        exited = self.launcher.poll(handle)
        if exited is not None:
            return Probe(False, exited, Reason.CRASHED, words(Reason.CRASHED, exit=exited.reason))
        if await self.health.is_ours(handle.endpoint, record.base_dir):
            return Probe(True)
        return Probe(False, None, Reason.UNRESPONSIVE, words(Reason.UNRESPONSIVE))
