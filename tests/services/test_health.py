"""Is it ours? The identity an instance's answer carries, against a stand-in server."""

from __future__ import annotations

import json

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from comfyhub.net.endpoint import Endpoint, identity_of
from comfyhub.services.health import HealthChecker

SECRET = "the-secret"
BASE = "/srv/instances/u1/p2"


async def stand_in(identity: str | None, binding: str | None, seen: list) -> TestServer:
    """Answers /system_stats with our argv (for its own port) and the given headers."""

    async def system_stats(request):
        seen.append(request.headers.get("X-Comfyhub-Secret"))
        port = request.url.port
        headers = {}
        if identity is not None:
            headers["X-Comfyhub-Instance"] = identity
        if binding is not None:
            headers["X-Comfyhub-Binding"] = binding
        argv = ["main.py", "--port", str(port), "--base-directory", BASE]
        return web.Response(text=json.dumps({"system": {"argv": argv}}), headers=headers)

    app = web.Application()
    app.router.add_get("/system_stats", system_stats)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


@pytest.mark.parametrize(
    ("identity", "binding", "expected", "ours"),
    [
        (identity_of(SECRET), "", None, True),
        (None, None, None, False),  # copied our argv, knows nothing else
        ("0" * 64, "", None, False),
        (identity_of("another start's secret"), "", None, False),
        (identity_of(SECRET), "9", None, False),  # bound to a project: not a cold start
        (identity_of(SECRET), "9", 9, True),
        (identity_of(SECRET), "", 9, False),
        (identity_of(SECRET), None, None, False),
    ],
)
async def test_an_instance_with_a_secret_must_prove_it(identity, binding, expected, ours):
    seen: list = []
    server = await stand_in(identity, binding, seen)
    health = HealthChecker(timeout=2.0)
    try:
        assert await health.is_ours(Endpoint("127.0.0.1", server.port, SECRET, expected), BASE) is ours
        assert seen == [SECRET]  # the probe itself carries the secret
    finally:
        await health.aclose()
        await server.close()


async def test_a_record_without_a_secret_is_still_judged_by_its_argv():
    """Instances started before secrets existed are adopted on upgrade."""
    seen: list = []
    server = await stand_in(None, None, seen)
    health = HealthChecker(timeout=2.0)
    try:
        assert await health.is_ours(Endpoint("127.0.0.1", server.port), BASE)
        assert not await health.is_ours(Endpoint("127.0.0.1", server.port), "/elsewhere")
        assert seen == [None, None]
    finally:
        await health.aclose()
        await server.close()
