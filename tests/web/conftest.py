"""One live comfyhub and one Chromium for every browser test in this package."""

from __future__ import annotations

import asyncio

import pytest_asyncio
from playwright.async_api import async_playwright, expect

from comfyhub.config import load_settings
from tests.conftest import add_user
from tests.support.server import LiveServer
from tests.web.browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    LAPTOP,
    PASSWORD,
    PROBE,
    USERS,
    Errors,
    Hub,
    hub_env,
    kill_instances,
)

expect.set_options(timeout=15_000)


@pytest_asyncio.fixture(scope="package", loop_scope="package")
async def hub(tmp_path_factory):
    work = tmp_path_factory.mktemp("webhub")
    server = LiveServer(work, env=hub_env(work))
    settings = load_settings(
        _env_file=None,
        comfyhub_database_url=f"sqlite+aiosqlite:///{work}/runtime/comfyhub.db",
        comfyui_instance_base_dir=work / "runtime" / "comfy_instances",
    )
    async with async_playwright() as playwright:
        # The server, Chromium and the users' password hashes are slow: overlap them.
        launching = asyncio.ensure_future(playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS))
        try:
            await asyncio.to_thread(server.start)
            await asyncio.gather(
                *(asyncio.to_thread(asyncio.run, add_user(settings, name, PASSWORD)) for name in USERS)
            )
            browser = await launching
        except BaseException:
            server.stop()
            kill_instances(work)
            raise
        try:
            yield Hub(server, settings, browser)
        finally:
            await browser.close()
            server.stop()
            kill_instances(work)


@pytest_asyncio.fixture(loop_scope="package")
async def browse(hub):
    """browse(viewport, probe=False) → (context, page): a fresh browser profile, its console
    watched; with `probe`, every page of it counts its timers and listeners (browser.PROBE)."""
    contexts, errors = [], Errors()

    async def open_page(viewport=LAPTOP, probe=False):
        context = await hub.browser.new_context(
            base_url=hub.url, viewport=viewport, locale="zh-CN", timezone_id="Asia/Shanghai"
        )
        contexts.append(context)
        if probe:
            await context.add_init_script(PROBE)
        page = errors.watch(await context.new_page())
        return context, page

    yield open_page
    for context in contexts:
        await context.close()
    assert not errors, "errors in the browser console:\n" + "\n".join(errors)
