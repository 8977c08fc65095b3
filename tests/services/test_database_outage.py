"""The heartbeat survives a database that goes away for a while (PostgreSQL)."""

import logging

from tests.conftest import _pg_exec
from tests.support.app import running_app
from tests.support.comfy import new_project, service
from tests.support.net import wait_for


async def test_heartbeat_loop_survives_database_outage(pg_url, pg_admin_url, tmp_path, caplog):
    caplog.set_level(logging.ERROR, logger="comfyhub.manager")
    db_name = pg_url.rsplit("/", 1)[1]
    async with running_app(pg_url, tmp_path, comfyui_heartbeat_interval_seconds=0.3) as c:
        app, h = c.app, c.headers_of["alice"]
        pid = await new_project(c, h)
        assert (await c.post(f"/api/projects/{pid}/open_comfy", headers=h)).json()["data"]["status"] == "online"
        before = (await service(c, h, pid))["last_heartbeat"]

        await _pg_exec(pg_admin_url, f"ALTER DATABASE {db_name} ALLOW_CONNECTIONS false")
        await _pg_exec(
            pg_admin_url, f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db_name}'"
        )

        def failures():
            return sum("heartbeat sweep failed" in r.getMessage() for r in caplog.records)

        await wait_for(lambda: failures() >= 2, timeout=15, what="sweeps to fail during the outage")
        during = await c.get("/api/projects", headers=h)
        assert during.status_code == 503 and during.json()["msg"] == "数据库暂时不可用，请稍后再试"
        await _pg_exec(pg_admin_url, f"ALTER DATABASE {db_name} ALLOW_CONNECTIONS true")

        loop_task = app.state.manager._loop_task
        assert not loop_task.done()  # the loop lived through the errors

        async def heartbeat_resumed():
            svc = await service(c, h, pid)
            return svc["last_heartbeat"] != before and svc

        svc = await wait_for(heartbeat_resumed, timeout=15, interval=0.2, what="heartbeats after the outage")
        assert svc["status"] == "online" and svc["last_error"] == ""
