"""Personal access tokens: made with a login, used like a session's bearer token by the
API and the /comfy/ proxy, never shown twice, revoked at once, bounded in number and time."""

import asyncio
from datetime import timedelta
from types import SimpleNamespace

import pytest
from sqlalchemy import delete, func, select, update

from comfyhub import auth
from comfyhub.models import ApiToken, User, utcnow
from tests.support.comfy import new_project
from tests.support.net import wait_for

NOT_LOGGED_IN = "未登录或登录已过期"


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


async def _create(client, headers, name="批量脚本", **extra):
    return await client.post("/api/tokens", json={"name": name, **extra}, headers=headers)


async def _token(client, headers, name="批量脚本", **extra) -> dict:
    r = await _create(client, headers, name, **extra)
    assert r.status_code == 201, r.text
    return r.json()["data"]


async def _rows(app) -> list[ApiToken]:
    async with app.state.sessions() as db:
        return list((await db.execute(select(ApiToken).order_by(ApiToken.id))).scalars())


async def _set(app, token_id: int, **values) -> None:
    async with app.state.sessions() as db:
        await db.execute(update(ApiToken).where(ApiToken.id == token_id).values(**values))
        await db.commit()


async def _me(client, token: str):
    return await client.get("/api/auth/me", headers=bearer(token))


# --- create, use, list ------------------------------------------------------------------


async def test_a_token_is_shown_once_and_acts_as_its_owner(client, app, alice, settings):
    r = await _create(client, alice, "夜间批处理", expires_days=7)
    assert r.status_code == 201 and "不会再显示" in r.json()["msg"]
    data = r.json()["data"]
    token = data["token"]
    assert token.startswith("chp_") and len(token) == 44 and token.isascii() and token[4:].isalnum()
    assert data["name"] == "夜间批处理" and data["prefix"] == token[:10] and data["last_used_at"] is None
    created, expires = (utcnow().fromisoformat(data[k]) for k in ("created_at", "expires_at"))
    assert expires - created == timedelta(days=7)

    me = await _me(client, token)
    assert me.status_code == 200 and me.json()["data"]["username"] == "alice"
    made = await client.post("/api/projects", json={"name": "令牌项目", "code": "TOK-1"}, headers=bearer(token))
    assert made.status_code == 201 and made.json()["data"]["owner_user_id"] == me.json()["data"]["id"]

    # Only an HMAC digest is stored; the list shows the prefix, never the token.
    (row,) = await _rows(app)
    assert row.token_digest == auth.token_digest(app.state.secret_key, token) and token not in row.token_digest
    listed = await client.get("/api/tokens", headers=alice)
    assert listed.status_code == 200
    (item,) = listed.json()["data"]
    assert item["id"] == data["id"] and item["prefix"] == token[:10] and item["expired"] is False
    assert {"id", "name", "prefix", "created_at", "expires_at", "last_used_at"} <= item.keys()
    assert "token" not in item and token[10:] not in listed.text and row.token_digest not in listed.text


async def test_default_lifetime_is_30_days_and_another_users_tokens_are_not_listed(client, alice, bob):
    data = await _token(client, alice)
    created, expires = (utcnow().fromisoformat(data[k]) for k in ("created_at", "expires_at"))
    assert expires - created == timedelta(days=30)
    assert (await client.get("/api/tokens", headers=bob)).json()["data"] == []


# --- revoke, expire ---------------------------------------------------------------------


async def test_revoked_token_is_refused_at_once_and_others_cannot_revoke_it(client, app, alice, bob):
    keep, gone = await _token(client, alice, "保留"), await _token(client, alice, "撤销")
    # Bob cannot revoke Alice's token: it does not exist for him.
    r = await client.delete(f"/api/tokens/{gone['id']}", headers=bob)
    assert r.status_code == 404 and r.json()["msg"] == "访问令牌不存在"
    assert (await _me(client, gone["token"])).status_code == 200

    r = await client.delete(f"/api/tokens/{gone['id']}", headers=alice)
    assert r.status_code == 200 and r.json()["msg"] == "访问令牌已撤销"
    refused = await _me(client, gone["token"])
    assert refused.status_code == 401 and refused.json()["msg"] == NOT_LOGGED_IN
    assert (await _me(client, keep["token"])).status_code == 200  # the other one still works
    assert [t["id"] for t in (await client.get("/api/tokens", headers=alice)).json()["data"]] == [keep["id"]]
    assert (await client.delete(f"/api/tokens/{gone['id']}", headers=alice)).status_code == 404
    assert [r.id for r in await _rows(app)] == [keep["id"]]


async def test_expired_token_is_refused_and_listed_as_expired(client, app, alice):
    data = await _token(client, alice)
    # Expired before its first use (a token's expiry is never cached past: auth.TokenCache).
    await _set(app, data["id"], expires_at=utcnow() - timedelta(seconds=1))
    r = await _me(client, data["token"])
    assert r.status_code == 401 and r.json()["msg"] == NOT_LOGGED_IN
    (item,) = (await client.get("/api/tokens", headers=alice)).json()["data"]
    assert item["expired"] is True
    assert (await client.delete(f"/api/tokens/{data['id']}", headers=alice)).status_code == 200


# --- what a token may not do ------------------------------------------------------------


async def test_a_token_cannot_manage_tokens(client, app, alice):
    data = await _token(client, alice)
    token = bearer(data["token"])
    for r in (
        await _create(client, token, "再来一个"),
        await client.get("/api/tokens", headers=token),
        await client.delete(f"/api/tokens/{data['id']}", headers=token),
    ):
        assert r.status_code == 403 and r.json()["msg"] == "访问令牌不能管理访问令牌，请登录后操作"
    assert len(await _rows(app)) == 1
    assert (await _me(client, data["token"])).status_code == 200


async def test_a_token_is_never_taken_from_the_cookie(client, alice):
    data = await _token(client, alice)
    client.cookies.set("comfyhub_session", data["token"])
    try:
        r = await client.get("/api/auth/me")
        assert r.status_code == 401 and r.json()["msg"] == NOT_LOGGED_IN
    finally:
        client.cookies.clear()


async def test_logout_neither_takes_a_token_nor_revokes_tokens(client, app, alice):
    data = await _token(client, alice)
    r = await client.post("/api/auth/logout", headers=bearer(data["token"]))
    assert r.status_code == 400 and "撤销" in r.json()["msg"]
    assert (await _me(client, data["token"])).status_code == 200
    assert (await client.post("/api/auth/logout", headers=alice)).status_code == 200
    assert (await client.get("/api/auth/me", headers=alice)).status_code == 401  # the session ended
    assert (await _me(client, data["token"])).status_code == 200  # the token did not


async def test_deleting_a_user_deletes_their_tokens(client, app, alice, bob):
    await _token(client, alice)
    kept = await _token(client, bob)
    async with app.state.sessions() as db:
        await db.execute(delete(User).where(User.username == "alice"))
        await db.commit()
    assert [r.id for r in await _rows(app)] == [kept["id"]]


# --- bad input and the limit ------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        ({"name": ""}, "name", "不能为空"),
        ({"name": "   "}, "name", "不能为空"),
        ({"name": "x" * 65}, "name", "最多 64 个字符"),
        ({"name": "两行\n名字"}, "name", "不能包含换行"),
        ({"name": "a\x00b"}, "name", "包含不允许的控制字符"),
        ({"name": 5}, "name", "必须是文本"),
        ({}, "name", "必填"),
        ({"name": "ok", "expires_days": 0}, "expires_days", "不能小于 1"),
        ({"name": "ok", "expires_days": 3651}, "expires_days", "不能大于 3650"),
        ({"name": "ok", "expires_days": None}, "expires_days", "必须是整数"),
        ({"name": "ok", "expires_days": "30"}, "expires_days", "必须是整数"),
        ({"name": "ok", "expires_days": 1.5}, "expires_days", "必须是整数"),
        ({"name": "ok", "expires_days": True}, "expires_days", "必须是整数"),
        ({"name": "ok", "scope": "admin"}, "scope", "不允许的字段"),
    ],
)
async def test_bad_input_is_422_in_chinese_and_creates_nothing(client, app, alice, body, field, reason):
    r = await client.post("/api/tokens", json=body, headers=alice)
    assert r.status_code == 422, r.text
    assert r.json()["msg"] == f"请求参数无效：{field}（{reason}）"
    assert r.json()["data"]["errors"][0]["field"] == field
    assert await _rows(app) == []


async def test_bad_token_ids_are_4xx(client, alice):
    for path, status in (("/api/tokens/0", 422), ("/api/tokens/abc", 422), ("/api/tokens/99999999999", 422)):
        r = await client.delete(path, headers=alice)
        assert r.status_code == status and r.json()["msg"].startswith("请求参数无效"), path
    assert (await client.delete("/api/tokens/12345", headers=alice)).status_code == 404


async def test_at_most_50_live_tokens_and_expired_ones_do_not_count(client, app, alice, bob):
    for i in range(auth.MAX_API_TOKENS):
        await _token(client, alice, f"t{i}")
    r = await _create(client, alice, "一个太多")
    assert r.status_code == 400 and r.json()["msg"] == "访问令牌已达上限（50 个），请先撤销不用的令牌"
    assert len(await _rows(app)) == auth.MAX_API_TOKENS
    assert (await _create(client, bob, "别人的")).status_code == 201  # per user

    first = (await _rows(app))[0]
    await _set(app, first.id, expires_at=utcnow() - timedelta(minutes=1))
    assert (await _create(client, alice, "补上")).status_code == 201
    assert (await _create(client, alice, "还是太多")).status_code == 400


async def test_the_limit_holds_under_concurrent_creates(client, app, alice):
    for i in range(auth.MAX_API_TOKENS - 2):
        await _token(client, alice, f"t{i}")
    results = await asyncio.gather(*(_create(client, alice, f"并发{i}") for i in range(5)))
    assert sorted(r.status_code for r in results) == [201, 201, 400, 400, 400]
    async with app.state.sessions() as db:
        assert await db.scalar(select(func.count()).select_from(ApiToken)) == auth.MAX_API_TOKENS


# --- last_used_at -----------------------------------------------------------------------


async def test_last_used_at_moves_with_use_at_most_once_a_minute(client, app, alice, monkeypatch):
    monkeypatch.setattr(auth, "AUTH_TTL", 0.0)  # every use asks the database (no cached answer)
    data = await _token(client, alice)
    assert (await _rows(app))[0].last_used_at is None
    before = utcnow()
    assert (await _me(client, data["token"])).status_code == 200
    first = (await _rows(app))[0].last_used_at
    assert first is not None and first >= before
    assert (await _me(client, data["token"])).status_code == 200
    assert (await _rows(app))[0].last_used_at == first  # within the minute: no write

    await _set(app, data["id"], last_used_at=first - timedelta(minutes=2))
    assert (await _me(client, data["token"])).status_code == 200
    assert (await _rows(app))[0].last_used_at >= before
    (item,) = (await client.get("/api/tokens", headers=alice)).json()["data"]
    assert item["last_used_at"] is not None


# --- through the proxy --------------------------------------------------------------------


async def test_the_proxy_takes_a_token_like_a_session(client, app, alice, bob, monkeypatch):
    # A long cache: whatever is refused below is refused because the cache was told.
    monkeypatch.setattr(auth, "AUTH_TTL", 60.0)
    pid = await new_project(client, alice, "PROXY-T")
    opened = await client.post(f"/api/projects/{pid}/open_comfy", headers=alice)
    assert opened.status_code == 200, opened.text
    comfy = f"http://testserver:{app.state.settings.instance_port}/comfy/{pid}"  # the instance origin
    path = f"{comfy}/api/system_stats"
    mine, theirs = await _token(client, alice, "代理"), await _token(client, bob, "别人")

    r = await client.get(path, headers=bearer(mine["token"]))
    assert r.status_code == 200 and str(opened.json()["data"]["port"]) in r.json()["system"]["argv"]
    prompt = {"prompt": {}, "client_id": "t"}
    posted = await client.post(f"{comfy}/prompt", json=prompt, headers=bearer(mine["token"]))
    assert posted.status_code == 200  # a bearer token needs no Origin
    assert (await _rows(app))[0].last_used_at is not None  # use through the proxy counts

    # Another user's token: the usual owner check.
    r = await client.get(path, headers=bearer(theirs["token"]))
    assert r.status_code == 403 and r.json()["msg"] == "无操作权限"
    # Never from the cookie, here either.
    client.cookies.set("comfyhub_session", mine["token"])
    r = await client.get(path)
    client.cookies.clear()
    assert r.status_code == 401 and r.json()["msg"] == NOT_LOGGED_IN

    # Revoked through the API: the proxy's cache forgets it at once, in this process.
    assert (await client.delete(f"/api/tokens/{mine['id']}", headers=alice)).status_code == 200
    r = await client.get(path, headers=bearer(mine["token"]))
    assert r.status_code == 401 and r.json()["msg"] == NOT_LOGGED_IN

    # Expired (set in the database): refused.
    late = await _token(client, alice, "过期")
    await _set(app, late["id"], expires_at=utcnow() - timedelta(seconds=1))
    assert (await client.get(path, headers=bearer(late["token"]))).status_code == 401

    # Revoked behind this process's back (by another worker): the cached answer holds
    # until AUTH_TTL, and no longer.
    other = await _token(client, alice, "另一个进程")
    assert (await client.get(path, headers=bearer(other["token"]))).status_code == 200
    await _delete_row(app, other["id"])
    assert (await client.get(path, headers=bearer(other["token"]))).status_code == 200  # cached (60 s)
    monkeypatch.setattr(auth, "AUTH_TTL", 0.5)
    short = await _token(client, alice, "短缓存")
    assert (await client.get(path, headers=bearer(short["token"]))).status_code == 200
    await _delete_row(app, short["id"])

    async def refused():
        return (await client.get(path, headers=bearer(short["token"]))).status_code == 401

    await wait_for(refused, timeout=5, what="the revoked token to be refused after AUTH_TTL")


async def _delete_row(app, token_id: int) -> None:
    async with app.state.sessions() as db:
        await db.execute(delete(ApiToken).where(ApiToken.id == token_id))
        await db.commit()


async def test_a_lookup_that_crosses_a_revocation_is_not_cached(monkeypatch):
    """The API or the proxy asked the database just before a revocation committed: that
    answer may serve the request in flight, but must not be kept for the next ones."""
    lookups, release = [], asyncio.Event()

    async def slow_lookup(_db, _key, token):
        lookups.append(token)
        await release.wait()
        return User(id=7, username="alice"), utcnow() + timedelta(days=1)

    class Sessions:
        def __call__(self):
            return self

        async def __aenter__(self):
            return SimpleNamespace(expunge=lambda _user: None)

        async def __aexit__(self, *exc):
            return False

    monkeypatch.setattr(auth, "token_owner", slow_lookup)
    cache = auth.TokenCache(Sessions(), "key")
    in_flight = asyncio.create_task(cache.user("chp_x"))
    await wait_for(lambda: lookups, what="the lookup to start")
    cache.forget_user(7)
    release.set()
    assert (await in_flight).id == 7
    assert (await cache.user("chp_x")).id == 7
    assert lookups == ["chp_x", "chp_x"]  # asked again: the first answer was not kept
    assert (await cache.user("chp_x")).id == 7
    assert len(lookups) == 2  # and this one is cached


async def test_the_api_remembers_a_token_briefly_and_never_past_its_expiry(client, app, alice, monkeypatch):
    """Revoked behind this process's back (another worker), a token still works for the API
    until AUTH_TTL; a token's own expiry holds to the moment."""
    monkeypatch.setattr(auth, "AUTH_TTL", 60.0)
    kept = await _token(client, alice, "缓存")
    assert (await _me(client, kept["token"])).status_code == 200
    await _delete_row(app, kept["id"])
    assert (await _me(client, kept["token"])).status_code == 200  # remembered (60 s)

    soon = await _token(client, alice, "即将过期")
    await _set(app, soon["id"], expires_at=utcnow() + timedelta(seconds=1))
    assert (await _me(client, soon["token"])).status_code == 200

    async def expired():
        return (await _me(client, soon["token"])).status_code == 401

    await wait_for(expired, timeout=5, what="the token refused once it expired, though AUTH_TTL is 60 s")
