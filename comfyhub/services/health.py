"""Is an instance healthy, and is it *ours*? One GET /system_stats answers both.

A port squatter can answer /system_stats too (DESIGN.md §3: while our child loses a
bind race, the other process answers 200). `system.argv` tells them apart: it must
carry our --port and --base-directory.
"""

from __future__ import annotations

import httpx

from comfyhub.launchers.base import argv_value


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class HealthChecker:
    def __init__(self, timeout: float):
        self.timeout = timeout
        # trust_env=False: an HTTP(S)_PROXY in the environment must not divert loopback checks.
        self._client = httpx.AsyncClient(
            trust_env=False,
            timeout=timeout,
            limits=httpx.Limits(max_connections=500, max_keepalive_connections=200),
        )

    async def is_ours(self, host: str, port: int, base_dir: str, timeout: float | None = None) -> bool:
        """True when the instance answers 200 within the timeout and its argv is ours."""
        try:
            r = await self._client.get(
                f"http://{_host_for_url(host)}:{port}/system_stats", timeout=timeout or self.timeout
            )
            if r.status_code != 200:
                return False
            argv = r.json().get("system", {}).get("argv", [])
        except (httpx.HTTPError, ValueError, AttributeError):
            return False
        return argv_is_ours(argv, port, base_dir)

    async def get_json(self, host: str, port: int, path: str) -> dict | None:
        try:
            r = await self._client.get(f"http://{_host_for_url(host)}:{port}{path}")
            return r.json() if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    async def aclose(self) -> None:
        await self._client.aclose()


def argv_is_ours(argv: list, port: int, base_dir: str) -> bool:
    if not isinstance(argv, list):
        return False
    return argv_value(argv, "--port") == str(port) and argv_value(argv, "--base-directory") == str(base_dir)
