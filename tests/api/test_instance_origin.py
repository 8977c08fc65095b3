"""The instance origin, against the real app in-process: the hand-off (one-time codes, the
instance cookie), the API never taking that cookie nor answering ComfyUI's pages, and
the instance origin serving ComfyUI alone. httpx's ASGI transport gives the app the
request URL's host and port as the server address, as uvicorn gives the listener's: a
URL on INSTANCE_PORT arrives on the instance listener."""

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from comfyhub.models import EntryCode, utcnow
from tests.conftest import ORIGIN
from tests.support.app import running_app

INSTANCE_PORT = 9001
COMFY = f"http://testserver:{INSTANCE_PORT}"  # the derived instance origin: the main host, its port
MAIN = {"Origin": ORIGIN}


async def _browser(c, name: str) -> None:
    """Log `name` in as a browser does: the session cookie in the jar."""
    c.cookies.clear()
    r = await c.post("/api/auth/login", json={"username": name, "password": "password-123"}, headers=MAIN)
    assert r.status_code == 200, r.text


async def _project(c, name: str, code: str) -> int:
    r = await c.post("/api/projects", json={"name": code, "code": code}, headers=c.headers_of[name])
    assert r.status_code == 201, r.text
    return r.json()["data"]["id"]


async def _code_url(c, project: int, rest: str = "") -> str:
    hop = await c.get(f"/comfy/{project}/{rest}")
    assert hop.status_code == 303, hop.text
    return hop.headers["location"]


def _app(db_url, tmp_path, **overrides):
    return running_app(db_url, tmp_path, users=("alice", "bob"), comfyhub_instance_port=INSTANCE_PORT, **overrides)


async def test_the_main_origin_hands_off_with_a_one_time_code(db_url, tmp_path):
    async with _app(db_url, tmp_path) as c:
        project = await _project(c, "alice", "IO-1")
        await _browser(c, "alice")
        hop = await c.get(f"/comfy/{project}/scripts/app.js?v=1")
        assert hop.status_code == 303 and hop.headers["referrer-policy"] == "no-referrer"
        enter = hop.headers["location"]
        assert enter.startswith(f"{COMFY}/_comfyhub/enter/{project}?code=")
        async with c.app.state.sessions() as db:
            expires = await db.scalar(select(EntryCode.expires_at))
        assert timedelta(0) < expires - utcnow() <= timedelta(seconds=60)

        landed = await c.get(enter)
        assert landed.status_code == 303
        assert landed.headers["location"] == f"/comfy/{project}/scripts/app.js?v=1"
        cookie = landed.headers["set-cookie"]
        assert cookie.startswith("comfyhub_instance=")
        attributes = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
        assert {"httponly", "path", "max-age", "samesite"} <= attributes and "domain" not in attributes
        assert "SameSite=Lax" in cookie and "Path=/;" in cookie

        # Let in: the stopped instance is what stands in the way now, not the credentials.
        page = await c.get(f"{COMFY}/comfy/{project}/queue")
        assert page.status_code == 404 and page.json()["msg"] == "ComfyUI 未启动"

        again = await c.get(enter)
        assert again.status_code == 403 and again.json()["msg"] == "链接已失效"


async def test_an_expired_code_is_refused(db_url, tmp_path):
    async with _app(db_url, tmp_path) as c:
        project = await _project(c, "alice", "IO-2")
        await _browser(c, "alice")
        enter = await _code_url(c, project)
        async with c.app.state.sessions() as db:
            await db.execute(update(EntryCode).values(expires_at=utcnow() - timedelta(seconds=1)))
            await db.commit()
        r = await c.get(enter)
        assert r.status_code == 403 and "set-cookie" not in r.headers


async def test_codes_and_cookies_are_bound_to_their_user_and_project(db_url, tmp_path):
    async with _app(db_url, tmp_path) as c:
        alices = await _project(c, "alice", "IO-A")
        bobs = await _project(c, "bob", "IO-B")
        await _browser(c, "bob")
        assert (await c.get(f"/comfy/{alices}/")).status_code == 403  # no code for another's project
        enter = await _code_url(c, bobs)
        stolen = enter.replace(f"/enter/{bobs}?", f"/enter/{alices}?")
        assert (await c.get(stolen)).status_code == 403
        assert (await c.get(enter)).status_code == 403  # tried once, used up
        assert (await c.get(await _code_url(c, bobs))).status_code == 303
        r = await c.get(f"{COMFY}/comfy/{alices}/queue")  # bob's instance cookie, alice's project
        assert r.status_code == 403 and r.json()["msg"] == "无操作权限"
        assert (await c.get(f"{COMFY}/comfy/{bobs}/queue")).json()["msg"] == "ComfyUI 未启动"


async def test_the_api_never_takes_the_instance_cookie(db_url, tmp_path):
    async with _app(db_url, tmp_path) as c:
        project = await _project(c, "alice", "IO-3")
        await _browser(c, "alice")
        await c.get(await _code_url(c, project))
        instance = c.cookies["comfyhub_instance"]
        c.cookies.clear()
        c.cookies.set("comfyhub_instance", instance)
        assert (await c.get("/api/auth/me")).status_code == 401
        assert (await c.get("/api/projects")).status_code == 401
        assert (await c.get("/api/auth/me", headers={"Authorization": f"Bearer {instance}"})).status_code == 401
        r = await c.post("/api/projects", json={"name": "x", "code": "X"}, headers=MAIN)
        assert r.status_code == 401
        # Nor as the session cookie's value.
        c.cookies.clear()
        c.cookies.set("comfyhub_session", instance)
        assert (await c.get("/api/auth/me")).status_code == 401


@pytest.mark.parametrize("trusted", [False, True])
async def test_the_api_answers_no_page_of_the_instance_origin(db_url, tmp_path, trusted):
    """Reads too: the session cookie reaches the main origin from a ComfyUI page on another
    port of the host. Even an instance origin listed in COMFYHUB_TRUSTED_ORIGINS is refused."""
    extra = {"comfyhub_trusted_origins": COMFY} if trusted else {}
    async with _app(db_url, tmp_path, **extra) as c:
        await _browser(c, "alice")
        assert (await c.get("/api/auth/me")).status_code == 200
        for headers in ({"Origin": COMFY}, {"Referer": f"{COMFY}/comfy/1/"}):
            r = await c.get("/api/auth/me", headers=headers)
            assert r.status_code == 403 and r.json()["msg"] == "跨站请求被拒绝"
            r = await c.post("/api/projects", json={"name": "x", "code": "X"}, headers=headers)
            assert r.status_code == 403
        r = await c.post(
            "/api/auth/login", json={"username": "alice", "password": "password-123"}, headers={"Origin": COMFY}
        )
        assert r.status_code == 403
        preflight = await c.options(
            "/api/projects", headers={"Origin": COMFY, "Access-Control-Request-Method": "DELETE"}
        )
        assert not any(h.startswith("access-control-") for h in preflight.headers)
        r = await c.get("/api/projects", headers={"Origin": COMFY})
        assert not any(h.startswith("access-control-") for h in r.headers)


async def test_the_instance_origin_serves_comfyui_alone(db_url, tmp_path):
    async with _app(db_url, tmp_path) as c:
        project = await _project(c, "alice", "IO-4")
        await _browser(c, "alice")
        bearer = c.headers_of["alice"]
        for path in ("/", "/login", "/api/auth/me", "/api/projects", "/static/js/main.js", "/healthz", "/metrics"):
            assert (await c.get(COMFY + path)).status_code == 404, path
            assert (await c.get(COMFY + path, headers=bearer)).status_code == 404, path
        r = await c.post(f"{COMFY}/api/auth/login", json={"username": "alice", "password": "password-123"})
        assert r.status_code == 404
        # comfyhub's session cookie reaches this port of the host: no credential here.
        r = await c.get(f"{COMFY}/comfy/{project}/queue")
        assert r.status_code == 401
        # A script's bearer token is (a browser never sends one on its own).
        assert (await c.get(f"{COMFY}/comfy/{project}/queue", headers=bearer)).json()["msg"] == "ComfyUI 未启动"


async def test_the_main_origin_serves_no_comfyui(db_url, tmp_path):
    async with _app(db_url, tmp_path) as c:
        project = await _project(c, "alice", "IO-5")
        token = (await c.post("/api/tokens", json={"name": "s"}, headers=c.headers_of["alice"])).json()["data"]["token"]
        await _browser(c, "alice")
        r = await c.post(f"/comfy/{project}/prompt", json={}, headers=MAIN)
        assert r.status_code == 404 and r.json()["data"] == {"url": f"{COMFY}"}
        r = await c.get(f"/comfy/{project}/queue", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 404 and r.json()["data"] == {"url": f"{COMFY}"}
        r = await c.get(f"/comfy/{project}/", headers={"Origin": COMFY})  # a ComfyUI page asking for a code
        assert r.status_code == 403
        c.cookies.clear()
        assert (await c.get(f"/comfy/{project}/")).status_code == 401


async def test_logging_out_ends_the_instance_cookie_and_unused_codes(db_url, tmp_path):
    async with _app(db_url, tmp_path) as c:
        project = await _project(c, "alice", "IO-6")
        await _browser(c, "alice")
        await c.get(await _code_url(c, project))
        unused = await _code_url(c, project)
        assert (await c.get(f"{COMFY}/comfy/{project}/queue")).status_code == 404  # let in
        assert (await c.post("/api/auth/logout", headers=MAIN)).status_code == 200
        assert (await c.get(f"{COMFY}/comfy/{project}/queue")).status_code == 401
        assert (await c.get(unused)).status_code == 403


async def test_one_origin_per_project(db_url, tmp_path):
    """`{project}` in COMFYHUB_INSTANCE_ORIGIN: each project's ComfyUI on a host of its own;
    its cookie (host-only) is worth nothing for another project, even if sent there."""
    template = f"http://p{{project}}.comfy.test:{INSTANCE_PORT}"
    async with _app(db_url, tmp_path, comfyhub_instance_origin=template) as c:
        one, two = await _project(c, "alice", "IO-7"), await _project(c, "alice", "IO-8")
        await _browser(c, "alice")
        enter = await _code_url(c, one)
        host_one, host_two = f"http://p{one}.comfy.test:{INSTANCE_PORT}", f"http://p{two}.comfy.test:{INSTANCE_PORT}"
        assert enter.startswith(f"{host_one}/_comfyhub/enter/{one}?code=")
        # On another project's host the code is refused (and not used up).
        assert (await c.get(enter.replace(host_one, host_two))).status_code == 404
        landed = await c.get(enter)
        assert landed.status_code == 303 and "Domain" not in landed.headers["set-cookie"]
        cookie = {"Cookie": f"comfyhub_instance={c.cookies['comfyhub_instance']}"}
        assert (await c.get(f"{host_one}/comfy/{one}/queue", headers=cookie)).json()["msg"] == "ComfyUI 未启动"
        assert (await c.get(f"{host_one}/comfy/{two}/queue", headers=cookie)).status_code == 404  # wrong host
        r = await c.get(f"{host_two}/comfy/{two}/queue", headers=cookie)  # p1's cookie taken to p2
        assert r.status_code == 403
        for origin in (host_one, f"http://p{two}.comfy.test:{INSTANCE_PORT}"):
            assert (await c.get("/api/auth/me", headers={"Origin": origin})).status_code == 403
