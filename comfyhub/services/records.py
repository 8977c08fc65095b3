"""The records of the instances (table `comfyui_services`): the only code that writes them.

Every write is one transaction, and every committed write tells the listeners which
project changed (the proxy drops its cached route), the same way for every kind of
write. Writes after a claim are conditional on the record's `generation` — a start,
stop or restart bumps it — so a late writer that was overtaken changes nothing and
learns so from the returned False (invariant 1).

One write is not a change and tells nobody: the heartbeat's stamp of `last_heartbeat`
on records that passed their check and are otherwise as they were (`stamp_heartbeats`).
It is batched — one statement per HEARTBEAT_BATCH records — because a sweep of a
thousand healthy instances would otherwise be a thousand statements holding SQLite's
one write lock, and a thousand listener calls emptying the proxy's route cache.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime

from sqlalchemy import delete, func, or_, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from comfyhub.models import ComfyUIService, ServiceStatus, utcnow
from comfyhub.reasons import Reason, words

S = ServiceStatus
LIVE = (S.STARTING, S.ONLINE)
WATCHED = (S.ONLINE, S.OFFLINE)
Row = ComfyUIService
# Rows per query when reading every watched record, and per settlement of a sweep's checks:
# rows are built and settled on the event loop, ~20 µs each, and users' requests wait
# behind each piece — at a hundred, under 2 ms.
PAGE = 100
# Records per heartbeat stamp statement (two bound parameters each).
HEARTBEAT_BATCH = 500
# A project's record; a row without a project is a warm instance of the pool (pool.py).
OWNED = Row.project_id.is_not(None)
WARM = Row.project_id.is_(None)


class Records:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]):
        self.sessions = sessions
        # Called with a project id after its record changed.
        self.listeners: list[Callable[[int], None]] = []

    # --- reading ---------------------------------------------------------------------------

    async def get(self, project_id: int) -> Row | None:
        async with self.sessions() as db:
            return await self._load(db, project_id)

    @staticmethod
    async def _load(db: AsyncSession, project_id: int) -> Row | None:
        return (await db.execute(select(Row).where(Row.project_id == project_id))).scalar_one_or_none()

    async def starting_ids(self) -> list[int]:
        return await self._values(Row.project_id, OWNED, Row.status == S.STARTING)

    async def active_ids(self) -> list[int]:
        """Projects whose instance may have a process: live or offline."""
        return await self._values(Row.project_id, OWNED, Row.status.in_((*LIVE, S.OFFLINE)))

    async def live_owners(self, except_project: int) -> list[int]:
        """The owner of every other live instance of a project (for the instance limits)."""
        return await self._values(Row.user_id, OWNED, Row.status.in_(LIVE), Row.project_id != except_project)

    async def live_ports(self, except_project: int | None) -> set[int]:
        """The ports of live instances, warm ones included, but the project's own."""
        others = or_(WARM, Row.project_id != except_project) if except_project is not None else True
        return set(await self._values(Row.port, Row.status.in_(LIVE), Row.port.is_not(None), others))

    async def active_with_ports(self, ports: set[int]) -> list[Row]:
        """Records that may have a process (live or offline), warm ones included, on any of these ports."""
        return await self._rows(Row.status.in_((*LIVE, S.OFFLINE)), Row.port.in_(ports)) if ports else []

    async def starting_ports(self) -> set[int]:
        """Ports of starts that may not have recorded their process yet."""
        return set(await self._values(Row.port, Row.status == S.STARTING, Row.port.is_not(None), Row.pid.is_(None)))

    async def live_gpus(self) -> list[str]:
        return await self._values(Row.gpu, Row.status.in_(LIVE), Row.gpu != "")

    async def due_restarts(self, now: datetime) -> list[Row]:
        return await self._rows(
            Row.next_restart_at.is_not(None), Row.next_restart_at <= now, Row.status.in_((S.OFFLINE, S.FAILED))
        )

    async def count_by_status(self) -> dict[str, int]:
        """Projects' records by status (warm instances: `warm_count`)."""
        async with self.sessions() as db:
            rows = (await db.execute(select(Row.status, func.count()).where(OWNED).group_by(Row.status))).all()
        return {status: n for status, n in rows}

    async def _rows(self, *where) -> list[Row]:
        async with self.sessions() as db:
            return list((await db.execute(select(Row).where(*where))).scalars())

    async def _values(self, column, *where) -> list:
        async with self.sessions() as db:
            return [value for (value,) in await db.execute(select(column).where(*where))]

    # --- writing ---------------------------------------------------------------------------

    async def update(self, project_id: int, generation: int, **values) -> bool:
        """Update the record if it is still at `generation`; False when overtaken."""
        stmt = update(Row).where(Row.project_id == project_id, Row.generation == generation)
        return (await self._execute([(project_id, _plain(stmt.values(updated_at=utcnow(), **values)))]))[0]

    async def update_seen(self, record: Row, statuses: Iterable[str], **values) -> bool:
        """Update only if generation and status are still what the caller saw."""
        return (await self.update_many([(record, values)], statuses))[0]

    async def update_many(self, updates: list[tuple[Row, dict]], statuses: Iterable[str] = WATCHED) -> list[bool]:
        """Several records in one transaction (a heartbeat sweep's results), each still
        conditional on the generation and status the caller saw."""
        statuses = tuple(statuses)
        # A generator: each statement is built (~0.5 ms of Python) just before it runs, not
        # all of them in one go on the event loop.
        return await self._execute(
            (
                record.project_id,
                _plain(
                    update(Row)
                    .where(
                        Row.project_id == record.project_id,
                        Row.generation == record.generation,
                        Row.status.in_(statuses),
                    )
                    .values(updated_at=utcnow(), **values)
                ),
            )
            for record, values in updates
        )

    async def stamp_heartbeats(self, records: list[Row], at: datetime) -> int:
        """Set `last_heartbeat` to `at` on these records, if still online at the generation
        the caller saw; return how many were stamped.

        Nothing else changes — not even `updated_at` — and no listener is told: what they
        cache (status, address) is as it was. One statement per HEARTBEAT_BATCH records.
        """
        stamped = 0
        for i in range(0, len(records), HEARTBEAT_BATCH):
            keys = [(r.project_id, r.generation) for r in records[i : i + HEARTBEAT_BATCH]]
            stmt = (
                update(Row)
                .where(tuple_(Row.project_id, Row.generation).in_(keys), Row.status == S.ONLINE)
                .values(last_heartbeat=at, updated_at=Row.updated_at)  # explicit: no onupdate
            )
            async with self.sessions() as db:
                stamped += (await db.execute(_plain(stmt))).rowcount
                await db.commit()
        return stamped

    async def note_activity(self, project_id: int) -> None:
        """Proxied traffic or queued work: the idle culler counts from here."""
        stmt = update(Row).where(Row.project_id == project_id).values(last_activity=utcnow())
        await self._execute([(project_id, _plain(stmt))])

    async def claim(
        self, user_id: int, project_id: int, launcher: str, manual: bool, detail: str
    ) -> tuple[int, dict | None]:
        """Mark the record `starting` under a new generation (creating it on the first
        open); return that generation and the launcher state of the process it had."""
        async with self.sessions() as db:
            record = await self._load(db, project_id)
            if record is None:
                record = Row(user_id=user_id, project_id=project_id, generation=0, launcher=launcher)
                db.add(record)
            old = record.launcher_state
            record.generation += 1
            record.status = S.STARTING
            record.status_detail = detail
            record.gpu = ""
            if manual:  # a user's own click starts the automatic-restart count afresh
                record.restart_attempts, record.next_restart_at = 0, None
            record.last_error = ""
            record.stopped_reason = ""
            record.reason = ""
            record.port = None
            record.pid = None
            record.started_at = utcnow()
            record.last_activity = utcnow()
            record.launcher = launcher
            await db.commit()
        self._notify([project_id])
        return record.generation, old

    async def mark_stopped(self, project_id: int, reason: Reason, actor: str) -> tuple[Row | None, dict | None]:
        """Mark the record `stopped` under a new generation (whatever start was running is
        overtaken); return it and the launcher state of the process to stop."""
        async with self.sessions() as db:
            record = await self._load(db, project_id)
            if record is None:
                return None, None
            old = record.launcher_state
            record.generation += 1
            record.status = S.STOPPED
            record.status_detail = ""
            record.reason = reason
            record.stopped_reason = words(reason, actor=actor)
            record.pid = None
            record.launcher_state = None
            record.next_restart_at = None
            await db.commit()
        self._notify([project_id])
        return record, old

    # --- warm instances (services/pool.py): rows without a project --------------------------

    async def warm(self) -> list[Row]:
        """Every warm instance, starting or online, oldest first."""
        return await self._rows(WARM, Row.status.in_(LIVE))

    async def warm_count(self) -> int:
        async with self.sessions() as db:
            return (await db.execute(select(func.count()).where(WARM, Row.status.in_(LIVE)))).scalar_one()

    async def warm_exists(self, warm_id: int) -> bool:
        return bool(await self._values(Row.id, Row.id == warm_id, WARM))

    async def add_warm(self, launcher: str) -> int:
        """A new warm instance, `starting`, with no port yet; its id."""
        async with self.sessions() as db:
            row = Row(user_id=None, project_id=None, generation=1, launcher=launcher, status=S.STARTING)
            row.started_at = row.last_activity = utcnow()
            db.add(row)
            await db.commit()
            return row.id

    async def update_warm(self, warm_id: int, **values) -> bool:
        """Update a warm instance that is still warm (not taken, not dropped); False otherwise."""
        stmt = update(Row).where(Row.id == warm_id, WARM).values(updated_at=utcnow(), **values)
        async with self.sessions() as db:
            hit = (await db.execute(_plain(stmt))).rowcount == 1
            await db.commit()
        return hit

    async def drop_warm(self, warm_id: int, status: str | None = None) -> dict | None:
        """Delete a warm instance (at `status`, if given) and return its launcher state —
        or None when another process took or dropped it first: whoever deletes the row
        owns its process (stops it, or binds it)."""
        async with self.sessions() as db:
            state = await self._delete_warm(db, warm_id, status)
            await db.commit()
        return state

    async def take_warm(self, warm_id: int, project_id: int, generation: int, bound: dict) -> Row | None:
        """Hand a warm online instance to a project, atomically: its row is deleted and the
        project's record (still at `generation`) takes its process and port, in one
        transaction. None when the instance was taken or dropped meanwhile, or the
        project's start was overtaken (then the instance stays warm)."""
        async with self.sessions() as db:
            warm = (await db.execute(select(Row).where(Row.id == warm_id, WARM, Row.status == S.ONLINE))).scalar()
            if warm is None:
                return None
            values = dict(
                port=warm.port,
                pid=warm.pid,
                launcher_state={**(warm.launcher_state or {}), **bound},
                host=warm.host,
                base_dir=warm.base_dir,
                log_path=warm.log_path,
                gpu=warm.gpu,
                status_detail="启动中",
                updated_at=utcnow(),
            )
            if await self._delete_warm(db, warm_id, S.ONLINE) is None:
                await db.rollback()
                return None
            stmt = update(Row).where(Row.project_id == project_id, Row.generation == generation).values(**values)
            if (await db.execute(_plain(stmt))).rowcount != 1:
                await db.rollback()
                return None
            await db.commit()
        self._notify([project_id])
        return await self.get(project_id)

    @staticmethod
    async def _delete_warm(db: AsyncSession, warm_id: int, status: str | None) -> dict | None:
        where = [Row.id == warm_id, WARM] + ([Row.status == status] if status else [])
        found = (await db.execute(select(Row.launcher_state).where(*where))).first()
        if found is None:
            return None
        # Conditional: of two processes deleting the same row, one deletes it.
        if (await db.execute(_plain(delete(Row).where(*where)))).rowcount != 1:
            return None
        return found[0] or {}

    async def _execute(self, statements: Iterable[tuple[int, object]]) -> list[bool]:
        """Run update statements in one transaction; tell listeners about those that hit a row."""
        projects: list[int] = []
        hits: list[bool] = []
        async with self.sessions() as db:
            for project, stmt in statements:
                hits.append((await db.execute(stmt)).rowcount == 1)
                projects.append(project)
            if projects:
                await db.commit()
        self._notify([project for project, hit in zip(projects, hits, strict=False) if hit])
        return hits

    def _notify(self, project_ids: Iterable[int]) -> None:
        for project_id in project_ids:
            for listener in self.listeners:
                listener(project_id)


def _plain(stmt):
    """An UPDATE run as is: the session is thrown away after it, so the ORM's work of
    finding and refreshing matching objects in it (`synchronize_session`) is wasted."""
    return stmt.execution_options(synchronize_session=False)
