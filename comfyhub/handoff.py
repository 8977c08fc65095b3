"""The hand-off from comfyhub's origin to the instance origin: one-time codes, and the
instance cookie they are traded for.

ComfyUI's pages are served on an origin of their own (security.InstanceOrigin), where
comfyhub's session cookie never counts. A browser gets there by a redirect from the main
origin carrying a one-time code; the instance origin trades the code for its own cookie:

- A code is random, stored as its HMAC only, bound to the login session (so to its user)
  and to one project, and lives CODE_TTL at most. Trading it deletes its row in the same
  statement that reads it (DELETE … RETURNING): with any number of workers a code works
  once.
- The instance cookie names the login session by its row id and carries
  HMAC(secret, session's token digest, scope): it is worth nothing without that session
  row, so logging out (which deletes the row) ends it too, and it is never a session
  token, so the API, which only knows session and access tokens, never accepts it. Its
  scope is "all" (one instance origin for all projects: the user's projects) or one
  project id (one origin per project).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from comfyhub.auth import token_digest
from comfyhub.models import AuthSession, EntryCode, utcnow

CODE_TTL = timedelta(seconds=30)
ALL_PROJECTS = "all"


@dataclass(frozen=True)
class Entry:
    """A traded code: whose login it was, and until when that login lasts."""

    session_id: int
    user_id: int
    session_digest: str
    expires_at: datetime


@dataclass(frozen=True)
class InstancePass:
    """What a valid instance cookie stands for."""

    user_id: int
    project_id: int | None  # None: every project of the user


async def create_code(db: AsyncSession, secret_key: str, session_token: str, project_id: int) -> str | None:
    """A new code for the login `session_token` and `project_id`; None when the login is gone."""
    now = utcnow()
    session_id = await db.scalar(
        select(AuthSession.id).where(
            AuthSession.token_digest == token_digest(secret_key, session_token), AuthSession.expires_at > now
        )
    )
    if session_id is None:
        return None
    await db.execute(delete(EntryCode).where(EntryCode.expires_at <= now))  # unused ones, long expired
    code = secrets.token_urlsafe(32)
    db.add(
        EntryCode(
            code_digest=_code_digest(secret_key, code),
            session_id=session_id,
            project_id=project_id,
            expires_at=now + CODE_TTL,
        )
    )
    await db.commit()
    return code


async def redeem_code(db: AsyncSession, secret_key: str, code: str, project_id: int) -> Entry | None:
    """Trade `code` for the login it was made for; None when it is unknown, used, expired,
    made for another project, or its login ended. The code is used up either way."""
    if not code or len(code) > 128:
        return None
    row = (
        await db.execute(
            delete(EntryCode)
            .where(EntryCode.code_digest == _code_digest(secret_key, code))
            .returning(EntryCode.session_id, EntryCode.project_id, EntryCode.expires_at)
        )
    ).first()
    await db.commit()
    now = utcnow()
    if row is None or row.project_id != project_id or _aware(row.expires_at) <= now:
        return None
    session = (
        await db.execute(
            select(AuthSession.user_id, AuthSession.token_digest, AuthSession.expires_at).where(
                AuthSession.id == row.session_id, AuthSession.expires_at > now
            )
        )
    ).first()
    if session is None:
        return None
    return Entry(row.session_id, session.user_id, session.token_digest, session.expires_at)


def instance_cookie(secret_key: str, entry: Entry, project_id: int | None) -> str:
    """The instance cookie's value for `entry`, valid for `project_id` (None: all the user's)."""
    scope = ALL_PROJECTS if project_id is None else str(project_id)
    return f"{entry.session_id}.{scope}.{_cookie_mac(secret_key, entry.session_id, entry.session_digest, scope)}"


async def instance_pass(db: AsyncSession, secret_key: str, value: str) -> InstancePass | None:
    """What the instance cookie `value` stands for, while its login lasts; None otherwise."""
    session_id, scope, mac = _parse(value)
    if session_id is None:
        return None
    row = (
        await db.execute(
            select(AuthSession.user_id, AuthSession.token_digest).where(
                AuthSession.id == session_id, AuthSession.expires_at > utcnow()
            )
        )
    ).first()
    if row is None or not hmac.compare_digest(mac, _cookie_mac(secret_key, session_id, row.token_digest, scope)):
        return None
    return InstancePass(row.user_id, None if scope == ALL_PROJECTS else int(scope))


def _parse(value: str) -> tuple[int | None, str, str]:
    parts = value.split(".") if value and len(value) <= 128 else []
    if len(parts) != 3 or not parts[0].isdigit() or len(parts[0]) > 10:
        return None, "", ""
    if parts[1] != ALL_PROJECTS and not (parts[1].isdigit() and len(parts[1]) <= 10):
        return None, "", ""
    return int(parts[0]), parts[1], parts[2]


def _code_digest(secret_key: str, code: str) -> str:
    return token_digest(secret_key, "entry-code|" + code)


def _cookie_mac(secret_key: str, session_id: int, session_digest: str, scope: str) -> str:
    message = f"instance-cookie|{session_id}|{session_digest}|{scope}".encode()
    return hmac.new(secret_key.encode(), message, hashlib.sha256).hexdigest()


def _aware(value: datetime) -> datetime:
    # Read back through DELETE … RETURNING: naive on SQLite should the column type be skipped.
    return value if value.tzinfo else value.replace(tzinfo=UTC)
