"""The prober: the heartbeat's HTTP checks made in a helper process.

It must give the verdict the hub would give (healthy and ours, or not), and the
heartbeat must never depend on it: a prober that dies or stops answering costs one page's
deadline at most, and that page is checked in the hub instead.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys

import pytest

from comfyhub.net.endpoint import Endpoint, identity_of
from comfyhub.services.health import HealthChecker
from comfyhub.services.prober import NICE, Prober
from tests.conftest import make_settings
from tests.services.test_health import BASE, SECRET, stand_in
from tests.support.comfy import new_project, pid_alive, service
from tests.support.net import wait_for, wait_for_sync

TIMEOUT = 1.0


@pytest.fixture
def settings(db_url, tmp_path):
    # Every sweep's checks go to the prober, however few the instances.
    return make_settings(db_url, tmp_path, comfyui_heartbeat_prober_min_instances=0)


async def test_the_prober_gives_the_verdicts_the_hub_would():
    seen: list = []
    cases = [  # (identity header, binding header, binding expected)
        (identity_of(SECRET), "", None),
        (None, None, None),
        (identity_of("another secret"), "", None),
        (identity_of(SECRET), "9", 9),
        (identity_of(SECRET), "", 9),
    ]
    servers = [await stand_in(identity, binding, seen) for identity, binding, _ in cases]
    with socket.socket() as free:  # a port nothing listens on
        free.bind(("127.0.0.1", 0))
        refused = free.getsockname()[1]
    targets = [
        (Endpoint("127.0.0.1", server.port, SECRET, expected), BASE)
        for server, (_, _, expected) in zip(servers, cases, strict=True)
    ]
    targets += [
        (Endpoint("127.0.0.1", servers[0].port, SECRET), "/another/folder"),  # not our argv
        (Endpoint("127.0.0.1", refused, SECRET), BASE),
    ]
    prober, here = Prober(), HealthChecker(TIMEOUT)
    try:
        verdicts = await prober.check(targets, TIMEOUT, group=2, tick=0.01)
        expected = [await here.is_ours(endpoint, base) for endpoint, base in targets]
        assert expected == [True, False, False, True, False, False, False]
        assert verdicts == expected
        assert prober.answered == 1 and prober.failures == 0
        assert pid_alive(prober.pid) and prober.pid != os.getpid()
    finally:
        await prober.aclose()
        await here.aclose()
        for server in servers:
            await server.close()


def test_the_prober_ends_when_its_hub_closes_the_pipe():
    """A hub killed outright closes the pipe too: the prober never outlives it."""
    child = subprocess.Popen(
        [sys.executable, "-m", "comfyhub.services.prober"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert child.stdout.readline().strip() == f'{{"ready": {child.pid}}}'.encode()
        # It yields the CPU to the hub: its wake-ups preempt nothing, its priority is lower.
        assert os.sched_getscheduler(child.pid) == os.SCHED_BATCH
        assert os.getpriority(os.PRIO_PROCESS, child.pid) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + NICE)
        child.stdin.close()
        wait_for_sync(lambda: child.poll() is not None, what="the prober to exit")
        assert child.returncode == 0
    finally:
        child.kill()
        child.wait()


def test_the_prober_loads_no_settings_database_or_web_framework():
    """It starts in a blink and stays small (~25 MB): only the checks' own code."""
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, comfyhub.services.prober; print(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    packages = {name.split(".")[0] for name in loaded}
    assert not {"pydantic", "sqlalchemy", "fastapi", "starlette", "aiohttp"} & packages
    assert "comfyhub.config" not in loaded and "comfyhub.services.health" in loaded


async def _two_instances(client, alice, manager) -> tuple[int, int, int]:
    """Two online projects, the second one's instance frozen (it accepts, never answers)."""
    manager.health.timeout = TIMEOUT
    ids = [await new_project(client, alice, f"PR-{i}") for i in range(2)]
    for project in ids:
        r = await client.post(f"/api/projects/{project}/open_comfy", headers=alice)
        assert r.json()["data"]["status"] == "online"
    frozen = (await service(client, alice, ids[1]))["pid"]
    os.kill(frozen, signal.SIGSTOP)
    return ids[0], ids[1], frozen


async def _statuses(client, alice, *ids) -> list[str]:
    return [(await service(client, alice, project))["status"] for project in ids]


async def test_a_sweep_through_the_prober_marks_what_it_found(client, alice, manager):
    healthy, hung, frozen = await _two_instances(client, alice, manager)
    try:
        assert await manager.heartbeat_once() == {"online": 1, "offline": 1}
        assert await _statuses(client, alice, healthy, hung) == ["online", "offline"]
        assert manager.prober.answered == 1 and manager.prober.failures == 0
        assert pid_alive(manager.prober.pid)
    finally:
        os.kill(frozen, signal.SIGCONT)
    prober = manager.prober.pid
    await manager.shutdown()
    assert not pid_alive(prober)


async def test_a_dead_prober_hands_the_checks_back_to_the_hub(client, alice, manager):
    healthy, hung, frozen = await _two_instances(client, alice, manager)
    try:
        assert await manager.heartbeat_once() == {"online": 1, "offline": 1}
        os.kill(manager.prober.pid, signal.SIGKILL)
        await wait_for(lambda: manager.prober.failures == 1, what="the hub to see its prober die")
        os.kill(frozen, signal.SIGCONT)  # answers again: the hub's own check must see it
        assert await manager.heartbeat_once() == {"online": 2, "offline": 0}
        assert await _statuses(client, alice, healthy, hung) == ["online", "online"]
        assert manager.prober.pid is None and manager.prober.answered == 1
    finally:
        os.kill(frozen, signal.SIGCONT)


async def test_a_prober_that_stops_answering_is_killed_and_its_page_checked_here(client, alice, manager):
    healthy, hung, frozen = await _two_instances(client, alice, manager)
    stuck = None
    try:
        assert await manager.heartbeat_once() == {"online": 1, "offline": 1}
        stuck = manager.prober.pid
        os.kill(stuck, signal.SIGSTOP)
        os.kill(frozen, signal.SIGCONT)
        # The page waits out its deadline (one timeout and a grace), then is checked here.
        assert await asyncio.wait_for(manager.heartbeat_once(), 10) == {"online": 2, "offline": 0}
        assert await _statuses(client, alice, healthy, hung) == ["online", "online"]
        assert manager.prober.failures == 1 and manager.prober.pid is None
        await wait_for(lambda: not pid_alive(stuck), what="the stuck prober to be killed")
    finally:
        os.kill(frozen, signal.SIGCONT)
        if stuck is not None and pid_alive(stuck):
            os.kill(stuck, signal.SIGKILL)
