"""The audit trail: who started, stopped, culled or restarted what, when, and how it ended."""

from __future__ import annotations

import logging

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from comfyhub.models import Event

log = logging.getLogger("comfyhub.audit")


class Audit:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]):
        self.sessions = sessions

    async def record(
        self, action: str, project_id: int | None, user_id: int | None, actor: str, outcome: str, detail: str = ""
    ) -> None:
        try:
            async with self.sessions() as db:
                db.add(
                    Event(
                        action=action,
                        project_id=project_id,
                        user_id=user_id,
                        actor=actor[:64],
                        outcome=outcome[:32],
                        detail=detail[:2000],
                    )
                )
                await db.commit()
        except Exception:  # noqa: BLE001 — the audit trail must never break the lifecycle
            log.warning("could not record event %s for project %s", action, project_id, exc_info=True)

    async def events(self, limit: int = 100) -> list[Event]:
        async with self.sessions() as db:
            return list((await db.execute(select(Event).order_by(Event.id.desc()).limit(limit))).scalars())
