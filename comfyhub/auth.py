"""Passwords, session tokens and the failed-login throttle.

- Passwords: argon2id (argon2-cffi defaults). Hashing runs in a thread: it takes tens
  of milliseconds of CPU and must not stall other users' requests.
- Sessions: a random token is both the cookie value and the bearer token; the database
  keeps only HMAC(secret key, token), so a stolen database dump cannot log anyone in.
- Personal access tokens (`chp_…`): long-lived bearer tokens for scripts, kept the same
  way (HMAC only). The prefix tells `user_for_token` which table to ask.
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
import string
from datetime import datetime, timedelta
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from comfyhub.models import ApiToken, AuthSession, LoginThrottle, User, utcnow
from comfyhub.security import API_TOKEN_PREFIX, is_api_token

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
    """The user a session token or a personal access token belongs to, if it is valid now."""
    if not token or len(token) > 256:
        return None
    if is_api_token(token):
        return await _user_for_api_token(db, secret_key, token)
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


# --- personal access tokens -------------------------------------------------------------

MAX_API_TOKENS = 50  # live (unexpired) tokens per user
# `last_used_at` is written at most this often per token: no write per request.
LAST_USED_EVERY = timedelta(minutes=1)
_TOKEN_ALPHABET = string.ascii_letters + string.digits  # no "-" or "_": one double-click selects it
_TOKEN_CHARS = 40  # about 238 random bits
SHOWN_PREFIX = len(API_TOKEN_PREFIX) + 6  # "chp_" and 6 characters: recognisable, not guessable


class TooManyTokens(Exception):
    """The user already holds MAX_API_TOKENS live tokens."""


def new_api_token() -> str:
    return API_TOKEN_PREFIX + "".join(secrets.choice(_TOKEN_ALPHABET) for _ in range(_TOKEN_CHARS))


async def create_api_token(
    db: AsyncSession, user_id: int, secret_key: str, name: str, days: int
) -> tuple[ApiToken, str]:
    """Store a new token for `user_id`; return its row and the token (shown once, never again).

    Raises TooManyTokens when the user would hold more than MAX_API_TOKENS live ones. The
    count is taken after the insert, with the user's row locked: on PostgreSQL the lock
    orders concurrent creates of one user, on SQLite the insert itself takes the write
    lock; either way two creates at once cannot both slip under the limit.
    """
    await db.execute(select(User.id).where(User.id == user_id).with_for_update())
    token, now = new_api_token(), utcnow()
    row = ApiToken(
        user_id=user_id,
        name=name,
        token_digest=token_digest(secret_key, token),
        prefix=token[:SHOWN_PREFIX],
        created_at=now,
        expires_at=now + timedelta(days=days),
    )
    db.add(row)
    await db.flush()
    live = await db.scalar(
        select(func.count()).select_from(ApiToken).where(ApiToken.user_id == user_id, ApiToken.expires_at > now)
    )
    if live > MAX_API_TOKENS:
        await db.rollback()
        raise TooManyTokens
    await db.commit()
    return row, token


async def api_tokens_of(db: AsyncSession, user_id: int) -> list[ApiToken]:
    """The user's tokens, expired ones included (until revoked), newest first."""
    rows = await db.execute(
        select(ApiToken).where(ApiToken.user_id == user_id).order_by(ApiToken.created_at.desc(), ApiToken.id.desc())
    )
    return list(rows.scalars())


async def revoke_api_token(db: AsyncSession, user_id: int, token_id: int) -> bool:
    """Delete the user's token `token_id`; False when the user has no such token."""
    result = await db.execute(delete(ApiToken).where(ApiToken.id == token_id, ApiToken.user_id == user_id))
    await db.commit()
    return result.rowcount > 0


async def _user_for_api_token(db: AsyncSession, secret_key: str, token: str) -> User | None:
    now = utcnow()
    row = (
        await db.execute(
            select(User, ApiToken.id, ApiToken.last_used_at)
            .join(ApiToken, ApiToken.user_id == User.id)
            .where(ApiToken.token_digest == token_digest(secret_key, token))
            .where(ApiToken.expires_at > now)
        )
    ).first()
    if row is None:
        return None
    user, token_id, last_used = row
    if last_used is None or now - last_used >= LAST_USED_EVERY:
        # Decided on the value just read, so a token in steady use costs one write a
        # minute, not one per request (an UPDATE that matches nothing still takes
        # SQLite's write lock).
        await db.execute(update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=now))
        await db.commit()
    return user


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
