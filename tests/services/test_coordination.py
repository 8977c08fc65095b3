"""Advisory start locks on PostgreSQL: held across processes, never at the pool's expense."""

from __future__ import annotations

import asyncio

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from comfyhub.db import create_engine
from comfyhub.services.coordination import ProjectLocks
from tests.support.net import wait_for


async def test_many_held_locks_leave_the_pool_free(pg_url):
    tiny = create_async_engine(pg_url, pool_size=2, max_overflow=0, pool_timeout=2)  # two connections, no wait
    locks = ProjectLocks(tiny)
    release = asyncio.Event()
    held = set()

    async def start(project_id: int):
        async with locks.hold(project_id) as got:
            if got:
                held.add(project_id)
            await release.wait()

    starts = [asyncio.create_task(start(pid)) for pid in range(1, 33)]
    try:
        await wait_for(lambda: len(held) == 32, timeout=15, what="32 locks held")
        # One connection holds them all (it used to take one per lock); the other serves.
        assert tiny.pool.checkedout() == 1
        async with tiny.connect() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar() == 1
    finally:
        release.set()
        await asyncio.gather(*starts)
        await locks.close()
        await tiny.dispose()


async def test_a_lock_held_by_one_process_waits_in_another(pg_url):
    one, other = create_engine(pg_url), create_engine(pg_url)
    first, second = ProjectLocks(one), ProjectLocks(other)
    order = []
    try:
        async with first.hold(7) as got:
            assert got is True
            async with second.hold(7, wait=False) as busy:
                assert busy is False  # held elsewhere
            tries = []
            ask = second._call

            async def counted(fn, key):
                result = await ask(fn, key)
                tries.append((fn, result))
                return result

            second._call = counted
            waiter = asyncio.create_task(_hold_and_note(second, 7, order))
            # It has asked twice, been refused both times, and still waits.
            await wait_for(lambda: len(tries) >= 2, timeout=5, what="the waiter to try twice")
            assert tries[:2] == [("pg_try_advisory_lock", False)] * 2
            assert not waiter.done()
            order.append("first released")
        await asyncio.wait_for(waiter, timeout=5)
        assert order == ["first released", "second held"]
        async with first.hold(7, wait=False) as again:
            assert again is True  # the second released it too
    finally:
        await first.close()
        await second.close()
        await one.dispose()
        await other.dispose()


async def _hold_and_note(locks: ProjectLocks, key: int, order: list) -> None:
    async with locks.hold(key) as got:
        assert got is True
        order.append("second held")
