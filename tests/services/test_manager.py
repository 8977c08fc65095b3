"""The lifecycle through open_comfy / stop_comfy with real fake-ComfyUI processes."""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

from comfyhub.services.instances import instance_dir
from tests.support import launcher
from tests.support.app import running_app
from tests.support.comfy import (
    instance_processes,
    new_project,
    pid_alive,
    service,
    set_knobs,
    system_argv,
    user_id,
)
from tests.support.net import wait_for


async def open_comfy(client, headers, pid):
    return await client.post(f"/api/projects/{pid}/open_comfy", headers=headers)


async def test_open_starts_and_reuse_keeps_pid_and_port(client, alice, settings):
    pid = await new_project(client, alice)
    r = await open_comfy(client, alice, pid)
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert data["status"] == "online" and data["comfy_url"] == f"/comfy/{pid}/"
    low, high = settings.port_range
    assert low <= data["port"] <= high and data["started_at"]
    svc = await service(client, alice, pid)
    assert pid_alive(svc["pid"])
    uid = await user_id(client, alice)
    base = instance_dir(settings, uid, pid)
    argv = system_argv(data["port"])
    assert argv[argv.index("--base-directory") + 1] == str(base)
    assert argv[argv.index("--database-url") + 1] == f"sqlite:///{base}/user/comfyui.db"
    assert (base / "custom_nodes").resolve() == settings.comfyui_custom_nodes_dir
    assert (base / "models").resolve() == settings.comfyui_models_dir
    log = settings.comfyui_log_dir / f"comfy_u{uid}_p{pid}_{data['port']}.log"
    assert "comfyhub: starting ComfyUI on port" in log.read_text()

    # invariant 6: ComfyUI listens on loopback only (on a Ray node: the node's address); the proxy is the way in
    listening = [c.laddr for c in psutil.Process(svc["pid"]).net_connections("tcp") if c.status == psutil.CONN_LISTEN]
    assert listening and all(addr.ip == launcher.instance_host() for addr in listening)

    again = await open_comfy(client, alice, pid)
    assert again.status_code == 200
    assert again.json()["data"]["port"] == data["port"]
    assert (await service(client, alice, pid))["pid"] == svc["pid"]
    assert len(instance_processes(base)) == 1


async def test_concurrent_opens_start_one_process(client, alice, settings):
    pid = await new_project(client, alice)
    set_knobs(settings, await user_id(client, alice), pid, start_delay=0.5)
    replies = await asyncio.gather(*(open_comfy(client, alice, pid) for _ in range(20)))
    assert {r.status_code for r in replies} == {200}
    assert len({r.json()["data"]["port"] for r in replies}) == 1
    base = instance_dir(settings, await user_id(client, alice), pid)
    assert len(instance_processes(base)) == 1


async def test_users_opening_at_once_get_distinct_ports_and_their_own_instance(client, settings, alice, bob):
    projects = [
        (alice, await new_project(client, alice, "A-1")),
        (alice, await new_project(client, alice, "A-2")),
        (bob, await new_project(client, bob, "B-1")),
        (bob, await new_project(client, bob, "B-2")),
    ]
    replies = await asyncio.gather(*(open_comfy(client, h, p) for h, p in projects))
    ports = [r.json()["data"]["port"] for r in replies]
    assert len(set(ports)) == 4
    for (headers, pid), port in zip(projects, ports, strict=False):
        base = instance_dir(settings, await user_id(client, headers), pid)
        argv = system_argv(port)
        assert argv[argv.index("--base-directory") + 1] == str(base)


async def test_killed_instance_goes_offline_then_restarts(client, alice, manager):
    pid = await new_project(client, alice)
    await open_comfy(client, alice, pid)
    first = await service(client, alice, pid)
    os.kill(first["pid"], signal.SIGKILL)
    await wait_for(lambda: not pid_alive(first["pid"]), what="instance to die")
    await manager.heartbeat_once()
    offline = await service(client, alice, pid)
    assert offline["status"] == "offline" and "SIGKILL" in offline["last_error"]
    assert offline["pid"] is None  # a dead pid is forgotten, never signalled later
    await manager.heartbeat_once()
    assert (await service(client, alice, pid))["last_error"] == offline["last_error"]  # first reason kept
    r = await open_comfy(client, alice, pid)
    assert r.json()["data"]["status"] == "online"
    second = await service(client, alice, pid)
    assert second["pid"] != first["pid"] and pid_alive(second["pid"])


async def test_heartbeat_loop_marks_offline_by_itself(db_url, tmp_path):
    async with running_app(db_url, tmp_path / "hb", users=("hb-user",), comfyui_heartbeat_interval_seconds=0.2) as c:
        h = c.headers_of["hb-user"]
        pid = await new_project(c, h, "HB-1")
        assert (await open_comfy(c, h, pid)).json()["data"]["status"] == "online"
        before = (await service(c, h, pid))["last_heartbeat"]
        await wait_for(lambda: service(c, h, pid), what="record")

        async def heartbeat_moved():
            return (await service(c, h, pid))["last_heartbeat"] != before

        await wait_for(heartbeat_moved, timeout=5, what="a heartbeat")
        os.kill((await service(c, h, pid))["pid"], signal.SIGKILL)

        async def offline():
            return (await service(c, h, pid))["status"] == "offline"

        await wait_for(offline, timeout=5, what="offline after kill")


async def test_crash_after_ready_is_offline_at_next_sweep(client, alice, settings, manager):
    pid = await new_project(client, alice)
    set_knobs(settings, await user_id(client, alice), pid, crash_after=0.3)
    assert (await open_comfy(client, alice, pid)).json()["data"]["status"] == "online"
    svc = await service(client, alice, pid)
    await wait_for(lambda: not pid_alive(svc["pid"]), what="crash")
    await manager.heartbeat_once()
    after = await service(client, alice, pid)
    assert after["status"] == "offline" and "退出码 3" in after["last_error"]


async def test_early_exit_fails_fast_with_log_tail(client, alice, settings):
    pid = await new_project(client, alice)
    set_knobs(settings, await user_id(client, alice), pid, exit_code=7)
    t0 = time.monotonic()
    r = await open_comfy(client, alice, pid)
    elapsed = time.monotonic() - t0
    assert elapsed < 2.0 + launcher.start_allowance()
    assert r.status_code == 503 and r.json()["msg"].startswith("ComfyUI 启动失败")
    svc = await service(client, alice, pid)
    assert svc["status"] == "failed"
    assert "退出码 7" in svc["last_error"]
    assert "fatal: exiting with code 7" in svc["last_error"] and "fake log line 30" in svc["last_error"]
    assert "fake log line 10" not in svc["last_error"]  # the last 20 lines, not the whole log
    assert not pid_alive(svc["pid"])


async def test_hang_fails_at_timeout_and_leaves_no_process(db_url, tmp_path):
    async with running_app(db_url, tmp_path, users=("hang",), comfyui_startup_timeout_seconds=1.5) as c:
        h = c.headers_of["hang"]
        pid = await new_project(c, h)
        base = set_knobs(c.settings, await user_id(c, h), pid, hang=True)
        t0 = time.monotonic()
        r = await open_comfy(c, h, pid)
        assert 1.5 <= time.monotonic() - t0 < 6
        assert r.status_code == 503
        svc = await service(c, h, pid)
        assert svc["status"] == "failed" and "启动超时" in svc["last_error"]
        assert instance_processes(base) == []


async def test_foreign_listener_on_first_ports_is_skipped(client, alice, settings):
    low, _ = settings.port_range
    squatters = []
    for port in (low, low + 1):
        s = socket.socket()
        s.bind((launcher.instance_host(), port))  # on a Ray node the actor finds them busy
        s.listen()
        squatters.append(s)
    try:
        pid = await new_project(client, alice)
        r = await open_comfy(client, alice, pid)
        assert r.json()["data"]["status"] == "online"
        assert r.json()["data"]["port"] == low + 2
    finally:
        for s in squatters:
            s.close()


@pytest.mark.local_only  # a squatter on this host's loopback; Ray instances listen on the node's address
@pytest.mark.parametrize("impostor", ["foreign argv", "our argv, no identity", "our argv, wrong identity"])
async def test_port_squatter_answering_system_stats_is_not_ours(client, alice, settings, tmp_path, impostor):
    """Our child loses the bind race to a ComfyUI-like squatter: retried on another port.

    Even one that copied our argv is not believed: it cannot answer with the SHA-256 of
    the secret this start made (X-Comfyhub-Instance)."""
    pid = await new_project(client, alice)
    base = set_knobs(settings, await user_id(client, alice), pid, start_delay=2.5)
    opening = asyncio.create_task(open_comfy(client, alice, pid))

    async def port_recorded():
        svc = await service(client, alice, pid)
        return svc and svc["status"] == "starting" and svc["port"]

    chosen = await wait_for(port_recorded, what="port chosen")
    # The squatter binds at once (our child only binds after its 2.5 s of "loading") and
    # answers /system_stats with somebody else's argv, as a foreign ComfyUI would.
    claimed = "/elsewhere" if impostor == "foreign argv" else str(base)
    headers = {"X-Comfyhub-Instance": "0" * 64, "X-Comfyhub-Binding": ""} if "wrong" in impostor else {}
    squatter = _SystemStatsSquatter(chosen, ["main.py", "--port", str(chosen), "--base-directory", claimed], headers)
    try:
        r = await opening
        data = r.json()["data"]
        assert data["status"] == "online"
        assert data["port"] != chosen
        argv = system_argv(data["port"])
        assert argv[argv.index("--base-directory") + 1] == str(base)
        assert squatter.answered > 0  # it was asked, and not believed
        assert system_argv(chosen)[-1] == claimed  # and it was left alone
    finally:
        squatter.close()


class _SystemStatsSquatter:
    """A foreign HTTP server on `port` that answers /system_stats like a ComfyUI would."""

    def __init__(self, port: int, argv: list[str], headers: dict[str, str] | None = None):
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        outer = self
        self.answered = 0
        body = json.dumps({"system": {"argv": argv}, "devices": []}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.answered += 1
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


async def test_recorded_pid_reused_by_stranger_is_never_signalled(client, alice, manager):
    pid = await new_project(client, alice)
    await open_comfy(client, alice, pid)
    svc = await service(client, alice, pid)
    os.kill(svc["pid"], signal.SIGKILL)
    await wait_for(lambda: not pid_alive(svc["pid"]), what="instance gone")
    # A group leader, as a reused pid can be: a stop signals the process group, so a
    # stranger outside any group of its own would survive even a broken identity check.
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        # Make the record point at the stranger, as if the kernel had reused the pid.
        from sqlalchemy import update

        from comfyhub.models import ComfyUIService

        rec = await manager.get(pid)
        async with manager.sessions() as db:
            state = dict(rec.launcher_state, pid=stranger.pid)
            await db.execute(
                update(ComfyUIService).where(ComfyUIService.id == rec.id).values(pid=stranger.pid, launcher_state=state)
            )
            await db.commit()
        await manager.heartbeat_once()
        assert (await service(client, alice, pid))["status"] == "offline"
        assert (await client.post(f"/api/projects/{pid}/stop_comfy", headers=alice)).status_code == 200
        r = await open_comfy(client, alice, pid)
        assert r.json()["data"]["status"] == "online"
        assert stranger.poll() is None and pid_alive(stranger.pid)
    finally:
        stranger.kill()
        stranger.wait()


async def test_stop_and_delete_leave_no_process_and_keep_user_files(client, alice, settings):
    pid = await new_project(client, alice)
    data = (await open_comfy(client, alice, pid)).json()["data"]
    base = instance_dir(settings, await user_id(client, alice), pid)
    for sub in ("input", "output", "user"):
        (base / sub / "keep.txt").write_text(sub)
    svc = await service(client, alice, pid)
    r = await client.post(f"/api/projects/{pid}/stop_comfy", headers=alice)
    assert r.status_code == 200 and r.json()["data"]["status"] == "stopped"
    assert not pid_alive(svc["pid"]) and instance_processes(base) == []
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as any server does (TIME_WAIT)
        s.bind(("127.0.0.1", data["port"]))  # the port is free again
        s.listen()
    stopped = await service(client, alice, pid)
    assert stopped["status"] == "stopped" and stopped["stopped_reason"] == "用户停止"
    assert stopped["reason"] == "user_stop"  # the code beside the words

    await open_comfy(client, alice, pid)
    running = await service(client, alice, pid)
    assert (await client.delete(f"/api/projects/{pid}", headers=alice)).status_code == 200
    assert not pid_alive(running["pid"]) and instance_processes(base) == []
    for sub in ("input", "output", "user"):
        assert (base / sub / "keep.txt").read_text() == sub


async def test_stop_while_starting_ends_the_start(client, alice, settings):
    pid = await new_project(client, alice)
    base = set_knobs(settings, await user_id(client, alice), pid, start_delay=3)
    opening = asyncio.create_task(open_comfy(client, alice, pid))

    async def starting():
        svc = await service(client, alice, pid)
        return svc and svc["status"] == "starting" and svc["pid"]

    await wait_for(starting, what="start in progress")
    r = await client.post(f"/api/projects/{pid}/stop_comfy", headers=alice)
    assert r.status_code == 200
    reply = await opening
    assert reply.status_code == 409
    assert (await service(client, alice, pid))["status"] == "stopped"
    assert instance_processes(base) == []


async def test_only_the_owner_opens_stops_and_reads_logs(client, alice, bob, admin, settings):
    pid = await new_project(client, alice)
    for headers in (bob, admin):
        r = await open_comfy(client, headers, pid)
        assert r.status_code == 403 and r.json()["msg"] == "无操作权限"
        assert (await client.post(f"/api/projects/{pid}/stop_comfy", headers=headers)).status_code == 403
    assert (await client.get(f"/api/projects/{pid}/comfy_log", headers=bob)).status_code == 403
    assert await service(client, alice, pid) is None  # nothing was started
    assert (await client.post(f"/api/projects/{pid}/open_comfy")).status_code == 401
    assert (await client.post("/api/projects/99999/open_comfy", headers=alice)).status_code == 404


async def test_log_endpoint_tails_and_caps(client, alice, settings):
    pid = await new_project(client, alice)
    set_knobs(settings, await user_id(client, alice), pid, exit_code=1)
    await open_comfy(client, alice, pid)
    r = await client.get(f"/api/projects/{pid}/comfy_log", params={"tail": 5}, headers=alice)
    assert r.status_code == 200
    lines = r.json()["data"]["lines"]
    assert len(lines) == 5 and lines[-2] == "fatal: exiting with code 1"
    assert lines[-1].startswith("===== comfyhub: start failed: ComfyUI 启动失败（退出码 1）")
    assert "/" not in r.json()["data"]["log_file"]
    for bad in (0, -1, 100000, "x"):
        assert (
            await client.get(f"/api/projects/{pid}/comfy_log", params={"tail": bad}, headers=alice)
        ).status_code == 422


async def test_log_is_appended_across_restarts(client, alice, settings):
    pid = await new_project(client, alice)
    await open_comfy(client, alice, pid)
    await client.post(f"/api/projects/{pid}/stop_comfy", headers=alice)
    await open_comfy(client, alice, pid)
    svc = await service(client, alice, pid)
    log = settings.comfyui_log_dir / f"comfy_u{await user_id(client, alice)}_p{pid}_{svc['port']}.log"
    assert log.read_text().count("comfyhub: starting ComfyUI on port") == 2


async def test_not_configured_is_503(db_url, tmp_path):
    async with running_app(db_url, tmp_path, users=("u",), comfyui_repo_path=None, comfyui_python=None) as c:
        h = c.headers_of["u"]
        pid = await new_project(c, h)
        r = await open_comfy(c, h, pid)
        assert r.status_code == 503 and r.json()["msg"] == "ComfyUI 未配置"
        assert "COMFYUI_REPO_PATH" in r.json()["data"]["hint"]
        assert "comfyhub comfyui install" in r.json()["data"]["hint"]  # the command that fixes it
        assert await service(c, h, pid) is None


@pytest.mark.parametrize("python", ["/nonexistent/python", "NOT_EXECUTABLE"])
async def test_missing_or_unexecutable_python_fails_clearly(db_url, tmp_path, python):
    if python == "NOT_EXECUTABLE":
        python = tmp_path / "python"
        python.write_text("#!/bin/sh\n")
        python.chmod(0o644)
    async with running_app(db_url, tmp_path, users=("u",), comfyui_python=python) as c:
        h = c.headers_of["u"]
        pid = await new_project(c, h)
        r = await open_comfy(c, h, pid)
        assert r.status_code == 503
        svc = await service(c, h, pid)
        assert svc["status"] == "failed"
        assert "COMFYUI_PYTHON" in svc["last_error"]


async def test_heartbeat_checks_concurrently(client, alice, settings, manager):
    """Hung instances cost one timeout in all, not one each (checked on a 1 s timeout)."""
    manager.health.timeout = 1.0
    ids = [await new_project(client, alice, f"H-{i}") for i in range(5)]
    replies = await asyncio.gather(*(open_comfy(client, alice, p) for p in ids))
    assert all(r.json()["data"]["status"] == "online" for r in replies)
    hung = []
    for p in ids[:4]:  # freeze four of them: they still accept connections but never answer
        pid = (await service(client, alice, p))["pid"]
        os.kill(pid, signal.SIGSTOP)
        hung.append(pid)
    try:
        t0 = time.monotonic()
        counts = await manager.heartbeat_once()
        elapsed = time.monotonic() - t0
        assert counts == {"online": 1, "offline": 4}
        assert elapsed < 3.0, f"sweep took {elapsed:.1f}s: checks ran one after another"
    finally:
        for pid in hung:
            os.kill(pid, signal.SIGCONT)


async def test_child_env_does_not_carry_comfyhub_secrets(client, alice, monkeypatch):
    monkeypatch.setenv("COMFYHUB_SECRET_KEY", "do-not-leak")
    pid = await new_project(client, alice)
    await open_comfy(client, alice, pid)
    proc = psutil.Process((await service(client, alice, pid))["pid"])
    env = proc.environ()
    assert "COMFYHUB_SECRET_KEY" not in env and env.get("PYTHONUNBUFFERED") == "1"
