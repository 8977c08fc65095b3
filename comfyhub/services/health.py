"""Is an instance healthy, and is it *ours*? One GET /system_stats answers both.

A port squatter can answer /system_stats too (measured with the real ComfyUI: while our child loses a
bind race, the other process answers 200). `system.argv` tells them apart: it must
carry our --port and --base-directory.

The checks ride on the proxy's small HTTP client (keep-alive connections per
instance, httptools parsing): a generic client adds milliseconds per check, and one
shared pool for hundreds of instances made a heartbeat sweep CPU-bound (measured:
healthy instances timed out behind the pool's own bookkeeping).
"""

from __future__ import annotations

import asyncio
import json

from comfyhub.launchers.base import argv_value
from comfyhub.net.http1 import UpstreamError, UpstreamPool

_MAX_BODY = 4 << 20


class HealthChecker:
    def __init__(self, timeout: float):
        self.timeout = timeout
        self._pool = UpstreamPool(connect_timeout=timeout)

    async def is_ours(self, host: str, port: int, base_dir: str, timeout: float | None = None) -> bool:
        """True when the instance answers 200 within the timeout and its argv is ours."""
        stats = await self.get_json(host, port, "/system_stats", timeout)
        if not isinstance(stats, dict):
            return False
        system = stats.get("system")
        return isinstance(system, dict) and argv_is_ours(system.get("argv"), port, base_dir)

    async def get_json(self, host: str, port: int | None, path: str, timeout: float | None = None):
        """The JSON of a 200 answer, or None (refused, timed out, not 200, not JSON)."""
        if not port:
            return None
        try:
            # A timeout scope, not wait_for: wait_for wraps the call in a task of its own,
            # one more task per check on the heartbeat's hot path.
            async with asyncio.timeout(timeout or self.timeout):
                return await self._get(host, port, path)
        except (TimeoutError, UpstreamError, OSError, ValueError):
            return None

    async def _get(self, host: str, port: int, path: str):
        conn = await self._pool.acquire(host, port)
        ok = False
        try:
            authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            await conn.write(f"GET {path} HTTP/1.1\r\nhost: {authority}\r\naccept: application/json\r\n\r\n".encode())
            conn.request_sent = True
            status, _headers = await conn.response_head(self.timeout)
            body = bytearray()
            async for chunk in conn.body_chunks():
                body += chunk
                if len(body) > _MAX_BODY:
                    raise ValueError("health answer too large")
            ok = True
            return json.loads(body) if status == 200 else None
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
