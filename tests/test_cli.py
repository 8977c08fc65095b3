"""The `comfyhub` command, run as a newcomer would: serve, user create, doctor."""

import os
import stat
import subprocess
import sys

import httpx

from tests.support.net import free_port
from tests.support.server import LiveServer, initial_admin_password


def comfyhub(*args, cwd, env=None, input=None):
    return subprocess.run(
        [sys.executable, "-m", "comfyhub.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        input=input,
        timeout=120,
    )


def test_first_serve_prints_admin_password_and_curl_flow_works(tmp_path):
    with LiveServer(tmp_path) as server:
        password = initial_admin_password(tmp_path)
        assert f"password: {password}" in server.output()
        # no ComfyUI yet: the console says so, with the command that fixes it
        assert "ComfyUI is not configured" in server.output()
        assert ".venv/bin/comfyhub comfyui install" in server.output()
        assert stat.S_IMODE((tmp_path / "runtime" / "initial_admin_password").stat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / "runtime" / "secret_key").stat().st_mode) == 0o600
        # the README's curl walkthrough
        headers = server.login("admin", password)
        r = httpx.post(server.url + "/api/projects", json={"name": "演示", "code": "DEMO-1"}, headers=headers)
        assert r.status_code == 201
        assert httpx.get(server.url + "/api/projects", headers=headers).json()["data"][0]["code"] == "DEMO-1"
    # a second start keeps the admin and prints no new password
    with LiveServer(tmp_path) as server:
        assert "password:" not in server.output().split("comfyhub: migrating")[-1]
        server.login("admin", password)


def test_admin_from_environment(tmp_path):
    env = {"COMFYHUB_ADMIN_USER": "boss", "COMFYHUB_ADMIN_PASSWORD": "boss-password-1"}
    with LiveServer(tmp_path, env=env) as server:
        assert "password:" not in server.output()
        me = httpx.get(server.url + "/api/auth/me", headers=server.login("boss", "boss-password-1"))
        assert me.json()["data"]["is_admin"] is True


def test_user_create_with_password_stdin(tmp_path):
    r = comfyhub("user", "create", "dora", "--password-stdin", cwd=tmp_path, input="dora-password\n")
    assert r.returncode == 0, r.stderr
    r = comfyhub("user", "create", "dora", "--password-stdin", cwd=tmp_path, input="dora-password\n")
    assert r.returncode == 1 and "already exists" in r.stderr
    r = comfyhub("user", "create", "short", "--password-stdin", cwd=tmp_path, input="abc\n")
    assert r.returncode == 1 and "8 characters" in r.stderr
    r = comfyhub("user", "create", "eve", "--admin", "--password-stdin", cwd=tmp_path, input="eve-password\n")
    assert r.returncode == 0
    env = {"COMFYHUB_ADMIN_PASSWORD": "unused-password"}
    with LiveServer(tmp_path, env=env) as server:
        assert (
            httpx.get(server.url + "/api/auth/me", headers=server.login("dora", "dora-password")).json()["data"][
                "is_admin"
            ]
            is False
        )
        assert (
            httpx.get(server.url + "/api/auth/me", headers=server.login("eve", "eve-password")).json()["data"][
                "is_admin"
            ]
            is True
        )


def test_serve_refuses_many_workers_on_sqlite(tmp_path):
    r = comfyhub("serve", "--workers", "2", cwd=tmp_path)
    assert r.returncode == 2 and "PostgreSQL" in r.stderr


def test_serve_listens_on_the_instance_origin_too_and_says_so_when_it_cannot(tmp_path):
    """`serve` binds --port and the instance port; a taken instance port is a clear error."""
    with LiveServer(tmp_path) as server:
        assert f"ComfyUI (the instance origin) on port {server.instance_port}" in server.output()
        r = httpx.get(f"{server.comfy}/api/auth/me", headers=server.login("admin", initial_admin_password(tmp_path)))
        assert r.status_code == 404  # the API is not there
        taken = comfyhub(
            "serve", "--port", str(free_port()), cwd=tmp_path, env={"COMFYHUB_INSTANCE_PORT": str(server.port)}
        )
    assert r.status_code == 404
    assert taken.returncode == 2 and f"cannot listen on 127.0.0.1:{server.port} (instance origin)" in taken.stderr


def test_doctor_reports_each_check(tmp_path):
    """A fresh folder: each check prints its line, failures with a fix (tests/test_doctor.py has them all)."""
    r = comfyhub("doctor", cwd=tmp_path)
    assert r.returncode == 1
    assert "fail  comfyui: COMFYUI_REPO_PATH / COMFYUI_PYTHON not set" in r.stdout
    assert "fail  database:" in r.stdout and "fix:" in r.stdout
    assert "ok    instance dir" in r.stdout
    assert not (tmp_path / "runtime" / "comfyhub.db").exists()  # checking creates nothing
    r = comfyhub("doctor", cwd=tmp_path, env={"COMFYUI_PORT_RANGE": "9-1"})
    assert r.returncode == 1 and "COMFYUI_PORT_RANGE" in r.stdout


# --- `services list` / `events`: tables whose columns line up, Chinese text included ------


def _seed_instances(tmp_path):
    """Two instances and their events in the folder's SQLite database, one with Chinese names."""
    import asyncio
    from datetime import UTC, datetime

    from comfyhub.db import create_engine, migrate, session_factory
    from comfyhub.models import ComfyUIService, Event, Project, User

    url = f"sqlite+aiosqlite:///{tmp_path}/runtime/comfyhub.db"
    migrate(url)

    async def insert():
        engine = create_engine(url)
        try:
            async with session_factory(engine)() as db:
                people = [User(username="张三丰", password_hash="x"), User(username="bob", password_hash="x")]
                db.add_all(people)
                await db.flush()
                projects = [
                    Project(name="演示", code="数据集-一号", owner_user_id=people[0].id),
                    Project(name="demo", code="DEMO-2", owner_user_id=people[1].id),
                ]
                db.add_all(projects)
                await db.flush()
                at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
                db.add_all(
                    [
                        ComfyUIService(
                            user_id=people[0].id,
                            project_id=projects[0].id,
                            status="online",
                            port=8201,
                            pid=4242,
                            gpu="0",
                            started_at=at,
                        ),
                        ComfyUIService(user_id=people[1].id, project_id=projects[1].id, status="stopped"),
                        Event(
                            at=at,
                            actor="张三丰",
                            action="start",
                            project_id=projects[0].id,
                            outcome="online",
                            detail="端口 8201\nsecond line",
                        ),
                        Event(
                            at=at,
                            actor="cli",
                            action="stop",
                            project_id=projects[1].id,
                            outcome="stopped",
                            detail="命令行停止",
                        ),
                    ]
                )
                await db.commit()
        finally:
            await engine.dispose()

    asyncio.run(insert())


def _layout(line: str, cells: list[str], right: set[int]) -> list[int]:
    """Where each cell sits, in display columns (a CJK character is two wide): its start, or
    its end for the right-aligned columns. Cells are matched whole, in order, between spaces."""
    import re

    from rich.cells import cell_len

    offsets, pos = [], 0
    for i, cell in enumerate(cells):
        match = re.compile(rf"(?<!\S){re.escape(cell)}(?!\S)").search(line, pos)
        assert match, f"{cell!r} not in {line!r}"
        pos = match.end()
        offsets.append(cell_len(line[: match.end() if i in right else match.start()]))
    return offsets


def test_services_list_and_events_are_aligned_tables(tmp_path):
    _seed_instances(tmp_path)

    r = comfyhub("services", "list", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    header, rule, chinese, latin = [line for line in r.stdout.splitlines() if line.strip()]
    assert set(rule.strip()) == {"─"}
    right = {0, 4, 5}  # project, port, pid
    expected = _layout(header, ["project", "code", "user", "status", "port", "pid", "gpu", "started"], right)
    assert (
        _layout(chinese, ["1", "数据集-一号", "张三丰", "online", "8201", "4242", "0", "2026-01-02 03:04:05"], right)
        == expected
    ), r.stdout
    assert _layout(latin, ["2", "DEMO-2", "bob", "stopped", "-", "-", "-", "-"], right) == expected, r.stdout

    r = comfyhub("services", "events", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    header, rule, first, second = [line for line in r.stdout.splitlines() if line.strip()]
    right = {3}  # project
    expected = _layout(header, ["at", "actor", "action", "project", "outcome", "detail"], right)
    assert _layout(first, ["2026-01-02 03:04:05", "张三丰", "start", "1", "online", "端口 8201"], right) == expected, (
        r.stdout
    )
    assert _layout(second, ["2026-01-02 03:04:05", "cli", "stop", "2", "stopped", "命令行停止"], right) == expected, (
        r.stdout
    )
    assert "second line" not in r.stdout  # one line per event: the detail's first line


def test_commands_do_not_print_nvml_complaints(tmp_path):
    """NVML's "library not found" is doctor's to explain (tests/test_doctor.py), not every command's:
    no NVIDIA driver here, so NVML fails on every look."""
    runs = [
        comfyhub("user", "create", "dora", "--password-stdin", cwd=tmp_path, input="dora-password\n"),
        comfyhub("services", "list", cwd=tmp_path),
        # picks the torch build by looking for GPUs, then fails to clone
        comfyhub("comfyui", "install", "--git-url", str(tmp_path / "no-such-repo"), cwd=tmp_path),
    ]
    assert [r.returncode for r in runs] == [0, 0, 1], [r.stderr for r in runs]
    for r in runs:
        assert "NVML" not in r.stderr, r.stderr


def test_serve_believes_x_forwarded_proto_from_a_trusted_proxy_only(tmp_path):
    """Behind a TLS-terminating proxy on this host (the default COMFYHUB_FORWARDED_ALLOW_IPS)
    the session cookie carries Secure; with no proxy trusted, the header changes nothing."""
    env = {"COMFYHUB_ADMIN_PASSWORD": "admin-password-1"}
    tls = {"X-Forwarded-Proto": "https"}

    def cookie_attributes(server, headers=None) -> list[str]:
        login = {"username": "admin", "password": "admin-password-1"}
        r = httpx.post(server.url + "/api/auth/login", json=login, headers=headers, timeout=10)
        assert r.status_code == 200, r.text
        return r.headers["set-cookie"].lower().split("; ")

    with LiveServer(tmp_path / "behind-proxy", env=env) as server:
        assert "secure" in cookie_attributes(server, tls)
        assert "secure" not in cookie_attributes(server)
    with LiveServer(tmp_path / "no-proxy", env={**env, "COMFYHUB_FORWARDED_ALLOW_IPS": ""}) as server:
        assert "secure" not in cookie_attributes(server, tls)
