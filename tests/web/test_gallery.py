"""产出 (the gallery) in a real Chromium against a real `comfyhub serve`: thumbnails, the
detail with its graph, curation, filters, selection, delete to the trash, the export,
new outputs appearing while the page is open, and an admin's deleted projects.

Outputs are PNG files written into the project's instance output/ folder and recorded by
the sync route (tests/web/outputs.py); no ComfyUI runs. Every wait is a condition.
"""

from __future__ import annotations

import io
import json
import zipfile
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from playwright.async_api import Page, expect

from tests.web.browser import ADMIN_PASSWORD, LAPTOP, PHONE, card, login, mount_view, new_project, screenshot
from tests.web.outputs import by_name, output_dir, outputs, sync, user_id, write_file, write_png

pytestmark = pytest.mark.asyncio(loop_scope="package")

PROMPTS = [
    "一只橘猫坐在窗台上，午后阳光，胶片质感",
    "雪山脚下的湖泊，清晨薄雾，广角",
    "赛博朋克城市夜景，霓虹灯，雨夜街道",
    "水彩风格的向日葵花田",
    "深海里的发光水母，暗色背景",
    "古风庭院，落樱，宣纸质感",
    "复古咖啡馆内景，暖色灯光",
    "宇航员在月球上骑自行车，超现实",
]


def tiles(page: Page):
    return page.locator("#gallery-grid article.tile")


def tile(page: Page, output_id: int):
    return page.locator(f'#gallery-grid article.tile[data-output-id="{output_id}"]')


async def thumbnails_loaded(page: Page, n: int) -> None:
    await page.wait_for_function(
        "n => { const imgs = [...document.querySelectorAll('#gallery-grid img')];"
        " return imgs.length === n && imgs.every((i) => i.complete && i.naturalWidth > 0); }",
        arg=n,
    )


async def seed_project(hub, user: str, name: str, code: str, pictures: int, video: bool = True):
    """A project with `pictures` PNGs (newest first: PROMPTS order) and maybe one .mp4, recorded."""
    async with hub.api(user) as api:
        project_id = await new_project(api, name, code)
        folder = output_dir(hub, await user_id(api), project_id)
        for i in range(pictures):
            write_png(folder, f"ComfyUI_{i + 1:05d}_.png", i, PROMPTS[i % len(PROMPTS)], 1000 + i, age=600 - i * 10)
        if video:
            write_file(folder, "clip_00001.mp4", b"\x00\x00\x00\x18ftypmp42", age=700)
        assert await sync(api, project_id) == pictures + int(video)
        return project_id, folder, await by_name(api, project_id)


# --- thumbnails, detail, curation, filters, new outputs -----------------------------------------


async def test_gallery_detail_marks_filters_and_new_outputs(hub, browse):
    project_id, folder, items = await seed_project(hub, "kai", "风景数据", "GALLERY-1", 8)
    context, page = await browse()
    await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=hub.url)
    await login(page, "kai")
    await card(page, project_id).get_by_role("link", name="产出").click()
    await expect(page).to_have_url(f"{hub.url}/#/projects/{project_id}/outputs")
    await expect(page.get_by_role("heading", name="产出 · 风景数据")).to_be_visible()
    await expect(page.locator(".gallery-total")).to_have_text("共 9 个")
    await expect(tiles(page)).to_have_count(9)
    await thumbnails_loaded(page, 8)
    video = tile(page, items["clip_00001.mp4"]["id"])
    await expect(video.locator(".tile-icon")).to_contain_text("clip_00001.mp4")
    await expect(tiles(page).first).to_have_attribute("data-output-id", str(items["ComfyUI_00008_.png"]["id"]))

    # The detail: the image, its prompt, seed and graph; 复制 puts the graph on the clipboard.
    opened = items["ComfyUI_00007_.png"]
    await tile(page, opened["id"]).get_by_role("button", name="查看 ComfyUI_00007_.png").click()
    dialog = page.get_by_role("dialog", name="产出详情")
    await expect(dialog.locator(".prompt-text").first).to_have_text(PROMPTS[6])
    await expect(dialog.locator('[data-field="种子"] dd')).to_have_text("1006")
    await expect(dialog.locator('[data-field="采样器"] dd')).to_have_text("euler")
    await expect(dialog.locator('[data-field="模型"] dd')).to_have_text("sd_xl_base_1.0.safetensors")
    await expect(dialog.locator(".graph-json")).to_contain_text('"class_type": "KSampler"')
    await page.wait_for_function("document.querySelector('.detail-media img')?.naturalWidth > 0")
    await expect(dialog.get_by_role("link", name="下载")).to_have_attribute("download", "ComfyUI_00007_.png")
    await dialog.get_by_role("button", name="复制").click()
    await expect(page.locator(".toast").filter(has_text="已复制工作流 JSON")).to_be_visible()
    copied = json.loads(await page.evaluate("navigator.clipboard.readText()"))
    assert copied["3"]["inputs"]["seed"] == 1006

    # ← walks to the newer neighbour; 通过 marks it (and its tile), 加标签 tags it.
    await expect(dialog.locator(".detail-nav")).to_contain_text("2 / 9")
    await dialog.locator(".detail-nav").get_by_role("button", name="下一个").focus()
    await page.keyboard.press("ArrowLeft")
    marked = items["ComfyUI_00008_.png"]
    await expect(dialog.locator(".prompt-text").first).to_have_text(PROMPTS[7])
    await expect(dialog.locator(".detail-nav")).to_contain_text("1 / 9")
    await expect(dialog.get_by_role("button", name="上一个")).to_be_disabled()
    await dialog.get_by_role("button", name="通过", exact=True).click()
    await expect(dialog.get_by_role("button", name="通过", exact=True)).to_have_attribute("aria-pressed", "true")
    await expect(tile(page, marked["id"]).locator(".tile-mark")).to_have_text("通过")
    await dialog.get_by_label("新标签").fill("精选")
    await dialog.get_by_role("button", name="加标签").click()
    await expect(tile(page, marked["id"]).locator(".tile-tags")).to_have_text("精选")
    async with hub.api("kai") as api:
        stored = (await by_name(api, project_id))["ComfyUI_00008_.png"]
    assert (stored["mark"], stored["tags"]) == ("pass", ["精选"])
    await page.keyboard.press("Escape")
    await expect(dialog).to_have_count(0)
    await thumbnails_loaded(page, 8)
    # A clean picture: no toast, no focus ring.
    await page.evaluate("document.getElementById('toasts').replaceChildren(); document.activeElement.blur()")
    await screenshot(page, "gallery.png")

    # Filters: 通过 shows only it; 未标注 the others; a tag; text in the prompt.
    filters = page.get_by_role("search", name="筛选产出")
    await filters.get_by_role("button", name="通过", exact=True).click()
    await expect(tiles(page)).to_have_count(1)
    await expect(tile(page, marked["id"])).to_have_count(1)
    await expect(page.locator(".gallery-total")).to_have_text("共 1 个")
    await filters.get_by_role("button", name="未标注").click()
    await expect(tiles(page)).to_have_count(8)
    await expect(tile(page, marked["id"])).to_have_count(0)
    await filters.get_by_role("button", name="全部", exact=True).click()
    await filters.get_by_label("搜索").fill("霓虹灯")
    await expect(tiles(page)).to_have_count(1)
    await expect(tile(page, items["ComfyUI_00003_.png"]["id"])).to_have_count(1)
    await filters.get_by_role("button", name="清除筛选").click()
    await filters.get_by_label("标签").fill("精选")
    await filters.get_by_label("标签").press("Enter")
    await expect(tiles(page)).to_have_count(1)
    await filters.get_by_role("button", name="清除筛选").click()
    # Dates are the browser's calendar days (Asia/Shanghai here), both ends included.
    today = datetime.now(ZoneInfo("Asia/Shanghai")).date()
    await filters.get_by_label("开始日期").fill(str(today + timedelta(days=1)))
    await expect(page.locator(".empty")).to_contain_text("没有符合筛选条件的产出")
    await filters.get_by_label("开始日期").fill(str(today - timedelta(days=1)))
    await filters.get_by_label("结束日期").fill(str(today))
    await expect(page.locator(".gallery-total")).to_have_text("共 9 个")
    await filters.get_by_label("结束日期").fill(str(today - timedelta(days=1)))
    await expect(page.locator(".empty")).to_contain_text("没有符合筛选条件的产出")
    await filters.get_by_role("button", name="清除筛选").click()
    await expect(tiles(page)).to_have_count(9)

    # New outputs appear without a reload: recorded by another client, or by 刷新 (which syncs).
    write_png(folder, "ComfyUI_00009_.png", 9, "新生成的图片：极光下的小木屋", 2024)
    async with hub.api("kai") as api:
        assert await sync(api, project_id) == 1
    await expect(tiles(page)).to_have_count(10)
    await expect(tiles(page).first.get_by_role("button")).to_have_accessible_name("查看 ComfyUI_00009_.png")
    write_png(folder, "ComfyUI_00010_.png", 10, "刷新按钮同步的图片", 2025)
    await page.get_by_role("button", name="刷新").click()
    await expect(tiles(page).first.get_by_role("button")).to_have_accessible_name("查看 ComfyUI_00010_.png")
    await expect(page.locator(".gallery-total")).to_have_text("共 11 个")

    # Back returns to the workbench.
    await page.go_back()
    await expect(page.get_by_role("heading", name="个人工作台")).to_be_visible()
    await expect(card(page, project_id)).to_be_visible()


# --- selection, delete to the trash, export -------------------------------------------------------


async def test_selection_delete_and_export(hub, browse, tmp_path):
    project_id, folder, items = await seed_project(hub, "lin", "人像数据", "GALLERY-2", 4)
    _context, page = await browse()
    await login(page, "lin")
    await page.goto(f"/#/projects/{project_id}/outputs")
    await expect(tiles(page)).to_have_count(5)
    names = [f"ComfyUI_{i:05d}_.png" for i in (4, 3, 2, 1)]  # newest first, as shown

    def check(name):
        return tile(page, items[name]["id"]).get_by_role("checkbox")

    # Click the first, shift-click the third: three selected; the middle one off again.
    await check(names[0]).click()
    await check(names[2]).click(modifiers=["Shift"])
    bar = page.get_by_role("region", name="所选产出")
    await expect(bar).to_contain_text("已选 3 项")
    await check(names[1]).click()
    await expect(bar).to_contain_text("已选 2 项")
    await bar.get_by_role("button", name="标为不通过").click()
    for name in (names[0], names[2]):
        await expect(tile(page, items[name]["id"]).locator(".tile-mark")).to_have_text("不通过")
    async with hub.api("lin") as api:
        marks = {name: item["mark"] for name, item in (await by_name(api, project_id)).items()}
    assert marks == {names[0]: "fail", names[1]: None, names[2]: "fail", names[3]: None, "clip_00001.mp4": None}

    # 导出所选: a ZIP of those two images and their metadata.jsonl.
    async with page.expect_download() as info:
        await bar.get_by_role("button", name="导出所选").click()
    archive = tmp_path / "selected.zip"
    await (await info.value).save_as(archive)
    with zipfile.ZipFile(archive) as z:
        assert sorted(z.namelist()) == sorted([names[0], names[2], "metadata.jsonl"])
        rows = [json.loads(line) for line in z.read("metadata.jsonl").decode().splitlines()]
    assert sorted(r["file_name"] for r in rows) == sorted([names[0], names[2]])
    assert {r["mark"] for r in rows} == {"fail"}
    await bar.get_by_role("button", name="取消选择").click()
    await expect(bar).to_be_hidden()

    # 导出数据集 follows the filter; nothing matching is said, not downloaded.
    filters = page.get_by_role("search", name="筛选产出")
    await filters.get_by_role("button", name="未标注").click()
    await expect(tiles(page)).to_have_count(3)
    async with page.expect_download() as info:
        await page.get_by_role("button", name="导出数据集").click()
    download = await info.value
    assert download.suggested_filename.endswith(".zip"), download.suggested_filename
    data = io.BytesIO((await download.path()).read_bytes())
    with zipfile.ZipFile(data) as z:
        assert sorted(z.namelist()) == sorted([names[1], names[3], "metadata.jsonl"])  # images only
    await filters.get_by_label("搜索").fill("没有这样的提示词")
    await expect(page.locator(".empty")).to_contain_text("没有符合筛选条件的产出")
    await page.get_by_role("button", name="导出数据集").click()
    await expect(page.locator(".toast-error")).to_contain_text("没有符合条件的文件可导出")
    await filters.get_by_role("button", name="清除筛选").click()
    await expect(tiles(page)).to_have_count(5)

    # 删除 from the detail: asked first, then the file leaves output/ for the trash.
    gone = names[1]
    await tile(page, items[gone]["id"]).get_by_role("button", name=f"查看 {gone}").click()
    dialog = page.get_by_role("dialog", name="产出详情")
    await expect(dialog.locator(".prompt-text").first).to_have_text(PROMPTS[2])
    await dialog.get_by_role("button", name="删除").click()
    confirm = page.get_by_role("dialog", name="删除产出")
    await expect(confirm).to_contain_text("回收站")
    await confirm.get_by_role("button", name="删除").click()
    await expect(page.locator(".toast-success").last).to_contain_text("回收站")
    await expect(tile(page, items[gone]["id"])).to_have_count(0)
    await expect(page.locator(".gallery-total")).to_have_text("共 4 个")
    await expect(dialog.locator(".prompt-text").first).to_have_text(PROMPTS[1])  # on to a neighbour
    assert not (folder / gone).exists()
    trashed = list((folder.parent / ".trash").rglob(f"*{gone}"))
    assert len(trashed) == 1, trashed
    await page.keyboard.press("Escape")

    # Several at once, from the selection bar.
    await check(names[0]).click()
    await check(names[3]).click()
    await bar.get_by_role("button", name="删除").click()
    await page.get_by_role("dialog", name="删除所选产出").get_by_role("button", name="删除").click()
    await expect(tiles(page)).to_have_count(2)
    assert not (folder / names[0]).exists() and not (folder / names[3]).exists()
    async with hub.api("lin") as api:
        assert (await outputs(api, project_id))["total"] == 2


# --- project deletion keeps outputs; an admin restores or exports them ----------------------------


async def test_deleted_project_keeps_outputs_and_an_admin_restores_it(hub, browse, tmp_path):
    project_id, _folder, _items = await seed_project(hub, "mei", "临时项目", "GALLERY-3", 2, video=False)
    _context, page = await browse()
    await login(page, "mei")
    await card(page, project_id).get_by_role("button", name="删除").click()
    confirm = page.get_by_role("dialog", name="删除项目")
    await expect(confirm).to_contain_text("产出文件和生成记录会保留")
    await confirm.get_by_role("button", name="删除").click()
    await expect(page.locator(".toast-success")).to_contain_text("它的 2 个产出文件和生成记录仍保留在服务器上")
    await expect(card(page, project_id)).to_have_count(0)

    _admin_context, admin = await browse()
    await login(admin, "admin", ADMIN_PASSWORD, start="/admin")
    row = admin.locator(f'#admin-deleted tr[data-project-id="{project_id}"]')
    await expect(row).to_contain_text("临时项目")
    await expect(row).to_contain_text("GALLERY-3")
    await expect(row.locator("td").nth(3)).to_have_text("2")
    async with admin.expect_download() as info:
        await row.get_by_role("button", name="导出 临时项目 的产出").click()
    archive = tmp_path / "deleted.zip"
    await (await info.value).save_as(archive)
    with zipfile.ZipFile(archive) as z:
        assert sorted(z.namelist()) == ["ComfyUI_00001_.png", "ComfyUI_00002_.png", "metadata.jsonl"]

    # The admin reads its outputs (read-only: nothing to mark), then restores it.
    await row.get_by_role("link", name="查看产出").click()
    await expect(admin.get_by_role("heading", name=f"产出 · 项目 #{project_id}")).to_be_visible()
    await expect(tiles(admin)).to_have_count(2)
    await tiles(admin).first.get_by_role("button").click()
    detail = admin.get_by_role("dialog", name="产出详情")
    await expect(detail.locator(".prompt-text").first).to_have_text(PROMPTS[1])
    await expect(detail.get_by_role("button", name="通过", exact=True)).to_have_count(0)
    await admin.keyboard.press("Escape")
    await admin.goto("/admin")
    await row.get_by_role("button", name="恢复 临时项目").click()
    await expect(row).to_have_count(0)
    await page.reload()
    await expect(card(page, project_id)).to_be_visible()


# --- pages of 100: 加载更多 (or scrolling), and new outputs on top of them ----------------------


async def test_more_pages_load_and_new_outputs_go_on_top(hub, browse):
    async with hub.api("kai") as api:
        project_id = await new_project(api, "大批量", "GALLERY-6")
        folder = output_dir(hub, await user_id(api), project_id)
        for i in range(105):
            write_png(folder, f"batch_{i:05d}.png", i, f"第 {i} 张", i, age=2000 - i, size=48)
        assert await sync(api, project_id) == 105
    _context, page = await browse()
    await login(page, "kai")
    await page.goto(f"/#/projects/{project_id}/outputs")
    await expect(page.locator(".gallery-total")).to_have_text("共 105 个 · 已加载 100 个")
    await expect(tiles(page)).to_have_count(100)
    await expect(tiles(page).last.get_by_role("button")).to_have_accessible_name("查看 batch_00005.png")
    await page.get_by_role("button", name="加载更多").scroll_into_view_if_needed()  # or a click: either loads
    await expect(tiles(page)).to_have_count(105)
    await expect(page.locator(".gallery-total")).to_have_text("共 105 个")
    await expect(page.get_by_role("button", name="加载更多")).to_be_hidden()

    # A new file while 105 are loaded: on top, once, and the older pages stay below it
    # (kept, not fetched again: the end of the list is out of view).
    await page.evaluate("window.scrollTo(0, 0)")
    write_png(folder, "batch_new.png", 1, "新的一张", 9999, size=48)
    async with hub.api("kai") as api:
        assert await sync(api, project_id) == 1
    await expect(page.locator(".gallery-total")).to_have_text("共 106 个")
    await expect(tiles(page)).to_have_count(106)
    names = await tiles(page).evaluate_all("ts => ts.map((t) => t.title)")
    assert names == ["batch_new.png"] + [f"batch_{i:05d}.png" for i in range(104, -1, -1)]


# --- phone width; what the view starts ends with it ---------------------------------------------


async def test_gallery_fits_a_phone(hub, browse):
    project_id, _folder, items = await seed_project(hub, "kai", "手机查看", "GALLERY-4", 3)
    _context, page = await browse(PHONE)
    await login(page, "kai", start="/")
    await page.goto(f"/#/projects/{project_id}/outputs")
    await expect(tiles(page)).to_have_count(4)
    await thumbnails_loaded(page, 3)
    assert await page.evaluate("document.scrollingElement.scrollWidth") <= PHONE["width"]
    await tile(page, items["ComfyUI_00001_.png"]["id"]).get_by_role("checkbox").click()
    await expect(page.get_by_role("region", name="所选产出")).to_be_visible()
    assert await page.evaluate("document.scrollingElement.scrollWidth") <= PHONE["width"]
    await tiles(page).first.get_by_role("button").click()
    dialog = page.get_by_role("dialog", name="产出详情")
    await expect(dialog.locator(".graph-json")).to_contain_text("KSampler")
    assert await dialog.evaluate("d => d.scrollWidth <= d.clientWidth")
    assert await page.evaluate("document.scrollingElement.scrollWidth") <= PHONE["width"]


async def test_the_gallery_view_leaves_no_timers_or_listeners(hub, browse):
    project_id, _folder, _items = await seed_project(hub, "mei", "探针", "GALLERY-5", 2)
    _context, page = await browse(LAPTOP, probe=True)
    await login(page, "mei")
    me = await page.evaluate("fetch('/api/auth/me').then((r) => r.json()).then((j) => j.data.id)")
    before = await mount_view(page, "gallery", "renderGallery", f"{{ id: {me}, is_admin: false }}", project_id)
    await expect(tiles(page)).to_have_count(3)
    await page.wait_for_event("request", lambda r: "/outputs?" in r.url)  # it polls
    await page.get_by_role("search", name="筛选产出").get_by_label("搜索").fill("猫")  # a typing pause timer
    await expect(tiles(page)).to_have_count(1)
    await tiles(page).first.get_by_role("button").click()  # the detail listens for ← →
    await expect(page.get_by_role("dialog", name="产出详情")).to_be_visible()

    await page.evaluate("window.__dispose()")  # the view ends: its dialog closes with it
    await expect(page.get_by_role("dialog")).to_have_count(0)
    await page.wait_for_function("window.__probe.state().timers.length === 0")
    assert (await page.evaluate("window.__probe.state()"))["listeners"] == before
