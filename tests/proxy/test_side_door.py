"""The side door is closed: an instance's own port answers only to comfyhub (its secret).

Through a real `comfyhub serve` and the fake ComfyUI, which loads comfyhub's extension
the way ComfyUI does.
"""

from __future__ import annotations

import hashlib
import json

import httpx
import psutil
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from comfyhub.launchers.process import read_secret
from tests.support.comfy import instance_processes


@pytest.fixture(scope="module")
def secret(hub) -> str:
    found = read_secret(hub.base)
    assert len(found) >= 40
    return found


def direct(hub, path: str, headers: dict | None = None) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{hub.port}{path}", headers=headers or {}, trust_env=False, timeout=10)


@pytest.mark.parametrize("path", ["/system_stats", "/api/queue", "/", "/scripts/app.js", "/comfyhub/identity", "/x"])
@pytest.mark.parametrize("given", [None, "wrong", "secret+1"])
def test_the_instance_port_refuses_http_without_the_secret(hub, secret, path, given):
    headers = {} if given is None else {"X-Comfyhub-Secret": secret + "1" if given == "secret+1" else given}
    r = direct(hub, path, headers)
    assert r.status_code == 403
    assert r.text == "403: Forbidden"  # no detail
    assert not any(name.lower().startswith("x-comfyhub") for name in r.headers)


def test_the_instance_answers_comfyhub_and_proves_who_it_is(hub, secret):
    r = direct(hub, "/system_stats", {"X-Comfyhub-Secret": secret})
    assert r.status_code == 200
    assert r.headers["x-comfyhub-instance"] == hashlib.sha256(secret.encode()).hexdigest()
    assert r.headers["x-comfyhub-binding"] == ""  # a cold start runs in its folder, unbound
    identity = direct(hub, "/comfyhub/identity", {"X-Comfyhub-Secret": secret}).json()
    assert identity["binding"] is None and identity["secret_sha256"] == r.headers["x-comfyhub-instance"]


@pytest.mark.parametrize("given", [None, "wrong"])
async def test_the_instance_port_refuses_a_websocket_without_the_secret(hub, secret, given):
    headers = {} if given is None else {"X-Comfyhub-Secret": given}
    with pytest.raises(InvalidStatus) as refused:
        async with ws_connect(f"ws://127.0.0.1:{hub.port}/ws?clientId=x", additional_headers=headers, proxy=None):
            pass
    assert refused.value.response.status_code == 403
    async with ws_connect(
        f"ws://127.0.0.1:{hub.port}/ws?clientId=x", additional_headers={"X-Comfyhub-Secret": secret}, proxy=None
    ) as ws:
        assert json.loads(await ws.recv())["type"] == "status"


def test_the_proxy_speaks_for_the_owner_and_drops_a_browsers_comfyhub_headers(hub):
    forged = {**hub.comfy_origin, "X-Comfyhub-Secret": "from-the-browser", "X-Comfyhub-Binding": "1"}
    prompt = {"prompt": {"1": {"class_type": "EmptyImage", "inputs": {}}}, "client_id": "t"}
    base = f"{hub.comfy}/comfy/{hub.project}"
    with hub.client("alice") as c:
        page = c.get(f"{base}/", headers=forged)
        assert page.status_code == 200 and "Fake ComfyUI" in page.text
        stats = c.get(f"{base}/api/system_stats", headers=forged)
        assert stats.status_code == 200
        # The instance's identity is for comfyhub: it does not reach the browser.
        assert not any(name.lower().startswith("x-comfyhub") for name in stats.headers)
        posted = c.post(f"{base}/prompt", json=prompt, headers=forged)
        assert posted.status_code == 200 and "prompt_id" in posted.json()


async def test_the_proxy_opens_the_websocket_with_the_secret(hub):
    headers = {"Origin": hub.comfy, "Cookie": hub.cookie_header("alice"), "X-Comfyhub-Secret": "from-the-browser"}
    url = f"ws://127.0.0.1:{hub.server.instance_port}/comfy/{hub.project}/ws?clientId=side"
    async with ws_connect(url, additional_headers=headers, proxy=None) as ws:
        assert json.loads(await ws.recv())["type"] == "status"
        await ws.send("ping")
        assert await ws.recv() == "ping"


def test_the_secret_is_not_on_the_command_line_nor_in_the_environment(hub, secret):
    procs = instance_processes(hub.base)
    assert procs
    for proc in procs:
        assert secret not in " ".join(proc.cmdline())
        env = proc.environ()
        assert env["COMFYHUB_SECRET_FILE"] == str(hub.base / ".comfyhub" / "secret")
        assert all(secret not in value for value in env.values())
    assert (hub.base / ".comfyhub" / "secret").stat().st_mode & 0o777 == 0o600
    assert (hub.base / ".comfyhub").stat().st_mode & 0o777 == 0o700
    assert all(secret not in " ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"]))


def test_the_secret_is_in_no_log_and_no_file_but_its_own(hub, secret):
    """Logs (comfyhub's and the instance's) and every file comfyhub or the instance wrote,
    except the secret file and the database that holds it."""
    work = hub.server.workdir
    needle = secret.encode()
    looked = 0
    for path in work.rglob("*"):
        if not path.is_file() or path == hub.base / ".comfyhub" / "secret" or path.name.startswith("comfyhub.db"):
            continue
        looked += 1
        assert needle not in path.read_bytes(), path
    assert looked > 3
    assert any(p.suffix == ".log" for p in work.rglob("*.log"))


def test_the_secret_is_in_no_api_answer(hub, secret):
    with hub.client("alice") as c:
        answers = [
            c.get("/api/projects"),
            c.get(f"/api/projects/{hub.project}"),
            c.post(f"/api/projects/{hub.project}/open_comfy", headers=hub.origin),
            c.get(f"/api/projects/{hub.project}/comfy_log"),
            c.get(f"/api/projects/{hub.project}/queue"),
        ]
    with hub.client() as c:
        r = c.post("/api/auth/login", json={"username": "admin", "password": "admin-password-1"})
        assert r.status_code == 200
        answers += [c.get("/api/admin/services"), c.get("/api/admin/events")]
    assert all(a.status_code == 200 for a in answers), [(a.url, a.status_code) for a in answers]
    assert any(str(hub.port) in a.text for a in answers)  # they do describe the instance
    assert all(secret not in a.text for a in answers)
