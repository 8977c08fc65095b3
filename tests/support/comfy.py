"""Helpers for tests that run instances of the fake ComfyUI through comfyhub."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import psutil

from comfyhub.config import Settings
from comfyhub.launchers.base import argv_value
from comfyhub.launchers.process import read_secret
from comfyhub.services.instances import instance_dir
from tests.support import launcher


def set_knobs(settings: Settings, user_id: int, project_id: int, **knobs) -> Path:
    """Per-instance behaviour of the fake ComfyUI (read by it at start-up)."""
    base = instance_dir(settings, user_id, project_id)
    base.mkdir(parents=True, exist_ok=True)
    (base / "fake_comfyui.json").write_text(json.dumps(knobs))
    return base


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def instance_processes(base_dir: Path | str) -> list[psutil.Process]:
    """Live processes whose command line names this instance folder."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and str(base_dir) in (proc.info["cmdline"] or []):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def kill_instances(work: Path | str) -> None:
    """The backend keeps instances running when it exits (by design): end those started under `work`."""
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(str(work) in arg for arg in proc.info["cmdline"] or []):
                proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


def instance_secret(port: int) -> str:
    """The secret of the instance listening on `port`, as comfyhub delivered it (the file
    its process was started with); "" when none runs there or it has none."""
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmdline = proc.info["cmdline"] or []
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if "main.py" in cmdline and argv_value(cmdline, "--port") == str(port):
            base = argv_value(cmdline, "--base-directory")
            return read_secret(base) if base else ""
    return ""


def as_comfyhub(port: int) -> dict[str, str]:
    """The header that lets a test talk to an instance directly, as comfyhub does."""
    secret = instance_secret(port)
    return {"X-Comfyhub-Secret": secret} if secret else {}


def system_argv(port: int) -> list[str] | None:
    """The argv an instance reports, asked directly (not through comfyhub)."""
    try:
        url = f"http://{launcher.instance_host()}:{port}/system_stats"
        return httpx.get(url, timeout=2, trust_env=False, headers=as_comfyhub(port)).json()["system"]["argv"]
    except (httpx.HTTPError, ValueError, KeyError):
        return None


async def user_id(client, headers) -> int:
    return (await client.get("/api/auth/me", headers=headers)).json()["data"]["id"]


async def new_project(client, headers, code: str = "P-1") -> int:
    r = await client.post("/api/projects", json={"name": code, "code": code}, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()["data"]["id"]


async def service(client, headers, project_id: int) -> dict | None:
    return (await client.get(f"/api/projects/{project_id}", headers=headers)).json()["data"]["service"]
