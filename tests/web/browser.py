"""Helpers for the browser tests: the live hub, logging in, finding cards, and a probe
that counts what a page leaves running (timers, listeners on document and window)."""

from __future__ import annotations

import os
import re
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from playwright.async_api import Browser, Page, expect

from tests.conftest import ROOT
from tests.support.comfy import kill_instances  # noqa: F401 — the web tests end their hub with it
from tests.support.hub import fake_comfyui_env
from tests.support.server import LiveServer

# Read at import: the session fixture in conftest clears COMFYHUB_* before tests run.
SCREENSHOTS = os.environ.get("COMFYHUB_SCREENSHOTS") == "1"
IMG_DIR = ROOT / "docs" / "img"
PASSWORD = "password-123"
ADMIN_PASSWORD = "admin-password-1"
USERS = ("alice", "bob", "dana", "erin", "fay", "gus", "hana", "ivy", "jun", "kai", "lin", "mei", "quinn", "rosa")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LAPTOP = {"width": 1200, "height": 750}
PHONE = {"width": 375, "height": 800}
LIST_REFRESH_SECONDS = 1
MAX_PER_USER = 2
# The API answers errors with an HTTP status; Chromium logs each one as "Failed to load
# resource". Those are expected under /api/ (the page shows their msg); anywhere else
# (a missing script, stylesheet or icon) they are real errors.
NETWORK_ERROR = re.compile(r"^Failed to load resource: the server responded with a status of \d+")

# Installed before any page script (context.add_init_script): wraps the timer functions,
# fetch and add/removeEventListener so a test can ask what is still scheduled or listened
# to. window.__probe.state() → {timers: [kind...], listeners: {"document:type": n}}.
# window.__probe.setVisibility("hidden" | "visible") plays the tab being hidden or shown
# (Chromium keeps a headless page visible; the page reads document.visibilityState).
PROBE = """
(() => {
  const live = new Map();
  const fetches = [];
  const [st, si, ct, ci, fetch0] = [setTimeout, setInterval, clearTimeout, clearInterval, fetch];
  window.setTimeout = function (fn, ms, ...args) {
    const id = st.call(window, (...a) => { live.delete(id); if (typeof fn === "function") fn(...a); }, ms, ...args);
    live.set(id, "timeout");
    return id;
  };
  window.setInterval = function (fn, ms, ...args) {
    const id = si.call(window, fn, ms, ...args);
    live.set(id, "interval");
    return id;
  };
  window.clearTimeout = function (id) { live.delete(id); return ct.call(window, id); };
  window.clearInterval = function (id) { live.delete(id); return ci.call(window, id); };
  window.fetch = function (input, init) {
    fetches.push(new URL(typeof input === "string" ? input : input.url, location.href).pathname);
    return fetch0.call(window, input, init);
  };
  const proto = EventTarget.prototype;
  const [add, remove] = [proto.addEventListener, proto.removeEventListener];
  const entries = new Set();
  const keyOf = (target, type) =>
    target === document ? `document:${type}` : target === window ? `window:${type}` : null;
  const captureOf = (opts) => (typeof opts === "boolean" ? opts : Boolean(opts && opts.capture));
  const find = (key, fn, capture) => [...entries].find((e) => e.key === key && e.fn === fn && e.capture === capture);
  proto.addEventListener = function (type, fn, opts) {
    const key = keyOf(this, type);
    const signal = opts && typeof opts === "object" ? opts.signal : null;
    if (key && fn && !find(key, fn, captureOf(opts)) && !(signal && signal.aborted)) {
      const entry = { key, fn, capture: captureOf(opts) };
      entries.add(entry);
      if (signal) add.call(signal, "abort", () => entries.delete(entry), { once: true });
    }
    return add.call(this, type, fn, opts);
  };
  proto.removeEventListener = function (type, fn, opts) {
    const key = keyOf(this, type);
    const entry = key && find(key, fn, captureOf(opts));
    if (entry) entries.delete(entry);
    return remove.call(this, type, fn, opts);
  };
  window.__probe = {
    fetches,
    state() {
      const listeners = {};
      for (const e of entries) listeners[e.key] = (listeners[e.key] || 0) + 1;
      return { timers: [...live.values()], listeners };
    },
    setVisibility(state) {
      Object.defineProperty(document, "visibilityState", { configurable: true, get: () => state });
      Object.defineProperty(document, "hidden", { configurable: true, get: () => state === "hidden" });
      document.dispatchEvent(new Event("visibilitychange"));
    },
  };
})();
"""


class Hub:
    """A live comfyhub (fake ComfyUI, 1 s heartbeat and list refresh) and a Chromium."""

    def __init__(self, server: LiveServer, settings, browser: Browser):
        self.server, self.settings, self.browser = server, settings, browser
        self.url = server.url
        self.comfy = server.comfy  # the instance origin: where ComfyUI is served
        self._tokens: dict[str, str] = {}

    @asynccontextmanager
    async def api(self, user: str, password: str = PASSWORD):
        """An API client acting as `user` (bearer token: no Origin needed; one login per user)."""
        async with httpx.AsyncClient(base_url=self.url, timeout=30, trust_env=False) as client:
            if user not in self._tokens:
                r = await client.post("/api/auth/login", json={"username": user, "password": password})
                assert r.status_code == 200, r.text
                self._tokens[user] = r.json()["data"]["token"]
                client.cookies.clear()
            client.headers["Authorization"] = f"Bearer {self._tokens[user]}"
            yield client


def hub_env(work: Path) -> dict[str, str]:
    """Like the `hub` fixture of tests/proxy/test_gateway.py, with a fast heartbeat and refresh."""
    return {
        **fake_comfyui_env(work, 10),
        "COMFYUI_HEARTBEAT_INTERVAL_SECONDS": "1",
        "COMFYUI_STARTUP_TIMEOUT_SECONDS": "20",
        "COMFYHUB_LIST_REFRESH_SECONDS": str(LIST_REFRESH_SECONDS),
        "COMFYHUB_ADMIN_PASSWORD": ADMIN_PASSWORD,  # the first admin is "admin"
        # Pinned, whatever the defaults: no test opens more than MAX_PER_USER instances at
        # once but the one that meets the limit; nothing is culled while a test looks.
        "COMFYUI_MAX_INSTANCES_PER_USER": str(MAX_PER_USER),
        "COMFYUI_MAX_INSTANCES": "0",
        "COMFYUI_IDLE_TIMEOUT_SECONDS": "0",
    }


class Errors(list):
    def watch(self, page: Page) -> Page:
        def on_console(msg):
            if msg.type != "error":
                return
            where = (msg.location or {}).get("url", "")
            if NETWORK_ERROR.match(msg.text) and urlsplit(where).path.startswith("/api/"):
                return
            self.append(f"console: {msg.text} ({where})")

        page.on("console", on_console)
        page.on("pageerror", lambda exc: self.append(f"pageerror: {exc}"))
        return page


async def login(page: Page, user: str, password: str = PASSWORD, start: str = "/") -> None:
    await page.goto(start)
    await page.get_by_label("用户名").fill(user)
    await page.get_by_label("密码").fill(password)
    await page.get_by_role("button", name="登录").click()
    await expect(page.get_by_role("button", name="退出")).to_be_visible()


def card(page: Page, project_id: int):
    return page.locator(f'article.card[data-project-id="{project_id}"]')


def badge(page: Page, project_id: int):
    return card(page, project_id).locator(".badge")


async def new_project(client: httpx.AsyncClient, name: str, code: str, note: str = "") -> int:
    r = await client.post("/api/projects", json={"name": name, "code": code, "note": note})
    assert r.status_code == 201, r.text
    return r.json()["data"]["id"]


async def service(client: httpx.AsyncClient, project_id: int) -> dict | None:
    return (await client.get(f"/api/projects/{project_id}")).json()["data"]["service"]


async def screenshot(page: Page, name: str) -> None:
    if SCREENSHOTS:
        IMG_DIR.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(IMG_DIR / name))


async def mount_view(page: Page, module: str, render: str, me: str, project_id: int | None = None) -> dict:
    """Render one view into a bare page of the hub's origin, keeping its dispose function in
    `window.__dispose`. Returns the listeners the bare page had before (Playwright's own among
    them), once no timer is pending. Needs the probe (`browse(probe=True)`)."""
    await page.route(
        "**/bare",
        lambda route: route.fulfill(
            content_type="text/html", body='<!doctype html><meta charset="utf-8"><body><div id="toasts"></div>'
        ),
    )
    await page.goto("/bare")
    await page.wait_for_function("window.__probe.state().timers.length === 0")
    before = (await page.evaluate("window.__probe.state()"))["listeners"]
    project = f", projectId: {project_id}" if project_id is not None else ""
    await page.evaluate(f"""async () => {{
        const view = await import("/static/js/{module}.js");
        const main = document.createElement("main");
        document.body.append(main);
        window.__dispose = view.{render}(main, {{ me: {me}, meta: {{ list_refresh_seconds: 1 }}{project} }});
    }}""")
    return before
