"""The one filter over a project's outputs, shared by the gallery, selections and exports."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

MARKS = ("pass", "fail")
STATUSES = ("success", "error", "interrupted")
MEDIA_TYPES = ("image", "video", "audio", "other")


@dataclass
class OutputFilter:
    since: datetime | None = None  # created at or after
    until: datetime | None = None  # created before
    status: str | None = None  # the generation's status
    mark: str | None = None  # pass | fail | none (not marked yet)
    tags: list[str] = field(default_factory=list)  # all of them
    text: str | None = None  # in the prompt, the negative prompt or the file name
    media_type: str | None = None
    ids: list[int] | None = None  # exactly these outputs
    deleted: bool = False  # the trash instead of the gallery


def parse_when(value: str, end: bool = False) -> datetime:
    """`2026-12-01` (a whole day: as an end, the day is included) or an ISO date-time;
    a time without a zone is UTC. Raises ValueError."""
    if len(value) == 10:
        day = date.fromisoformat(value)
        return datetime.combine(day + timedelta(days=1) if end else day, time(), UTC)
    when = datetime.fromisoformat(value)
    return when if when.tzinfo else when.replace(tzinfo=UTC)
