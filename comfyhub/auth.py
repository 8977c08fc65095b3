"""Passwords, session tokens and the failed-login throttle.

- Passwords: argon2id (argon2-cffi defaults). Hashing runs in a thread: it takes tens
  of milliseconds of CPU and must not stall other users' requests.
- Sessions: a random token is both the cookie value and the bearer token; the database
  keeps only HMAC(secret key, token), so a stolen database dump cannot log anyone in.
- Throttle: failures are counted per (user name, client address) in the database, so
  every worker sees the same count. After COMFYHUB_LOGIN_MAX_FAILURES failures within
  COMFYHUB_LOGIN_LOCKOUT_SECONDS further attempts are refused (429) until the lock-out
  ends. Unknown user names are hashed against a dummy hash and counted the same way, so
  neither the answer nor its timing tells whether a user exists.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from datetime import datetime, timedelta
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from comfyhub.models import AuthSession, LoginThrottle, User, utcnow

_hasher = PasswordHasher()


@cache
def _dummy_hash() -> str:
    """What an unknown user name is checked against, so it costs as much as a real one.

    Made on first use, not at import: hashing takes tens of milliseconds of CPU, and
    importing comfyhub (the CLI, the proxy, a test) must not pay it.
    """
    return _hasher.hash(secrets.token_hex(16))


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hasher.hash, password)


def hash_password_sync(password: str) -> str:
    return _hasher.hash(password)


async def verify_password(password_hash: str | None, password: str) -> bool:
    def _verify() -> bool:
        try:
            return _hasher.verify(password_hash or _dummy_hash(), password) and password_hash is not None
        except (VerificationError, InvalidHashError):
            return False

    return await asyncio.to_thread(_verify)


def token_digest(secret_key: str, token: str) -> str:
    return hmac.new(secret_key.encode(), token.encode(), hashlib.sha256).hexdigest()


async def create_session(db: AsyncSession, user: User, secret_key: str, hours: float) -> str:
    """Store a new login for `user` and return its token (shown to the client once)."""
    token = secrets.token_urlsafe(32)
    db.add(
        AuthSession(
            token_digest=token_digest(secret_key, token),
            user_id=user.id,
            expires_at=utcnow() + timedelta(hours=hours),
        )
    )
    await db.commit()
    return token


async def user_for_token(db: AsyncSession, secret_key: str, token: str) -> User | None:
    if not token or len(token) > 256:
        return None
    row = await db.execute(
        select(User)
        .join(AuthSession, AuthSession.user_id == User.id)
        .where(AuthSession.token_digest == token_digest(secret_key, token))
        .where(AuthSession.expires_at > utcnow())
    )
    return row.scalar_one_or_none()


async def revoke_session(db: AsyncSession, secret_key: str, token: str) -> None:
    await db.execute(delete(AuthSession).where(AuthSession.token_digest == token_digest(secret_key, token)))
    await db.commit()


# --- throttle -------------------------------------------------------------------------


def throttle_key(username: str, client: str) -> str:
    return f"{username.strip().lower()[:128]}|{client[:100]}"


async def seconds_locked(db: AsyncSession, key: str) -> int:
    """Seconds until `key` may try again; 0 when it is not locked out."""
    row = await db.get(LoginThrottle, key)
    if row is None or row.locked_until is None:
        return 0
    left = (row.locked_until - utcnow()).total_seconds()
    return max(0, int(left) + 1) if left > 0 else 0


async def record_failure(db: AsyncSession, key: str, max_failures: int, window_s: float) -> None:
    now = utcnow()
    insert = pg_insert if db.bind.dialect.name == "postgresql" else sqlite_insert
    # Insert-or-ignore first so that two workers failing at once cannot collide on the key.
    await db.execute(
        insert(LoginThrottle)
        .values(key=key, failures=0, window_start=now)
        .on_conflict_do_nothing(index_elements=["key"])
    )
    row = (await db.execute(select(LoginThrottle).where(LoginThrottle.key == key).with_for_update())).scalar_one()
    if _expired(row.window_start, now, window_s):
        row.failures, row.window_start, row.locked_until = 0, now, None
    row.failures += 1
    if row.failures >= max_failures:
        row.locked_until = now + timedelta(seconds=window_s)
        row.failures, row.window_start = 0, now
    await db.commit()


async def clear_failures(db: AsyncSession, key: str) -> None:
    await db.execute(delete(LoginThrottle).where(LoginThrottle.key == key))
    await db.commit()


def _expired(start: datetime, now: datetime, window_s: float) -> bool:
    return (now - start).total_seconds() > window_s
