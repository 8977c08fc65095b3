"""The warm pool: ComfyUIs started for no one, refilled by the lease holder, taken by
opens, never in a user's way; with real fake-ComfyUI processes."""

import asyncio
import os
import signal
import subprocess
import sys
from contextlib import asynccontextmanager

import httpx
import pytest
from sqlalchemy import func, select

from comfyhub.db import create_engine, session_factory
from comfyhub.models import ComfyUIService, ServiceStatus
from comfyhub.services.binding import bind
from comfyhub.services.instances import instance_dir
from comfyhub.services.pool import pool_dir, pool_root
from tests.conftest import FAKE_COMFYUI
from tests.support.app import running_app
from tests.support.comfy import instance_processes, new_project, pid_alive, service, set_knobs, user_id
from tests.support.hub import PASSWORD, LiveHub, create_project
from tests.support.net import wait_for, wait_for_sync


@asynccontextmanager
async def hub(db_url, tmp_path, pool=2, **overrides):
    async with running_app(db_url, tmp_path, users=("alice", "bob"), comfyui_warm_pool_size=pool, **overrides) as c:
        c.alice, c.bob = c.headers_of["alice"], c.headers_of["bob"]
        yield c


async def open_comfy(c, headers, pid):
    return await c.post(f"/api/projects/{pid}/open_comfy", headers=headers)


async def warm_online(c) -> list:
    return [r for r in await c.manager.records.warm() if r.status == ServiceStatus.ONLINE]


async def pool_full(c, n: int, timeout: float = 30) -> list:
    async def full():
        rows = await warm_online(c)
        return rows if len(rows) == n and len(await c.manager.records.warm()) == n else None

    return await wait_for(full, timeout=timeout, what=f"{n} warm instance(s)")


def pool_processes(settings) -> list:
    return [p for p in instance_processes_under(pool_root(settings))]


def instance_processes_under(root) -> list:
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            cmd = proc.info["cmdline"] or []
            if proc.info["status"] != psutil.STATUS_ZOMBIE and any(a.startswith(str(root) + "/") for a in cmd):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


async def test_the_pool_fills_to_its_size_each_warm_on_its_own_port_and_folder(db_url, tmp_path):
    async with hub(db_url, tmp_path, pool=2) as c:
        rows = await pool_full(c, 2)
        low, high = c.settings.port_range
        ports = {r.port for r in rows}
        assert len(ports) == 2 and all(low <= p <= high for p in ports)
        for row in rows:
            assert row.project_id is None and row.user_id is None
            assert row.base_dir == str(pool_dir(c.settings, row.port))
            assert (pool_dir(c.settings, row.port) / "custom_nodes").resolve() == c.settings.comfyui_custom_nodes_dir
            assert pid_alive(row.pid) and len(instance_processes(row.base_dir)) == 1
            assert os.path.basename(row.log_path).startswith(f"comfy_pool_{row.port}_")
        assert len({r.log_path for r in rows}) == 2
        assert len(pool_processes(c.settings)) == 2  # never over-filled
        # Warm instances belong to no one: no project lists them, the counts leave them out.
        assert await c.manager.count_by_status() == {}


async def test_admins_see_the_pool_users_do_not(db_url, tmp_path):
    async with running_app(db_url, tmp_path, users=("alice",), admins=("root",), comfyui_warm_pool_size=1) as c:
        (warm,) = await pool_full(c, 1)
        r = await c.get("/api/admin/pool", headers=c.headers_of["root"])
        assert r.status_code == 200
        data = r.json()["data"]
        assert data["size"] == 1 and [(i["port"], i["status"]) for i in data["instances"]] == [(warm.port, "online")]
        assert (await c.get("/api/admin/pool", headers=c.headers_of["alice"])).status_code == 403
        assert (await c.get("/api/admin/services", headers=c.headers_of["root"])).json()["data"] == []


async def test_without_a_pool_size_nothing_is_started(db_url, tmp_path):
    async with hub(db_url, tmp_path, pool=0) as c:
        await c.manager.pool.tend()
        assert await c.manager.records.warm() == [] and pool_processes(c.settings) == []


async def test_a_killed_warm_instance_is_replaced(db_url, tmp_path):
    async with hub(db_url, tmp_path, pool=1) as c:
        (first,) = await pool_full(c, 1)
        os.kill(first.pid, signal.SIGKILL)

        async def replaced():
            rows = await warm_online(c)
            return rows if len(rows) == 1 and rows[0].pid != first.pid else None

        (second,) = await wait_for(replaced, timeout=30, what="a new warm instance")
        assert pid_alive(second.pid) and second.pid != first.pid
        assert len(pool_processes(c.settings)) == 1


async def test_max_instances_reached_by_warm_ones_a_user_still_opens(db_url, tmp_path):
    async with hub(db_url, tmp_path, pool=2, comfyui_max_instances=2) as c:
        await pool_full(c, 2)
        pid = await new_project(c, c.alice, "A-1")
        r = await open_comfy(c, c.alice, pid)
        assert r.status_code == 200 and r.json()["data"]["status"] == "online", r.text
        # Users first: the pool shrinks to what the limit leaves, and stays there.
        await c.manager.pool.tend()
        assert len(await c.manager.records.warm()) <= 1
        pid2 = await new_project(c, c.bob, "B-1")
        r2 = await open_comfy(c, c.bob, pid2)
        assert r2.status_code == 200 and r2.json()["data"]["status"] == "online", r2.text
        await c.manager.pool.tend()
        assert await c.manager.records.warm() == []  # two users' instances: no room for warm ones
        pid3 = await new_project(c, c.bob, "B-2")
        assert (await open_comfy(c, c.bob, pid3)).status_code == 429  # users alone fill it


async def test_a_warm_instance_still_loading_makes_room_for_a_user_at_the_limit(db_url, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_COMFYUI_START_DELAY", "60")  # warm ones load for a minute
    async with hub(db_url, tmp_path, pool=1, comfyui_max_instances=1, comfyui_startup_timeout_seconds=90) as c:

        async def loading():
            rows = await c.manager.records.warm()
            return rows[0] if rows and rows[0].pid else None

        warm = await wait_for(loading, timeout=20, what="a warm instance loading")
        pid = await new_project(c, c.alice, "A-1")
        set_knobs(c.settings, await user_id(c, c.alice), pid, start_delay=0)
        r = await open_comfy(c, c.alice, pid)
        assert r.status_code == 200 and r.json()["data"]["status"] == "online", r.text
        await wait_for(lambda: not pid_alive(warm.pid), what="the loading warm instance stopped")
        await c.manager.pool.tend()
        assert await c.manager.records.warm() == []  # the limit is the user's now


@pytest.mark.local_only  # start slots cap this machine's starts only
async def test_a_refill_waits_for_a_free_start_slot(db_url, tmp_path):
    async with hub(db_url, tmp_path, pool=1, comfyui_max_concurrent_starts=1) as c:
        await pool_full(c, 1)
        manager = c.manager
        # Every slot busy (a user's start): the refill does not queue behind or ahead of it.
        await manager.starts.admission.take_slot(manager._closing)
        try:
            (row,) = await warm_online(c)
            os.kill(row.pid, signal.SIGKILL)
            await wait_for(lambda: not pid_alive(row.pid), what="the warm instance to die")
            await wait_for(lambda: _warm_none(c), timeout=10, what="the dead one dropped")
            await manager.pool.tend()
            assert await manager.records.warm() == []
        finally:
            manager.starts.admission.release_slot()
        await pool_full(c, 1)


async def _warm_none(c):
    return await c.manager.records.warm() == []


@pytest.mark.local_only  # the orphan is a local process group
async def test_a_backend_restart_adopts_warm_instances_no_duplicate_no_orphan(db_url, tmp_path):
    async with hub(db_url, tmp_path, pool=1) as c:
        (before,) = await pool_full(c, 1)
        settings = c.settings
    assert pid_alive(before.pid)  # instances outlive the backend
    # A process in a pool folder that no record names (its backend died before recording it).
    orphan_dir = pool_dir(settings, settings.port_range[1])
    (orphan_dir / "custom_nodes").mkdir(parents=True, exist_ok=True)
    orphan = subprocess.Popen(
        [sys.executable, "main.py", "--listen", "127.0.0.1", "--port", str(settings.port_range[1])]
        + ["--base-directory", str(orphan_dir)],
        cwd=FAKE_COMFYUI,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # as comfyhub starts them: a stop signals the group
    )
    try:
        async with running_app(
            db_url, tmp_path, users=(), comfyui_warm_pool_size=1, comfyui_port_range=settings.comfyui_port_range
        ) as c:
            (after,) = await pool_full(c, 1)
            assert after.id == before.id and after.pid == before.pid  # adopted, not restarted
            await wait_for(lambda: orphan.poll() is not None, timeout=20, what="the orphan stopped")
            assert [p.pid for p in pool_processes(c.settings)] == [before.pid]
    finally:
        if orphan.poll() is None:
            orphan.kill()
        orphan.wait()


# --- claims: a warm instance bound to a project -----------------------------------------


async def queue_image(c, headers, pid) -> None:
    """One prompt through the proxy; the fake saves one PNG into its output folder."""
    prompt = {"prompt": {"1": {"class_type": "EmptyImage", "inputs": {}}}, "client_id": "t"}
    comfy = f"http://testserver:{c.settings.instance_port}"  # the instance origin serves ComfyUI
    r = await c.post(f"{comfy}/comfy/{pid}/prompt", json=prompt, headers={**headers, "Origin": comfy})
    assert r.status_code == 200, r.text


def pngs(folder) -> list:
    return sorted(p.name for p in folder.rglob("*.png")) if folder.exists() else []


async def test_an_open_takes_the_warm_instance_and_outputs_land_in_the_project_folder(db_url, tmp_path):
    async with hub(db_url, tmp_path, pool=1) as c:
        (warm,) = await pool_full(c, 1)
        pid = await new_project(c, c.alice, "A-1")
        r = await open_comfy(c, c.alice, pid)
        assert r.status_code == 200 and r.json()["data"]["status"] == "online", r.text
        assert r.json()["data"]["port"] == warm.port
        # Where the browser goes (the workbench opens it in the new tab), as after a cold start.
        assert r.json()["data"]["comfy_url"] == f"/comfy/{pid}/"
        svc = await service(c, c.alice, pid)
        assert svc["pid"] == warm.pid  # the warm process itself: no start
        assert svc["comfy_url"] == f"/comfy/{pid}/"
        await queue_image(c, c.alice, pid)
        project = instance_dir(c.settings, await user_id(c, c.alice), pid)
        await wait_for(lambda: pngs(project / "output"), what="the image in the project's folder")
        assert pngs(pool_dir(c.settings, warm.port) / "output") == []
        # The heartbeat proves it ours and bound to this project; it stays online.
        await c.manager.heartbeat_once()
        assert (await service(c, c.alice, pid))["status"] == "online"
        # The project's log view shows the instance's log, with the binding in it.
        log = (await c.get(f"/api/projects/{pid}/comfy_log", headers=c.alice)).json()["data"]
        assert "bound to user" in str(log)
        # A stop pulls its history into the project's records, files from the project's folder.
        await c.post(f"/api/projects/{pid}/stop_comfy", headers=c.alice)
        assert not pid_alive(warm.pid)

        async def recorded():
            items = (await c.get(f"/api/projects/{pid}/outputs", headers=c.alice)).json()["data"]
            return items["items"] if isinstance(items, dict) else items

        assert await wait_for(recorded, what="the output recorded")
        # And the pool has refilled meanwhile, with another process.
        (again,) = await pool_full(c, 1)
        assert again.pid != warm.pid


async def test_one_warm_instance_two_opens_at_once_one_takes_it_the_other_starts_cold(db_url, tmp_path):
    async with hub(db_url, tmp_path, pool=1) as c:
        (warm,) = await pool_full(c, 1)
        a = await new_project(c, c.alice, "A-1")
        b = await new_project(c, c.bob, "B-1")
        replies = await asyncio.gather(open_comfy(c, c.alice, a), open_comfy(c, c.bob, b))
        assert [r.json()["data"]["status"] for r in replies] == ["online", "online"]
        services = [await service(c, c.alice, a), await service(c, c.bob, b)]
        assert sorted(s["pid"] == warm.pid for s in services) == [False, True]  # bound once, to one
        assert services[0]["port"] != services[1]["port"]
        for headers, pid in ((c.alice, a), (c.bob, b)):
            await queue_image(c, headers, pid)
            folder = instance_dir(c.settings, await user_id(c, headers), pid) / "output"
            await wait_for(lambda f=folder: len(pngs(f)) == 1, what="each project's image in its own folder")


@pytest.mark.local_only  # asserts the local instance folder
async def test_a_warm_instance_that_cannot_be_bound_is_stopped_and_the_open_starts_cold(db_url, tmp_path):
    async with hub(db_url, tmp_path, pool=1) as c:
        (warm,) = await pool_full(c, 1)
        # Someone else bound it first (the extension binds once): the claim's bind gets 409.
        other = instance_dir(c.settings, 999, 999)
        dirs = {k: str(other / k) for k in ("output", "input", "temp", "user")}
        for d in dirs.values():
            os.makedirs(d, exist_ok=True)
        await bind(c.manager.liveness.handle(warm).endpoint, 999, 999, dirs)
        pid = await new_project(c, c.alice, "A-1")
        r = await open_comfy(c, c.alice, pid)
        assert r.json()["data"]["status"] == "online", r.text
        svc = await service(c, c.alice, pid)
        assert svc["pid"] != warm.pid and not pid_alive(warm.pid)
        record = await c.manager.get(pid)
        assert record.base_dir == str(instance_dir(c.settings, await user_id(c, c.alice), pid))  # cold


async def test_a_backend_restart_keeps_a_bound_instance_bound_and_online(db_url, tmp_path):
    async with hub(db_url, tmp_path, pool=1) as c:
        (warm,) = await pool_full(c, 1)
        pid = await new_project(c, c.alice, "A-1")
        assert (await open_comfy(c, c.alice, pid)).json()["data"]["port"] == warm.port
        (refill,) = await pool_full(c, 1)
        settings = c.settings
    async with running_app(
        db_url, tmp_path, users=(), comfyui_warm_pool_size=1, comfyui_port_range=settings.comfyui_port_range
    ) as c:
        (still,) = await pool_full(c, 1)
        assert still.pid == refill.pid
        await c.manager.heartbeat_once()
        record = await c.manager.get(pid)
        assert record.status == "online" and record.pid == warm.pid  # adopted, proven bound to it
        assert sorted(p.pid for p in pool_processes(c.settings)) == sorted([warm.pid, refill.pid])


async def test_a_bound_instance_that_crashes_comes_back_from_the_pool(db_url, tmp_path):
    async with hub(db_url, tmp_path, pool=1, comfyui_auto_restart=True, comfyui_restart_backoff_seconds=0.1) as c:
        (warm,) = await pool_full(c, 1)
        pid = await new_project(c, c.alice, "A-1")
        await open_comfy(c, c.alice, pid)
        (refill,) = await pool_full(c, 1)
        os.kill(warm.pid, signal.SIGKILL)
        await wait_for(lambda: not pid_alive(warm.pid), what="the bound instance to die")
        await c.manager.heartbeat_once()  # offline, restart planned

        async def restarted():
            await c.manager.heartbeat_once()
            s = await service(c, c.alice, pid)
            return s if s["status"] == "online" else None

        svc = await wait_for(restarted, timeout=30, what="the automatic restart")
        assert svc["pid"] == refill.pid  # took the next warm instance


# --- several workers -----------------------------------------------------------------------


@pytest.mark.local_only  # counts processes in this machine's pool folders
def test_two_workers_never_over_fill_and_opens_in_both_take_each_warm_once(pg_url, tmp_path):
    hub = LiveHub(
        tmp_path / "hub",
        db_url=pg_url,
        workers=2,
        ports=20,
        comfyui_warm_pool_size=2,
        comfyui_heartbeat_interval_seconds=1,
    )
    hub.start()
    try:
        hub.add_user("alice")
        root = hub.settings.comfyui_instance_base_dir / "pool"
        seen = []
        bound = 0  # processes in pool folders that projects took

        def full():
            seen.append(len(instance_processes_under(root)) - bound)
            return seen[-1] == 2 and _warm_rows(pg_url, ("online",)) == 2

        wait_for_sync(full, timeout=60, what="a full pool")
        with hub.client("alice") as c:
            projects = [create_project(c, f"MW-{i}") for i in range(4)]
            token = c.post("/api/auth/login", json={"username": "alice", "password": PASSWORD}).json()["data"]["token"]

        async def storm():
            headers = {"Authorization": f"Bearer {token}"}
            async with httpx.AsyncClient(base_url=hub.url, headers=headers, timeout=120, trust_env=False) as ac:
                return await asyncio.gather(*(ac.post(f"/api/projects/{p}/open_comfy") for p in projects))

        replies = asyncio.run(storm())
        assert [r.json()["data"]["status"] for r in replies] == ["online"] * 4
        ports = [r.json()["data"]["port"] for r in replies]
        assert len(set(ports)) == 4  # two took the two warm ones, two started: each its own
        bound = sum(1 for p in ports if (root / f"w{p}").exists())
        assert bound == 2
        wait_for_sync(full, timeout=60, what="the pool refilled")
        for _ in range(50):  # a few heartbeats of both workers: never a third warm instance
            full()
        assert max(seen) <= 2
    finally:
        hub.stop()


def _warm_rows(db_url: str, statuses=("starting", "online")) -> int:
    async def count():
        engine = create_engine(db_url)
        try:
            async with session_factory(engine)() as db:
                return (
                    await db.execute(
                        select(func.count()).where(
                            ComfyUIService.project_id.is_(None), ComfyUIService.status.in_(statuses)
                        )
                    )
                ).scalar_one()
        finally:
            await engine.dispose()

    return asyncio.run(count())
