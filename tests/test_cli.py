"""The `comfyhub` command, run as a newcomer would: serve, user create, doctor."""

import os
import stat
import subprocess
import sys

import httpx

from tests.support.server import LiveServer, initial_admin_password


def comfyhub(*args, cwd, env=None, input=None):
    return subprocess.run([sys.executable, "-m", "comfyhub.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, input=input, timeout=120)


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
        assert httpx.get(server.url + "/api/auth/me", headers=server.login("dora", "dora-password")).json()["data"][
            "is_admin"] is False
        assert httpx.get(server.url + "/api/auth/me", headers=server.login("eve", "eve-password")).json()["data"][
            "is_admin"] is True


def test_serve_refuses_many_workers_on_sqlite(tmp_path):
    r = comfyhub("serve", "--workers", "2", cwd=tmp_path)
    assert r.returncode == 2 and "PostgreSQL" in r.stderr


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
