"""Passwords, session tokens and the failed-login throttle.

- Passwords: argon2id (argon2-cffi defaults). Hashing runs in a thread: it takes tens
  of milliseconds of CPU and must not stall other users' requests.
- Sessions: a random token is both the cookie value and the bearer token; the database
  keeps only HMAC(secret key, token), so a stolen database dump cannot log anyone in.
- Personal access tokens (`chp_…`): long-lived bearer tokens for scripts, kept the same
  way (HMAC only). The prefix tells `token_owner` which table to ask.
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
import time
from datetime import datetime, timedelta
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from comfyhub.models import ApiToken, AuthSession, LoginThrottle, User, utcnow
from comfyhub.security import API_TOKEN_PREFIX, is_api_token

_hasher = PasswordHasher()
AUTH_TTL = 5.0  # seconds a token's user is remembered (TokenCache)
MAX_CACHED_TOKENS = 10_000


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


async def token_owner(db: AsyncSession, secret_key: str, token: str) -> tuple[User, datetime] | None:
    """The user a valid token belongs to, and when the token expires."""
    if not token or len(token) > 256:
        return None
    if is_api_token(token):
        return await _owner_of_api_token(db, secret_key, token)
    row = (
        await db.execute(
            select(User, AuthSession.expires_at)
            .join(AuthSession, AuthSession.user_id == User.id)
            .where(AuthSession.token_digest == token_digest(secret_key, token))
            .where(AuthSession.expires_at > utcnow())
        )
    ).first()
    return (row[0], row[1]) if row else None


class TokenCache:
    """Who a token belongs to, remembered for AUTH_TTL seconds: the API and the proxy ask
    on every request, and a database round trip per request costs more than the rest of
    a reuse `open_comfy` or a proxied GET.

    A logout or a token revoked in this process is forgotten at once (`forget_token`,
    `forget_user`); in another worker it takes effect within AUTH_TTL. A token's expiry
    holds to the moment: an answer is never kept past it. Users are kept detached from any
    session: read them, never change them.
    """

    def __init__(self, sessions: async_sessionmaker[AsyncSession], secret_key: str):
        self.sessions = sessions
        self.secret_key = secret_key
        self._users: dict[str, tuple[float, User | None]] = {}
        self.forgets = 0  # bumped by every forget: an answer read across one is not kept

    async def user(self, token: str | None) -> User | None:
        if not token:
            return None
        hit = self._users.get(token)  # keyed by the token itself: no HMAC per request
        now = time.monotonic()
        if hit and hit[0] > now:
            return hit[1]
        forgets = self.forgets
        keep = AUTH_TTL
        async with self.sessions() as db:
            owner = await token_owner(db, self.secret_key, token)
            user = owner[0] if owner else None
            if owner is not None:
                db.expunge(user)
                keep = min(keep, (owner[1] - utcnow()).total_seconds())  # never past its expiry
        if len(self._users) > MAX_CACHED_TOKENS:
            self._users.clear()
        # A logout or revocation while the database was asked may have come too late for
        # the answer just read: use it for this request, but do not keep it.
        if forgets == self.forgets:
            self._users[token] = (now + keep, user)
        return user

    def forget_token(self, token: str) -> None:
        self.forgets += 1
        self._users.pop(token, None)

    def forget_user(self, user_id: int) -> None:
        """Drop every cached token of `user_id`: revoking a personal access token knows
        only its id, not the token. Rare, so a scan is fine."""
        self.forgets += 1
        for token in [t for t, (_, user) in self._users.items() if user is not None and user.id == user_id]:
            del self._users[token]


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


async def _owner_of_api_token(db: AsyncSession, secret_key: str, token: str) -> tuple[User, datetime] | None:
    now = utcnow()
    row = (
        await db.execute(
            select(User, ApiToken.id, ApiToken.last_used_at, ApiToken.expires_at)
            .join(ApiToken, ApiToken.user_id == User.id)
            .where(ApiToken.token_digest == token_digest(secret_key, token))
            .where(ApiToken.expires_at > now)
        )
    ).first()
    if row is None:
        return None
    user, token_id, last_used, expires_at = row
    if last_used is None or now - last_used >= LAST_USED_EVERY:
        # Decided on the value just read, so a token in steady use costs one write a
        # minute, not one per request (an UPDATE that matches nothing still takes
        # SQLite's write lock).
        await db.execute(update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=now))
        await db.commit()
    return user, expires_at


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
