"""访问令牌 in a real Chromium: create one, see it once, copy it, use it from a script,
revoke it on the page, and see the script refused."""

from __future__ import annotations

import re

import httpx
import pytest
from playwright.async_api import expect

from tests.conftest import add_user
from tests.support.net import wait_for
from tests.web.browser import PASSWORD, login

pytestmark = pytest.mark.asyncio(loop_scope="package")

USER = "token-user"  # only this test uses it: its token list starts empty


async def test_create_copy_use_and_revoke_a_token_on_the_page(hub, browse):
    await add_user(hub.settings, USER, PASSWORD)
    context, page = await browse()
    await context.grant_permissions(["clipboard-read", "clipboard-write"], origin=hub.url)
    await login(page, USER)

    await page.get_by_role("button", name="访问令牌").click()
    dialog = page.get_by_role("dialog", name="访问令牌")
    await expect(dialog.get_by_text("还没有访问令牌。")).to_be_visible()
    name, days = dialog.get_by_label("名称"), dialog.get_by_label("有效期（天）")
    await expect(name).to_be_focused()
    await expect(days).to_have_value("30")

    # The API's reason is shown at its field; nothing is created.
    await name.fill("网页令牌")
    await days.fill("0")
    await dialog.get_by_role("button", name="创建令牌").click()
    await expect(days).to_have_attribute("aria-invalid", "true")
    await expect(days).to_have_accessible_description(re.compile("^不能小于 1"))
    await expect(dialog.locator("#new-token")).to_be_hidden()

    # Created: shown once, with a warning, and listed by its prefix only.
    await days.fill("7")
    await dialog.get_by_role("button", name="创建令牌").click()
    shown = dialog.locator("#new-token")
    await expect(shown).to_have_text(re.compile(r"^chp_[A-Za-z0-9]{40}$"))
    token = await shown.text_content()
    await expect(dialog.get_by_role("status")).to_contain_text("不会再显示")
    rows = dialog.locator("#token-table tbody tr")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_contain_text("网页令牌")
    await expect(rows.first).to_contain_text(f"{token[:10]}…")
    await expect(rows.first).to_contain_text("从未使用")
    assert token not in await dialog.locator("#token-table").inner_text()

    copy = dialog.get_by_role("button", name="复制")
    await copy.click()
    await expect(dialog.get_by_role("button", name="已复制")).to_be_visible()
    assert await page.evaluate("navigator.clipboard.readText()") == token
    # Where the Clipboard API is refused (plain http on another host), a selected textarea
    # inside the dialog is copied instead.
    await page.evaluate("""async () => {
        await navigator.clipboard.writeText("");
        navigator.clipboard.writeText = () => Promise.reject(new DOMException("denied", "NotAllowedError"));
    }""")
    await copy.click()

    async def copied():
        return await page.evaluate("navigator.clipboard.readText()") == token

    await wait_for(copied, what="the token in the clipboard")

    # A script uses it: the API and the proxy's rules alike.
    async with httpx.AsyncClient(base_url=hub.url, timeout=30, trust_env=False) as script:
        auth = {"Authorization": f"Bearer {token}"}
        me = await script.get("/api/auth/me", headers=auth)
        assert me.status_code == 200 and me.json()["data"]["username"] == USER

        # Closed and opened again: the token is gone from the page for good; the list
        # shows that it was used.
        await page.keyboard.press("Escape")
        await expect(dialog).to_have_count(0)
        await page.get_by_role("button", name="访问令牌").click()
        await expect(rows).to_have_count(1)
        await expect(rows.first).not_to_contain_text("从未使用")
        await expect(dialog.locator("#new-token")).to_be_hidden()
        assert token not in await page.content()

        # 撤销 asks first; 取消 keeps it.
        await rows.first.get_by_role("button", name="撤销 网页令牌").click()
        confirm = page.get_by_role("dialog", name="撤销访问令牌")
        await expect(confirm).to_contain_text("网页令牌")
        await confirm.get_by_role("button", name="取消").click()
        await expect(confirm).to_have_count(0)
        assert (await script.get("/api/auth/me", headers=auth)).status_code == 200

        await rows.first.get_by_role("button", name="撤销 网页令牌").click()
        await confirm.get_by_role("button", name="撤销").click()
        await expect(dialog.get_by_text("还没有访问令牌。")).to_be_visible()
        await expect(rows).to_have_count(0)
        refused = await script.get("/api/auth/me", headers=auth)
        assert refused.status_code == 401 and refused.json()["msg"] == "未登录或登录已过期"
