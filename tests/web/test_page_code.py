"""The page's own rules, in a real Chromium: what a view or dialog starts ends with it, a
hidden tab polls nothing, form errors are placed by field name, every state word comes
from one table, and a failed /api/meta is said.

Absence ("no request while hidden") is measured against a clock that is itself a
condition: another page's list refreshes, one per LIST_REFRESH_SECONDS.
"""

from __future__ import annotations

import json
import re
from urllib.parse import urlsplit

import pytest
from playwright.async_api import Page, expect

from tests.web.browser import ADMIN_PASSWORD, LIST_REFRESH_SECONDS, badge, card, login, mount_view, new_project

pytestmark = pytest.mark.asyncio(loop_scope="package")

LIST = re.compile(r"/api/projects(\?.*)?$")

# The words the spec gives each status; the page must show exactly these.
STATUS_WORDS = {
    "starting": "启动中",
    "online": "已连接",
    "offline": "连接中断",
    "failed": "启动失败",
    "stopped": "已停止",
    None: "未启动",
}
# Every action and outcome the lifecycle records in the audit trail.
ACTION_WORDS = {"start": "启动", "stop": "停止", "cull": "空闲回收", "crash": "异常退出", "restart": "自动重启"}
OUTCOME_WORDS = {
    "online": "已连接",
    "failed": "启动失败",
    "cancelled": "已取消",
    "overtaken": "已被取代",
    "stopped": "已停止",
    "offline": "连接中断",
}


def is_list(request) -> bool:
    return urlsplit(request.url).path == "/api/projects"


def envelope(data, code: int = 200, msg: str = "成功") -> dict:
    return {
        "status": code,
        "content_type": "application/json",
        "body": json.dumps({"code": code, "msg": msg, "data": data}, ensure_ascii=False),
    }


def fake_project(pid: int, owner: int, status: str | None, name: str = "项目") -> dict:
    service = (
        None
        if status is None
        else {
            "status": status,
            "status_detail": "",
            "comfy_url": f"/comfy/{pid}/",
            "port": 40000 + pid,
            "pid": 1000 + pid,
            "gpu": None,
            "started_at": "2024-05-01T08:00:00",
            "last_heartbeat": None,
            "last_activity": None,
            "last_error": "启动失败\n--- 日志最后 1 行 ---\nboom" if status == "failed" else "",
            "stopped_reason": "用户停止" if status == "stopped" else None,
        }
    )
    return {
        "id": pid,
        "name": f"{name} {pid}",
        "code": f"FAKE-{pid}",
        "note": "",
        "owner_user_id": owner,
        "owner_username": "someone",
        "created_at": None,
        "updated_at": None,
        "service": service,
    }


async def quiet(page: Page) -> dict:
    """Wait until the page has no timer pending; return what it listens to on document and window."""
    await page.wait_for_function("window.__probe.state().timers.length === 0")
    return (await page.evaluate("window.__probe.state()"))["listeners"]


async def clock_ticks(clock: Page, n: int) -> None:
    """Let `n` list refreshes of a visible page pass (n × LIST_REFRESH_SECONDS)."""
    for _ in range(n):
        async with clock.expect_request(is_list, timeout=LIST_REFRESH_SECONDS * 5_000):
            pass


# --- no polling while hidden; at once when shown --------------------------------------------


async def test_a_hidden_tab_polls_nothing_and_refreshes_at_once_when_shown(hub, browse):
    async with hub.api("hana") as api:
        project_id = await new_project(api, "后台标签页", "HIDDEN-1")
    context, page = await browse(probe=True)
    await login(page, "hana")
    await expect(badge(page, project_id)).to_have_text("未启动")
    requests = []
    page.on("request", lambda r: requests.append(r.url) if is_list(r) else None)
    await page.wait_for_event("request", is_list)  # polling runs while visible

    await page.evaluate("window.__probe.setVisibility('hidden')")
    # Nothing scheduled at all: no list refresh, no counters (an answer in flight settles first).
    await quiet(page)
    seen = len(requests)
    clock = await context.new_page()  # same session, visible: its refreshes are the clock
    await clock.goto("/")
    await clock_ticks(clock, 3)  # > 2 refresh periods
    assert len(requests) == seen, f"{len(requests) - seen} list requests while hidden"

    async with page.expect_request(is_list) as shown:
        # The request starts inside the visibilitychange handler, not a period later.
        started = await page.evaluate("""() => {
            const before = window.__probe.fetches.length;
            window.__probe.setVisibility('visible');
            return window.__probe.fetches.slice(before);
        }""")
    assert started == ["/api/projects"], started
    assert is_list(await shown.value)
    await page.wait_for_event("request", is_list)  # and the period goes on
    await clock.close()


# --- what a view or a dialog starts ends with it ----------------------------------------------


async def test_views_and_dialogs_leave_no_timers_or_listeners_behind(hub, browse):
    _context, page = await browse(probe=True)
    await login(page, "hana")
    me = await page.evaluate("fetch('/api/auth/me').then((r) => r.json()).then((j) => j.data.id)")
    projects = [fake_project(9001, me, "stopped", "日志")]
    await page.route(LIST, lambda route: route.fulfill(**envelope(projects)))
    await page.route("**/comfy_log*", lambda route: route.fulfill(**envelope({"lines": ["line 1"], "log_file": "x"})))
    logs = []
    page.on("request", lambda r: logs.append(r.url) if "/comfy_log" in r.url else None)

    before = await mount_view(page, "workbench", "renderWorkbench", f"{{ id: {me}, is_admin: false }}")
    await expect(card(page, 9001)).to_be_visible()
    running = (await page.evaluate("window.__probe.state()"))["listeners"]
    assert running.get("document:visibilitychange"), running

    # The log viewer refreshes live while open, and not at all once closed.
    await card(page, 9001).get_by_role("button", name="查看日志").click()
    dialog = page.get_by_role("dialog", name=re.compile("日志"))
    await expect(dialog.locator("pre.log")).to_have_text("line 1")
    await page.wait_for_event("request", lambda r: "/comfy_log" in r.url)
    assert (await page.evaluate("window.__probe.state()"))["listeners"] != running  # its own poller
    await page.keyboard.press("Escape")
    await expect(dialog).to_have_count(0)
    closed_at = len(logs)
    assert (await page.evaluate("window.__probe.state()"))["listeners"] == running
    await clock_ticks(page, 3)
    assert len(logs) == closed_at, "the closed log viewer kept refreshing"

    # Disposing the view ends every timer and listener it started.
    await page.evaluate("window.__dispose()")
    assert await quiet(page) == before

    # The admin page too (its lists answered by the test: only what it schedules matters).
    await page.route("**/api/admin/**", lambda route: route.fulfill(**envelope([])))
    before = await mount_view(page, "admin", "renderAdmin", "{ id: 1, is_admin: true }")
    await expect(page.locator("#admin-services")).to_contain_text("共 0 个")
    assert (await page.evaluate("window.__probe.state()"))["listeners"] != before
    await page.evaluate("window.__dispose()")
    assert await quiet(page) == before


# --- form errors by field name ----------------------------------------------------------------


async def test_form_errors_are_placed_by_field_name_not_by_message_text(hub, browse):
    _context, page = await browse()
    await login(page, "hana")
    answers = []

    async def create(route):
        if route.request.method == "POST" and answers:
            await route.fulfill(**answers.pop(0))
        else:
            await route.continue_()

    await page.route(LIST, create)
    await page.get_by_role("button", name="新建项目").first.click()
    dialog = page.get_by_role("dialog", name="新建项目")
    name, code, note = (dialog.get_by_label(label) for label in ("名称", "项目号", "备注"))
    summary = dialog.locator(".form-error")
    await name.fill("表单")
    await code.fill("FORM-1")

    # Each message at its field, whatever the reply's msg says; the first bad field focused.
    answers.append(
        envelope(
            {
                "errors": [
                    {"field": "note", "type": "value_error", "msg": "包含不允许的控制字符"},
                    {"field": "name", "type": "string_too_long", "msg": "最多 100 个字符"},
                ]
            },
            422,
            "保存失败",
        )
    )
    await dialog.get_by_role("button", name="创建").click()
    await expect(name).to_have_accessible_description("最多 100 个字符")
    await expect(note).to_have_accessible_description("包含不允许的控制字符")
    await expect(name).to_be_focused()
    for field in (name, note):
        await expect(field).to_have_attribute("aria-invalid", "true")
    await expect(code).not_to_have_attribute("aria-invalid", "true")
    await expect(summary).to_be_hidden()

    # A route's own field error (a 项目号 that is taken) goes to that field; the others clear.
    answers.append(
        envelope({"errors": [{"field": "code", "type": "taken", "msg": "项目号已存在"}]}, 400, "项目号已存在")
    )
    await dialog.get_by_role("button", name="创建").click()
    await expect(code).to_have_accessible_description(re.compile("^项目号已存在"))
    await expect(code).to_be_focused()
    await expect(name).not_to_have_attribute("aria-invalid", "true")
    await expect(dialog.locator(".field-error:visible")).to_have_count(1)

    # No structured errors: the message goes to the form, and no field is guessed from its words.
    answers.append(envelope(None, 400, "项目号已存在"))
    await dialog.get_by_role("button", name="创建").click()
    await expect(summary).to_have_text("项目号已存在")
    await expect(dialog.locator("[aria-invalid]")).to_have_count(0)

    # A field this form does not have: the form's message.
    answers.append(
        envelope(
            {"errors": [{"field": "owner", "type": "extra_forbidden", "msg": "不允许的字段"}]},
            422,
            "请求参数无效：owner（不允许的字段）",
        )
    )
    await dialog.get_by_role("button", name="创建").click()
    await expect(summary).to_have_text("请求参数无效：owner（不允许的字段）")
    await expect(dialog.locator("[aria-invalid]")).to_have_count(0)

    await dialog.get_by_role("button", name="创建").click()  # the real API this time
    await expect(dialog).to_have_count(0)
    await expect(page.locator("article.card", has_text="FORM-1")).to_have_count(1)


async def test_a_taken_project_code_is_shown_at_its_field(hub, browse):
    async with hub.api("hana") as api:
        await new_project(api, "占用", "TAKEN-1")
    _context, page = await browse()
    await login(page, "hana")
    await page.get_by_role("button", name="新建项目").first.click()
    dialog = page.get_by_role("dialog", name="新建项目")
    await dialog.get_by_label("名称").fill("重复")
    await dialog.get_by_label("项目号").fill("TAKEN-1")
    await dialog.get_by_role("button", name="创建").click()
    await expect(dialog.locator(".form-error:visible, .field-error:visible")).to_have_count(1)  # answered
    await expect(dialog.get_by_label("项目号")).to_have_accessible_description(
        re.compile("^项目号已存在"), timeout=1_000
    )


# --- one table of words, one badge ----------------------------------------------------------


async def _badge_html(page: Page, key: str | None, table: str = "STATUSES") -> str:
    return await page.evaluate(
        "async ([key, table]) => { const s = await import('/static/js/status.js');"
        " return s.badge(key, s[table]).el.outerHTML; }",
        [key, table],
    )


async def test_every_status_action_and_outcome_is_said_in_chinese_from_one_table(hub, browse):
    statuses = [s for s in STATUS_WORDS if s is not None]
    services = [
        {
            "project_id": 100 + i,
            "username": "u",
            "project_name": f"p{i}",
            "project_code": f"C{i}",
            "status": s,
            "port": 41000 + i,
            "pid": 2000 + i,
            "started_at": None,
            "last_activity": None,
        }
        for i, s in enumerate(statuses)
    ]
    events = [
        {
            "id": i + 1,
            "at": "2024-05-01T08:00:00",
            "actor": "system",
            "action": action,
            "project_id": 100,
            "user_id": 1,
            "outcome": outcome,
            "detail": "",
        }
        for i, (action, outcome) in enumerate(
            [(a, "stopped") for a in ACTION_WORDS] + [("start", o) for o in OUTCOME_WORDS]
        )
    ]
    _context, page = await browse()
    await page.route("**/api/admin/services", lambda route: route.fulfill(**envelope(services)))
    await page.route("**/api/admin/events*", lambda route: route.fulfill(**envelope(events)))
    await login(page, "admin", ADMIN_PASSWORD, start="/admin")

    rows = page.locator("#admin-services tbody tr")
    await expect(rows).to_have_count(len(services))
    for i, status in enumerate(statuses):
        row_badge = rows.nth(i).locator(".badge")
        await expect(row_badge).to_have_text(STATUS_WORDS[status])
        assert await row_badge.evaluate("e => e.outerHTML") == await _badge_html(page, status)

    event_rows = page.locator("#admin-events tbody tr")
    await expect(event_rows).to_have_count(len(events))
    for i, e in enumerate(events):
        cells = event_rows.nth(i).locator("td")
        await expect(cells.nth(2)).to_have_text(ACTION_WORDS[e["action"]])
        outcome = cells.nth(4).locator(".badge")
        await expect(outcome).to_have_text(OUTCOME_WORDS[e["outcome"]])
        assert await outcome.evaluate("e => e.outerHTML") == await _badge_html(page, e["outcome"], "EVENT_OUTCOMES")

    # The workbench's cards: the same words, the same badge.
    admin_id = await page.evaluate("fetch('/api/auth/me').then((r) => r.json()).then((j) => j.data.id)")
    projects = [fake_project(200 + i, admin_id, s) for i, s in enumerate(STATUS_WORDS)]
    await page.route(LIST, lambda route: route.fulfill(**envelope(projects)))
    await page.goto("/")
    for p, status in zip(projects, STATUS_WORDS, strict=True):
        await expect(badge(page, p["id"])).to_have_text(STATUS_WORDS[status])
        assert await badge(page, p["id"]).evaluate("e => e.outerHTML") == await _badge_html(page, status)


# --- /api/meta ----------------------------------------------------------------------------------


async def test_a_failed_meta_request_is_shown_not_swallowed(hub, browse):
    async with hub.api("hana") as api:
        project_id = await new_project(api, "设置读取失败", "META-1")
    _context, page = await browse()
    await page.route("**/api/meta", lambda route: route.fulfill(**envelope(None, 503, "数据库暂时不可用，请稍后再试")))
    await login(page, "hana")
    banner = page.get_by_role("alert").filter(has_text="无法读取站点设置")
    await expect(banner).to_contain_text("数据库暂时不可用，请稍后再试")
    await expect(badge(page, project_id)).to_have_text("未启动")  # the page still works, on defaults

    await page.unroute("**/api/meta")
    await banner.get_by_role("button", name="重试").click()
    await expect(badge(page, project_id)).to_have_text("未启动")
    await expect(banner).to_have_count(0)
