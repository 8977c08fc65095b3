"""Who may pass the proxy, and where each project's instance is — with short caches.

Every proxied request needs the caller and the instance's address. Looking both up in
the database per request would cost more than the whole forwarding (the proxy must
add under a millisecond), so answers are cached briefly:

- a session token's user for AUTH_TTL seconds (a logout in this process forgets it at
  once; in another worker it takes effect within AUTH_TTL);
- a project's owner, status and address for TARGET_TTL seconds (a failed connection
  drops the entry at once, so a restarted instance is found again).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from comfyhub.auth import user_for_token
from comfyhub.models import ComfyUIService, Project

AUTH_TTL = 5.0
TARGET_TTL = 1.0
_MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class Target:
    project_id: int
    owner_user_id: int
    status: str | None  # None: never started
    host: str
    port: int | None


class ProxyAccess:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], secret_key: str):
        self.sessions = sessions
        self.secret_key = secret_key
        self._users: dict[str, tuple[float, int | None]] = {}
        self._targets: dict[int, tuple[float, Target | None]] = {}

    async def user_id(self, token: str | None) -> int | None:
        if not token:
            return None
        hit = self._users.get(token)  # keyed by the token itself: no HMAC per request
        now = time.monotonic()
        if hit and hit[0] > now:
            return hit[1]
        async with self.sessions() as db:
            user = await user_for_token(db, self.secret_key, token)
        if len(self._users) > _MAX_ENTRIES:
            self._users.clear()
        self._users[token] = (now + AUTH_TTL, user.id if user else None)
        return user.id if user else None

    def forget_token(self, token: str) -> None:
        self._users.pop(token, None)

    async def target(self, project_id: int) -> Target | None:
        hit = self._targets.get(project_id)
        now = time.monotonic()
        if hit and hit[0] > now:
            return hit[1]
        async with self.sessions() as db:
            row = (
                await db.execute(
                    select(Project.owner_user_id, ComfyUIService.status, ComfyUIService.host, ComfyUIService.port)
                    .outerjoin(ComfyUIService, ComfyUIService.project_id == Project.id)
                    .where(Project.id == project_id, Project.deleted_at.is_(None))
                )
            ).first()
        target = Target(project_id, row[0], row[1], row[2] or "127.0.0.1", row[3]) if row else None
        if len(self._targets) > _MAX_ENTRIES:
            self._targets.clear()
        self._targets[project_id] = (now + TARGET_TTL, target)
        return target

    def forget_target(self, project_id: int) -> None:
        self._targets.pop(project_id, None)
