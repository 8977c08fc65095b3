"""Why the gateway does not pass a request on, and how it tells whom.

A browser navigating to /comfy/{id}/ is shown a small Chinese page (pages.py) with a way
back to the workbench. A script — one that authenticates with a bearer token, or that
does not accept HTML (curl's `*/*`, a fetch() for JSON) — gets the API's envelope
`{"code", "msg", "data"}` instead, with the API's own messages (comfyhub.messages), so
it reads the refusal like any other API error. The HTTP status is the same either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass

from comfyhub import messages
from comfyhub.models import ServiceStatus
from comfyhub.proxy.pages import PAGES, error_page

log = logging.getLogger("comfyhub.proxy")

_GONE_TIMEOUT = 1.0  # how long a refused WebSocket waits for the server to drop it


@dataclass(frozen=True)
class Refusal:
    status: int
    msg: str  # the API's word for it: the envelope's msg, and the log line
    title: str  # the page's heading
    text: str  # the page's explanation
    data: dict | None = None
    refresh: bool = False  # the page reloads itself (an instance that is starting)


NOT_LOGGED_IN = Refusal(401, messages.NOT_LOGGED_IN, "未登录", "请先登录 comfyhub，再打开 ComfyUI。")
NO_SUCH_PROJECT = Refusal(404, messages.PROJECT_NOT_FOUND, "项目不存在", "该项目不存在或已被删除。")
BAD_PROJECT_ID = Refusal(404, messages.PROJECT_NOT_FOUND, "页面不存在", "地址中的项目编号无效。")
NOT_OWNER = Refusal(403, messages.FORBIDDEN, "无操作权限", "只有项目的所有者可以访问它的 ComfyUI。")
CROSS_SITE = Refusal(403, messages.CROSS_SITE, "跨站请求被拒绝", "请求来源与本站不一致。")
# The instance origin serves ComfyUI alone: comfyhub's API and pages are not there.
NOT_HERE = Refusal(404, "页面不存在", "页面不存在", "此地址只提供 ComfyUI。请从个人工作台打开项目。")
ENTRY_USED = Refusal(
    403, "链接已失效", "链接已失效", "此链接已使用、已过期或不属于该项目。请回到个人工作台，再次点击“数据生成”。"
)


def elsewhere(url: str) -> Refusal:
    """On the main origin, what only the instance origin serves (a WebSocket, a write, a script's token)."""
    return Refusal(
        404,
        f"ComfyUI 在独立地址提供：{url}",
        "ComfyUI 在独立地址",
        f"ComfyUI 在独立地址提供：{url}。请从个人工作台点击“数据生成”打开。",
        {"url": url},
    )


def not_running(status: str | None) -> Refusal:
    """The instance is not online: 503 while it may come (starting, offline), else 404."""
    code = 503 if status in (ServiceStatus.STARTING, ServiceStatus.OFFLINE) else 404
    title, text, refresh = PAGES.get(status, PAGES[None])
    return Refusal(code, title, title, text, {"status": status}, refresh)


def unreachable(status: int = 502) -> Refusal:
    """Online by the record, but the instance did not answer (or refused the WebSocket)."""
    title, text, _ = PAGES["unreachable"]
    return Refusal(status, title, title, text)


def wants_json(headers: dict[bytes, bytes]) -> bool:
    """A script rather than a browser: a bearer token, or no text/html in Accept."""
    scheme = headers.get(b"authorization", b"").partition(b" ")[0]
    return scheme.lower() == b"bearer" or b"text/html" not in headers.get(b"accept", b"").lower()


def render(refusal: Refusal, as_json: bool) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The response headers and body that say `refusal`: the JSON envelope or a page."""
    if as_json:
        envelope = {"code": refusal.status, "msg": refusal.msg, "data": refusal.data}
        body = json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode()
        return [(b"content-type", b"application/json"), (b"cache-control", b"no-store")], body
    body = error_page(refusal.title, refusal.text, refusal.refresh)
    return [(b"content-type", b"text/html; charset=utf-8"), (b"cache-control", b"no-store")], body


async def respond(send, status: int, headers: list, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def refuse(scope, receive, send, refusal: Refusal, project_id: int | None, headers: dict[bytes, bytes]) -> None:
    """Say `refusal` to an HTTP request or a WebSocket handshake."""
    if scope["type"] == "http":
        return await refuse_http(send, refusal, headers)
    return await _refuse_websocket(scope, receive, send, refusal, project_id, headers)


async def refuse_http(send, refusal: Refusal, headers: dict[bytes, bytes]) -> None:
    response_headers, body = render(refusal, wants_json(headers))
    await respond(send, refusal.status, response_headers, body)


async def _refuse_websocket(
    scope, receive, send, refusal: Refusal, project_id: int | None, headers: dict[bytes, bytes]
) -> None:
    # One line that names the project and why: a refusal is not an error of the hub.
    log.info("refused WebSocket to project %s: %d %s", project_id or "?", refusal.status, refusal.msg)
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008})  # the server answers 403
        return
    # The real status (401, 403, 404, 503…) and body, where the server allows a response.
    response_headers, body = render(refusal, wants_json(headers))
    await send({"type": "websocket.http.response.start", "status": refusal.status, "headers": response_headers})
    await send({"type": "websocket.http.response.body", "body": body})
    await _until_dropped(receive)


async def _until_dropped(receive) -> None:
    """Return once the server has dropped a refused WebSocket connection.

    uvicorn's websockets-sansio protocol (the default with `websockets` installed) counts
    a handshake as complete only once the connection is lost, and an app that returns
    before that is logged at ERROR ("ASGI callable returned without completing
    handshake") although the refusal went out fine. It reports the refusal as a
    `websocket.disconnect`, and the lost connection as a second one. Bounded: another
    server may report nothing more, and then this returns after _GONE_TIMEOUT.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_GONE_TIMEOUT):
            while (await receive())["type"] != "websocket.disconnect":
                pass  # the `websocket.connect` that opened it
            await receive()
