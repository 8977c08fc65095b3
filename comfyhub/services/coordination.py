"""Coordination between backend processes: per-project start locks and the heartbeat lease.

With several workers on PostgreSQL, "one start per project" and "one heartbeat" must
hold across processes, not only inside one event loop:

- ProjectLocks: a PostgreSQL session advisory lock per project, held for the whole
  start. It is released by the server if the worker dies, so a crash never leaves a
  project locked. On SQLite there is one worker only (`serve` refuses more), and the
  manager's in-process single flight is the lock.
- Lease: a row in `leases` that one worker renews every sweep; another takes it over
  once it has expired (the holder died or hung).
"""

from __future__ import annotations

import os
import socket
import uuid
from contextlib import asynccontextmanager
from datetime import timedelta

import psutil
from sqlalchemy import or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from comfyhub.models import Lease, utcnow

# Namespace of comfyhub's advisory locks (first key of the two-key form): "cfhb".
_LOCK_NAMESPACE = 0x63666862


class ProjectLocks:
    def __init__(self, engine: AsyncEngine):
        self.engine = engine
        self.shared = engine.dialect.name == "postgresql"

    @asynccontextmanager
    async def hold(self, project_id: int, wait: bool = True):
        """Yield True while this process holds the project's start lock (False: busy elsewhere)."""
        if not self.shared:
            yield True
            return
        conn = await self.engine.connect()
        try:
            fn = "pg_advisory_lock" if wait else "pg_try_advisory_lock"
            got = (
                await conn.execute(text(f"SELECT {fn}(:ns, :id)"), {"ns": _LOCK_NAMESPACE, "id": project_id})
            ).scalar()
            got = True if wait else bool(got)
            await conn.commit()
            try:
                yield got
            finally:
                if got:
                    await conn.execute(
                        text("SELECT pg_advisory_unlock(:ns, :id)"), {"ns": _LOCK_NAMESPACE, "id": project_id}
                    )
                    await conn.commit()
        finally:
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
