"""Project routes for owner, other user, admin and anonymous; bad input changes nothing."""

import asyncio

import httpx
import pytest

from tests.support import launcher
from tests.support.comfy import as_comfyhub, set_knobs


async def _create(client, headers, code="P-1", name="项目一", note=""):
    return await client.post("/api/projects", json={"name": name, "code": code, "note": note}, headers=headers)


async def _count(client, headers):
    r = await client.get("/api/projects", headers=headers, params={"scope": "all"})
    return len(r.json()["data"])


async def test_owner_crud(client, alice):
    r = await _create(client, alice, note="第一行\n第二行")
    assert r.status_code == 201 and r.json()["code"] == 201
    p = r.json()["data"]
    assert p["name"] == "项目一" and p["code"] == "P-1" and p["note"] == "第一行\n第二行"
    assert p["service"] is None and p["created_at"] and p["updated_at"]

    got = await client.get(f"/api/projects/{p['id']}", headers=alice)
    assert got.status_code == 200 and got.json()["data"]["code"] == "P-1"

    put = await client.put(f"/api/projects/{p['id']}", json={"name": "改名"}, headers=alice)
    assert put.status_code == 200 and put.json()["data"]["name"] == "改名"
    assert put.json()["data"]["code"] == "P-1"

    listed = await client.get("/api/projects", headers=alice)
    assert [x["id"] for x in listed.json()["data"]] == [p["id"]]

    deleted = await client.delete(f"/api/projects/{p['id']}", headers=alice)
    assert deleted.status_code == 200
    gone = await client.get(f"/api/projects/{p['id']}", headers=alice)
    assert gone.status_code == 404 and gone.json() == {"code": 404, "msg": "项目不存在", "data": None}


async def test_other_user_gets_403_and_sees_nothing(client, alice, bob):
    pid = (await _create(client, alice)).json()["data"]["id"]
    for method, body in (("GET", None), ("PUT", {"name": "hijack"}), ("DELETE", None)):
        r = await client.request(method, f"/api/projects/{pid}", json=body, headers=bob)
        assert r.status_code == 403 and r.json()["msg"] == "无操作权限", method
    assert (await client.get("/api/projects", headers=bob)).json()["data"] == []
    assert (await client.get("/api/projects", headers=bob, params={"scope": "all"})).status_code == 403
    still = await client.get(f"/api/projects/{pid}", headers=alice)
    assert still.json()["data"]["name"] == "项目一"


async def test_admin_sees_and_manages_all(client, alice, admin):
    pid = (await _create(client, alice)).json()["data"]["id"]
    listed = (await client.get("/api/projects", headers=admin)).json()["data"]
    assert [p["id"] for p in listed] == [pid] and listed[0]["owner_username"] == "alice"
    assert (await client.get("/api/projects", headers=admin, params={"scope": "mine"})).json()["data"] == []
    assert (await client.get(f"/api/projects/{pid}", headers=admin)).status_code == 200
    assert (await client.put(f"/api/projects/{pid}", json={"note": "admin"}, headers=admin)).status_code == 200


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_anonymous_gets_401(client, alice, method):
    pid = (await _create(client, alice)).json()["data"]["id"]
    r = await client.request(method, f"/api/projects/{pid}", json={"name": "x"} if method == "PUT" else None)
    assert r.status_code == 401
    assert (await client.get("/api/projects")).status_code == 401
    assert (await client.post("/api/projects", json={"name": "a", "code": "b"})).status_code == 401


@pytest.mark.parametrize("pid", ["999", "2147483647"])
async def test_missing_id_is_404(client, alice, pid):
    r = await client.get(f"/api/projects/{pid}", headers=alice)
    assert r.status_code == 404 and r.json()["msg"] == "项目不存在"


@pytest.mark.parametrize("pid", ["abc", "0", "-1", "1.5", "99999999999999999999999", "%00"])
async def test_bad_id_is_4xx_with_chinese_message(client, alice, pid):
    r = await client.get(f"/api/projects/{pid}", headers=alice)
    assert 400 <= r.status_code < 500
    assert r.json()["code"] == r.status_code
    assert any("\u4e00" <= ch <= "\u9fff" for ch in r.json()["msg"])


@pytest.mark.parametrize(
    "body",
    [
        {"code": "X-1"},  # missing name
        {"name": "a"},  # missing code
        {"name": "", "code": "X-1"},
        {"name": "   ", "code": "X-1"},
        {"name": 123, "code": "X-1"},  # wrong type
        {"name": "a", "code": 5},
        {"name": "a", "code": "X-1", "note": "x" * 10_000},  # 10 kB note
        {"name": "a\x00b", "code": "X-1"},
        {"name": "a", "code": "X 1"},
        {"name": "a", "code": "X-1", "owner_user_id": 99},
        {"name": "a" * 101, "code": "X-1"},
        [],
        "just a string",
    ],
)
async def test_bad_input_is_4xx_and_changes_nothing(client, alice, admin, body):
    before = await _count(client, admin)
    r = await client.post("/api/projects", json=body, headers=alice)
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["code"] == r.status_code and "请求参数无效" in r.json()["msg"]
    assert await _count(client, admin) == before


async def test_malformed_json_is_4xx(client, alice):
    r = await client.post("/api/projects", content=b"{not json", headers={**alice, "content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["msg"]


async def test_bad_update_changes_nothing(client, alice):
    pid = (await _create(client, alice)).json()["data"]["id"]
    r = await client.put(f"/api/projects/{pid}", json={"name": "ok", "note": "x" * 10_000}, headers=alice)
    assert r.status_code == 422
    assert (await client.get(f"/api/projects/{pid}", headers=alice)).json()["data"]["name"] == "项目一"


async def test_duplicate_code_is_400(client, alice, bob):
    assert (await _create(client, alice, code="DUP")).status_code == 201
    r = await _create(client, bob, code="DUP")
    assert r.status_code == 400 and r.json()["msg"] == "项目号已存在"
    other = (await _create(client, alice, code="OTHER")).json()["data"]["id"]
    r = await client.put(f"/api/projects/{other}", json={"code": "DUP"}, headers=alice)
    assert r.status_code == 400 and r.json()["msg"] == "项目号已存在"


async def test_unique_code_under_concurrent_creates(client, alice, bob, admin):
    results = await asyncio.gather(*(_create(client, h, code="RACE") for h in (alice, bob)))
    assert sorted(r.status_code for r in results) == [201, 400]
    assert await _count(client, admin) == 1


async def test_queue_tells_what_a_stop_would_interrupt_and_others_may_not_stop(client, alice, bob, admin, settings):
    """The card asks GET …/queue before 停止; an admin's card stops through the admin route."""
    pid = (await _create(client, alice)).json()["data"]["id"]
    assert (await client.get(f"/api/projects/{pid}/queue", headers=alice)).json()["data"] is None  # never started
    me = (await client.get("/api/auth/me", headers=alice)).json()["data"]["id"]
    set_knobs(settings, me, pid, job_seconds=30)
    opened = await client.post(f"/api/projects/{pid}/open_comfy", headers=alice)
    assert opened.status_code == 200, opened.text
    port = opened.json()["data"]["port"]
    for _ in range(2):  # one runs for 30 s, one waits
        job = httpx.post(
            f"http://{launcher.instance_host()}:{port}/prompt",
            json={"prompt": {}, "client_id": "x"},
            trust_env=False,
            headers=as_comfyhub(port),
        )
        assert job.status_code == 200
    queue = await client.get(f"/api/projects/{pid}/queue", headers=alice)
    assert queue.status_code == 200 and queue.json()["data"] == {"running": 1, "pending": 1}
    assert (await client.get(f"/api/projects/{pid}/queue", headers=admin)).json()["data"] == {
        "running": 1,
        "pending": 1,
    }

    # Another user may neither look nor stop, by either route; the instance keeps running.
    assert (await client.get(f"/api/projects/{pid}/queue", headers=bob)).status_code == 403
    for path in (f"/api/projects/{pid}/stop_comfy", f"/api/admin/services/{pid}/stop"):
        r = await client.post(path, headers=bob)
        assert r.status_code == 403 and r.json()["msg"] == "无操作权限", path
    assert (await client.get(f"/api/projects/{pid}", headers=alice)).json()["data"]["service"]["status"] == "online"
    # The owner's route stays the owner's; an admin stops it through the admin route.
    assert (await client.post(f"/api/projects/{pid}/stop_comfy", headers=admin)).status_code == 403
    stopped = await client.post(f"/api/admin/services/{pid}/stop", headers=admin)
    assert stopped.status_code == 200 and stopped.json()["data"]["status"] == "stopped"
    assert (await client.get(f"/api/projects/{pid}/queue", headers=alice)).json()["data"] is None
