"""What a heartbeat sweep reads: every watched record, and its launcher state decoded only
when the record's generation or pid changed (the state changes with nothing else)."""

from __future__ import annotations

from dataclasses import fields

import pytest
from sqlalchemy import event, update

from comfyhub.db import create_engine, session_factory
from comfyhub.models import ComfyUIService, Project, ServiceStatus, User
from comfyhub.services.records import PAGE
from comfyhub.services.swept import SWEPT, Swept, SweptRecords


def test_a_swept_record_has_the_swept_columns_in_their_order_then_the_state():
    assert [c.key for c in SWEPT] + ["launcher_state"] == [f.name for f in fields(Swept)]


def _state(project: int, pid: int) -> dict:
    return {"pid": pid, "create_time": 1.0, "cmdline": ["python", "main.py"], "port": 20000 + project, "tag": pid}


class Reads:
    """The records in a real database, and the state reads the sweep reader sends."""

    def __init__(self, engine, sessions, ids: list[int]):
        self.sessions = sessions
        self.ids = ids
        self.state_reads: list[str] = []  # SELECTs that fetch launcher_state
        event.listen(engine.sync_engine, "before_cursor_execute", self._capture)

    def _capture(self, _conn, _cursor, statement, *_args) -> None:
        text = " ".join(statement.split())
        if text.startswith("SELECT") and "launcher_state" in text:
            self.state_reads.append(text)

    async def set(self, project_id: int, **values) -> None:
        async with self.sessions() as db:
            await db.execute(update(ComfyUIService).where(ComfyUIService.project_id == project_id).values(**values))
            await db.commit()


@pytest.fixture
async def reads(db_url):
    engine = create_engine(db_url)
    sessions = session_factory(engine)
    n = PAGE + 5  # two pages
    async with sessions() as db:
        user = User(username="swept-owner", password_hash="-", is_admin=False)
        db.add(user)
        await db.flush()
        projects = [Project(name=f"S {i}", code=f"S-{i}", owner_user_id=user.id) for i in range(n)]
        db.add_all(projects)
        await db.flush()
        for project in projects:
            pid = 5_000_000 + project.id
            db.add(
                ComfyUIService(
                    user_id=user.id,
                    project_id=project.id,
                    status=ServiceStatus.ONLINE,
                    generation=1,
                    port=20000 + project.id,
                    host="127.0.0.1",
                    pid=pid,
                    launcher="local",
                    launcher_state=_state(project.id, pid),
                )
            )
        await db.commit()
        ids = [p.id for p in projects]
    yield Reads(engine, sessions, ids)
    await engine.dispose()


async def test_the_state_is_read_once_then_again_only_after_a_new_generation_or_pid(reads):
    reader = SweptRecords(reads.sessions)
    first = await reader.watched()
    assert [r.project_id for r in first] == reads.ids
    assert all(r.launcher_state == _state(r.project_id, r.pid) for r in first)
    assert len(reads.state_reads) == 2  # one per page

    reads.state_reads.clear()
    again = await reader.watched()
    assert [(r.project_id, r.launcher_state) for r in again] == [(r.project_id, r.launcher_state) for r in first]
    assert reads.state_reads == []  # nothing changed: no state decoded

    restarted, adopted, stopped, lost = reads.ids[3], reads.ids[PAGE + 1], reads.ids[7], reads.ids[9]
    await reads.set(restarted, generation=2, pid=6_000_001, launcher_state=_state(restarted, 6_000_001))
    await reads.set(adopted, pid=6_000_002, launcher_state=_state(adopted, 6_000_002))  # same generation
    await reads.set(stopped, generation=2, status=ServiceStatus.STOPPED, pid=None, launcher_state=None)
    await reads.set(lost, status=ServiceStatus.OFFLINE, pid=None, launcher_state=None)  # the heartbeat's own write
    reads.state_reads.clear()
    third = {r.project_id: r for r in await reader.watched()}

    assert third[restarted].launcher_state["tag"] == 6_000_001 and third[restarted].generation == 2
    assert third[adopted].launcher_state["tag"] == 6_000_002
    assert third[lost].launcher_state is None and third[lost].status == ServiceStatus.OFFLINE
    assert stopped not in third  # no longer watched
    assert len(reads.state_reads) == 2  # only the pages with a changed record
    untouched = [p for p in reads.ids if p not in (restarted, adopted, stopped, lost)]
    assert all(third[p].launcher_state == _state(p, third[p].pid) for p in untouched)


async def test_records_no_longer_watched_are_forgotten(reads):
    reader = SweptRecords(reads.sessions)
    await reader.watched()
    gone = reads.ids[:10]
    for project_id in gone:
        await reads.set(project_id, status=ServiceStatus.STOPPED, generation=2)
    await reader.watched()
    assert set(reader._states) == set(reads.ids[10:])  # the cache does not grow with every record ever seen
