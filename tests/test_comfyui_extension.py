"""comfyhub's extension inside ComfyUI, against stand-ins shaped like ComfyUI's modules.

The extension is loaded the way ComfyUI loads a custom node (by file, with `server` and
`folder_paths` importable), on an aiohttp app shaped like PromptServer's: middlewares
given to the constructor, routes added afterwards.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import types
from pathlib import Path

import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer

from comfyhub.net import endpoint
from comfyhub.services.instances import EXTENSION_SOURCE

SECRET = "s3cret-token_value"
GOOD = {"X-Comfyhub-Secret": SECRET}


def stub_folder_paths(base: Path) -> types.ModuleType:
    fp = types.ModuleType("folder_paths")
    fp.dirs = {k: str(base / k) for k in ("output", "input", "temp", "user")}
    for kind in fp.dirs:
        setattr(fp, f"set_{kind}_directory", lambda path, kind=kind: fp.dirs.__setitem__(kind, path))
        setattr(fp, f"get_{kind}_directory", lambda kind=kind: fp.dirs[kind])
    return fp


def comfyui_like_app() -> web.Application:
    @web.middleware
    async def cache_control(request, handler):  # ComfyUI's own middlewares come first
        return await handler(request)

    app = web.Application(middlewares=[cache_control])

    async def system_stats(request):
        return web.json_response({"system": {"argv": ["main.py"]}})

    async def ws(request):
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        await sock.send_str("hello")
        await sock.close()
        return sock

    app.router.add_get("/system_stats", system_stats)
    app.router.add_get("/ws", ws)
    return app


def load_extension(monkeypatch, tmp_path: Path, secret: str | None):
    """Import the extension as ComfyUI does; returns (module, app, folder_paths)."""
    app = comfyui_like_app()
    fp = stub_folder_paths(tmp_path)
    server = types.ModuleType("server")
    server.PromptServer = types.SimpleNamespace(instance=types.SimpleNamespace(app=app))
    monkeypatch.setitem(sys.modules, "server", server)
    monkeypatch.setitem(sys.modules, "folder_paths", fp)
    if secret is None:
        monkeypatch.delenv("COMFYHUB_SECRET_FILE", raising=False)
    else:
        path = tmp_path / "secret"
        path.write_text(secret + "\n")
        monkeypatch.setenv("COMFYHUB_SECRET_FILE", str(path))
    spec = importlib.util.spec_from_file_location(f"ext_{tmp_path.name}", EXTENSION_SOURCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, app, fp


@pytest.fixture
async def guarded(monkeypatch, tmp_path):
    module, app, fp = load_extension(monkeypatch, tmp_path, SECRET)
    async with TestClient(TestServer(app)) as client:
        yield client, fp, tmp_path


def bind_body(tmp_path: Path, project_id: int = 7) -> dict:
    return {
        "project_id": project_id,
        "user_id": 3,
        "dirs": {k: str(tmp_path / f"p{project_id}" / k) for k in ("output", "input", "temp", "user")},
    }


async def test_every_request_needs_the_secret(guarded):
    client, _, _ = guarded
    for path in ("/system_stats", "/comfyhub/identity", "/no/such/page", "/ws"):
        for headers in ({}, {"X-Comfyhub-Secret": "wrong"}, {"X-Comfyhub-Secret": SECRET + "x"}):
            answer = await client.get(path, headers=headers)
            assert answer.status == 403, (path, headers)
            assert await answer.text() == "403: Forbidden"
            assert "X-Comfyhub-Instance" not in answer.headers
    answer = await client.post("/comfyhub/bind", json={})
    assert answer.status == 403


async def test_admitted_answers_prove_the_identity(guarded):
    client, _, _ = guarded
    answer = await client.get("/system_stats", headers=GOOD)
    assert answer.status == 200
    assert answer.headers["X-Comfyhub-Instance"] == hashlib.sha256(SECRET.encode()).hexdigest()
    assert answer.headers["X-Comfyhub-Binding"] == ""
    missing = await client.get("/nothing-here", headers=GOOD)
    assert missing.status == 404 and missing.headers["X-Comfyhub-Instance"]


async def test_websocket_handshake_needs_the_secret_and_carries_the_identity(guarded):
    client, _, _ = guarded
    async with client.ws_connect("/ws", headers=GOOD) as ws:
        assert ws._response.headers["X-Comfyhub-Instance"] == endpoint.identity_of(SECRET)
        message = await ws.receive()
        assert message.type == WSMsgType.TEXT and message.data == "hello"


async def test_identity(guarded):
    client, _, _ = guarded
    answer = await (await client.get("/comfyhub/identity", headers=GOOD)).json()
    assert answer["secret_sha256"] == endpoint.identity_of(SECRET)
    assert answer["binding"] is None
    assert isinstance(answer["argv"], list)


async def test_bind_sets_the_four_folders_once(guarded):
    client, fp, tmp_path = guarded
    body = bind_body(tmp_path)
    answer = await client.post("/comfyhub/bind", json=body, headers=GOOD)
    assert answer.status == 200
    assert (await answer.json())["binding"] == body
    assert fp.dirs == body["dirs"]
    assert all(Path(p).is_dir() for p in body["dirs"].values())
    after = await client.get("/system_stats", headers=GOOD)
    assert after.headers["X-Comfyhub-Binding"] == "7"
    assert (await (await client.get("/comfyhub/identity", headers=GOOD)).json())["binding"] == body

    other = bind_body(tmp_path, project_id=8)
    again = await client.post("/comfyhub/bind", json=other, headers=GOOD)
    assert again.status == 409
    assert fp.dirs == body["dirs"]  # bound once, never rebound
    assert not (tmp_path / "p8").exists()


async def test_a_wrong_secret_changes_nothing(guarded):
    client, fp, tmp_path = guarded
    before = dict(fp.dirs)
    answer = await client.post("/comfyhub/bind", json=bind_body(tmp_path), headers={"X-Comfyhub-Secret": "guess"})
    assert answer.status == 403
    assert fp.dirs == before and not (tmp_path / "p7").exists()
    identity = await (await client.get("/comfyhub/identity", headers=GOOD)).json()
    assert identity["binding"] is None


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"project_id": "7", "user_id": 3, "dirs": {}},
        {"project_id": True, "user_id": 3},
        {"project_id": 7, "user_id": 3, "dirs": {"output": "/a", "input": "/b", "temp": "/c"}},
        {"project_id": 7, "user_id": 3, "dirs": {"output": "rel", "input": "/b", "temp": "/c", "user": "/d"}},
    ],
)
async def test_a_malformed_bind_is_400_and_changes_nothing(guarded, body):
    client, fp, _ = guarded
    before = dict(fp.dirs)
    answer = await client.post("/comfyhub/bind", json=body, headers=GOOD)
    assert answer.status == 400
    assert fp.dirs == before


async def test_not_json_is_400(guarded):
    client, _, _ = guarded
    answer = await client.post("/comfyhub/bind", data=b"{nope", headers=GOOD)
    assert answer.status == 400


async def test_without_a_secret_the_extension_does_nothing(monkeypatch, tmp_path):
    module, app, _ = load_extension(monkeypatch, tmp_path, None)
    assert module.GUARD is None
    async with TestClient(TestServer(app)) as client:
        answer = await client.get("/system_stats")
        assert answer.status == 200 and "X-Comfyhub-Instance" not in answer.headers
        assert (await client.get("/comfyhub/identity")).status == 404


async def test_an_unreadable_secret_file_refuses_everything(monkeypatch, tmp_path):
    monkeypatch.setenv("COMFYHUB_SECRET_FILE", str(tmp_path / "missing"))
    app = comfyui_like_app()
    server = types.ModuleType("server")
    server.PromptServer = types.SimpleNamespace(instance=types.SimpleNamespace(app=app))
    monkeypatch.setitem(sys.modules, "server", server)
    monkeypatch.setitem(sys.modules, "folder_paths", stub_folder_paths(tmp_path))
    spec = importlib.util.spec_from_file_location("ext_unreadable", EXTENSION_SOURCE)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/system_stats")).status == 403
        assert (await client.get("/system_stats", headers={"X-Comfyhub-Secret": ""})).status == 403


def test_the_header_names_match_comfyhubs():
    spec = importlib.util.spec_from_file_location("ext_names", EXTENSION_SOURCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # no COMFYHUB_SECRET_FILE here: it installs nothing
    assert module.SECRET_HEADER.lower() == endpoint.SECRET_HEADER
    assert module.INSTANCE_HEADER.lower() == endpoint.INSTANCE_HEADER
    assert module.BINDING_HEADER.lower() == endpoint.BINDING_HEADER
