"""Invariant 5 and the faults around it: a real `comfyhub serve`, restarted and broken."""

import os
import signal
import socket
import threading

import httpx
import pytest

from tests.support.comfy import instance_processes, pid_alive, set_knobs, system_argv
from tests.support.hub import LiveHub, create_project, service_of
from tests.support.net import wait_for_sync


@pytest.fixture
def hub_factory(db_url, tmp_path):
    hubs = []

    def make(**env):
        hub = LiveHub(tmp_path / "hub", db_url=db_url, **env)
        hubs.append(hub)
        return hub

    yield make
    for hub in hubs:
        hub.stop()


def _open(c, pid):
    return c.post(f"/api/projects/{pid}/open_comfy")


def test_restart_adopts_running_instances_and_marks_dead_ones(hub_factory):
    hub = hub_factory().start()
    hub.add_user("alice")
    with hub.client("alice") as c:
        keep, dies = create_project(c, "KEEP"), create_project(c, "DIES")
        for p in (keep, dies):
            assert _open(c, p).json()["data"]["status"] == "online"
        before = {p: service_of(c, p) for p in (keep, dies)}
    assert hub.stop(signal.SIGTERM) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a clean shutdown
    for p in (keep, dies):
        assert pid_alive(before[p]["pid"])  # stopping the backend leaves instances running
    os.kill(before[dies]["pid"], signal.SIGKILL)
    wait_for_sync(lambda: not pid_alive(before[dies]["pid"]), what="instance to die")

    hub = hub_factory().start()
    with hub.client("alice") as c:
        wait_for_sync(lambda: service_of(c, dies)["status"] == "offline", what="dead instance offline")
        kept = service_of(c, keep)
        assert kept["status"] == "online"
        assert (kept["pid"], kept["port"], kept["started_at"]) == (
            before[keep]["pid"],
            before[keep]["port"],
            before[keep]["started_at"],
        )
        assert _open(c, keep).json()["data"]["port"] == before[keep]["port"]  # reused, not restarted
        assert service_of(c, keep)["pid"] == before[keep]["pid"]
        assert service_of(c, dies)["pid"] is None
        assert _open(c, dies).json()["data"]["status"] == "online"
        uid = c.get("/api/auth/me").json()["data"]["id"]
        for p in (keep, dies):
            assert len(instance_processes(hub.instance_dir(uid, p))) == 1


def _backend_killed_while_starting(hub_factory, code: str, start_delay: float):
    """alice opens a new project whose ComfyUI loads for `start_delay` s; the backend is
    SIGKILLed once the instance is spawned. Returns (user id, project id, its service)."""
    hub = hub_factory().start()
    hub.add_user("alice")
    with hub.client("alice") as c:
        p = create_project(c, code)
        uid = c.get("/api/auth/me").json()["data"]["id"]
    set_knobs(hub.settings, uid, p, start_delay=start_delay)
    opener = threading.Thread(target=lambda: _quietly(hub, p))
    opener.start()
    with hub.client("alice") as c:
        svc = wait_for_sync(
            lambda: (s := service_of(c, p)) and s["status"] == "starting" and s["port"] and s["pid"] and s,
            what="start in progress",
        )
    hub.stop(signal.SIGKILL)
    opener.join()
    return uid, p, svc


def test_backend_killed_mid_start_is_resolved_and_not_duplicated(hub_factory):
    # still loading when the backend dies
    uid, p, svc = _backend_killed_while_starting(hub_factory, "MID", start_delay=60)
    assert pid_alive(svc["pid"])  # the instance outlived its backend

    hub = hub_factory().start()
    with hub.client("alice") as c:
        wait_for_sync(lambda: service_of(c, p)["status"] == "failed", what="abandoned start resolved")
        assert "启动被中断" in service_of(c, p)["last_error"]
        assert not pid_alive(svc["pid"])
        set_knobs(hub.settings, uid, p)  # behaves normally now
        assert _open(c, p).json()["data"]["status"] == "online"
        assert len(instance_processes(hub.instance_dir(uid, p))) == 1


def test_start_that_finished_after_its_backend_died_is_adopted(hub_factory):
    _uid, p, svc = _backend_killed_while_starting(hub_factory, "LATE", start_delay=3)
    wait_for_sync(lambda: system_argv(svc["port"]), timeout=15, what="instance ready without its backend")

    hub = hub_factory().start()
    with hub.client("alice") as c:
        wait_for_sync(lambda: service_of(c, p)["status"] == "online", what="adopted")
        assert service_of(c, p)["pid"] == svc["pid"]


def test_process_missing_from_its_record_is_recorded_not_duplicated(hub_factory):
    """The backend died between spawning and recording the pid: the next one finds the process."""
    hub = hub_factory().start()
    hub.add_user("alice")
    with hub.client("alice") as c:
        p = create_project(c, "ORPHAN")
        svc = _open(c, p).json()["data"]
        pid = service_of(c, p)["pid"]
    hub.stop(signal.SIGKILL)
    _forget_process(hub.db_url, p)

    hub = hub_factory().start()
    with hub.client("alice") as c:
        wait_for_sync(
            lambda: service_of(c, p)["status"] == "online" and service_of(c, p)["pid"] == pid, what="orphan recorded"
        )
        assert _open(c, p).json()["data"]["port"] == svc["port"]
        uid = c.get("/api/auth/me").json()["data"]["id"]
        assert len(instance_processes(hub.instance_dir(uid, p))) == 1


def test_stop_instances_on_exit_when_configured(hub_factory):
    hub = hub_factory(comfyui_stop_instances_on_exit="true").start()
    hub.add_user("alice")
    with hub.client("alice") as c:
        p = create_project(c, "BYE")
        _open(c, p)
        pid = service_of(c, p)["pid"]
    assert hub.stop(signal.SIGTERM) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a clean shutdown
    # A plain stop is no crash: no native stack trace (with Ray, its crash handler would
    # take over SIGTERM unless comfyhub turns it off, and now and then end in SIGABRT).
    assert "SIGTERM received" not in hub.output()
    assert not pid_alive(pid)
    hub = hub_factory().start()
    with hub.client("alice") as c:
        svc = service_of(c, p)
        assert svc["status"] == "stopped" and svc["stopped_reason"] == "后端退出" and svc["reason"] == "backend_exit"


def test_whole_port_range_busy_is_503_and_starts_nothing(hub_factory):
    hub = hub_factory()
    low, high = map(int, hub.env["COMFYUI_PORT_RANGE"].split("-"))
    squatters = []
    for port in range(low, high + 1):
        s = socket.socket()
        s.bind(("127.0.0.1", port))
        s.listen()
        squatters.append(s)
    try:
        hub.start()
        hub.add_user("alice")
        with hub.client("alice") as c:
            p = create_project(c, "FULL")
            r = _open(c, p)
            assert r.status_code == 503 and r.json()["msg"] == "没有可用端口"
            uid = c.get("/api/auth/me").json()["data"]["id"]
            assert instance_processes(hub.instance_dir(uid, p)) == []
            assert service_of(c, p)["status"] == "failed"
    finally:
        for s in squatters:
            s.close()


def test_unwritable_log_dir_fails_clearly(hub_factory, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the log dir should be")
    hub = hub_factory(comfyui_log_dir=str(blocker / "logs")).start()
    hub.add_user("alice")
    with hub.client("alice") as c:
        p = create_project(c, "LOGS")
        r = _open(c, p)
        assert r.status_code == 503
        svc = service_of(c, p)
        assert svc["status"] == "failed" and "日志" in svc["last_error"]
        assert str(tmp_path) not in r.json()["msg"]  # no server paths in the message


def test_instance_dir_deleted_while_stopped_is_recreated(hub_factory):
    import shutil

    hub = hub_factory().start()
    hub.add_user("alice")
    with hub.client("alice") as c:
        p = create_project(c, "GONE")
        _open(c, p)
        c.post(f"/api/projects/{p}/stop_comfy")
        uid = c.get("/api/auth/me").json()["data"]["id"]
        base = hub.instance_dir(uid, p)
        shutil.rmtree(base)
        assert _open(c, p).json()["data"]["status"] == "online"
        assert (base / "custom_nodes").is_symlink() and (base / "models").is_symlink()
        assert str((base / "custom_nodes").resolve()) == hub.env["COMFYUI_CUSTOM_NODES_DIR"]


def _quietly(hub, p):
    try:
        with hub.client("alice", timeout=120) as c:
            _open(c, p)
    except httpx.HTTPError:
        pass  # the backend is killed under this request on purpose


def _forget_process(db_url, project_id):
    """Simulate a crash between spawn and record: the row says `starting` and names no process."""
    import asyncio

    from sqlalchemy import update

    from comfyhub.db import create_engine, session_factory
    from comfyhub.models import ComfyUIService

    async def run():
        engine = create_engine(db_url)
        async with session_factory(engine)() as db:
            await db.execute(
                update(ComfyUIService)
                .where(ComfyUIService.project_id == project_id)
                .values(status="starting", pid=None, launcher_state=None)
            )
            await db.commit()
        await engine.dispose()

    asyncio.run(run())
