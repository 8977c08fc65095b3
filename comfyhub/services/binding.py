"""Binding a pre-started ComfyUI to a project: comfyhub's side of POST /comfyhub/bind.

A warm instance runs with a folder of its own; binding points its output, input, temp
and user folders (ComfyUI's folder_paths) at a project's, once: the extension answers
409 to a second bind and changes nothing (comfyhub/comfyui_extension). After a bind the
instance answers with ``X-Comfyhub-Binding: <project id>``, which the health probe then
expects: put the project id in the record's launcher_state as ``"binding"``
(`Handle.binding`, read back by `Handle.from_state` and `net/endpoint.binding_of`), and
every probe built from the record (`Handle.endpoint`) asks for it.
"""

from __future__ import annotations

import asyncio
import json

from comfyhub.net.endpoint import Endpoint
from comfyhub.net.http1 import UpstreamError, UpstreamPool

BIND_PATH = "/comfyhub/bind"
_MAX_ANSWER = 1 << 20


class BindError(Exception):
    """The instance did not take the binding. `status` is its HTTP status (0: no answer)."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


class AlreadyBound(BindError):
    """409: the instance is bound already (to this project or another); nothing changed."""


async def bind(target: Endpoint, project_id: int, user_id: int, dirs: dict[str, str], timeout: float = 10.0) -> dict:
    """Bind the instance at `target` to the project; returns the binding it reports.

    `dirs` are absolute paths (services/instances.project_dirs gives a project's). Raises
    AlreadyBound on 409, BindError on any other refusal or when the instance does not answer.
    """
    body = json.dumps({"project_id": project_id, "user_id": user_id, "dirs": dirs}).encode()
    pool = UpstreamPool(connect_timeout=timeout)
    try:
        async with asyncio.timeout(timeout):
            status, answer = await _post(pool, target, body, timeout)
    except (TimeoutError, UpstreamError, OSError) as exc:
        raise BindError(f"实例未响应绑定请求：{exc or type(exc).__name__}") from None
    finally:
        pool.close()
    try:
        data = json.loads(answer) if answer else {}
    except ValueError:
        data = {}
    if status == 200 and isinstance(data, dict) and isinstance(data.get("binding"), dict):
        return data["binding"]
    if status == 409:
        raise AlreadyBound(f"实例已绑定到其他项目：{data.get('binding') if isinstance(data, dict) else ''}", status)
    detail = data.get("error", "") if isinstance(data, dict) else ""
    raise BindError(f"实例拒绝绑定（HTTP {status}）{detail}", status)


async def _post(pool: UpstreamPool, target: Endpoint, body: bytes, timeout: float) -> tuple[int, bytes]:
    conn = await pool.acquire(target.host, target.port)
    try:
        head = (
            f"POST {BIND_PATH} HTTP/1.1\r\nhost: {target.authority}\r\naccept: application/json\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n{target.header_lines()}\r\n"
        )
        await conn.write(head.encode() + body)
        conn.request_sent = True
        status, _headers = await conn.response_head(timeout)
        answer = bytearray()
        async for chunk in conn.body_chunks():
            answer += chunk
            if len(answer) > _MAX_ANSWER:
                raise UpstreamError("answer too large")
        return status, bytes(answer)
    finally:
        conn.close()
