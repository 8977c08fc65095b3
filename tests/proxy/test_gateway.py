"""/comfy/{id}/ through a real `comfyhub serve`: owner only, HTTP and WebSocket, streaming."""

import asyncio
import hashlib
import os
import threading

import httpx
import psutil
import pytest
import websockets
from websockets.asyncio.client import connect as ws_connect

from tests.proxy.conftest import TRUSTED_ORIGIN
from tests.support.net import wait_for, wait_for_sync

MB = 1 << 20


def test_owner_gets_page_and_api_through_prefix(hub):
    with hub.client("alice") as c:
        redirect = c.get(f"{hub.comfy}/comfy/{hub.project}", follow_redirects=False)
        assert redirect.status_code == 308 and redirect.headers["location"] == f"/comfy/{hub.project}/"
        page = c.get(f"{hub.comfy}/comfy/{hub.project}/")
        assert page.status_code == 200 and "Fake ComfyUI" in page.text
        js = c.get(f"{hub.comfy}/comfy/{hub.project}/scripts/app.js")
        assert js.status_code == 200
        stats = c.get(f"{hub.comfy}/comfy/{hub.project}/api/system_stats").json()
        argv = stats["system"]["argv"]
        assert argv[argv.index("--port") + 1] == str(hub.port)
        assert c.get(f"{hub.comfy}/comfy/{hub.project}/system_stats?x=1").status_code == 200


def test_host_header_is_kept_so_comfyui_accepts_the_origin(hub):
    """The fake, like ComfyUI, answers 403 to a loopback Host with a foreign Origin."""
    prompt = {"prompt": {"1": {"class_type": "EmptyImage", "inputs": {}}}, "client_id": "t"}
    with hub.client("alice") as c:
        r = c.post(f"{hub.comfy}/comfy/{hub.project}/prompt", json=prompt, headers=hub.comfy_origin)
        assert r.status_code == 200 and "prompt_id" in r.json()


@pytest.mark.parametrize("who", ["bob", "anonymous", "forged", "logged_out", "session_cookie"])
def test_others_are_refused_on_http(hub, who):
    """On the instance origin only the instance cookie (or a script's bearer token) counts:
    comfyhub's session cookie, which the browser sends to every port of the host, does not."""
    path = f"{hub.comfy}/comfy/{hub.project}/api/system_stats"
    expected = 403 if who == "bob" else 401
    with hub.client(None) as c:
        if who == "bob":
            c.headers["Cookie"] = hub.cookie_header("bob")
        if who == "forged":
            c.cookies.set("comfyhub_instance", "1.all." + "0" * 64)
        if who in ("logged_out", "session_cookie"):
            with hub.client("alice") as a:
                session, instance = a.cookies["comfyhub_session"], a.cookies["comfyhub_instance"]
                assert a.get(path).status_code == 200
                if who == "logged_out":
                    assert a.post("/api/auth/logout", headers=hub.origin).status_code == 200
            c.cookies.set("comfyhub_session", session)
            if who == "logged_out":
                c.cookies.set("comfyhub_instance", instance)
        r = c.get(path)
        assert r.status_code == expected
        assert "argv" not in r.text and "无操作权限" in r.text if expected == 403 else "未登录" in r.text
        assert c.post(path.replace("api/system_stats", "prompt"), json={}, headers=hub.comfy_origin).status_code == (
            expected
        )


@pytest.mark.parametrize("who", ["bob", "anonymous", "forged"])
async def test_others_are_refused_on_websocket(hub, who):
    headers = {"Origin": hub.comfy}
    if who == "bob":
        headers["Cookie"] = hub.cookie_header("bob")
    elif who == "forged":
        headers["Cookie"] = "comfyhub_session=forged"
    with pytest.raises(websockets.exceptions.InvalidStatus) as err:
        async with ws_connect(
            f"ws://127.0.0.1:{hub.server.instance_port}/comfy/{hub.project}/ws?clientId=x",
            additional_headers=headers,
            proxy=None,
        ):
            pass
    assert err.value.response.status_code == (403 if who == "bob" else 401)


async def test_cross_site_websocket_is_refused(hub):
    headers = {"Origin": "http://evil.example", "Cookie": hub.cookie_header("alice")}
    with pytest.raises(websockets.exceptions.InvalidStatus) as err:
        async with ws_connect(
            f"ws://127.0.0.1:{hub.server.instance_port}/comfy/{hub.project}/ws?clientId=x",
            additional_headers=headers,
            proxy=None,
        ):
            pass
    assert err.value.response.status_code == 403


async def test_websocket_from_the_instance_origin_by_its_proxied_name_passes(hub):
    """A front proxy forwarding the instance origin's public name as Host: a page there
    (Origin and Host agree) opens the socket; comfyhub's own origin, and the origins
    trusted for it (COMFYHUB_TRUSTED_ORIGINS), are other sites on the instance origin."""
    public = f"comfy.internal:{hub.server.instance_port}"
    headers = {"Origin": f"http://{public}", "Cookie": hub.cookie_header("alice")}
    async with ws_connect(
        f"ws://{public}/comfy/{hub.project}/ws?clientId=x", host="127.0.0.1", additional_headers=headers, proxy=None
    ) as ws:
        assert ws.request.headers["Host"].startswith("comfy.internal")
        await ws.send('{"type": "ping"}')  # the connection is open both ways
    for origin in ("https://evil.example.org", TRUSTED_ORIGIN, hub.url):
        headers["Origin"] = origin
        with pytest.raises(websockets.exceptions.InvalidStatus) as err:
            async with ws_connect(
                f"ws://{public}/comfy/{hub.project}/ws?clientId=x",
                host="127.0.0.1",
                additional_headers=headers,
                proxy=None,
            ):
                pass
        assert err.value.response.status_code == 403 and "跨站请求被拒绝".encode() in err.value.response.body


async def test_a_personal_access_token_opens_the_websocket_until_revoked(hub):
    """A script's token (`Authorization: Bearer chp_…`) passes like a session: owner only,
    and refused as soon as it is revoked (the API and the proxy share the process)."""

    def new_token(user: str) -> dict:
        with hub.client(user) as c:
            r = c.post("/api/tokens", json={"name": "ws"}, headers=hub.origin)
            assert r.status_code == 201, r.text
            return r.json()["data"]

    def connect(token: str):
        return ws_connect(
            f"ws://127.0.0.1:{hub.server.instance_port}/comfy/{hub.project}/ws?clientId=pat",
            additional_headers={"Authorization": f"Bearer {token}"},
            proxy=None,
        )

    async def refusal(token: str) -> int:
        with pytest.raises(websockets.exceptions.InvalidStatus) as err:
            async with connect(token):
                pass
        return err.value.response.status_code

    mine, bobs = new_token("alice"), new_token("bob")
    async with connect(mine["token"]) as ws:
        hello = await asyncio.wait_for(ws.recv(), 5)
        assert '"status"' in hello and "pat" in hello
    assert await refusal(bobs["token"]) == 403
    with hub.client("alice") as c:
        assert c.delete(f"/api/tokens/{mine['id']}", headers=hub.origin).status_code == 200
    assert await refusal(mine["token"]) == 401


@pytest.mark.parametrize("others", ["ui=dark mode", 'prefs={"a":1,"b":2}', "name=张三"])
def test_other_cookies_on_the_host_do_not_hide_the_session(hub, others):
    """Cookies are shared by every port of a host; a malformed one must not log the owner out."""
    session = hub.cookie_header("alice")
    for header in (f"{others}; {session}", f"{session}; {others}"):
        r = httpx.get(
            f"{hub.comfy}/comfy/{hub.project}/api/system_stats", headers={"Cookie": header.encode()}, trust_env=False
        )
        assert r.status_code == 200, header


def test_cookie_write_without_origin_is_refused(hub):
    with hub.client("alice") as c:
        assert c.post(f"{hub.comfy}/comfy/{hub.project}/prompt", json={}).status_code == 403


async def test_websocket_both_ways_and_close_codes(hub):
    headers = {"Origin": hub.comfy, "Cookie": hub.cookie_header("alice")}
    url = f"ws://127.0.0.1:{hub.server.instance_port}/comfy/{hub.project}/ws?clientId=abc"
    async with ws_connect(url, additional_headers=headers, proxy=None, max_size=None) as ws:
        hello = await asyncio.wait_for(ws.recv(), 5)
        assert '"status"' in hello and "abc" in hello
        await ws.send("ping text")
        assert await asyncio.wait_for(ws.recv(), 5) == "ping text"
        payload = os.urandom(256 * 1024)
        await ws.send(payload)
        assert await asyncio.wait_for(ws.recv(), 5) == payload
        await ws.send("close:4001")  # the instance closes with 4001: the browser must see it
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
    assert ws.close_code == 4001


async def test_client_close_closes_the_instance_side(hub):
    fake = psutil.Process(_instance_pid(hub))

    def ws_peers():
        return {c.raddr for c in fake.net_connections("tcp") if c.status == psutil.CONN_ESTABLISHED}

    headers = {"Origin": hub.comfy, "Cookie": hub.cookie_header("alice")}
    url = f"ws://127.0.0.1:{hub.server.instance_port}/comfy/{hub.project}/ws?clientId=close-test"
    before = ws_peers()
    ws = await ws_connect(url, additional_headers=headers, proxy=None)
    await asyncio.wait_for(ws.recv(), 5)
    opened = await wait_for(lambda: ws_peers() - before, what="proxy's upstream websocket")
    await ws.close(code=1000)
    await wait_for(lambda: not (opened & ws_peers()), what="upstream websocket to close")


def _instance_pid(hub) -> int:
    with hub.client("alice") as c:
        return c.get(f"/api/projects/{hub.project}").json()["data"]["service"]["pid"]


def _rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


def test_50mb_download_streams_with_right_bytes_and_flat_memory(hub):
    body = os.urandom(50 * MB)
    (hub.base / "output" / "big.bin").write_bytes(body)
    server_pid = hub.server.proc.pid
    with hub.client("alice") as c:
        c.get(f"{hub.comfy}/comfy/{hub.project}/api/system_stats")  # warm up
        before = _rss(server_pid)
        peak = before
        digest = hashlib.sha256()
        view = f"{hub.comfy}/comfy/{hub.project}/view"
        with c.stream("GET", view, params={"filename": "big.bin", "type": "output"}) as r:
            assert r.status_code == 200
            assert int(r.headers["content-length"]) == len(body)
            for chunk in r.iter_raw(1 * MB):
                digest.update(chunk)
                peak = max(peak, _rss(server_pid))
    assert digest.hexdigest() == hashlib.sha256(body).hexdigest()
    assert peak - before < 20 * MB, f"comfyhub grew by {(peak - before) / MB:.1f} MB for a 50 MB body"


def test_50mb_upload_streams_with_right_bytes_and_flat_memory(hub, tmp_path):
    source = tmp_path / "upload.bin"
    body = os.urandom(50 * MB)
    source.write_bytes(body)
    server_pid = hub.server.proc.pid
    # Log in first: argon2 itself takes 64 MiB for a moment, which is not the proxy's doing.
    with hub.client("alice") as c, open(source, "rb") as f:
        before = _rss(server_pid)
        peak, done = [before], threading.Event()

        def watch():
            while not done.is_set():
                peak[0] = max(peak[0], _rss(server_pid))
                done.wait(0.005)  # the memory probe's sampling interval

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            r = c.post(
                f"{hub.comfy}/comfy/{hub.project}/upload/image",
                files={"image": ("big.bin", f, "application/octet-stream")},
                headers=hub.comfy_origin,
            )
        finally:
            done.set()
            watcher.join()
    assert r.status_code == 200, r.text
    saved = hub.base / "input" / r.json()["name"]
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == hashlib.sha256(body).hexdigest()
    assert peak[0] - before < 20 * MB, f"comfyhub grew by {(peak[0] - before) / MB:.1f} MB for a 50 MB upload"


def test_streaming_echo_through_the_proxy(hub):
    """A chunked request body is forwarded chunked and the streamed answer comes back intact."""
    body = os.urandom(3 * MB)

    def chunks():
        for i in range(0, len(body), 256 * 1024):
            yield body[i : i + 256 * 1024]

    with hub.client("alice") as c:
        r = c.post(f"{hub.comfy}/comfy/{hub.project}/echo", content=chunks(), headers=hub.comfy_origin)
    assert r.status_code == 200 and r.content == body


def test_upload_image_lands_in_input(hub):
    data = os.urandom(300 * 1024)
    with hub.client("alice") as c:
        r = c.post(
            f"{hub.comfy}/comfy/{hub.project}/upload/image",
            files={"image": ("in.png", data, "image/png")},
            headers=hub.comfy_origin,
        )
        assert r.status_code == 200, r.text
        name = r.json()["name"]
        assert (hub.base / "input" / name).read_bytes() == data
        back = c.get(f"{hub.comfy}/comfy/{hub.project}/view", params={"filename": name, "type": "input"})
        assert back.content == data


def test_last_activity_moves_with_use(hub):
    with hub.client("alice") as c:

        def activity():
            return c.get(f"/api/projects/{hub.project}").json()["data"]["service"]["last_activity"]

        before = activity()

        def used_and_moved():
            c.get(f"{hub.comfy}/comfy/{hub.project}/api/queue")  # writes are throttled to one per few seconds
            return activity() != before

        wait_for_sync(used_and_moved, timeout=15, interval=0.25, what="last_activity to move")


def test_not_online_shows_chinese_page_then_comes_back(hub):
    with hub.client("alice") as c:
        assert c.post(f"/api/projects/{hub.project}/stop_comfy", headers=hub.origin).status_code == 200
        r = c.get(f"{hub.comfy}/comfy/{hub.project}/", headers={"Accept": "text/html,*/*;q=0.8"})  # a browser
        assert r.status_code == 404 and "未启动" in r.text and 'href="/"' in r.text
        r = c.get(f"{hub.comfy}/comfy/{hub.project}/api/queue")  # a script
        assert r.status_code == 404 and r.json() == {
            "code": 404,
            "msg": "ComfyUI 未启动",
            "data": {"status": "stopped"},
        }
        opened = c.post(f"/api/projects/{hub.project}/open_comfy", headers=hub.origin).json()["data"]
        assert opened["comfy_url"] == f"/comfy/{hub.project}/"
        hub.port = opened["port"]
        wait_for_sync(
            lambda: c.get(f"{hub.comfy}/comfy/{hub.project}/").status_code == 200, timeout=5, what="proxy back"
        )


def test_unknown_or_bad_project_ids(hub):
    with hub.client("alice") as c:
        assert c.get("/comfy/999999/").status_code == 404
        assert c.get("/comfy/99999999999999999999/").status_code == 404
        assert c.get("/comfy/abc/").status_code == 404
