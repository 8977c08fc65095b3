"""The automatic-restart plan: back-off doubling, the window, giving up — a pure function."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from comfyhub.config import load_settings
from comfyhub.models import ComfyUIService, ServiceStatus
from comfyhub.reasons import Reason
from comfyhub.services.restarts import restart_plan

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _settings(**overrides):
    values = dict(
        comfyhub_database_url="sqlite+aiosqlite:///:memory:",
        comfyhub_secret_key="k",
        comfyui_instance_base_dir=Path("/nonexistent"),
        comfyui_auto_restart=True,
        comfyui_restart_backoff_seconds=2,
        comfyui_restart_max_failures=3,
        comfyui_restart_window_seconds=600,
    )
    values.update(overrides)
    return load_settings(_env_file=None, **values)


def _record(attempts: int, window_start: datetime | None) -> ComfyUIService:
    return ComfyUIService(restart_attempts=attempts, restart_window_start=window_start)


def test_off_plans_nothing():
    assert restart_plan(_settings(comfyui_auto_restart=False), _record(0, None), NOW) == {}


def test_backoff_doubles_within_the_window():
    settings = _settings()
    delays = []
    for attempts in range(3):
        plan = restart_plan(settings, _record(attempts, NOW - timedelta(seconds=10)), NOW)
        assert plan["restart_window_start"] == NOW - timedelta(seconds=10)
        delays.append((plan["next_restart_at"] - NOW).total_seconds())
    assert delays == [2, 4, 8]


def test_gives_up_at_the_limit_with_a_reason_code():
    plan = restart_plan(_settings(), _record(3, NOW - timedelta(seconds=10)), NOW)
    assert plan["status"] == ServiceStatus.FAILED and plan["reason"] == Reason.RESTARTS_EXHAUSTED
    assert plan["next_restart_at"] is None
    assert plan["last_error"].startswith("600 秒内自动重启 3 次仍失败")


def test_a_new_window_starts_the_count_afresh():
    plan = restart_plan(_settings(), _record(3, NOW - timedelta(seconds=601)), NOW)
    assert plan["restart_window_start"] == NOW and plan["restart_attempts"] == 0
    assert (plan["next_restart_at"] - NOW).total_seconds() == 2
