"""The periodic sync's pace with many instances: a tick begins a bounded number of pulls,
every instance still gets its turn, and due times drift apart instead of bunching."""

from __future__ import annotations

import asyncio
from collections import Counter

from comfyhub.db import create_engine, session_factory
from comfyhub.models import ComfyUIService, Project
from comfyhub.outputs.sync import RECORDS_PAGE, SPAWN_WEIGHT, SPAWNS_PER_TICK, TURN_WEIGHT, OutputSync
from tests.conftest import add_user, make_settings
from tests.support.net import free_port_block

INSTANCES = SPAWNS_PER_TICK * 2 + 44
assert INSTANCES > RECORDS_PAGE  # the records are read in more than one page


async def test_a_tick_begins_a_bounded_number_of_pulls_and_every_instance_gets_its_turn(db_url, tmp_path):
    settings = make_settings(db_url, tmp_path)
    uid = await add_user(settings, "alice")
    engine = create_engine(settings.database_url)
    sessions = session_factory(engine)
    first_port, _ = free_port_block(INSTANCES)  # nothing listens: each pull fails at once
    async with sessions() as db:
        for i in range(INSTANCES):
            project = Project(name=f"p{i}", code=f"P-{i}", owner_user_id=uid)
            db.add(project)
            await db.flush()
            db.add(
                ComfyUIService(user_id=uid, project_id=project.id, port=first_port + i, status="online", generation=1)
            )
        await db.commit()
    sync = OutputSync(settings, sessions)
    try:
        begun, spawned_at = [], []  # spawned_at: the other task's turn count at each task begun
        spawn = sync._spawn
        sync._spawn = lambda key, work: (spawned_at.append(turns.count), spawn(key, work))[1]
        async with Turns() as turns:
            while len(sync._due) < INSTANCES:
                await sync.tick()
                begun.append(len([key for key in sync._busy if key != 0]))  # key 0: the trash purge
                await sync.wait_idle()
                assert len(begun) <= 3, begun
        assert begun == [SPAWNS_PER_TICK, SPAWNS_PER_TICK, INSTANCES - 2 * SPAWNS_PER_TICK]
        # The others get a turn of the loop while a tick begins its pulls: about
        # TURN_WEIGHT / SPAWN_WEIGHT tasks are begun in one turn (16, and the trash purge's),
        # not a tick's 128.
        per_turn = Counter(spawned_at)
        assert TURN_WEIGHT // SPAWN_WEIGHT + 1 == 16
        assert max(per_turn.values()) <= 17, per_turn.most_common(3)
        # One interval apart, give or take the jitter: not all at the same instant.
        first_round = sorted(sync._due[pid] for pid in list(sync._due)[:SPAWNS_PER_TICK])
        assert first_round[-1] - first_round[0] > 0.05 * settings.comfyhub_history_idle_sync_seconds
        await sync.tick()
        assert sync._busy == {}  # nobody is due again yet
    finally:
        await sync.close()
        await engine.dispose()


class Turns:
    """Counts the turns of the event loop another task gets (while `with` is open)."""

    def __init__(self):
        self.count = 0
        self._task = None

    async def __aenter__(self):
        async def spin():
            while True:
                self.count += 1
                await asyncio.sleep(0)

        self._task = asyncio.ensure_future(spin())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *_exc):
        self._task.cancel()
