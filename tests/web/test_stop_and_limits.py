"""停止 asks before it cuts off ComfyUI's work, an admin stops another user's instance from
the card, and an instance limit's message stays on the card (Chromium, live hub)."""

from __future__ import annotations

import asyncio
import re

import pytest
from playwright.async_api import expect

from tests.support.comfy import pid_alive, set_knobs
from tests.web.browser import ADMIN_PASSWORD, MAX_PER_USER, badge, card, login, new_project, service

pytestmark = pytest.mark.asyncio(loop_scope="package")


async def test_stop_asks_when_comfyui_has_work_and_an_admin_can_stop_it_from_the_card(hub, browse):
    async with hub.api("jun") as api:
        busy = await new_project(api, "批量出图", "JUN-BUSY")
        uid = (await api.get("/api/auth/me")).json()["data"]["id"]
        set_knobs(hub.settings, uid, busy, job_seconds=120)
        assert (await api.post(f"/api/projects/{busy}/open_comfy")).status_code == 200
        for _ in range(2):  # one job runs, one waits
            job = await api.post(f"{hub.comfy}/comfy/{busy}/prompt", json={"prompt": {}, "client_id": "t"})
            assert job.status_code == 200, job.text
        pid = (await service(api, busy))["pid"]

    _context, page = await browse()
    await login(page, "jun")
    await expect(badge(page, busy)).to_have_text("已连接")
    stops = []
    page.on("request", lambda r: stops.append(r.url) if r.url.endswith("/stop_comfy") else None)
    await card(page, busy).get_by_role("button", name="停止").click()
    confirm = page.get_by_role("dialog", name="停止实例")
    await expect(confirm).to_contain_text("还有 2 个任务在运行或排队")
    await confirm.get_by_role("button", name="取消").click()
    await expect(confirm).to_have_count(0)
    await expect(badge(page, busy)).to_have_text("已连接")
    assert stops == [] and pid_alive(pid)

    # The administrator, in 全部项目, stops it from jun's card (the admin route, audited).
    _admin_context, admin = await browse()
    await login(admin, "admin", ADMIN_PASSWORD)
    theirs = card(admin, busy)
    await expect(theirs).to_contain_text("jun")
    await theirs.get_by_role("button", name="停止").click()
    confirm = admin.get_by_role("dialog", name="停止实例")
    await expect(confirm).to_contain_text("确定停止 jun 的项目“批量出图”的 ComfyUI 吗")
    await expect(confirm).to_contain_text("还有 2 个任务")
    await confirm.get_by_role("button", name="停止").click()
    await expect(badge(admin, busy)).to_have_text("已停止")
    await expect(badge(page, busy)).to_have_text("已停止")  # jun's page follows
    assert not pid_alive(pid)
    async with hub.api("admin", ADMIN_PASSWORD) as api:
        events = (await api.get("/api/admin/events?limit=20")).json()["data"]
    assert any(e["action"] == "stop" and e["project_id"] == busy and e["actor"] == "admin" for e in events)


async def test_an_instance_limit_is_said_on_the_card_and_the_pending_tab_closes(hub, browse):
    async with hub.api("ivy") as api:
        running = [await new_project(api, f"第{i}个", f"IVY-{i}") for i in range(MAX_PER_USER)]
        third = await new_project(api, "超出上限", "IVY-OVER")
        opened = await asyncio.gather(*(api.post(f"/api/projects/{p}/open_comfy") for p in running))
        assert [r.status_code for r in opened] == [200] * MAX_PER_USER, [r.text for r in opened]

    context, page = await browse()
    await login(page, "ivy")
    await expect(badge(page, running[0])).to_have_text("已连接")
    async with context.expect_page() as tab_info:
        await card(page, third).get_by_role("button", name="数据生成").click()
    tab = await tab_info.value
    notice = card(page, third).locator(".limit-notice")
    limit = f"您的实例数已达上限（COMFYUI_MAX_INSTANCES_PER_USER={MAX_PER_USER}），请先停止其他项目的 ComfyUI"
    await expect(notice).to_have_text(limit)
    await expect(notice).to_have_attribute("role", "alert")
    await expect(card(page, third)).not_to_contain_text("尚未启动")  # no hint that says the opposite
    if not tab.is_closed():
        await tab.wait_for_event("close")  # the pending tab is closed again
    # Nothing was started and nothing failed: the card says so, and keeps the message.
    await expect(badge(page, third)).to_have_text("未启动")
    await expect(card(page, third).locator(".failure")).to_be_hidden()
    await page.wait_for_event("request", lambda r: r.url.endswith("/api/projects"))  # a list refresh
    await expect(notice).to_have_text(limit)

    # Stopping another instance frees a slot: the message goes (no work there: no question).
    await card(page, running[0]).get_by_role("button", name="停止").click()
    await expect(badge(page, running[0])).to_have_text("已停止")
    started = '[data-field="started"] dt'
    await expect(card(page, running[0]).locator(started)).to_have_text("上次启动")  # history, not now
    await expect(card(page, running[1]).locator(started)).to_have_text("启动时间")
    await expect(page.get_by_role("dialog")).to_have_count(0)
    await expect(notice).to_be_hidden()
    await expect(card(page, third).get_by_role("button", name=re.compile("数据生成"))).to_be_enabled()
