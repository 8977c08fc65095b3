"""The live hub the proxy tests share (one per test module): alice owns an online project."""

import asyncio
import contextlib
from contextlib import contextmanager

import httpx
import psutil
import pytest

from comfyhub.config import load_settings
from comfyhub.services.instances import instance_dir
from tests.conftest import add_user
from tests.support.hub import fake_comfyui_env
from tests.support.server import LiveServer

TRUSTED_ORIGIN = "https://hub.example.org"  # as if a front proxy served the site under this name


class Hub:
    """A live comfyhub with alice (owner of an online project) and bob."""

    def __init__(self, server: LiveServer, settings):
        self.server, self.settings = server, settings
        self.url = server.url  # comfyhub: the API and the workbench
        self.comfy = server.comfy  # the instance origin: ComfyUI
        self.origin = {"Origin": server.url}
        self.comfy_origin = {"Origin": server.comfy}  # a page of ComfyUI's
        self.project: int | None = None

    @contextmanager
    def client(self, user: str | None = None):
        """Logged in on the main origin and, once the project exists, let into its ComfyUI
        by the hand-off (the jar holds both cookies, as a browser does for one host)."""
        with httpx.Client(base_url=self.url, timeout=60, trust_env=False) as c:
            if user:
                r = c.post("/api/auth/login", json={"username": user, "password": "password-123"})
                assert r.status_code == 200
                if self.project is not None and user == "alice":
                    self.server.enter(c, self.project)
            yield c

    def cookie_header(self, user: str) -> str:
        """The Cookie header of `user`'s browser on the instance origin: both cookies (they
        share the host), of which only the instance cookie counts there."""
        with self.client(user) as c:
            if user != "alice":  # bob may not enter alice's project: let him into his own
                self.server.enter(c, self.bob_project)
            return "; ".join(f"{name}={c.cookies[name]}" for name in ("comfyhub_session", "comfyhub_instance"))


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    work = tmp_path_factory.mktemp("proxyhub")
    env = {
        **fake_comfyui_env(work, 6),
        "COMFYHUB_ADMIN_PASSWORD": "admin-password-1",
        "COMFYHUB_TRUSTED_ORIGINS": TRUSTED_ORIGIN,
    }
    # INFO: the proxy logs a refused WebSocket at INFO, and the tests read that line.
    server = LiveServer(work, env=env, log_level="info").start()
    settings = load_settings(
        _env_file=None,
        comfyhub_database_url=f"sqlite+aiosqlite:///{work}/runtime/comfyhub.db",
        comfyui_instance_base_dir=work / "runtime" / "comfy_instances",
    )
    asyncio.run(add_user(settings, "alice"))
    asyncio.run(add_user(settings, "bob"))
    h = Hub(server, settings)
    with h.client("bob") as c:
        h.bob_project = c.post("/api/projects", json={"name": "b", "code": "PX-B"}, headers=h.origin).json()["data"][
            "id"
        ]
    with h.client("alice") as c:
        r = c.post("/api/projects", json={"name": "p", "code": "PX-1"}, headers=h.origin)
        h.project = r.json()["data"]["id"]
        opened = c.post(f"/api/projects/{h.project}/open_comfy", headers=h.origin).json()["data"]
        assert opened["status"] == "online"
        h.port = opened["port"]
        h.alice_id = c.get("/api/auth/me").json()["data"]["id"]
    h.base = instance_dir(settings, h.alice_id, h.project)
    yield h
    server.stop()
    # Instances outlive the hub by design (COMFYUI_STOP_INSTANCES_ON_EXIT=false): end ours.
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(str(work) in arg for arg in proc.info["cmdline"] or []):
                proc.kill()
