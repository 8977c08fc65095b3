"""Reading ComfyUI's JSON answers for the sync: bounded, with a deadline, parsed off the loop.

A history page can hold megabytes of graphs; parsing it on the event loop would stall
every user's requests, so the JSON is decoded in a worker thread.
"""

from __future__ import annotations

import asyncio
import json

from comfyhub.net.endpoint import Endpoint
from comfyhub.net.http1 import UpstreamError, UpstreamPool

MAX_BODY = 64 << 20


class InstanceUnreachable(Exception):
    """The instance did not answer in time, or answered something that is not JSON."""


class ComfyClient:
    def __init__(self, timeout: float):
        self.timeout = timeout
        self._pool = UpstreamPool(connect_timeout=timeout)

    async def get_json(self, target: Endpoint, path: str):
        """The decoded JSON of a 200 answer. Raises InstanceUnreachable."""
        try:
            status, body = await asyncio.wait_for(self._request(target, "GET", path, None), self.timeout)
        except (TimeoutError, UpstreamError, OSError) as exc:
            raise InstanceUnreachable(str(exc) or type(exc).__name__) from None
        if status != 200:
            raise InstanceUnreachable(f"HTTP {status}")
        try:
            return await asyncio.to_thread(json.loads, body)
        except ValueError:
            raise InstanceUnreachable("not JSON") from None

    async def post_json(self, target: Endpoint, path: str, body) -> tuple[int, object]:
        """POST a JSON body; returns (status, decoded answer or None). Raises InstanceUnreachable."""
        data = json.dumps(body).encode()
        try:
            status, answer = await asyncio.wait_for(self._request(target, "POST", path, data), self.timeout)
        except (TimeoutError, UpstreamError, OSError) as exc:
            raise InstanceUnreachable(str(exc) or type(exc).__name__) from None
        try:
            return status, json.loads(answer) if answer else None
        except ValueError:
            return status, None

    async def _request(self, target: Endpoint, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        conn = await self._pool.acquire(target.host, target.port)
        ok = False
        try:
            head = f"{method} {path} HTTP/1.1\r\nhost: {target.authority}\r\naccept: application/json\r\n"
            head += target.header_lines()
            if body is not None:
                head += f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
            await conn.write(head.encode() + b"\r\n" + (body or b""))
            conn.request_sent = True
            status, _headers = await conn.response_head(self.timeout)
            parts, size = [], 0
            async for chunk in conn.body_chunks():
                parts.append(chunk)
                size += len(chunk)
                if size > MAX_BODY:
                    raise UpstreamError("answer too large")
            ok = True
            return status, b"".join(parts)
        finally:
            if ok:
                self._pool.release(conn)
            else:
                conn.close()

    def drop(self, host: str, port: int) -> None:
        self._pool.drop(host, port)

    def close(self) -> None:
        self._pool.close()
