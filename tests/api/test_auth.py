"""Login, logout, revocation, throttling and cross-site request protection."""

import pytest

from tests.conftest import ORIGIN, add_user, login


async def test_login_sets_httponly_lax_cookie_and_returns_token(client, settings):
    await add_user(settings, "alice")
    r = await client.post("/api/auth/login", json={"username": "alice", "password": "password-123"})
    assert r.status_code == 200
    body = r.json()
    assert body["code"] == 200 and body["data"]["user"]["username"] == "alice"
    token = body["data"]["token"]
    cookie = r.headers["set-cookie"]
    assert f"comfyhub_session={token}" in cookie
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie
    # the cookie alone authenticates
    me = await client.get("/api/auth/me")
    assert me.json()["data"]["username"] == "alice"
    # the bearer token alone authenticates
    client.cookies.clear()
    me = await client.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200 and me.json()["data"]["username"] == "alice"


async def test_wrong_password_and_unknown_user_answer_the_same(client, settings):
    await add_user(settings, "alice")
    wrong = await client.post("/api/auth/login", json={"username": "alice", "password": "nope-nope"})
    unknown = await client.post("/api/auth/login", json={"username": "ghost", "password": "nope-nope"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json() == {"code": 401, "msg": "用户名或密码错误", "data": None}
    assert "set-cookie" not in wrong.headers


async def test_logout_revokes_token_and_cookie(client, settings):
    await add_user(settings, "alice")
    headers = await login(client, "alice")
    assert (await client.get("/api/auth/me", headers=headers)).status_code == 200
    r = await client.post("/api/auth/logout", headers=headers)
    assert r.status_code == 200
    after = await client.get("/api/auth/me", headers=headers)
    assert after.status_code == 401 and after.json()["msg"] == "未登录或登录已过期"


async def test_forged_and_missing_credentials_are_401(client):
    assert (await client.get("/api/auth/me")).status_code == 401
    assert (await client.get("/api/auth/me", headers={"Authorization": "Bearer forged"})).status_code == 401
    client.cookies.set("comfyhub_session", "forged")
    assert (await client.get("/api/projects")).status_code == 401


async def test_repeated_failures_lock_out_then_recover(client, settings):
    await add_user(settings, "alice")
    bad = {"username": "alice", "password": "wrong-password"}
    for _ in range(settings.comfyhub_login_max_failures):
        assert (await client.post("/api/auth/login", json=bad)).status_code == 401
    locked = await client.post("/api/auth/login", json={"username": "alice", "password": "password-123"})
    assert locked.status_code == 429
    assert "登录失败次数过多" in locked.json()["msg"]
    assert int(locked.headers["retry-after"]) > 0
    # an unknown user is locked the same way: no enumeration through the lock-out either
    for _ in range(settings.comfyhub_login_max_failures):
        await client.post("/api/auth/login", json={"username": "ghost", "password": "x-password"})
    assert (await client.post("/api/auth/login", json={"username": "ghost", "password": "x"})).status_code == 429


async def test_lockout_expires(db_url, tmp_path):
    from tests.support.app import running_app
    from tests.support.net import wait_for

    async with running_app(
        db_url, tmp_path, users=("carol",), comfyhub_login_lockout_seconds=3, comfyhub_login_max_failures=2
    ) as c:
        for _ in range(2):
            await c.post("/api/auth/login", json={"username": "carol", "password": "bad-password"})
        good = {"username": "carol", "password": "password-123"}
        assert (await c.post("/api/auth/login", json=good)).status_code == 429

        async def unlocked():
            return (await c.post("/api/auth/login", json=good)).status_code == 200

        await wait_for(unlocked, timeout=15, interval=0.3, what="lock-out to expire")


@pytest.mark.parametrize("origin", [None, "http://evil.example", "http://testserver:9999"])
async def test_cookie_writes_need_same_origin(client, settings, origin):
    await add_user(settings, "alice")
    r = await client.post("/api/auth/login", json={"username": "alice", "password": "password-123"})
    assert r.status_code == 200
    headers = {"Origin": origin} if origin else {}
    created = await client.post("/api/projects", json={"name": "x", "code": "CSRF-1"}, headers=headers)
    assert created.status_code == 403 and created.json()["msg"] == "跨站请求被拒绝"
    listed = await client.get("/api/projects")
    assert listed.status_code == 200 and listed.json()["data"] == []


async def test_cookie_write_from_same_origin_passes(client, settings):
    await add_user(settings, "alice")
    await client.post("/api/auth/login", json={"username": "alice", "password": "password-123"})
    r = await client.post("/api/projects", json={"name": "x", "code": "OK-1"}, headers={"Origin": ORIGIN})
    assert r.status_code == 201


@pytest.mark.parametrize("others", ["ui=dark mode", 'prefs={"a":1,"b":2}', "name=张三"])
async def test_other_cookies_on_the_host_do_not_hide_the_session(client, settings, others):
    """Same rule as the proxy: a malformed cookie from another port must not log the user out."""
    await add_user(settings, "alice")
    r = await client.post("/api/auth/login", json={"username": "alice", "password": "password-123"})
    session = f"comfyhub_session={r.json()['data']['token']}"
    client.cookies.clear()
    for header in (f"{others}; {session}", f"{session}; {others}"):
        me = await client.get("/api/auth/me", headers={"Cookie": header.encode()})
        assert me.status_code == 200, header


async def test_cookie_writes_from_a_trusted_origin_pass(db_url, tmp_path):
    """COMFYHUB_TRUSTED_ORIGINS: a front proxy serving the site under another name."""
    from tests.support.app import running_app

    async with running_app(db_url, tmp_path, comfyhub_trusted_origins="https://hub.example.org") as c:
        assert (await c.post("/api/auth/login", json={"username": "alice", "password": "password-123"})).is_success
        write = {"name": "x", "code": "TRUSTED-1"}
        other = await c.post("/api/projects", json=write, headers={"Origin": "https://evil.example.org"})
        assert other.status_code == 403
        trusted = await c.post("/api/projects", json=write, headers={"Origin": "https://hub.example.org"})
        assert trusted.status_code == 201


async def test_login_from_foreign_origin_refused(client, settings):
    await add_user(settings, "alice")
    r = await client.post(
        "/api/auth/login",
        json={"username": "alice", "password": "password-123"},
        headers={"Origin": "http://evil.example"},
    )
    assert r.status_code == 403


async def test_password_is_hashed_with_argon2(settings, db_url):
    from sqlalchemy import select

    from comfyhub.db import create_engine, session_factory
    from comfyhub.models import User

    await add_user(settings, "alice", password="password-123")
    engine = create_engine(db_url)
    async with session_factory(engine)() as db:
        user = (await db.execute(select(User).where(User.username == "alice"))).scalar_one()
    await engine.dispose()
    assert user.password_hash.startswith("$argon2id$")
    assert "password-123" not in user.password_hash


# --- Secure behind TLS --------------------------------------------------------------------


async def _login_cookie(app, base_url: str, origin: str | None = None) -> str:
    """alice's Set-Cookie from a login at `base_url` (from a page at `origin`)."""
    import httpx

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url) as c:
        login = {"username": "alice", "password": "password-123"}
        r = await c.post("/api/auth/login", json=login, headers={"Origin": origin} if origin else {})
        assert r.status_code == 200, r.text
        return r.headers["set-cookie"]


async def test_cookie_is_secure_over_https_only(app, settings):
    # httpx's ASGI transport passes the URL's scheme as the ASGI scope's: what uvicorn
    # sets when it terminates TLS, or after a trusted proxy's X-Forwarded-Proto: https
    # (that part: tests/test_cli.py, against a live server).
    await add_user(settings, "alice")
    assert "secure" in (await _login_cookie(app, "https://testserver")).lower().split("; ")
    plain = await _login_cookie(app, "http://testserver")
    assert "secure" not in plain.lower().split("; ")


@pytest.mark.parametrize(
    "origins, origin, secure",
    [
        ("http://hub.lan,https://hub.example.org", "https://hub.example.org", True),
        ("http://hub.lan,https://hub.example.org", None, False),  # a script: no Origin
        ("http://hub.lan", "http://hub.lan", False),
    ],
)
async def test_cookie_is_secure_for_logins_from_a_trusted_https_origin(db_url, tmp_path, origins, origin, secure):
    """A proxy publishing the site over TLS (COMFYHUB_TRUSTED_ORIGINS) that says nothing of it."""
    from tests.support.app import running_app

    async with running_app(db_url, tmp_path, comfyhub_trusted_origins=origins) as c:
        cookie = await _login_cookie(c.app, "http://testserver", origin)
        assert ("secure" in cookie.lower().split("; ")) is secure
