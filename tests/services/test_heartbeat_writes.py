"""What a heartbeat sweep writes: what changed, plus one batched stamp of `last_heartbeat`.

No processes: the records are written straight into the database and each check's answer
is chosen per record (the Liveness's probe is replaced), so that a sweep over more records
than one stamp statement holds runs in a moment, on both databases.
"""

from __future__ import annotations

import math
from datetime import timedelta

import pytest
from sqlalchemy import event, select, update

from comfyhub.db import create_engine, session_factory
from comfyhub.models import ComfyUIService, Project, ServiceStatus, User, utcnow
from comfyhub.reasons import Reason, words
from comfyhub.services.liveness import Probe
from comfyhub.services.manager import ServiceManager
from comfyhub.services.records import HEARTBEAT_BATCH
from tests.support.net import wait_for

ONLINE, OFFLINE = ServiceStatus.ONLINE, ServiceStatus.OFFLINE
LONG_AGO = timedelta(minutes=5)


class Hub:
    """A ServiceManager over `n` recorded instances, whose checks answer as told."""

    def __init__(self, manager: ServiceManager, engine, projects: list[int]):
        self.manager = manager
        self.engine = engine
        self.projects = projects
        self.unhealthy: set[int] = set()
        self.during_check: dict[int, object] = {}  # project id -> coroutine function run inside its check
        self.announced: list[int] = []  # what the listeners were told
        self.writes: list[str] = []  # every INSERT/UPDATE/DELETE sent to the database (but the test's own)
        self._own_write = False
        manager.listeners.append(self.announced.append)
        manager.liveness.probe = self._probe
        event.listen(engine.sync_engine, "before_cursor_execute", self._capture)

    async def _probe(self, record: ComfyUIService) -> Probe:
        if record.project_id in self.during_check:
            await self.during_check[record.project_id]()
        if record.project_id in self.unhealthy:
            return Probe(False, None, Reason.UNRESPONSIVE, words(Reason.UNRESPONSIVE))
        return Probe(True)

    def _capture(self, _conn, _cursor, statement, *_args) -> None:
        if not self._own_write and statement.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE")):
            self.writes.append(" ".join(statement.split()))

    def stamps(self) -> list[str]:
        """The heartbeat stamp statements among the writes (they keep updated_at as it was)."""
        return [w for w in self.writes if w.startswith("UPDATE comfyui_services SET last_heartbeat=") and _KEEP in w]

    async def rows(self) -> dict[int, dict]:
        async with self.manager.sessions() as db:
            found = (await db.execute(select(ComfyUIService))).scalars().all()
        return {r.project_id: {c.key: getattr(r, c.key) for c in ComfyUIService.__mapper__.column_attrs} for r in found}

    async def set(self, project_id: int, **values) -> None:
        """Change a record behind the heartbeat's back (another worker, a start)."""
        self._own_write = True
        try:
            async with self.manager.sessions() as db:
                stmt = update(ComfyUIService).where(ComfyUIService.project_id == project_id).values(**values)
                await db.execute(stmt)
                await db.commit()
        finally:
            self._own_write = False


_KEEP = "updated_at=comfyui_services.updated_at"


@pytest.fixture
async def make_hub(db_url, tmp_path):
    from tests.conftest import make_settings

    made: list[Hub] = []

    async def make(n: int, **overrides) -> Hub:
        # The checks answer as told here, in the hub's Liveness: never by the prober process.
        overrides.setdefault("comfyui_heartbeat_prober_min_instances", 10**9)
        settings = make_settings(db_url, tmp_path, comfyui_stop_instances_on_exit=False, **overrides)
        engine = create_engine(db_url)
        sessions = session_factory(engine)
        long_ago = utcnow() - LONG_AGO
        async with sessions() as db:
            user = User(username="hb-owner", password_hash="-", is_admin=False)
            db.add(user)
            await db.flush()
            projects = [Project(name=f"HB {i}", code=f"HB-{i}", owner_user_id=user.id) for i in range(n)]
            db.add_all(projects)
            await db.flush()
            for i, project in enumerate(projects):
                state = {"pid": 4_000_000 + i, "create_time": 1.0, "cmdline": ["python", "main.py"], "port": 20000 + i}
                db.add(
                    ComfyUIService(
                        user_id=user.id,
                        project_id=project.id,
                        status=ONLINE,
                        generation=1,
                        port=20000 + i,
                        host="127.0.0.1",
                        pid=state["pid"],
                        launcher="local",
                        launcher_state={**state, "host": "127.0.0.1"},
                        started_at=long_ago,
                        last_heartbeat=long_ago,
                        last_activity=long_ago,
                        updated_at=long_ago,
                    )
                )
            await db.commit()
            ids = [p.id for p in projects]
        hub = Hub(ServiceManager(settings, sessions), engine, ids)
        made.append(hub)
        return hub

    yield make
    for hub in made:
        await hub.manager.shutdown()
        await hub.engine.dispose()


async def test_a_steady_sweep_writes_only_batched_heartbeat_stamps(make_hub):
    n = HEARTBEAT_BATCH + 100
    hub = await make_hub(n)
    before = await hub.rows()
    started = utcnow()

    counts = await hub.manager.heartbeat_once()

    assert counts == {"online": n, "offline": 0}
    # Writes: one stamp statement per HEARTBEAT_BATCH records, and nothing else at all.
    assert len(hub.stamps()) == math.ceil(n / HEARTBEAT_BATCH) == 2
    assert hub.writes == hub.stamps()
    assert hub.announced == []  # nothing anyone caches changed
    after = await hub.rows()
    for project in hub.projects:
        # The stamp is the sweep's start: never later than the check it vouches for.
        assert started <= after[project]["last_heartbeat"] <= utcnow()
        assert {**after[project], "last_heartbeat": None} == {**before[project], "last_heartbeat": None}


async def test_with_a_short_interval_only_every_few_sweeps_stamps_the_rest_write_nothing(make_hub):
    hub = await make_hub(30, comfyui_heartbeat_interval_seconds=10)  # 30 s / 10 s: every third
    assert hub.manager.heartbeat.stamp_every() == 3
    stamped = []
    for _ in range(6):
        hub.writes.clear()
        await hub.manager.heartbeat_once()
        assert hub.writes == hub.stamps()
        stamped.append(len(hub.stamps()))
    assert stamped == [1, 0, 0, 1, 0, 0] and hub.announced == []


async def test_changes_are_written_and_announced_one_by_one_the_rest_only_stamped(make_hub):
    hub = await make_hub(40)
    lost, recovered, overtaken = hub.projects[:3], hub.projects[3:5], hub.projects[5]
    hub.unhealthy.update(lost)
    for project in recovered:
        await hub.set(project, status=OFFLINE, reason=Reason.UNRESPONSIVE, last_error="无响应")

    async def restarted_meanwhile():  # a start claims the record while its check runs
        await hub.set(overtaken, generation=2)

    hub.during_check[overtaken] = restarted_meanwhile
    before = await hub.rows()
    hub.writes.clear()
    started = utcnow()

    counts = await hub.manager.heartbeat_once()

    assert counts == {"online": 37, "offline": 3}
    assert sorted(hub.announced) == sorted([*lost, *recovered])
    changes = [w for w in hub.writes if w not in hub.stamps()]
    assert len(changes) == 5 and all(w.startswith("UPDATE comfyui_services SET") for w in changes)
    assert len(hub.stamps()) == 1
    after = await hub.rows()
    for project in lost:
        assert after[project]["status"] == OFFLINE and after[project]["reason"] == Reason.UNRESPONSIVE
        assert after[project]["last_heartbeat"] == before[project]["last_heartbeat"]
    for project in recovered:
        assert after[project]["status"] == ONLINE and after[project]["last_error"] == ""
        assert after[project]["last_heartbeat"] >= started
    # Overtaken between read and write: the stamp is conditional on the generation seen.
    assert after[overtaken]["last_heartbeat"] == before[overtaken]["last_heartbeat"]
    for project in set(hub.projects) - {*lost, *recovered, overtaken}:
        assert after[project]["last_heartbeat"] >= started
        assert {**after[project], "last_heartbeat": None} == {**before[project], "last_heartbeat": None}


async def test_an_unchanged_offline_record_is_not_written(make_hub):
    hub = await make_hub(3)
    hub.unhealthy.add(hub.projects[0])
    await hub.manager.heartbeat_once()
    hub.writes.clear()
    hub.announced.clear()

    await hub.manager.heartbeat_once()

    assert hub.announced == []
    assert hub.writes == hub.stamps() and len(hub.stamps()) == 1  # the two healthy ones


async def test_the_heartbeat_users_see_is_never_older_than_promised(make_hub):
    """The real loop: every record read while it runs has a `last_heartbeat` no older than
    `max_heartbeat_age` (what docs/architecture.md promises), and it keeps moving."""
    n = 20
    hub = await make_hub(n, comfyui_heartbeat_interval_seconds=0.2, comfyui_health_timeout_seconds=0.3)
    heartbeat = hub.manager.heartbeat
    promised = timedelta(seconds=heartbeat.max_heartbeat_age(n))
    assert heartbeat.stamp_every() == 5 and promised < timedelta(seconds=2.5)
    seen_stamps: set = set()
    too_old: list = []

    async def several_sweeps_seen() -> bool:
        rows = await hub.rows()
        now = utcnow()  # after the read: each age is at least what a user saw
        if heartbeat.leading:  # the first sweep (reconcile) stamps the records left from set-up
            stamps = {r["last_heartbeat"] for r in rows.values()}
            if min(stamps) > utcnow() - LONG_AGO / 2:
                seen_stamps.update(stamps)
                too_old.extend(now - r["last_heartbeat"] for r in rows.values() if now - r["last_heartbeat"] > promised)
        return len(seen_stamps) >= 4

    await hub.manager.startup()
    await wait_for(several_sweeps_seen, timeout=30, what="four stamps seen through the records")
    assert too_old == []
