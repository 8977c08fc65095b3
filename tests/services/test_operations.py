"""Running a shared box: idle culling, limits, queued starts, automatic restarts, GPUs,
metrics and the audit trail, with real fake-ComfyUI processes."""

import asyncio
import os
import signal
import subprocess
import sys
from contextlib import asynccontextmanager
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import update

from comfyhub.models import ComfyUIService, utcnow
from comfyhub.services.instances import instance_dir
from tests.support import launcher
from tests.support.app import running_app
from tests.support.comfy import as_comfyhub, new_project, pid_alive, service, set_knobs, system_argv, user_id
from tests.support.net import wait_for


@asynccontextmanager
async def hub(db_url, tmp_path, **overrides):
    async with running_app(db_url, tmp_path, users=("alice", "bob"), admins=("root",), **overrides) as c:
        c.alice, c.bob, c.root = (c.headers_of[n] for n in ("alice", "bob", "root"))
        yield c


async def open_comfy(c, headers, pid):
    return await c.post(f"/api/projects/{pid}/open_comfy", headers=headers)


async def age_activity(c, pid, seconds):
    async with c.manager.sessions() as db:
        await db.execute(
            update(ComfyUIService)
            .where(ComfyUIService.project_id == pid)
            .values(last_activity=utcnow() - timedelta(seconds=seconds))
        )
        await db.commit()


async def test_idle_instance_is_culled_busy_one_is_not(db_url, tmp_path):
    async with hub(db_url, tmp_path, comfyui_idle_timeout_seconds=60) as c:
        idle, busy = await new_project(c, c.alice, "IDLE"), await new_project(c, c.alice, "BUSY")
        set_knobs(c.settings, await user_id(c, c.alice), busy, job_seconds=30)
        for p in (idle, busy):
            assert (await open_comfy(c, c.alice, p)).json()["data"]["status"] == "online"
        port = (await service(c, c.alice, busy))["port"]
        job = httpx.post(
            f"http://{launcher.instance_host()}:{port}/prompt",
            json={"prompt": {}, "client_id": "x"},
            trust_env=False,
            headers=as_comfyhub(port),
        )
        assert job.status_code == 200  # a job now runs for 30 s
        idle_pid = (await service(c, c.alice, idle))["pid"]
        base = instance_dir(c.settings, await user_id(c, c.alice), idle)
        (base / "output" / "result.png").write_bytes(b"png")
        for p in (idle, busy):
            await age_activity(c, p, 3600)

        await c.manager.heartbeat_once()
        culled = await service(c, c.alice, idle)
        assert culled["status"] == "stopped" and culled["stopped_reason"] == "空闲超时"
        assert culled["reason"] == "idle"
        assert not pid_alive(idle_pid)
        assert (base / "output" / "result.png").read_bytes() == b"png"
        kept = await service(c, c.alice, busy)
        assert kept["status"] == "online"  # running a job: never culled
        assert kept["last_activity"] > culled["last_activity"]  # the job counted as activity

        assert (await open_comfy(c, c.alice, idle)).json()["data"]["status"] == "online"  # 数据生成 again
        events = (await c.get("/api/admin/events", headers=c.root)).json()["data"]
        assert any(e["action"] == "cull" and e["project_id"] == idle for e in events)


async def test_limits_answer_429_and_start_nothing(db_url, tmp_path):
    async with hub(db_url, tmp_path, comfyui_max_instances=2, comfyui_max_instances_per_user=1) as c:
        a1, a2 = await new_project(c, c.alice, "A1"), await new_project(c, c.alice, "A2")
        b1, b2 = await new_project(c, c.bob, "B1"), await new_project(c, c.bob, "B2")
        assert (await open_comfy(c, c.alice, a1)).status_code == 200
        r = await open_comfy(c, c.alice, a2)
        assert r.status_code == 429 and "COMFYUI_MAX_INSTANCES_PER_USER=1" in r.json()["msg"]
        assert await service(c, c.alice, a2) is None
        assert (await open_comfy(c, c.bob, b1)).status_code == 200
        await c.manager.stop(b1)  # a stopped instance does not count
        assert (await open_comfy(c, c.bob, b1)).status_code == 200
        # two live instances now: the global limit
        await c.manager.stop(a1)
        assert (await open_comfy(c, c.alice, a2)).status_code == 200
        r = await open_comfy(c, c.bob, b2)
        assert r.status_code in (429,)
        assert "COMFYUI_MAX_INSTANCES" in r.json()["msg"]
        assert await service(c, c.bob, b2) is None
        assert (await open_comfy(c, c.alice, a2)).status_code == 200  # reuse is never limited


@pytest.mark.local_only  # with Ray, Ray's scheduler queues starts (tests/launchers/test_ray.py)
async def test_starts_beyond_the_cap_wait_their_turn(db_url, tmp_path):
    async with hub(db_url, tmp_path, comfyui_max_concurrent_starts=1) as c:
        first, second = await new_project(c, c.alice, "Q1"), await new_project(c, c.alice, "Q2")
        uid = await user_id(c, c.alice)
        set_knobs(c.settings, uid, first, start_delay=1.5)
        opening = [asyncio.create_task(open_comfy(c, c.alice, first))]

        async def started():
            s = await service(c, c.alice, first)
            return s and s["pid"]

        await wait_for(started, what="first start under way")
        opening.append(asyncio.create_task(open_comfy(c, c.alice, second)))

        async def queued():
            s = await service(c, c.alice, second)
            return s and s["status"] == "starting" and s["status_detail"] == "排队中" and s["pid"] is None

        await wait_for(queued, what="second start queued")
        replies = await asyncio.gather(*opening)
        assert [r.json()["data"]["status"] for r in replies] == ["online", "online"]


async def test_auto_restart_with_backoff_then_gives_up(db_url, tmp_path):
    async with hub(
        db_url,
        tmp_path,
        comfyui_auto_restart=True,
        comfyui_restart_backoff_seconds=0.2,
        comfyui_restart_max_failures=2,
        comfyui_restart_window_seconds=600,
    ) as c:
        p = await new_project(c, c.alice, "AUTO")
        await open_comfy(c, c.alice, p)
        first = (await service(c, c.alice, p))["pid"]
        os.kill(first, signal.SIGKILL)
        await wait_for(lambda: not pid_alive(first), what="death")

        async def sweep_until(predicate, what):
            async def step():
                await c.manager.heartbeat_once()
                await asyncio.gather(*(f.task for f in list(c.manager.starts.flights.values())), return_exceptions=True)
                return await predicate()

            return await wait_for(step, timeout=20, interval=0.1, what=what)

        async def restarted():
            s = await service(c, c.alice, p)
            return s["status"] == "online" and s["pid"] not in (None, first) and s

        again = await sweep_until(restarted, "automatic restart")
        # From now on every start fails: the restarts back off and then give up.
        set_knobs(c.settings, await user_id(c, c.alice), p, exit_code=1)
        os.kill(again["pid"], signal.SIGKILL)
        await wait_for(lambda: not pid_alive(again["pid"]), what="second death")

        async def gave_up():
            s = await service(c, c.alice, p)
            return s["status"] == "failed" and "已放弃" in s["last_error"] and s

        final = await sweep_until(gave_up, "give-up after the limit")
        assert "自动重启 2 次" in final["last_error"]
        events = (await c.get("/api/admin/events", headers=c.root)).json()["data"]
        assert sum(e["actor"] == "自动重启" for e in events) >= 2
        metrics = (await c.get("/metrics")).text
        assert "comfyhub_auto_restarts_total 2.0" in metrics


async def test_user_stop_is_not_restarted(db_url, tmp_path):
    async with hub(db_url, tmp_path, comfyui_auto_restart=True, comfyui_restart_backoff_seconds=0.1) as c:
        p = await new_project(c, c.alice, "STOP")
        await open_comfy(c, c.alice, p)
        await c.post(f"/api/projects/{p}/stop_comfy", headers=c.alice)
        for _ in range(3):
            await c.manager.heartbeat_once()
        assert (await service(c, c.alice, p))["status"] == "stopped"
        assert c.manager.starts.flights == {}


@pytest.mark.local_only  # with Ray, Ray assigns GPUs (tests/launchers/test_ray.py)
async def test_gpu_list_spreads_instances_and_sets_cuda_visible_devices(db_url, tmp_path):
    async with hub(db_url, tmp_path, comfyui_gpus="0,1") as c:
        ids = [await new_project(c, c.alice, f"G{i}") for i in range(3)]
        gpus = []
        for p in ids:
            await open_comfy(c, c.alice, p)
            svc = await service(c, c.alice, p)
            stats = httpx.get(
                f"http://127.0.0.1:{svc['port']}/system_stats", trust_env=False, headers=as_comfyhub(svc["port"])
            ).json()
            assert [d["name"] for d in stats["devices"]] == [f"fake-cuda:{svc['gpu']}"]
            assert "--cpu" not in stats["system"]["argv"]
            gpus.append(svc["gpu"])
        assert gpus == ["0", "1", "0"]


@pytest.mark.local_only  # with Ray: COMFYUI_GPUS_PER_INSTANCE=0 (tests/launchers/test_ray.py)
async def test_without_gpu_comfyui_gets_cpu_flag(db_url, tmp_path):
    async with hub(db_url, tmp_path, comfyui_gpus="auto") as c:  # no NVML on this machine
        p = await new_project(c, c.alice, "CPU")
        await open_comfy(c, c.alice, p)
        svc = await service(c, c.alice, p)
        assert svc["gpu"] == "" and "--cpu" in system_argv(svc["port"])


async def test_metrics_move_with_starts_and_failures(db_url, tmp_path):
    async with hub(db_url, tmp_path) as c:

        def value(text, name):
            for line in text.splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[-1])
            return 0.0

        before = (await c.get("/metrics")).text
        assert value(before, 'comfyhub_instances{status="online"}') == 0
        ok, bad = await new_project(c, c.alice, "M1"), await new_project(c, c.alice, "M2")
        set_knobs(c.settings, await user_id(c, c.alice), bad, exit_code=4)
        await open_comfy(c, c.alice, ok)
        await open_comfy(c, c.alice, bad)
        await c.get(f"http://testserver:{c.settings.instance_port}/comfy/{ok}/api/system_stats", headers=c.alice)
        after = (await c.get("/metrics")).text
        assert value(after, 'comfyhub_instances{status="online"}') == 1
        assert value(after, 'comfyhub_instances{status="failed"}') == 1
        assert value(after, "comfyhub_start_duration_seconds_count") == 1
        assert value(after, 'comfyhub_start_failures_total{reason="exited"}') == 1
        assert value(after, 'comfyhub_proxy_bytes_total{direction="out"}') > 0


def _cli(db_url, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "comfyhub.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COMFYHUB_DATABASE_URL": db_url},
        timeout=60,
    )


async def test_events_show_who_did_what(db_url, tmp_path):
    async with hub(db_url, tmp_path) as c:
        p = await new_project(c, c.alice, "EV")
        await open_comfy(c, c.alice, p)
        await c.post(f"/api/admin/services/{p}/stop", headers=c.root)
        events = (await c.get("/api/admin/events", headers=c.root)).json()["data"]
        assert [(e["action"], e["actor"], e["outcome"]) for e in events[:2]] == [
            ("stop", "root", "stopped"),
            ("start", "alice", "online"),
        ]
        assert (await c.get("/api/admin/events", headers=c.alice)).status_code == 403
        out = _cli(db_url, "services", "events")
        assert out.returncode == 0 and "alice" in out.stdout and "root" in out.stdout
        listed = _cli(db_url, "services", "list")
        assert "EV" in listed.stdout and "stopped" in listed.stdout


async def test_cli_stops_a_running_instance(db_url, tmp_path):
    async with hub(db_url, tmp_path) as c:
        p = await new_project(c, c.alice, "CLI")
        await open_comfy(c, c.alice, p)
        pid = (await service(c, c.alice, p))["pid"]
        out = await asyncio.to_thread(_cli, db_url, "services", "stop", str(p))
        assert out.returncode == 0, out.stderr
        assert not pid_alive(pid)
        assert (await service(c, c.alice, p))["status"] == "stopped"
