"""The one filter over a project's outputs, shared by the gallery, selections and exports."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

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
