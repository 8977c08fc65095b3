"""Who may pass the proxy, and where each project's instance is — with short caches.

Every proxied request needs the caller and the instance's address. Looking both up in
the database per request would cost more than the whole forwarding (the proxy must
add under a millisecond), so answers are cached briefly:

- a token's user for auth.AUTH_TTL seconds, session or personal access token alike
  (auth.TokenCache, shared with the API: a logout or a token revoked in this process is
  forgotten at once; in another worker it takes effect within AUTH_TTL, and so does a
  token's expiry); an instance cookie's login the same way;
- a project's owner, status and address for TARGET_TTL seconds (a failed connection
  drops the entry at once, so a restarted instance is found again).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from comfyhub import auth, handoff
from comfyhub.models import ComfyUIService, Project
from comfyhub.net.endpoint import Endpoint, secret_of

TARGET_TTL = 1.0
_MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class Target:
    project_id: int
    owner_user_id: int
    status: str | None  # None: never started
    host: str
    port: int | None
    secret: str = field(default="", repr=False)  # the instance secret (net/endpoint.py)
    generation: int | None = None  # the record's: a response confirms this run's health

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.host, self.port, self.secret)


class ProxyAccess:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], secret_key: str, tokens: auth.TokenCache):
        self.sessions = sessions
        self.secret_key = secret_key
        self.tokens = tokens  # shared with the API
        self._targets: dict[int, tuple[float, Target | None]] = {}
        self._passes: dict[str, tuple[float, handoff.InstancePass | None]] = {}

    async def user_id(self, token: str | None) -> int | None:
        user = await self.tokens.user(token)
        return user.id if user else None

    def forget_token(self, token: str) -> None:
        self.tokens.forget_token(token)
        # The instance cookies of that login are not known by the token: forget them all
        # (a logout is rare; the others are simply looked up again).
        self._passes.clear()

    async def instance_pass(self, cookie: str | None) -> handoff.InstancePass | None:
        """What an instance cookie stands for (handoff.py), cached like a token's user."""
        if not cookie:
            return None
        hit = self._passes.get(cookie)
        now = time.monotonic()
        if hit and hit[0] > now:
            return hit[1]
        forgets = self.tokens.forgets
        async with self.sessions() as db:
            found = await handoff.instance_pass(db, self.secret_key, cookie)
        if len(self._passes) > _MAX_ENTRIES:
            self._passes.clear()
        if forgets == self.tokens.forgets:
            self._passes[cookie] = (now + auth.AUTH_TTL, found)
        return found

    async def entry_code(self, session_token: str, project_id: int) -> str | None:
        """A one-time code taking the login `session_token` to `project_id`'s instance origin."""
        async with self.sessions() as db:
            return await handoff.create_code(db, self.secret_key, session_token, project_id)

    async def redeem(self, code: str, project_id: int) -> handoff.Entry | None:
        async with self.sessions() as db:
            return await handoff.redeem_code(db, self.secret_key, code, project_id)

    def forget_user(self, user_id: int) -> None:
        """Drop every cached token of `user_id` (a personal access token was revoked)."""
        self.tokens.forget_user(user_id)
        self._passes.clear()

    async def target(self, project_id: int) -> Target | None:
        hit = self._targets.get(project_id)
        now = time.monotonic()
        if hit and hit[0] > now:
            return hit[1]
        async with self.sessions() as db:
            row = (
                await db.execute(
                    select(
                        Project.owner_user_id,
                        ComfyUIService.status,
                        ComfyUIService.host,
                        ComfyUIService.port,
                        ComfyUIService.launcher_state,
                        ComfyUIService.generation,
                    )
                    .outerjoin(ComfyUIService, ComfyUIService.project_id == Project.id)
                    .where(Project.id == project_id, Project.deleted_at.is_(None))
                )
            ).first()
        target = (
            Target(project_id, row[0], row[1], row[2] or "127.0.0.1", row[3], secret_of(row[4]), row[5])
            if row
            else None
        )
        if len(self._targets) > _MAX_ENTRIES:
            self._targets.clear()
        self._targets[project_id] = (now + TARGET_TTL, target)
        return target

    def forget_target(self, project_id: int) -> None:
        self._targets.pop(project_id, None)
