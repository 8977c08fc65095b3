"""The workbench page in a real Chromium against a real `comfyhub serve` and the fake ComfyUI.

Every wait is a condition (Playwright's expect / wait_for_*), never a fixed sleep. Each
test makes its own projects and does not depend on the others' order. Every page
the tests drive has its console watched: an error (or an uncaught exception) fails the
test. Screenshots for the README are written only with COMFYHUB_SCREENSHOTS=1.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal

import pytest
from playwright.async_api import expect

from tests.support.comfy import pid_alive, set_knobs
from tests.web.browser import ADMIN_PASSWORD, PASSWORD, PHONE, badge, card, login, new_project, screenshot, service

pytestmark = pytest.mark.asyncio(loop_scope="package")


# --- 1 + 2: log in, create, 数据生成, crash, reconnect -----------------------------------------


async def test_login_create_open_and_reconnect_after_a_crash(hub, browse):
    context, page = await browse()
    await page.goto("/")
    await expect(page).to_have_url(re.compile(r"/login$"))
    await page.get_by_label("用户名").fill("alice")
    await page.get_by_label("密码").fill("wrong-password")
    await page.get_by_role("button", name="登录").click()
    await expect(page.get_by_role("alert")).to_have_text("用户名或密码错误")
    await page.get_by_label("密码").fill(PASSWORD)
    await page.get_by_role("button", name="登录").click()
    await expect(page).to_have_url(hub.url + "/")
    await expect(page.get_by_role("heading", name="个人工作台")).to_be_visible()
    await expect(page.get_by_role("link", name="管理")).to_have_count(0)  # not an admin

    # Create a project through the dialog; the API's reason is shown at the field it names.
    await page.get_by_role("button", name="新建项目").first.click()
    dialog = page.get_by_role("dialog", name="新建项目")
    await dialog.get_by_label("名称").fill("演示项目")
    await dialog.get_by_label("项目号").fill("bad code!")
    await dialog.get_by_label("备注").fill("第一批人像数据")
    await dialog.get_by_role("button", name="创建").click()
    code_input = dialog.get_by_label("项目号")
    await expect(code_input).to_have_attribute("aria-invalid", "true")
    await expect(code_input).to_have_accessible_description(re.compile("^只能包含字母、数字、下划线、点和短横线"))
    await expect(code_input).to_be_focused()
    await dialog.get_by_label("项目号").fill("DEMO-1")
    await dialog.get_by_role("button", name="创建").click()
    await expect(dialog).to_have_count(0)
    new_card = page.locator("article.card", has_text="DEMO-1")
    await expect(new_card.locator(".badge")).to_have_text("未启动")
    project_id = int(await new_card.get_attribute("data-project-id"))
    await expect(new_card).to_contain_text("第一批人像数据")

    # 数据生成: a tab opens at once and lands on the instance through the proxy, on the
    # instance origin (the hand-off's code is spent on the way).
    async with context.expect_page() as tab_info:
        await new_card.get_by_role("button", name="数据生成").click()
    tab = await tab_info.value
    await expect(badge(page, project_id)).to_have_text("已连接")
    await expect(tab).to_have_url(f"{hub.comfy}/comfy/{project_id}/")
    await expect(tab.locator("#status")).to_have_text(re.compile(r"^port: \d+$"))
    await expect(tab.locator("#ws")).to_have_text("ws: connected")
    await expect(card(page, project_id).locator('[data-field="port"] dd')).to_have_text(re.compile(r"^\d+$"))

    # The instance dies: the heartbeat (1 s) and the list refresh (1 s) show 连接中断.
    async with hub.api("alice") as api:
        first_pid = (await service(api, project_id))["pid"]
        os.kill(first_pid, signal.SIGKILL)
        await expect(badge(page, project_id)).to_have_text("连接中断", timeout=10_000)
        await expect(card(page, project_id).locator(".detail")).to_contain_text("重新连接")
        async with context.expect_page() as tab_info:
            await card(page, project_id).get_by_role("button", name="数据生成").click()
        second_tab = await tab_info.value
        await expect(badge(page, project_id)).to_have_text("已连接")
        await expect(second_tab.locator("#ws")).to_have_text("ws: connected")
        second = await service(api, project_id)
        assert second["status"] == "online" and second["pid"] != first_pid and pid_alive(second["pid"])

        # Two more cards for the README's screenshot: one never started, one stopped.
        await new_project(api, "风格迁移", "STYLE-2", "水彩风格批量生成")
        stopped = await new_project(api, "商品图合成", "SKU-3")
        r = await api.post(f"/api/projects/{stopped}/open_comfy")
        assert r.status_code == 200, r.text
        r = await api.post(f"/api/projects/{stopped}/stop_comfy")
        assert r.status_code == 200, r.text
    await tab.close()
    await second_tab.close()
    await expect(badge(page, stopped)).to_have_text("已停止")
    await expect(page.locator("article.card", has_text="STYLE-2").locator(".badge")).to_have_text("未启动")
    await page.mouse.move(0, 0)
    await screenshot(page, "workbench.png")


async def test_a_second_click_while_starting_sends_no_second_request(hub, browse):
    async with hub.api("gus") as api:
        project_id = await new_project(api, "慢启动", "SLOW-1")
        uid = (await api.get("/api/auth/me")).json()["data"]["id"]
    set_knobs(hub.settings, uid, project_id, start_delay=2)
    context, page = await browse()
    await login(page, "gus")
    opens = []
    page.on("request", lambda req: opens.append(req.url) if req.url.endswith("/open_comfy") else None)
    button = card(page, project_id).get_by_role("button", name="数据生成")
    async with context.expect_page() as tab_info:
        await button.click()
    tab = await tab_info.value
    await expect(tab.locator("h1")).to_have_text("ComfyUI 启动中…")
    await expect(badge(page, project_id)).to_have_text("启动中")
    await expect(button).to_be_disabled()
    await button.dispatch_event("click")  # a script-level click is ignored too
    await expect(card(page, project_id).locator(".elapsed")).to_have_text(re.compile(r"^已用 [1-9]\d* 秒$"))
    await expect(badge(page, project_id)).to_have_text("已连接")
    await expect(button).to_be_enabled()
    await expect(tab.locator("#ws")).to_have_text("ws: connected")
    assert len(opens) == 1, opens
    assert len(context.pages) == 2  # the workbench and one tab


# --- 3: another user ----------------------------------------------------------------------------


async def test_another_user_sees_none_of_it_and_cannot_open_it(hub, browse):
    async with hub.api("alice") as api:
        project_id = await new_project(api, "只属于 alice", "ALICE-ONLY")
    context, page = await browse()
    await login(page, "bob")
    await expect(page.get_by_role("heading", name="还没有项目")).to_be_visible()
    await expect(page.locator("article.card")).to_have_count(0)
    await expect(page.get_by_text("ALICE-ONLY")).to_have_count(0)
    other = await context.new_page()  # not watched: a 403 document is the expected outcome
    response = await other.goto(f"/comfy/{project_id}/")
    assert response.status == 403
    await expect(other.locator("body")).to_contain_text("无操作权限")


# --- 4: a start that fails -----------------------------------------------------------------------


async def test_start_failure_shows_the_reason_and_the_log(hub, browse):
    async with hub.api("dana") as api:
        ok_id = await new_project(api, "线稿上色", "LINE-7", "上色模型 v2")
        failing = await new_project(api, "超分辨率", "UPSCALE-9", "4x 超分")
        uid = (await api.get("/api/auth/me")).json()["data"]["id"]
        assert (await api.post(f"/api/projects/{ok_id}/open_comfy")).status_code == 200
    set_knobs(hub.settings, uid, failing, exit_code=3)
    context, page = await browse()
    await login(page, "dana")
    await expect(badge(page, ok_id)).to_have_text("已连接")
    async with context.expect_page() as tab_info:
        await card(page, failing).get_by_role("button", name="数据生成").click()
    tab = await tab_info.value
    await expect(page.locator(".toast-error")).to_contain_text("ComfyUI 启动失败")
    if not tab.is_closed():
        await tab.wait_for_event("close")  # the pending tab is closed again
    failed = card(page, failing)
    await expect(failed.locator(".badge")).to_have_text("启动失败")
    await expect(failed.locator(".failure-reason")).to_contain_text("启动失败")
    await expect(failed.locator(".failure-tail")).to_contain_text("fatal: exiting with code 3")
    await expect(failed.get_by_role("button", name="停止")).to_have_count(0)
    await page.evaluate("document.getElementById('toasts').replaceChildren()")
    await page.mouse.move(0, 0)
    await screenshot(page, "start-failure.png")

    await failed.get_by_role("button", name="查看日志").click()
    log = page.get_by_role("dialog", name=re.compile("日志"))
    await expect(log.locator("pre.log")).to_contain_text("fatal: exiting with code 3")
    await expect(log.locator("pre.log")).to_contain_text("fake log line 30")
    await page.keyboard.press("Escape")
    await expect(log).to_have_count(0)
    await expect(failed.get_by_role("button", name="查看日志")).to_be_focused()

    # The badge stays right across list refreshes (1 s) and survives a reload.
    await page.reload()
    await expect(card(page, failing).locator(".badge")).to_have_text("启动失败")
    await expect(card(page, failing).locator(".failure-tail")).to_contain_text("fatal: exiting with code 3")


# --- 5: stop, delete, admin -------------------------------------------------------------------


async def test_stop_delete_and_the_admin_page(hub, browse):
    async with hub.api("erin") as api:
        first = await new_project(api, "待删除", "ERIN-1")
        second = await new_project(api, "长期任务", "ERIN-2")
        opened = await asyncio.gather(*(api.post(f"/api/projects/{p}/open_comfy") for p in (first, second)))
        assert [r.status_code for r in opened] == [200, 200], [r.text for r in opened]
        second_pid = (await service(api, second))["pid"]
    _context, page = await browse()
    await login(page, "erin")
    await expect(badge(page, first)).to_have_text("已连接")
    await card(page, first).get_by_role("button", name="停止").click()
    await expect(badge(page, first)).to_have_text("已停止")
    await expect(card(page, first).get_by_role("button", name="停止")).to_have_count(0)

    # Delete asks first; 取消 keeps the card, 删除 removes it.
    await card(page, first).get_by_role("button", name="删除").click()
    confirm = page.get_by_role("dialog", name="删除项目")
    await expect(confirm).to_contain_text("待删除")
    await confirm.get_by_role("button", name="取消").click()
    await expect(confirm).to_have_count(0)
    await expect(card(page, first)).to_have_count(1)
    await card(page, first).get_by_role("button", name="删除").click()
    await confirm.get_by_role("button", name="删除").click()
    await expect(card(page, first)).to_have_count(0)
    await expect(badge(page, second)).to_have_text("已连接")

    # The administrator: all projects by default, a switch to their own, and /admin.
    _admin_context, admin = await browse()
    await login(admin, "admin", ADMIN_PASSWORD)
    await expect(admin.get_by_role("button", name="全部项目")).to_have_attribute("aria-pressed", "true")
    erin_card = card(admin, second)
    await expect(erin_card).to_contain_text("erin")  # the owner
    await expect(erin_card.get_by_role("button", name="数据生成")).to_have_count(0)  # owners only
    await admin.get_by_role("button", name="我的项目").click()
    await expect(erin_card).to_have_count(0)
    await admin.get_by_role("button", name="全部项目").click()
    await expect(erin_card).to_have_count(1)

    await admin.get_by_role("link", name="管理").click()
    await expect(admin).to_have_url(hub.url + "/admin")
    services = admin.locator("#admin-services")
    row = services.locator(f'tr[data-project-id="{second}"]')
    await expect(row).to_contain_text("erin")
    await expect(row).to_contain_text("长期任务")
    await expect(row.locator(".badge")).to_have_text("已连接")
    await expect(row).to_contain_text(str(second_pid))
    await expect(services.locator(f'tr[data-project-id="{first}"]')).to_have_count(0)  # deleted
    users = admin.locator("#admin-users")
    for name in ("admin", "alice", "bob", "erin"):
        await expect(users.get_by_role("cell", name=name, exact=True)).to_have_count(1)

    await row.get_by_role("button", name=re.compile("^停止")).click()
    stop_dialog = admin.get_by_role("dialog", name="停止实例")
    await stop_dialog.get_by_role("button", name="停止").click()
    await expect(row.locator(".badge")).to_have_text("已停止")
    await expect(badge(page, second)).to_have_text("已停止")  # erin's page follows
    event = admin.locator("#admin-events tbody tr", has_text=f"#{second}").filter(has_text="admin")
    await expect(event.first).to_contain_text("停止")
    assert not pid_alive(second_pid)

    # A non-admin asking for /admin is told no.
    await page.goto("/admin")
    await expect(page.get_by_role("heading", name="无操作权限")).to_be_visible()


# --- 6: phone width -------------------------------------------------------------------------------


async def test_phone_width_has_no_horizontal_overflow(hub, browse):
    async with hub.api("fay") as api:
        online = await new_project(
            api,
            "一个名字相当长的移动端测试项目用于检查换行",
            "MOBILE-LONG-CODE-0123456789",
            "备注也很长：" + "生成数据" * 30,
        )
        await new_project(api, "第二个", "MOBILE-2")
        assert (await api.post(f"/api/projects/{online}/open_comfy")).status_code == 200
    _context, page = await browse(PHONE)
    await login(page, "fay")
    await expect(badge(page, online)).to_have_text("已连接")
    await expect(page.locator("article.card")).to_have_count(2)
    assert await page.evaluate("document.scrollingElement.scrollWidth") <= PHONE["width"]
    await page.get_by_role("button", name="新建项目").first.click()
    await expect(page.get_by_role("dialog", name="新建项目")).to_be_visible()
    assert await page.evaluate("document.scrollingElement.scrollWidth") <= PHONE["width"]
    await page.keyboard.press("Escape")

    _admin_context, admin = await browse(PHONE)
    # A deployment without the events API: that section hides itself.
    await admin.route(
        "**/api/admin/events*",
        lambda route: route.fulfill(status=404, json={"code": 404, "msg": "接口不存在", "data": None}),
    )
    await login(admin, "admin", ADMIN_PASSWORD, start="/admin")
    await expect(admin).to_have_url(hub.url + "/admin")
    await expect(admin.locator(f'#admin-services tr[data-project-id="{online}"] .badge')).to_have_text("已连接")
    await expect(admin.locator("#admin-events")).to_be_hidden()
    assert await admin.evaluate("document.scrollingElement.scrollWidth") <= PHONE["width"]


# --- keyboard login, the "not configured" banner, an error without a log, logout ----------------


async def test_keyboard_login_unconfigured_banner_and_logout(hub, browse):
    async with hub.api("alice") as api:
        project_id = await new_project(api, "键盘项目", "KEYS-1")
    context, page = await browse()
    # This server has ComfyUI configured; play a deployment without it.
    hint = "请在 .env 中设置 COMFYUI_REPO_PATH 和 COMFYUI_PYTHON"
    meta = {
        "code": 200,
        "msg": "成功",
        "data": {"version": "x", "list_refresh_seconds": 1, "comfyui_configured": False, "comfyui_hint": hint},
    }
    refused = {"code": 503, "msg": "ComfyUI 未配置", "data": {"hint": hint}}
    await page.route("**/api/meta", lambda route: route.fulfill(status=200, json=meta))
    await page.route("**/open_comfy", lambda route: route.fulfill(status=503, json=refused))

    await page.goto("/login")
    await expect(page.get_by_label("用户名")).to_be_focused()  # ready to type at once
    await page.keyboard.type("alice")
    await page.keyboard.press("Tab")
    await page.keyboard.type(PASSWORD)
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", name="个人工作台")).to_be_visible()
    await expect(page.get_by_role("note")).to_have_text(re.compile(f"ComfyUI 尚未配置.*{re.escape(hint)}"))

    async with context.expect_page() as tab_info:
        await card(page, project_id).get_by_role("button", name="数据生成").press("Enter")
    tab = await tab_info.value
    if not tab.is_closed():
        await tab.wait_for_event("close")
    await expect(badge(page, project_id)).to_have_text("启动失败")
    await expect(card(page, project_id).locator(".failure-reason")).to_have_text(f"ComfyUI 未配置：{hint}")
    await expect(card(page, project_id).get_by_role("button", name="查看日志")).to_have_count(0)  # no log yet

    await page.goto("/login")  # already logged in: back to the workbench
    await expect(page).to_have_url(hub.url + "/")
    await page.get_by_role("button", name="退出").click()
    await expect(page).to_have_url(re.compile(r"/login$"))
    await page.goto("/admin")  # logged out: the login form, which comes back here afterwards
    await expect(page).to_have_url(re.compile(r"/login\?next=%2Fadmin$"))
