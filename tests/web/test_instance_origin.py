"""ComfyUI on its own origin, in a real Chromium: a script in ComfyUI's page (a custom
node's, played by the fake's page_script.js) gets nothing from comfyhub's API, while
ComfyUI itself (its HTTP API and WebSocket) works; the hand-off's code works once; another
user's cookie gets 403; logging out ends access."""

from __future__ import annotations

import json
import re

import pytest
from playwright.async_api import expect
from sqlalchemy import update

from comfyhub.db import create_engine, session_factory
from comfyhub.models import EntryCode, utcnow
from comfyhub.services.instances import instance_dir
from tests.fake_comfyui.main import PAGE_SCRIPT
from tests.web.browser import card, login, new_project, service

pytestmark = pytest.mark.asyncio(loop_scope="package")

# What a hostile custom node would try from ComfyUI's page: comfyhub's API on this origin,
# then on the main origin with the user's cookies (reads, then writes CORS lets through
# without asking: a text/plain POST in no-cors mode). Its findings land in window.__hostile.
HOSTILE = """
window.__hostile = (async () => {
  const MAIN = %(main)s, PROJECT = %(project)s, out = {};
  async function attempt(name, url, init) {
    try {
      const r = await fetch(url, { credentials: "include", ...init });
      out[name] = { status: r.status, type: r.type, body: r.type === "opaque" ? "" : (await r.text()).slice(0, 300) };
    } catch (error) {
      out[name] = { error: String(error) };
    }
  }
  await attempt("here_projects", "/api/projects");
  await attempt("here_me", "/api/auth/me");
  await attempt("here_workbench", "/");
  await attempt("here_token", "/api/tokens", { method: "POST", headers: { "content-type": "application/json" },
    body: '{"name": "stolen"}' });
  await attempt("main_projects", MAIN + "/api/projects");
  await attempt("main_me", MAIN + "/api/auth/me", { mode: "no-cors" });
  await attempt("main_token", MAIN + "/api/tokens", { method: "POST", mode: "no-cors",
    headers: { "content-type": "text/plain" }, body: '{"name": "stolen"}' });
  await attempt("main_stop", MAIN + `/api/projects/${PROJECT}/stop_comfy`, { method: "POST", mode: "no-cors" });
  await attempt("main_delete", MAIN + `/api/projects/${PROJECT}`, { method: "DELETE" });
  await attempt("main_code", MAIN + `/comfy/${PROJECT}/`);
  out.cookies = document.cookie;
  out.opener = window.opener === null;
  return out;
})();
"""


def _plant(hub, user_id: int, project_id: int) -> None:
    folder = instance_dir(hub.settings, user_id, project_id)
    folder.mkdir(parents=True, exist_ok=True)
    script = HOSTILE % {"main": json.dumps(hub.url), "project": project_id}
    (folder / PAGE_SCRIPT).write_text(script, encoding="utf-8")


async def _open_from_the_workbench(context, page, project_id: int):
    """数据生成 on the card; the tab, and the hand-off URL it went through."""
    entered = []
    context.on("request", lambda r: entered.append(r.url) if "/_comfyhub/enter/" in r.url else None)
    async with context.expect_page() as tab_info:
        await card(page, project_id).get_by_role("button", name="数据生成").click()
    tab = await tab_info.value
    await expect(tab.locator("#ws")).to_have_text("ws: connected")
    return tab, entered


async def test_a_script_in_comfyuis_page_gets_nothing_from_comfyhub(hub, browse):
    async with hub.api("quinn") as api:
        project_id = await new_project(api, "隔离", "ORIGIN-1")
        uid = (await api.get("/api/auth/me")).json()["data"]["id"]
        tokens_before = (await api.get("/api/tokens")).json()["data"]
    _plant(hub, uid, project_id)
    context, page = await browse()
    await login(page, "quinn")
    tab, _ = await _open_from_the_workbench(context, page, project_id)

    # ComfyUI works: its page, its HTTP API (the fake's script asks /system_stats) and its WebSocket.
    await expect(tab).to_have_url(f"{hub.comfy}/comfy/{project_id}/")
    await expect(tab.locator("#status")).to_have_text(re.compile(r"^port: \d+$"))
    queued = await tab.evaluate(
        """async () => (await fetch("prompt", { method: "POST", headers: { "content-type": "application/json" },
            body: JSON.stringify({ prompt: { "1": { class_type: "EmptyImage", inputs: {} } }, client_id: "t" }),
        })).status"""
    )
    assert queued == 200

    found = await tab.evaluate("window.__hostile")
    for name in ("here_projects", "here_me", "here_workbench", "here_token"):
        assert found[name].get("status") == 404, (name, found[name])
        assert "quinn" not in found[name]["body"]
    # Cross-origin: no CORS answer, so a read fails in the browser; writes are refused (403).
    assert "error" in found["main_projects"] and "error" in found["main_delete"], found
    assert found["main_me"]["type"] == "opaque" and found["main_token"]["type"] == "opaque"
    assert "error" in found["main_code"] or found["main_code"].get("status") in (403, 0), found["main_code"]
    assert found["cookies"] == "" and found["opener"] is True
    # And nothing happened: no token made, the project and its instance untouched.
    async with hub.api("quinn") as api:
        assert (await api.get("/api/tokens")).json()["data"] == tokens_before
        assert (await service(api, project_id))["status"] == "online"
        assert (await api.get(f"/api/projects/{project_id}")).status_code == 200


async def test_the_code_works_once_and_not_after_expiry_and_logout_ends_access(hub, browse):
    async with hub.api("rosa") as api:
        project_id = await new_project(api, "一次性", "ORIGIN-2")
    context, page = await browse()
    await login(page, "rosa")
    tab, entered = await _open_from_the_workbench(context, page, project_id)
    assert entered and entered[0].startswith(f"{hub.comfy}/_comfyhub/enter/{project_id}?code=")

    # Used once: again, in this browser or another, it is refused.
    again = await tab.context.new_page()
    response = await again.goto(entered[0])
    assert response.status == 403
    await expect(again.locator("body")).to_contain_text("链接已失效")
    other_browser, _ = await browse()
    stranger = await other_browser.new_page()  # not watched: a 403 document is the expected outcome
    assert (await stranger.goto(entered[0])).status == 403

    # Expired: a fresh code, aged past its minute in the database, is refused.
    hop = await page.request.get(f"/comfy/{project_id}/", max_redirects=0)
    assert hop.status == 303
    engine = create_engine(hub.settings.database_url)
    try:
        async with session_factory(engine)() as db:
            await db.execute(update(EntryCode).values(expires_at=utcnow()))
            await db.commit()
    finally:
        await engine.dispose()
    assert (await again.goto(hop.headers["location"])).status == 403

    # Logging out on the main origin ends the instance origin's access too.
    await page.get_by_role("button", name="退出").click()
    await expect(page).to_have_url(re.compile(r"/login$"))
    response = await tab.reload()
    assert response.status == 401
    await expect(tab.locator("body")).to_contain_text("未登录")


async def test_another_users_cookie_gets_403(hub, browse):
    async with hub.api("quinn") as api:
        theirs = await new_project(api, "别人的", "ORIGIN-3")
    async with hub.api("rosa") as api:
        mine = await new_project(api, "我的", "ORIGIN-4")
    context, page = await browse()
    await login(page, "rosa")
    tab, _ = await _open_from_the_workbench(context, page, mine)
    response = await tab.goto(f"{hub.comfy}/comfy/{theirs}/")
    assert response.status == 403
    await expect(tab.locator("body")).to_contain_text("无操作权限")
    response = await tab.goto(f"{hub.url}/comfy/{theirs}/")  # nor a code for it
    assert response.status == 403
