"""Several `serve` workers on PostgreSQL: one truth for starts, one heartbeat at a time."""

import asyncio
import os
import signal

import httpx
import psutil
import pytest
from sqlalchemy import select

from comfyhub.db import create_engine, session_factory
from comfyhub.models import Lease
from tests.support.comfy import instance_processes, pid_alive, system_argv
from tests.support.hub import PASSWORD, LiveHub, create_project, service_of
from tests.support.net import wait_for_sync


@pytest.fixture
def hub2(pg_url, tmp_path):
    hub = LiveHub(tmp_path / "hub", db_url=pg_url, workers=2, ports=30, comfyui_heartbeat_interval_seconds=1)
    hub.start()
    hub.add_user("alice")
    yield hub
    hub.stop()


def _lease_holder(db_url: str) -> str:
    async def read():
        engine = create_engine(db_url)
        try:
            async with session_factory(engine)() as db:
                return (await db.execute(select(Lease.holder).where(Lease.name == "heartbeat"))).scalar_one_or_none()
        finally:
            await engine.dispose()

    return asyncio.run(read())


def _workers(hub) -> list[int]:
    return [
        p.pid
        for p in psutil.Process(hub.proc.pid).children()
        if "multiprocessing" in " ".join(p.cmdline()) or "spawn" in " ".join(p.cmdline())
    ]


def test_200_concurrent_opens_over_20_projects_start_exactly_20(hub2):
    with hub2.client("alice") as c:
        projects = [create_project(c, f"LOAD-{i}") for i in range(20)]
        token = c.post("/api/auth/login", json={"username": "alice", "password": PASSWORD}).json()["data"]["token"]
        uid = c.get("/api/auth/me").json()["data"]["id"]

    async def storm():
        headers = {"Authorization": f"Bearer {token}"}
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(
            base_url=hub2.url, headers=headers, timeout=120, limits=limits, trust_env=False
        ) as ac:
            return await asyncio.gather(*(ac.post(f"/api/projects/{projects[i % 20]}/open_comfy") for i in range(200)))

    replies = asyncio.run(storm())
    assert {r.status_code for r in replies} == {200}, {r.status_code: r.text for r in replies if r.status_code != 200}
    ports_by_project = {}
    for i, r in enumerate(replies):
        ports_by_project.setdefault(projects[i % 20], set()).add(r.json()["data"]["port"])
    assert all(len(ports) == 1 for ports in ports_by_project.values())  # every click saw the same instance
    with hub2.client("alice") as c:
        services = {p: service_of(c, p) for p in projects}
    assert len({s["port"] for s in services.values()}) == 20
    for p, s in services.items():
        base = hub2.instance_dir(uid, p)
        assert [proc.pid for proc in instance_processes(base)] == [s["pid"]]
        argv = system_argv(s["port"])
        assert argv[argv.index("--base-directory") + 1] == str(base)


def test_one_heartbeat_holder_and_takeover_when_it_dies(hub2):
    with hub2.client("alice") as c:
        p = create_project(c, "HB")
        c.post(f"/api/projects/{p}/open_comfy")
        holder = wait_for_sync(lambda: _lease_holder(hub2.db_url), what="a heartbeat holder")
        holder_pid = int(holder.split(":")[1])
        assert holder_pid in _workers(hub2)
        first = service_of(c, p)["last_heartbeat"]
        wait_for_sync(lambda: service_of(c, p)["last_heartbeat"] != first, what="heartbeats")
        assert _lease_holder(hub2.db_url) == holder  # the same worker keeps it while alive

        os.kill(holder_pid, signal.SIGKILL)
        new_holder = wait_for_sync(
            lambda: (h := _lease_holder(hub2.db_url)) != holder and h,
            timeout=60,
            what="another worker to take the heartbeat over",
        )
        assert int(new_holder.split(":")[1]) != holder_pid
        seen = service_of(c, p)["last_heartbeat"]
        wait_for_sync(lambda: service_of(c, p)["last_heartbeat"] != seen, timeout=30, what="heartbeats to go on")
        assert service_of(c, p)["status"] == "online" and pid_alive(service_of(c, p)["pid"])


def test_the_hand_off_works_once_across_workers(hub2):
    """A code made by one worker is traded by whichever takes the next connection, once;
    each request on its own connection, so the two workers share the work."""
    with hub2.client("alice") as c:
        project = create_project(c, "HANDOFF")
        assert c.post(f"/api/projects/{project}/open_comfy").json()["data"]["status"] == "online"
        session = c.cookies["comfyhub_session"]
    for _ in range(12):
        with httpx.Client(base_url=hub2.url, trust_env=False, timeout=30) as main:
            main.cookies.set("comfyhub_session", session)
            enter = main.get(f"/comfy/{project}/").headers["location"]
        with httpx.Client(trust_env=False, timeout=30) as browser:
            landed = browser.get(enter)
            assert landed.status_code == 303, landed.text
            page = browser.get(f"{hub2.comfy}/comfy/{project}/")
            assert page.status_code == 200 and "Fake ComfyUI" in page.text
        with httpx.Client(trust_env=False, timeout=30) as thief:
            assert thief.get(enter).status_code == 403
