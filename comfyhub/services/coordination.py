"""Coordination between backend processes: per-project start locks and the heartbeat lease.

With several workers on PostgreSQL, "one start per project" and "one heartbeat" must
hold across processes, not only inside one event loop:

- ProjectLocks: a PostgreSQL session advisory lock per project, held for the whole
  start, on one connection per process. It is released by the server if the worker dies, so a crash never leaves a
  project locked. On SQLite there is one worker only (`serve` refuses more), and the
  manager's in-process single flight is the lock.
- Lease: a row in `leases` that one worker renews every sweep; another takes it over
  once it has expired (the holder died or hung).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from contextlib import asynccontextmanager
from datetime import timedelta

import psutil
from sqlalchemy import or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from comfyhub.models import Lease, utcnow

# Namespace of comfyhub's advisory locks (first key of the two-key form): "cfhb".
_LOCK_NAMESPACE = 0x63666862
# How often a lock held by another process is tried again.
LOCK_POLL_SECONDS = 0.05


class ProjectLocks:
    """Advisory locks, all held on one connection of this process's own.

    One connection for every lock, not one per start: starts wait for each other and for
    resources for long, and a pooled connection held by each of 32 queued starts once
    emptied the pool, so the whole hub answered 503 until they ended. A lock is taken
    with `pg_try_advisory_lock`, polled while another process holds it, because a
    blocking call would hold up the shared connection. Session locks are reentrant, and
    in-process callers are already single-flight per project, so sharing is safe.
    """

    def __init__(self, engine: AsyncEngine):
        self.engine = engine
        self.shared = engine.dialect.name == "postgresql"
        self._conn: AsyncConnection | None = None
        self._io = asyncio.Lock()  # one statement at a time on the shared connection

    @asynccontextmanager
    async def hold(self, project_id: int, wait: bool = True):
        """Yield True while this process holds the project's start lock (False: busy elsewhere)."""
        if not self.shared:
            yield True
            return
        got = await self._call("pg_try_advisory_lock", project_id)
        while wait and not got:
            await asyncio.sleep(LOCK_POLL_SECONDS)
            got = await self._call("pg_try_advisory_lock", project_id)
        try:
            yield got
        finally:
            if got:
                await self._call("pg_advisory_unlock", project_id)

    async def _call(self, fn: str, key: int) -> bool:
        async with self._io:
            try:
                if self._conn is None:
                    self._conn = await self.engine.connect()
                result = await self._conn.execute(text(f"SELECT {fn}(:ns, :id)"), {"ns": _LOCK_NAMESPACE, "id": key})
                await self._conn.commit()
                return bool(result.scalar())
            except Exception:
                # A broken connection has lost every lock it held (the server released
                # them); the next call starts on a new one.
                await self._drop()
                raise

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.invalidate()

    async def close(self) -> None:
        async with self._io:
            conn, self._conn = self._conn, None
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()


class HeartbeatLease:
    """Whoever holds the row `name` runs the sweep; `ttl` after its last renewal it is free."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], name: str, ttl_seconds: float):
        self.sessions = sessions
        self.name = name
        self.ttl = timedelta(seconds=ttl_seconds)
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    async def acquire_or_renew(self) -> bool:
        now = utcnow()
        async with self.sessions() as db:
            insert = pg_insert if db.bind.dialect.name == "postgresql" else sqlite_insert
            # A new lease row is born expired (`<=` below), so the first process takes it at once.
            await db.execute(
                insert(Lease)
                .values(name=self.name, holder="", expires_at=now)
                .on_conflict_do_nothing(index_elements=["name"])
            )
            result = await db.execute(
                update(Lease)
                .where(Lease.name == self.name, or_(Lease.holder == self.holder, Lease.expires_at <= now))
                .values(holder=self.holder, expires_at=now + self.ttl)
            )
            if result.rowcount == 0:
                # A holder on this machine whose process is gone (killed -9) need not be waited for.
                current = (await db.execute(select(Lease.holder).where(Lease.name == self.name))).scalar_one()
                if _dead_local_holder(current):
                    result = await db.execute(
                        update(Lease)
                        .where(Lease.name == self.name, Lease.holder == current)
                        .values(holder=self.holder, expires_at=now + self.ttl)
                    )
            await db.commit()
            return result.rowcount == 1

    async def release(self) -> None:
        async with self.sessions() as db:
            await db.execute(
                update(Lease).where(Lease.name == self.name, Lease.holder == self.holder).values(expires_at=utcnow())
            )
            await db.commit()


def _dead_local_holder(holder: str) -> bool:
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    return host == socket.gethostname() and pid.isdigit() and not psutil.pid_exists(int(pid))
