"""A live `comfyhub serve` wired to the fake ComfyUI, with users and a logged-in client."""

from __future__ import annotations

import asyncio
import os
import sys
from contextlib import contextmanager
from pathlib import Path

import httpx

from comfyhub.config import load_settings
from comfyhub.services.instances import instance_dir
from tests.support import launcher
from tests.support.net import free_port_block
from tests.support.server import LiveServer

ROOT = Path(__file__).resolve().parents[2]
FAKE_COMFYUI = ROOT / "tests" / "fake_comfyui"
PASSWORD = "password-123"


def fake_comfyui_env(work: Path, ports: int) -> dict[str, str]:
    """Settings for a live `comfyhub serve` in `work` that starts fake ComfyUIs on free ports."""
    low, high = free_port_block(ports)
    (work / "shared" / "custom_nodes").mkdir(parents=True, exist_ok=True)
    return {
        "COMFYUI_REPO_PATH": str(FAKE_COMFYUI),
        "COMFYUI_PYTHON": os.environ.get("COMFYHUB_TEST_PYTHON", sys.executable),
        "COMFYUI_PORT_RANGE": f"{low}-{high}",
        "COMFYUI_CUSTOM_NODES_DIR": str(work / "shared" / "custom_nodes"),
        "COMFYUI_MODELS_DIR": str(work / "shared" / "custom_nodes"),
        # no per-user limit and no culling, unless a test sets its own
        "COMFYUI_MAX_INSTANCES_PER_USER": "0",
        "COMFYUI_IDLE_TIMEOUT_SECONDS": "0",
        "COMFYUI_WARM_POOL_SIZE": "0",  # no warm pool unless a test asks for one
    }


class LiveHub(LiveServer):
    """`comfyhub serve` in `workdir` (SQLite there, or `db_url`) starting fake ComfyUIs."""

    def __init__(self, workdir: Path, db_url: str | None = None, workers: int = 1, ports: int = 8, **env):
        workdir.mkdir(parents=True, exist_ok=True)
        shared = workdir / "shared"
        (shared / "custom_nodes").mkdir(parents=True, exist_ok=True)
        (shared / "models").mkdir(parents=True, exist_ok=True)
        low, high = free_port_block(ports)
        self.db_url = db_url or f"sqlite+aiosqlite:///{workdir}/runtime/comfyhub.db"
        base = {
            "COMFYHUB_DATABASE_URL": self.db_url,
            "COMFYHUB_SECRET_KEY": "live-hub-secret",
            "COMFYHUB_ADMIN_PASSWORD": "admin-password-1",
            "COMFYUI_REPO_PATH": str(FAKE_COMFYUI),
            "COMFYUI_PYTHON": sys.executable,
            "COMFYUI_PORT_RANGE": f"{low}-{high}",
            "COMFYUI_CUSTOM_NODES_DIR": str(shared / "custom_nodes"),
            "COMFYUI_MODELS_DIR": str(shared / "models"),
            "COMFYUI_STARTUP_TIMEOUT_SECONDS": "20",
            "COMFYUI_STOP_GRACE_SECONDS": "3",
            # no per-user limit and no culling, unless a test sets its own
            "COMFYUI_MAX_INSTANCES_PER_USER": "0",
            "COMFYUI_IDLE_TIMEOUT_SECONDS": "0",
            "COMFYUI_WARM_POOL_SIZE": "0",  # no warm pool unless a test asks for one
        }
        base.update(launcher.hub_env())
        base.update({k.upper(): str(v) for k, v in env.items()})
        super().__init__(workdir, env=base, workers=workers)
        self.settings = load_settings(
            _env_file=None,
            comfyhub_database_url=self.db_url,
            comfyui_instance_base_dir=workdir / "runtime" / "comfy_instances",
        )

    def add_user(self, name: str, admin: bool = False) -> None:
        from tests.conftest import add_user

        asyncio.run(add_user(self.settings, name, PASSWORD, admin))

    @contextmanager
    def client(self, user: str | None = None, timeout: float = 60):
        with httpx.Client(base_url=self.url, timeout=timeout, trust_env=False, headers={"Origin": self.url}) as c:
            if user:
                r = c.post("/api/auth/login", json={"username": user, "password": PASSWORD})
                assert r.status_code == 200, r.text
            yield c

    def instance_dir(self, user_id: int, project_id: int) -> Path:
        return instance_dir(self.settings, user_id, project_id)


def create_project(c: httpx.Client, code: str) -> int:
    r = c.post("/api/projects", json={"name": code, "code": code})
    assert r.status_code == 201, r.text
    return r.json()["data"]["id"]


def service_of(c: httpx.Client, project_id: int) -> dict | None:
    return c.get(f"/api/projects/{project_id}").json()["data"]["service"]
