"""批量生成 (jobs) in a real Chromium against a real `comfyhub serve` whose fake ComfyUI runs
the prompts: a job made on the page from a pasted workflow and a grid, its progress bar
moving to 已完成, its items and their outputs; the server's message for a bad cell;
pause, resume, cancel; other users; a phone; what the view starts ends with it.

The preview is computed by the page: it is compared with the server's own expansion.
Every wait is a condition (Playwright's expect / wait_for_function), never a sleep.
"""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from PIL import Image
from playwright.async_api import Page, expect

from comfyhub.jobs.params import expand
from tests.conftest import add_user
from tests.support.comfy import set_knobs
from tests.web.browser import (
    ADMIN_PASSWORD,
    IMG_DIR,
    LAPTOP,
    PASSWORD,
    PHONE,
    SCREENSHOTS,
    card,
    login,
    mount_view,
    new_project,
    screenshot,
)
from tests.web.outputs import user_id

pytestmark = pytest.mark.asyncio(loop_scope="package")

# EmptyImage → SaveImage, and a text node that each item sets (never linked, never run).
WORKFLOW = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 0}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "job"}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
}
# The package's users are all some other test's; these are this file's own.
_ADDED: set[str] = set()


async def user(hub, name: str) -> str:
    if name not in _ADDED:
        await asyncio.to_thread(asyncio.run, add_user(hub.settings, name, PASSWORD))
        _ADDED.add(name)
    return name


async def project(hub, owner: str, name: str, code: str, **knobs) -> int:
    """A project of `owner`; `knobs` for its fake ComfyUI (read when the job starts it)."""
    async with hub.api(await user(hub, owner)) as api:
        pid = await new_project(api, name, code)
        if knobs:
            set_knobs(hub.settings, await user_id(api), pid, **knobs)
    return pid


async def submit(hub, owner: str, pid: int, name: str, n: int, failing: tuple[int, ...] = ()) -> int:
    """A job of `n` items by the API; the items at `failing` fail in the fake ComfyUI (no retries)."""
    async with hub.api(owner) as api:
        table = [{"6.text": f"第 {i} 项" + (" FAKE_FAIL" if i in failing else ""), "1.color": i} for i in range(n)]
        body = {"name": name, "workflow": WORKFLOW, "table": table, "max_retries": 0}
        r = await api.post(f"/api/projects/{pid}/jobs", json=body)
        assert r.status_code == 201, r.text
        return r.json()["data"]["id"]


async def job_state(hub, owner: str, pid: int, jid: int) -> dict:
    async with hub.api(owner) as api:
        r = await api.get(f"/api/projects/{pid}/jobs/{jid}")
        assert r.status_code == 200, r.text
        return r.json()["data"]


def job_card(page: Page, jid: int):
    return page.locator(f'article.job[data-job-id="{jid}"]')


async def done_count_reaches(page: Page, jid: int, low: int, high: int) -> None:
    """Wait until the card's bar shows low <= done <= high, recording each value it shows
    on the way in window.__seen[jid] (read many times: the bar must move, not jump once)."""
    await page.wait_for_function(
        """([jid, low, high]) => {
            const bar = document.querySelector(`article.job[data-job-id="${jid}"] [role=progressbar]`);
            if (!bar) return false;
            const done = Number(bar.dataset.done);
            const seen = ((window.__seen ||= {})[jid] ||= []);
            if (seen[seen.length - 1] !== done) seen.push(done);
            return done >= low && done <= high;
        }""",
        arg=[jid, low, high],
        polling=50,
        timeout=60_000,
    )


async def seen(page: Page, jid: int) -> list[int]:
    return await page.evaluate("jid => window.__seen[jid]", jid)


async def open_form(page: Page):
    await page.get_by_role("button", name="新建批量任务").click()
    return page.get_by_role("dialog", name="新建批量任务")


async def save_screenshot(page: Page, name: str) -> None:
    """A palette PNG (like gallery.png): a page of flat colours needs no more, and it stays small."""
    await screenshot(page, name)
    if SCREENSHOTS:
        path = IMG_DIR / name
        Image.open(path).convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
        assert path.stat().st_size < 150_000, path.stat().st_size


# --- a job made on the page: grid, preview, progress, items, outputs -----------------------------


async def test_a_grid_job_made_on_the_page_runs_to_the_end_with_its_outputs(hub, browse):
    pid = await project(hub, "nora", "批量出图", "JOBS-1", job_seconds=0.6)
    _context, page = await browse()
    await login(page, "nora")
    await card(page, pid).get_by_role("link", name="批量生成").click()
    await expect(page).to_have_url(f"{hub.url}/#/projects/{pid}/jobs")
    await expect(page.get_by_role("heading", name="批量生成 · 批量出图")).to_be_visible()
    await expect(page.locator(".empty")).to_contain_text("还没有批量任务")

    dialog = await open_form(page)
    await dialog.get_by_label("名称").fill("猫狗三色")
    await dialog.get_by_label("工作流（API 格式 JSON）").fill(json.dumps(WORKFLOW))
    await expect(dialog.locator(".workflow-info")).to_contain_text("已识别 3 个节点")
    await expect(dialog.locator(".workflow-info")).to_contain_text("6.text")
    await dialog.get_by_label("列 1：字段").fill("6.text")
    await dialog.get_by_label("列 1：取值（每行一个）").fill("a cat\na dog\n")
    await dialog.get_by_role("button", name="+ 添加一列").click()
    await dialog.get_by_label("列 2：字段").fill("1.color")
    await dialog.get_by_label("列 2：取值（每行一个）").fill("255\n65280\n16711680")
    preview = dialog.get_by_role("region", name="预览")
    await expect(preview.locator(".preview-total")).to_have_text("共 6 项")
    await expect(preview).to_contain_text("服务器会逐格检查")
    rows = preview.locator("tbody tr")
    await expect(rows).to_have_count(5)  # the first five of six, first column outermost
    await expect(rows.nth(0)).to_have_text(re.compile(r"^1\s*a cat\s*255$"))
    await expect(rows.nth(3)).to_have_text(re.compile(r"^4\s*a dog\s*255$"))
    await dialog.get_by_role("button", name="创建任务").click()
    await expect(dialog).to_have_count(0)
    await expect(page.locator(".toast-success")).to_contain_text("任务已创建，共 6 项")

    job = page.locator("article.job")
    await expect(job).to_have_count(1)
    jid = int(await job.get_attribute("data-job-id"))
    bar = job.get_by_role("progressbar")
    await expect(bar).to_have_attribute("aria-valuemax", "6")
    await done_count_reaches(page, jid, 1, 5)  # mid-way: some done, not all
    await done_count_reaches(page, jid, 6, 6)
    await expect(job.locator(".badge")).to_have_text("已完成")
    shown = await seen(page, jid)
    assert shown == sorted(shown) and shown[-1] == 6 and any(0 < d < 6 for d in shown), shown
    await expect(job.locator(".job-counts")).to_have_text("已完成 6 / 6")
    await expect(job.locator('[data-field="rate"] dd')).to_have_text(re.compile(r"项/分钟$"))
    await expect(job.get_by_role("button", name="暂停")).to_be_hidden()

    # 查看各项: each item's parameters, state and a link to its output file.
    async with hub.api("nora") as api:
        items = (await api.get(f"/api/projects/{pid}/jobs/{jid}/items")).json()["data"]["items"]
    await job.get_by_role("button", name="查看各项").click()
    table = page.get_by_role("dialog", name="各项 · 猫狗三色")
    rows = table.locator("tbody tr")
    await expect(rows).to_have_count(6)
    await expect(table.locator(".items-info")).to_have_text("共 6 项 · 第 1–6 项")
    for item, row in zip(items, await rows.all(), strict=True):
        await expect(row.locator('[data-column="6.text"]')).to_have_text(item["params"]["6.text"])
        await expect(row.locator('[data-column="1.color"]')).to_have_text(str(item["params"]["1.color"]))
        await expect(row.locator(".badge")).to_have_text("已完成")
        (oid,) = item["outputs"]
        link = row.get_by_role("link", name=f"#{oid}")
        await expect(link).to_have_attribute("href", f"/api/projects/{pid}/outputs/{oid}/file")
    assert [i["params"]["6.text"] for i in items] == ["a cat"] * 3 + ["a dog"] * 3
    async with hub.api("nora") as api:
        r = await api.get(f"/api/projects/{pid}/outputs/{items[4]['outputs'][0]}/file")
        assert r.status_code == 200 and r.content.startswith(b"\x89PNG"), r.status_code
    await table.get_by_label("按状态筛选").select_option("failed")
    await expect(table.locator(".items-info")).to_have_text("共 0 项")
    await page.keyboard.press("Escape")

    # 查看产出: the project's gallery, with the job's six images.
    await job.get_by_role("link", name="查看产出").click()
    await expect(page).to_have_url(f"{hub.url}/#/projects/{pid}/outputs")
    await expect(page.locator("#gallery-grid article.tile")).to_have_count(6)


# --- the page's preview is the server's expansion ------------------------------------------------


async def test_the_preview_counts_and_orders_items_as_the_server_does(hub, browse):
    _context, page = await browse()
    await page.goto("/login")
    grid = {"6.text": ["a cat", "a dog"], "1.color": [1, 2, 3]}
    seed = {"field": "1.width", "mode": "increment", "start": 7}
    csv_text = '6.text,1.color\r\n"a, ""quoted"" cat",1\n\n"two\nlines",2\n  ,  \nlast,3\n'
    got = await page.evaluate(
        """async ([grid, seed, csv]) => {
            const p = await import("/static/js/job-params.js");
            const g = p.preview(p.gridTable(grid), { repeat: 2, seed, n: 100 });
            const c = p.preview(p.rowsTable(p.csvTable(csv)), { n: 100 });
            let bad = null;
            try { p.csvTable('6.text\\n"open'); } catch (e) { bad = [e.message, e.row]; }
            return { g, c, bad };
        }""",
        [grid, seed, csv_text],
    )
    server = expand(WORKFLOW, grid=grid, repeat=2, seed=seed)
    assert got["g"]["total"] == server.total == 12
    assert got["g"]["rows"] == server.items
    assert got["g"]["columns"] == server.columns
    server = expand(WORKFLOW, table=csv_text, table_format="csv")
    assert got["c"]["total"] == server.total == 3
    assert [r["6.text"] for r in got["c"]["rows"]] == [i["6.text"] for i in server.items]
    assert [int(r["1.color"]) for r in got["c"]["rows"]] == [i["1.color"] for i in server.items]
    assert got["bad"] == ["第 2 行：CSV 引号没有配对", 2]


# --- a bad cell: the server's message, no job --------------------------------------------------------


async def test_a_bad_cell_shows_the_servers_message_and_no_job_is_made(hub, browse):
    pid = await project(hub, "nora", "参数检查", "JOBS-2")
    _context, page = await browse()
    await login(page, "nora")
    await page.goto(f"/#/projects/{pid}/jobs")
    await expect(page.locator(".empty")).to_contain_text("还没有批量任务")
    dialog = await open_form(page)

    # A workflow in the UI format is said at once; an API one is read from its file.
    await dialog.get_by_label("工作流（API 格式 JSON）").fill(json.dumps({"nodes": [], "links": []}))
    await expect(dialog.locator(".workflow-info")).to_contain_text("界面格式")
    await dialog.get_by_label("或选择 .json 文件").set_input_files(
        files=[{"name": "workflow_api.json", "mimeType": "application/json", "buffer": json.dumps(WORKFLOW).encode()}]
    )
    await expect(dialog.get_by_label("工作流（API 格式 JSON）")).to_have_value(json.dumps(WORKFLOW))
    await expect(dialog.locator(".workflow-info")).to_contain_text("已识别 3 个节点")

    # An uploaded CSV with text in an integer column: the preview counts it, the server refuses it.
    await dialog.get_by_role("button", name="上传文件").click()
    csv_file = "6.text,1.width\n猫,16\n狗,abc\n".encode()
    await dialog.get_by_label("参数文件（CSV、JSONL 或 JSON）").set_input_files(
        files=[{"name": "params.csv", "mimeType": "text/csv", "buffer": csv_file}]
    )
    await expect(dialog.locator(".preview-total")).to_have_text("共 2 项")
    await dialog.get_by_role("button", name="创建任务").click()
    error = dialog.locator(".form-error")
    await expect(error).to_have_text("第 3 行“1.width”：应为整数，实际是“abc”")
    await expect(error).to_have_attribute("role", "alert")

    # The same in the grid: the field the server names is pointed at.
    await dialog.get_by_role("button", name="网格").click()
    await dialog.get_by_label("列 1：字段").fill("1.width")
    await dialog.get_by_label("列 1：取值（每行一个）").fill("16\nabc")
    await expect(dialog.locator(".preview-total")).to_have_text("共 2 项")
    await dialog.get_by_role("button", name="创建任务").click()
    await expect(error).to_contain_text("列“1.width”第 2 个值：应为整数")
    await expect(dialog.get_by_label("列 1：字段")).to_have_attribute("aria-invalid", "true")

    # A pasted table: quotes hold commas; a missing quote is said before anything is sent.
    await dialog.get_by_role("button", name="粘贴表格").click()
    await dialog.get_by_label("参数表（CSV 文本）").fill('6.text,1.width\n"a, cat",16\n"b\n')
    await expect(dialog.locator(".preview-total")).to_have_text("共 — 项")
    await expect(dialog.get_by_role("region", name="预览")).to_contain_text("第 3 行：CSV 引号没有配对")
    await dialog.get_by_label("参数表（CSV 文本）").fill('6.text,1.width\n"a, cat",16\n')
    await expect(dialog.locator(".preview-total")).to_have_text("共 1 项")
    await expect(dialog.locator(".preview-table tbody td").nth(1)).to_have_text("a, cat")
    await dialog.get_by_role("button", name="取消").click()
    await expect(dialog).to_have_count(0)

    async with hub.api("nora") as api:
        assert (await api.get(f"/api/projects/{pid}/jobs")).json()["data"] == []
    await expect(page.locator("article.job")).to_have_count(0)


# --- pause, resume, cancel --------------------------------------------------------------------------


async def test_pause_resume_and_cancel(hub, browse):
    pid = await project(hub, "omar", "暂停与取消", "JOBS-3", job_seconds=0.4)
    first = await submit(hub, "omar", pid, "先跑的一批", 8)
    _context, page = await browse()
    await login(page, "omar")
    await page.goto(f"/#/projects/{pid}/jobs")
    job = job_card(page, first)
    await done_count_reaches(page, first, 1, 7)
    await job.get_by_role("button", name="暂停").click()
    await expect(job.locator(".badge")).to_have_text("已暂停")
    await expect(job.locator(".job-detail")).to_have_text("用户暂停")
    await expect(job.get_by_role("button", name="暂停")).to_be_hidden()
    assert (await job_state(hub, "omar", pid, first))["state"] == "paused"
    await job.get_by_role("button", name="继续").click()
    await expect(job.locator(".badge")).to_have_text(re.compile("^(运行中|已完成)$"))
    await done_count_reaches(page, first, 8, 8)
    await expect(job.locator(".badge")).to_have_text("已完成")
    await expect(job.locator(".job-detail")).to_be_hidden()

    # A second, longer job on top of the list; the README's picture: one running, one done.
    second = await submit(hub, "omar", pid, "第二批：四十项", 40, failing=(3, 7))
    job = job_card(page, second)
    await expect(page.locator("article.job").first).to_have_attribute("data-job-id", str(second))
    await done_count_reaches(page, second, 10, 30)
    await expect(job.locator(".job-counts")).to_contain_text("失败 2")  # the bar's second colour
    await expect(job.locator(".bar-failed")).to_have_attribute("style", "width: 5%;")
    await expect(job.locator('[data-field="eta"] dd')).to_have_text(re.compile(r"秒$"))
    await page.evaluate("document.getElementById('toasts').replaceChildren(); document.activeElement.blur()")
    await page.mouse.move(0, 0)
    await save_screenshot(page, "jobs.png")

    await job.get_by_role("button", name="取消").click()
    confirm = page.get_by_role("dialog", name="取消任务")
    await expect(confirm).to_contain_text("第二批：四十项")
    await confirm.get_by_role("button", name="取消任务").click()
    await expect(job.locator(".badge")).to_have_text("已取消")
    await expect(job.get_by_role("button", name="继续")).to_be_hidden()
    await expect(job.get_by_role("button", name="取消")).to_be_hidden()
    final = await job_state(hub, "omar", pid, second)
    assert final["state"] == "cancelled" and final["counts"]["cancelled"] > 0, final


# --- other users --------------------------------------------------------------------------------------


async def test_only_the_owner_gets_the_button_and_others_are_told_why(hub, browse):
    pid = await project(hub, "pia", "别人的项目", "JOBS-4")
    await user(hub, "omar")
    _context, admin = await browse()
    await login(admin, "admin", ADMIN_PASSWORD)
    other = card(admin, pid)
    await expect(other).to_be_visible()  # 全部项目: an admin sees every card…
    await expect(other.get_by_role("link", name="产出")).to_be_visible()
    await expect(other.get_by_role("link", name="批量生成")).to_be_hidden()  # …but steers no one's jobs
    await admin.goto(f"/#/projects/{pid}/jobs")  # read-only by URL
    await expect(admin.get_by_role("heading", name="批量生成 · 别人的项目")).to_be_visible()
    await expect(admin.locator(".empty")).to_be_visible()
    await expect(admin.get_by_role("button", name="新建批量任务")).to_be_hidden()

    _context, page = await browse()
    await login(page, "omar")
    await expect(card(page, pid)).to_have_count(0)
    await page.goto(f"/#/projects/{pid}/jobs")
    await expect(page.get_by_role("alert")).to_have_text("无操作权限")
    await expect(page.get_by_role("button", name="新建批量任务")).to_be_hidden()
    await expect(page.locator(".loading")).to_be_hidden()


# --- a phone; what the view starts ends with it ------------------------------------------------------


def fake_job(jid: int, state: str, done: int, failed: int = 0, total: int = 40, detail: str = "") -> dict:
    running = 1 if state == "running" else 0
    return {
        "id": jid,
        "project_id": 0,
        "name": f"一个名字相当长的批量任务，用来看手机上是否换行 #{jid}",
        "state": state,
        "detail": detail,
        "total": total,
        "counts": {
            "pending": total - done - failed - running,
            "running": running,
            "done": done,
            "failed": failed,
            "cancelled": 0,
        },
        "columns": ["6.text", "1.color"],
        "rate_per_minute": 12.5,
        "eta_seconds": 130 if state == "running" else None,
        "max_retries": 2,
        "created_at": "2024-05-01T08:00:00+00:00",
        "started_at": "2024-05-01T08:00:01+00:00",
        "finished_at": None,
    }


def fake_items(n: int) -> dict:
    return {
        "total": n,
        "items": [
            {
                "idx": i,
                "params": {"6.text": "一段很长的提示词，" * 6, "1.color": i},
                "state": "failed" if i else "done",
                "prompt_id": f"p{i}",
                "outputs": [100 + i] if not i else [],
                "error": "RuntimeError: 节点 2 出错" if i else "",
                "submissions": 3 if i else 1,
                "retries": 2 if i else 0,
                "resubmits": 0,
            }
            for i in range(n)
        ],
    }


async def fake_api(page: Page, pid: int, jobs: list[dict]) -> None:
    def answer(data):
        return {
            "status": 200,
            "content_type": "application/json",
            "body": json.dumps({"code": 200, "msg": "成功", "data": data}, ensure_ascii=False),
        }

    await page.route(re.compile(rf"/api/projects/{pid}/jobs$"), lambda route: route.fulfill(**answer(jobs)))
    await page.route(re.compile(rf"/api/projects/{pid}/jobs/\d+$"), lambda route: route.fulfill(**answer(jobs[0])))
    await page.route(
        re.compile(rf"/api/projects/{pid}/jobs/\d+/items\?"), lambda route: route.fulfill(**answer(fake_items(3)))
    )


async def fits(page: Page, width: int) -> None:
    assert await page.evaluate("document.scrollingElement.scrollWidth") <= width


async def test_the_jobs_view_and_its_dialogs_fit_a_phone(hub, browse):
    pid = await project(hub, "pia", "手机上的批量", "JOBS-5")
    _context, page = await browse(PHONE)
    await fake_api(
        page,
        pid,
        [
            fake_job(2, "running", 12, 3),
            fake_job(1, "paused", 5, detail="用户停止了 ComfyUI：点“继续”会重新启动它并接着跑"),
        ],
    )
    await login(page, "pia")
    await expect(card(page, pid).get_by_role("link", name="批量生成")).to_be_visible()
    await fits(page, PHONE["width"])
    await page.goto(f"/#/projects/{pid}/jobs")
    await expect(page.locator("article.job")).to_have_count(2)
    await expect(job_card(page, 1).locator(".job-detail")).to_contain_text("用户停止了 ComfyUI")
    await expect(job_card(page, 2).locator(".job-counts")).to_have_text("已完成 12 / 40 · 失败 3 · 运行中 1 · 等待 24")
    await expect(job_card(page, 2).locator('[data-field="eta"] dd')).to_have_text("2 分 10 秒")
    await fits(page, PHONE["width"])

    await job_card(page, 2).get_by_role("button", name="查看各项").click()
    items = page.get_by_role("dialog", name=re.compile("^各项"))
    await expect(items.locator("tbody tr")).to_have_count(3)
    await expect(items.locator("tbody tr").nth(1)).to_contain_text("RuntimeError: 节点 2 出错")
    assert await items.evaluate("d => d.scrollWidth <= d.clientWidth")
    await fits(page, PHONE["width"])
    await page.keyboard.press("Escape")

    dialog = await open_form(page)
    await dialog.get_by_label("工作流（API 格式 JSON）").fill(json.dumps(WORKFLOW))
    await dialog.get_by_label("列 1：字段").fill("6.text")
    await dialog.get_by_label("列 1：取值（每行一个）").fill("一只很长很长的猫，" * 8)
    await dialog.get_by_label("自动设置种子（让重复的项各不相同）").check()
    await expect(dialog.locator(".preview-total")).to_have_text("共 1 项")
    assert await dialog.evaluate("d => d.scrollWidth <= d.clientWidth")
    await fits(page, PHONE["width"])


async def test_the_jobs_view_leaves_no_timers_or_listeners(hub, browse):
    pid = await project(hub, "pia", "探针", "JOBS-6")
    _context, page = await browse(LAPTOP, probe=True)
    await login(page, "pia")
    me = await page.evaluate("fetch('/api/auth/me').then((r) => r.json()).then((j) => j.data.id)")
    await fake_api(page, pid, [fake_job(7, "running", 3)])
    before = await mount_view(page, "jobs", "renderJobs", f"{{ id: {me}, is_admin: false }}", pid)
    await expect(job_card(page, 7)).to_be_visible()
    await page.wait_for_event("request", lambda r: r.url.endswith(f"/projects/{pid}/jobs"))  # it polls
    await job_card(page, 7).get_by_role("button", name="查看各项").click()
    items = page.get_by_role("dialog", name=re.compile("^各项"))
    await page.wait_for_event("request", lambda r: "/items?" in r.url)  # and so does the dialog
    await page.keyboard.press("Escape")
    await expect(items).to_have_count(0)
    dialog = await open_form(page)
    await dialog.get_by_label("工作流（API 格式 JSON）").fill(json.dumps(WORKFLOW))
    await expect(dialog.locator(".workflow-info")).to_contain_text("已识别 3 个节点")

    await page.evaluate("window.__dispose()")  # the view ends: its dialog closes with it
    await expect(page.get_by_role("dialog")).to_have_count(0)
    await page.wait_for_function("window.__probe.state().timers.length === 0")
    assert (await page.evaluate("window.__probe.state()"))["listeners"] == before
