"""Is a record's process alive, and is what answers on its port *ours*?

The launcher answers the first (`poll` checks pid, creation time and command line:
invariant 2); one GET /system_stats answers the second (services/health.py), made here
or, for a large sweep's pages, by the prober process (`probe_page`, services/prober.py).

The second answer is remembered for FRESH_SECONDS, in this process's memory: when the
heartbeat, a start, an open or a proxied response confirmed an online instance less than
a second ago, an open reuses it without asking again (`answers`). The confirmation is
kept per project with the record's generation, so any start, stop or claim (each bumps
the generation) invalidates it; the launcher's cheap check (is the process alive) still
runs every time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from comfyhub.launchers import Exit, Handle, Launcher
from comfyhub.models import ComfyUIService, ServiceStatus
from comfyhub.net.endpoint import Endpoint, binding_of, secret_of
from comfyhub.reasons import Reason, words
from comfyhub.services.health import HealthChecker
from comfyhub.services.prober import Prober


@dataclass(frozen=True, slots=True)  # slots: one object each, a thousand per sweep
class Probe:
    """One heartbeat check of one record."""

    healthy: bool
    exited: Exit | None = None  # how the process ended, if it did
    reason: Reason | None = None  # why it is not healthy
    why: str = ""  # the same, in words


# How long a confirmed answer stands in for a new check of an online instance.
FRESH_SECONDS = 1.0
# Confirmations kept at most; past it they are dropped all at once (a drop costs one check each).
_MAX_CONFIRMED = 10_000


class Liveness:
    def __init__(self, launcher: Launcher, health: HealthChecker):
        self.launcher = launcher
        self.health = health
        self._confirmed: dict[int, tuple[int, float]] = {}  # project → (generation, monotonic time)
        self.checks = 0  # health checks made by `answers` (the reuse path's cost, for tests)

    def confirm(self, project_id: int | None, generation: int | None, at: float | None = None) -> None:
        """The project's instance, at this generation, was seen healthy and ours just now
        (or at monotonic time `at`, for a check answered later)."""
        if project_id is None or generation is None:
            return  # a warm instance: no open reuses it
        if len(self._confirmed) >= _MAX_CONFIRMED:
            self._confirmed.clear()
        self._confirmed[project_id] = (generation, time.monotonic() if at is None else at)

    def forget(self, project_id: int) -> None:
        self._confirmed.pop(project_id, None)

    def fresh(self, record: ComfyUIService) -> bool:
        """An online record whose instance was confirmed less than FRESH_SECONDS ago."""
        seen = self._confirmed.get(record.project_id)
        return (
            seen is not None
            and record.status == ServiceStatus.ONLINE
            and seen[0] == record.generation
            and time.monotonic() - seen[1] < FRESH_SECONDS
        )

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
        """Our process is alive and answers /system_stats with our own argv — or, online,
        answered within the last FRESH_SECONDS (then only the process is checked)."""
        handle = self.handle(record)
        if not self.alive(handle):
            return False
        if self.fresh(record):
            return True
        self.checks += 1
        if await self.health.is_ours(handle.endpoint, record.base_dir):
            self.confirm(record.project_id, record.generation)
            return True
        return False

    async def queue(self, record: ComfyUIService) -> dict | None:
        """ComfyUI's /queue (`queue_running`, `queue_pending`) of an instance; None when it
        does not answer or answers something else."""
        state = record.launcher_state
        target = Endpoint(record.host or "127.0.0.1", record.port, secret_of(state), binding_of(state))
        queue = await self.health.get_json(target, "/queue")
        return queue if isinstance(queue, dict) else None

    async def probe(self, record: ComfyUIService) -> Probe:
        handle = self.handle(record)
        gone = self._gone(record, handle)
        if gone is not None:
            return gone
        return self._answered(record, await self.health.is_ours(handle.endpoint, record.base_dir))

    async def probe_page(
        self, records: list[ComfyUIService], prober: Prober, group: int, tick: float
    ) -> list[Probe] | None:
        """`probe` for each record, the HTTP checks made by the prober process (their
        processes are checked here); None when the prober could not answer."""
        probes: list[Probe | None] = []
        asked: list[tuple[ComfyUIService, Handle]] = []
        for record in records:
            handle = self.handle(record)
            probes.append(self._gone(record, handle))
            if probes[-1] is None:
                asked.append((record, handle))
        sent = time.monotonic()  # no later than any check: what a confirmation may claim
        targets = [(handle.endpoint, record.base_dir) for record, handle in asked]
        ours = await prober.check(targets, self.health.timeout, group, tick)
        if ours is None:
            return None
        verdicts = iter(zip(asked, ours, strict=True))
        for i, probe in enumerate(probes):
            if probe is None:
                (record, _), answered = next(verdicts)
                probes[i] = self._answered(record, answered, at=sent)
        return probes  # type: ignore[return-value]  # every None was filled

    def _gone(self, record: ComfyUIService, handle: Handle | None) -> Probe | None:
        """The probe of a record whose process is missing or exited; None while it runs."""
        if handle is None:
            return Probe(False, None, Reason.NO_PROCESS, record.last_error or words(Reason.NO_PROCESS))
        exited = self.launcher.poll(handle)
        if exited is not None:
            return Probe(False, exited, Reason.CRASHED, words(Reason.CRASHED, exit=exited.reason))
        return None

    def _answered(self, record: ComfyUIService, ours: bool, at: float | None = None) -> Probe:
        if ours:
            self.confirm(record.project_id, record.generation, at)
            return Probe(True)
        return Probe(False, None, Reason.UNRESPONSIVE, words(Reason.UNRESPONSIVE))
