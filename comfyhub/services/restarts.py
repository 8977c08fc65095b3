"""Automatic restarts (COMFYUI_AUTO_RESTART): a pure plan, and the runner that carries it out.

An instance that died (not one stopped by a person or the culler) is restarted after
a back-off that doubles with each attempt; past COMFYUI_RESTART_MAX_FAILURES attempts
within COMFYUI_RESTART_WINDOW_SECONDS the record becomes `failed` with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from comfyhub.config import Settings
from comfyhub.metrics import Metrics
from comfyhub.models import ComfyUIService, ServiceStatus, utcnow
from comfyhub.reasons import Reason, words
from comfyhub.services.records import Records
from comfyhub.services.starts import Starts

log = logging.getLogger("comfyhub.restarts")


def restart_plan(settings: Settings, record: ComfyUIService, now: datetime) -> dict:
    """The record values that schedule the next restart of a died instance, or give up.

    Empty when automatic restarts are off. Pure: reads the record, writes nothing.
    """
    if not settings.comfyui_auto_restart:
        return {}
    window_start, attempts = record.restart_window_start, record.restart_attempts or 0
    if window_start is None or (now - window_start).total_seconds() > settings.comfyui_restart_window_seconds:
        window_start, attempts = now, 0
    if attempts >= settings.comfyui_restart_max_failures:
        gave_up = words(
            Reason.RESTARTS_EXHAUSTED, window=int(settings.comfyui_restart_window_seconds), attempts=attempts
        )
        return dict(
            status=ServiceStatus.FAILED,
            reason=Reason.RESTARTS_EXHAUSTED,
            next_restart_at=None,
            restart_window_start=window_start,
            last_error=gave_up,
        )
    delay = settings.comfyui_restart_backoff_seconds * (2**attempts)
    return dict(
        next_restart_at=now + timedelta(seconds=delay), restart_window_start=window_start, restart_attempts=attempts
    )


class RestartRunner:
    def __init__(self, settings: Settings, records: Records, starts: Starts, metrics: Metrics, background: Callable):
        self.settings = settings
        self.records = records
        self.starts = starts
        self.metrics = metrics
        self._background = background  # runs a coroutine without waiting for it

    async def run_due(self, now: datetime) -> None:
        """Start every restart whose time has come (called after each heartbeat sweep)."""
        if not self.settings.comfyui_auto_restart:
            return
        for record in await self.records.due_restarts(now):
            if record.project_id in self.starts.flights:
                continue
            attempt = (record.restart_attempts or 0) + 1
            await self.records.update(
                record.project_id, record.generation, next_restart_at=None, restart_attempts=attempt
            )
            self.metrics.restarts.inc()
            log.info("project %s: automatic restart %s", record.project_id, attempt)
            flight = self.starts.flight(record.user_id, record.project_id, "自动重启", manual=False)
            flight.task.add_done_callback(lambda _t, pid=record.project_id: self._background(self._after_restart(pid)))

    async def _after_restart(self, project_id: int) -> None:
        """A restart that failed is planned again, until the limit."""
        record = await self.records.get(project_id)
        if record is None or record.status != ServiceStatus.FAILED:
            return
        plan = restart_plan(self.settings, record, utcnow())
        if plan.get("status") == ServiceStatus.FAILED:
            plan["last_error"] = f"{plan['last_error']}\n{record.last_error}"
        await self.records.update(project_id, record.generation, **plan)
