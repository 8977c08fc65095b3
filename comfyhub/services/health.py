"""Is an instance healthy, and is it *ours*? One GET /system_stats answers both.

A port squatter can answer /system_stats too (measured with the real ComfyUI: while our child loses a
bind race, the other process answers 200). Two things tell them apart: `system.argv`
must carry our --port and --base-directory, and, for an instance started with a secret
(comfyhub/net/endpoint.py), the answer's X-Comfyhub-Instance header must be the SHA-256
of that secret and X-Comfyhub-Binding the expected binding (empty unless the instance
was bound to a project). An impostor that copied our argv cannot know the secret.
Records started before instances had secrets are still accepted by argv alone, so an
upgrade adopts the instances that run.

The checks ride on the proxy's small HTTP client (keep-alive connections per
instance, httptools parsing): a generic client adds milliseconds per check, and one
shared pool for hundreds of instances made a heartbeat sweep CPU-bound (measured:
healthy instances timed out behind the pool's own bookkeeping).
"""

from __future__ import annotations

import asyncio
import json

from comfyhub.launchers.base import argv_value
from comfyhub.net.endpoint import BINDING_HEADER, INSTANCE_HEADER, Endpoint, identity_of
from comfyhub.net.http1 import UpstreamError, UpstreamPool

_MAX_BODY = 4 << 20


class HealthChecker:
    def __init__(self, timeout: float):
        self.timeout = timeout
        self._pool = UpstreamPool(connect_timeout=timeout)

    async def is_ours(self, target: Endpoint, base_dir: str, timeout: float | None = None) -> bool:
        """True when the instance answers 200 within the timeout and is ours: our argv and,
        when `target` has a secret, its identity headers (bound to `target.binding`)."""
        answer = await self._answer(target, "/system_stats", timeout)
        if answer is None:
            return False
        headers, stats = answer
        if target.secret and not identity_is_ours(headers, target.secret, target.binding):
            return False
        if not isinstance(stats, dict):
            return False
        system = stats.get("system")
        return isinstance(system, dict) and argv_is_ours(system.get("argv"), target.port, base_dir)

    async def get_json(self, target: Endpoint, path: str, timeout: float | None = None):
        """The JSON of a 200 answer, or None (refused, timed out, not 200, not JSON)."""
        answer = await self._answer(target, path, timeout)
        return answer[1] if answer is not None else None

    async def _answer(self, target: Endpoint, path: str, timeout: float | None):
        """(headers, JSON) of a 200 answer, or None."""
        if not target.port:
            return None
        try:
            # A timeout scope, not wait_for: wait_for wraps the call in a task of its own,
            # one more task per check on the heartbeat's hot path.
            async with asyncio.timeout(timeout or self.timeout):
                return await self._get(target, path)
        except (TimeoutError, UpstreamError, OSError, ValueError):
            return None

    async def _get(self, target: Endpoint, path: str):
        conn = await self._pool.acquire(target.host, target.port)
        ok = False
        try:
            await conn.write(
                f"GET {path} HTTP/1.1\r\nhost: {target.authority}\r\naccept: application/json\r\n"
                f"{target.header_lines()}\r\n".encode()
            )
            conn.request_sent = True
            status, headers = await conn.response_head(self.timeout)
            body = bytearray()
            async for chunk in conn.body_chunks():
                body += chunk
                if len(body) > _MAX_BODY:
                    raise ValueError("health answer too large")
            ok = True
            return (headers, json.loads(body)) if status == 200 else None
        finally:
            if ok:
                self._pool.release(conn)
            else:
                conn.close()  # cancelled or broken mid-answer: never reuse it

    async def aclose(self) -> None:
        self._pool.close()


def argv_is_ours(argv, port: int, base_dir: str) -> bool:
    if not isinstance(argv, list):
        return False
    return argv_value(argv, "--port") == str(port) and argv_value(argv, "--base-directory") == str(base_dir)


def identity_is_ours(headers: list[tuple[bytes, bytes]], secret: str, binding: int | None = None) -> bool:
    """The answer's X-Comfyhub-Instance is sha256(secret) and X-Comfyhub-Binding is `binding`
    ("" when None: a cold-started instance runs in its project folder and is not bound)."""
    found: dict[str, str] = {}
    for name, value in headers:
        key = name.decode("latin-1").lower()
        if key in (INSTANCE_HEADER, BINDING_HEADER):
            found[key] = value.decode("latin-1").strip()
    expected_binding = "" if binding is None else str(binding)
    return found.get(INSTANCE_HEADER) == identity_of(secret) and found.get(BINDING_HEADER) == expected_binding
