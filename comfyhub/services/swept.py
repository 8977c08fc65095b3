"""What a heartbeat sweep reads of the records: the columns it needs, as light objects,
a page at a time; the launcher state only when it changed. Reads only: the records'
writes stay in records.py."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from comfyhub.services.records import OWNED, PAGE, WATCHED, Row

# What a heartbeat sweep reads of each record, as plain rows (attributes by these names).
# An ORM object costs ~26 µs to build and 10 objects for the garbage collector to track, a
# row 16 µs and 4.5 (measured); a sweep holds a thousand for a second or two, long enough to
# reach the oldest generation, where they set off full collections and lengthen each one.
# `launcher_state` is not among them: decoding its JSON was ~40 % of a page's reading, and
# it changes only with the generation or the pid (`Records.watched` keeps it across sweeps).
SWEPT = (
    Row.project_id,
    Row.user_id,
    Row.generation,
    Row.status,
    Row.last_error,
    Row.reason,
    Row.pid,
    Row.host,
    Row.port,
    Row.base_dir,
    Row.log_path,
    Row.started_at,
    Row.last_activity,
    Row.restart_attempts,
    Row.restart_window_start,
)


@dataclass(frozen=True, slots=True)
class Swept:
    """A record as a heartbeat sweep sees it: the SWEPT columns, in their order, and its
    launcher_state."""

    project_id: int
    user_id: int
    generation: int
    status: str
    last_error: str
    reason: str
    pid: int | None
    host: str | None
    port: int | None
    base_dir: str
    log_path: str
    started_at: datetime | None
    last_activity: datetime | None
    restart_attempts: int
    restart_window_start: datetime | None
    launcher_state: dict | None


class SweptRecords:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]):
        self.sessions = sessions
        # launcher_state of the watched records by project, with the (generation, pid) it
        # belongs to: kept from one sweep to the next (`watched`).
        self._states: dict[int, tuple[tuple[int, int | None], dict | None]] = {}

    async def watched(self, pause: float = 0.0) -> list[Swept]:
        """The records the heartbeat checks (online or offline), by project, PAGE per query,
        `pause` seconds between queries.

        A record's launcher_state is read only when its (generation, pid) is new to this
        process: every start, claim, adoption or loss changes one of them, and nothing
        else writes the state. A record that changed between the two reads of its page is
        left out of this sweep (the next one sees it settled).
        """
        swept: list[Swept] = []
        states: dict[int, tuple[tuple[int, int | None], dict | None]] = {}
        last = None
        while True:
            if last is not None:
                await asyncio.sleep(pause)
            after = [Row.project_id > last] if last is not None else []
            async with self.sessions() as db:
                stmt = select(*SWEPT).where(OWNED, Row.status.in_(WATCHED), *after).order_by(Row.project_id).limit(PAGE)
                page = (await db.execute(stmt)).all()
                await self._read_states(db, page, states)
            for row in page:
                known = states.get(row.project_id)
                if known is not None and known[0] == (row.generation, row.pid):
                    swept.append(Swept(*row, known[1]))
            if len(page) < PAGE:
                self._states = states  # forget the records no longer watched
                return swept
            last = page[-1].project_id

    async def _read_states(self, db: AsyncSession, page: list, states: dict) -> None:
        """Put each row's (generation, pid) and launcher_state into `states`: from the
        previous sweep's when it is the same, else read now."""
        unknown = []
        for row in page:
            known = self._states.get(row.project_id)
            if known is not None and known[0] == (row.generation, row.pid):
                states[row.project_id] = known
            else:
                unknown.append(row.project_id)
        if unknown:
            stmt = select(Row.project_id, Row.generation, Row.pid, Row.launcher_state).where(
                Row.project_id.in_(unknown)
            )
            for project_id, generation, pid, state in await db.execute(stmt):
                states[project_id] = ((generation, pid), state)
