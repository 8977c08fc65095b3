"""The error envelope: every 422 names its fields in `data.errors` with a Chinese reason each,
so that a client places messages by field and never parses `msg`."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from comfyhub.api.errors import field_error, install_error_handlers
from comfyhub.api.schemas import ProjectCreate


@pytest.fixture
async def client():
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/projects")
    async def create(body: ProjectCreate):
        return {"ok": True}

    @app.post("/taken")
    async def taken():
        raise field_error(400, "code", "项目号已存在", "taken")

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        yield c


async def _errors(client, body) -> tuple[dict, dict[str, str]]:
    r = await client.post("/projects", json=body)
    assert r.status_code == 422 and r.json()["code"] == 422, r.text
    return r.json(), {e["field"]: e["msg"] for e in r.json()["data"]["errors"]}


async def test_each_bad_field_has_its_own_chinese_reason(client):
    reply, fields = await _errors(client, {"name": "x" * 101, "code": "bad code!", "note": 3})
    assert fields == {
        "name": "最多 100 个字符",
        "code": "只能包含字母、数字、下划线、点和短横线",
        "note": "必须是文本",
    }
    # The reply's msg still names the first field and its reason, for people reading it.
    assert reply["msg"] == "请求参数无效：name（最多 100 个字符）"
    assert {e["type"] for e in reply["data"]["errors"]} == {"string_too_long", "value_error", "string_type"}


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        ({"name": "a"}, "code", "必填"),
        ({"name": "a", "code": "X", "owner": 1}, "owner", "不允许的字段"),
        ({"name": "", "code": "X"}, "name", "不能为空"),
        ({"name": "a\nb", "code": "X"}, "name", "不能包含换行"),
        ([], "请求体", "必须是 JSON 对象"),
    ],
)
async def test_reasons_for_pydantic_errors(client, body, field, reason):
    _reply, fields = await _errors(client, body)
    assert fields[field] == reason


async def test_a_field_error_raised_by_a_route_names_its_field(client):
    r = await client.post("/taken")
    assert r.status_code == 400
    assert r.json() == {
        "code": 400,
        "msg": "项目号已存在",
        "data": {"errors": [{"field": "code", "type": "taken", "msg": "项目号已存在"}]},
    }


async def test_malformed_json_keeps_its_message(client):
    r = await client.post("/projects", content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["msg"] == "请求参数无效：JSON 格式错误"
    assert r.json()["data"]["errors"][0]["msg"] == "JSON 格式错误"
