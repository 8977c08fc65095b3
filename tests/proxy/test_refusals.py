"""What /comfy/{id}/… answers when it does not pass a request on: a page for a browser,
the API's JSON envelope for a script; and a refused WebSocket is one INFO line, no ERROR."""

import json
from types import SimpleNamespace

import httpx
import pytest
import websockets
from websockets.asyncio.client import connect as ws_connect

from comfyhub.handoff import InstancePass
from comfyhub.proxy.access import Target
from comfyhub.proxy.gateway import ComfyProxy
from tests.support.net import wait_for_sync

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8"
ALICE, BOB = "alice-token", "bob-token"
STARTING, MISSING = 1, 99  # alice's project whose instance is starting; a project that does not exist


class Access:
    """ProxyAccess without a database: two users, one project that is starting."""

    users = {ALICE: 1, BOB: 2}
    targets = {STARTING: Target(STARTING, 1, "starting", "127.0.0.1", None)}

    async def user_id(self, token):
        return self.users.get(token)

    async def target(self, project_id):
        return self.targets.get(project_id)

    async def instance_pass(self, cookie):
        return InstancePass(self.users[cookie], None) if cookie in self.users else None


async def _not_the_app(scope, receive, send):
    raise AssertionError("a /comfy/ request reached the app")


@pytest.fixture
async def proxy():
    settings = SimpleNamespace(comfyhub_instance_origin="", instance_port=8001)
    hub = SimpleNamespace(state=SimpleNamespace(proxy_access=Access(), settings=settings))
    transport = httpx.ASGITransport(app=ComfyProxy(_not_the_app, hub).instance)  # the instance origin
    async with httpx.AsyncClient(transport=transport, base_url="http://hub.test") as client:
        yield client


def _headers(client: str, token: str) -> dict[str, str]:
    if client == "bearer":  # a script with its token (even one that claims to accept HTML)
        return {"Authorization": f"Bearer {token}", "Accept": BROWSER_ACCEPT}
    if client == "script":  # curl's default Accept, with the session cookie
        return {"Cookie": f"comfyhub_instance={token}", "Accept": "*/*"}
    return {"Cookie": f"comfyhub_instance={token}", "Accept": BROWSER_ACCEPT}  # a browser navigating


CASES = {  # (who, project) → status, the API's msg (JSON), words on the page (HTML)
    "not logged in": ("forged", STARTING, 401, "未登录或登录已过期", "请先登录 comfyhub"),
    "not the owner": (BOB, STARTING, 403, "无操作权限", "只有项目的所有者"),
    "no such project": (ALICE, MISSING, 404, "项目不存在", "该项目不存在或已被删除"),
    "not running yet": (ALICE, STARTING, 503, "ComfyUI 启动中", "实例正在启动"),
}


@pytest.mark.parametrize("client", ["bearer", "script", "browser"])
@pytest.mark.parametrize("case", CASES)
async def test_a_script_gets_the_json_envelope_and_a_browser_a_page(proxy, case, client):
    who, project, status, msg, words = CASES[case]
    r = await proxy.get(f"/comfy/{project}/api/queue", headers=_headers(client, who))
    assert r.status_code == status
    if client == "browser":
        assert r.headers["content-type"] == "text/html; charset=utf-8"
        assert words in r.text and 'href="/"' in r.text
        return
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["code"] == status and body["msg"] == msg
    if status == 503:
        assert body["data"] == {"status": "starting"}


async def test_a_bad_project_id_is_json_for_a_script(proxy):
    r = await proxy.get("/comfy/99999999999999999999/", headers={"Accept": "application/json"})
    assert r.status_code == 404 and r.json() == {"code": 404, "msg": "项目不存在", "data": None}


# --- through a live `comfyhub serve` ----------------------------------------------------------


def test_live_hub_answers_scripts_with_the_api_envelope(hub):
    path = f"/comfy/{hub.project}/api/system_stats"
    bearer = hub.server.login("bob", "password-123")
    with httpx.Client(base_url=hub.comfy, timeout=30, trust_env=False) as c:
        r = c.get(path, headers=bearer)
        assert (r.status_code, r.headers["content-type"]) == (403, "application/json")
        assert r.json() == {"code": 403, "msg": "无操作权限", "data": None}
        r = c.get(path)  # httpx sends Accept: */*, like curl
        assert (r.status_code, r.headers["content-type"]) == (401, "application/json")
        assert r.json()["msg"] == "未登录或登录已过期"
        r = c.get(path, headers={"Accept": BROWSER_ACCEPT})
        assert (r.status_code, r.headers["content-type"]) == (401, "text/html; charset=utf-8")


async def test_a_refused_websocket_is_one_info_line_and_no_error(hub):
    """uvicorn logs "ASGI callable returned without completing handshake" at ERROR when
    the app returns before it has dropped a refused connection."""
    start = len(hub.server.output())
    url = f"ws://127.0.0.1:{hub.server.instance_port}/comfy/{{}}/ws?clientId=x"
    for project in (hub.project, 999999):  # refused as anonymous; then a marker refusal
        with pytest.raises(websockets.exceptions.InvalidStatus) as err:
            async with ws_connect(url.format(project), additional_headers={"Origin": hub.comfy}, proxy=None):
                pass
        assert err.value.response.status_code == 401
    assert json.loads(err.value.response.body) == {"code": 401, "msg": "未登录或登录已过期", "data": None}

    def logged() -> list[str]:
        return hub.server.output()[start:].splitlines()

    # The marker's line comes after the first refusal has ended, ERROR line and all.
    wait_for_sync(lambda: any("project 999999" in line for line in logged()), timeout=10, what="the refusal line")
    lines = logged()
    assert not [line for line in lines if "ERROR" in line], "\n".join(lines)
    refused = [line for line in lines if "refused WebSocket" in line and f"project {hub.project}:" in line]
    assert len(refused) == 1, "\n".join(lines)
    assert " INFO comfyhub.proxy: " in refused[0] and "401 未登录或登录已过期" in refused[0]
