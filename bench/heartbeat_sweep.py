"""Heartbeat sweep: 100 online instances, 10 of them hung; one sweep must cost about
one health timeout, not ten.

Runs the app in-process (create_app + its lifespan, API calls through
httpx.ASGITransport) on SQLite in a temp dir, so that `manager.heartbeat_once()` can
be timed directly. Steps:

1. open 100 projects' instances through `POST /api/projects/{id}/open_comfy`, 8 at a
   time (fake ComfyUI, ~40 MB each);
2. time one sweep with all 100 healthy (informative);
3. SIGSTOP 10 of the instances: a stopped process still accepts TCP connections (the
   kernel completes the handshake) but never answers — a hung ComfyUI;
4. baseline, measured in the same run: one `GET /system_stats` to one hung instance
   with the health timeout (what a single hung check costs);
5. time sweeps (the first must mark exactly those 10 `offline` and the other 90
   `online`), three times.

Ratio = sweep time / COMFYUI_HEALTH_TIMEOUT_SECONDS (2.5 s). Target:
≤ 1.2×. At the end every instance is continued (SIGCONT) and stopped, and any process
left under the temp dir is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import sys
import time

import httpx
import psutil

from _common import (
    FAKE_COMFYUI,
    PYTHON,
    Workspace,
    clean_environment,
    finish,
    fmt,
    free_port_range,
    machine,
    parse_args,
    processes_under,
    summary,
    verdict,
)
from comfyhub.auth import hash_password_sync
from comfyhub.config import load_settings
from comfyhub.db import create_engine, migrate, session_factory
from comfyhub.models import User

TARGET_RATIO = 1.2
HEALTH_TIMEOUT = 2.5
OPEN_CONCURRENCY = 8
SWEEPS_WITH_HUNG = 3
SEED = 7


async def _add_user(url: str, name: str, password: str) -> None:
    engine = create_engine(url)
    try:
        async with session_factory(engine)() as db:
            db.add(User(username=name, password_hash=hash_password_sync(password), is_admin=False))
            await db.commit()
    finally:
        await engine.dispose()


async def run_async(ws: Workspace, instances: int, hung: int) -> dict:
    from comfyhub.app import create_app

    low, high = free_port_range(instances + 20)
    url = f"sqlite+aiosqlite:///{ws.root / 'comfyhub.db'}"
    await _add_user(url, "bench", "bench-password-123")
    settings = load_settings(
        _env_file=None,
        comfyhub_database_url=url,
        comfyhub_secret_key="bench-secret-key-not-for-production",
        comfyui_repo_path=FAKE_COMFYUI,
        comfyui_python=PYTHON,
        comfyui_port_range=f"{low}-{high}",
        comfyui_instance_base_dir=ws.instances,
        comfyui_log_dir=ws.logs,
        comfyui_custom_nodes_dir=ws.shared / "custom_nodes",
        comfyui_models_dir=ws.shared / "models",
        comfyui_heartbeat_interval_seconds=3600,  # no background sweep: we call it ourselves
        comfyui_health_timeout_seconds=HEALTH_TIMEOUT,
        comfyui_startup_timeout_seconds=120,
        comfyui_stop_instances_on_exit=True,
        comfyui_max_instances_per_user=0,  # one user, many instances
        comfyui_idle_timeout_seconds=0,
    )
    out: dict = {}
    stopped_pids: list[int] = []
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        manager = app.state.manager
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=300) as api:
                r = await api.post("/api/auth/login", json={"username": "bench", "password": "bench-password-123"})
                assert r.status_code == 200, r.text
                api.cookies.clear()
                api.headers["Authorization"] = f"Bearer {r.json()['data']['token']}"

                projects = []
                for i in range(instances):
                    r = await api.post("/api/projects", json={"name": f"HB-{i}", "code": f"HB-{i}"})
                    assert r.status_code == 201, r.text
                    projects.append(r.json()["data"]["id"])

                gate = asyncio.Semaphore(OPEN_CONCURRENCY)

                async def open_one(pid: int) -> None:
                    async with gate:
                        r = await api.post(f"/api/projects/{pid}/open_comfy")
                        assert r.status_code == 200, r.text

                t0 = time.perf_counter()
                await asyncio.gather(*(open_one(p) for p in projects))
                out["open_all_s"] = round(time.perf_counter() - t0, 2)

                services = {}
                for p in projects:
                    s = (await api.get(f"/api/projects/{p}")).json()["data"]["service"]
                    assert s["status"] == "online", s
                    services[p] = s
                rss = 0
                for s in services.values():
                    with contextlib.suppress(psutil.Error):
                        rss += psutil.Process(s["pid"]).memory_info().rss
                out["fake_rss_mib_each"] = round(rss / len(services) / 2**20, 1)

                # (2) all healthy
                healthy = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    counts = await manager.heartbeat_once()
                    healthy.append(time.perf_counter() - t0)
                    assert counts == {"online": instances, "offline": 0}, counts
                out["sweep_all_healthy"] = summary(healthy)

                # (3) hang 10
                chosen = sorted(random.Random(SEED).sample(projects, hung))
                for p in chosen:
                    os.kill(services[p]["pid"], signal.SIGSTOP)
                    stopped_pids.append(services[p]["pid"])

                # (4) baseline: one hung check on its own
                one = services[chosen[0]]
                async with httpx.AsyncClient(trust_env=False, timeout=HEALTH_TIMEOUT) as probe:
                    t0 = time.perf_counter()
                    with contextlib.suppress(httpx.TimeoutException):
                        await probe.get(f"http://127.0.0.1:{one['port']}/system_stats")
                    out["single_hung_check_s"] = round(time.perf_counter() - t0, 4)

                # (5) sweeps with 10 hung
                sweeps, first_counts = [], None
                for k in range(SWEEPS_WITH_HUNG):
                    t0 = time.perf_counter()
                    counts = await manager.heartbeat_once()
                    sweeps.append(time.perf_counter() - t0)
                    if k == 0:
                        first_counts = counts
                        after = {
                            p: (await api.get(f"/api/projects/{p}")).json()["data"]["service"]["status"]
                            for p in projects
                        }
                        offline = sorted(p for p, st in after.items() if st == "offline")
                        online = sum(1 for st in after.values() if st == "online")
                out["sweep_with_hung"] = summary(sweeps)
                out["first_sweep_counts"] = first_counts
                out["offline_projects_match"] = offline == chosen
                out["healthy_marked_offline"] = len(set(offline) - set(chosen))
                out["hung_not_marked_offline"] = len(set(chosen) - set(offline))
                out["online_after_first_sweep"] = online
        finally:
            for pid in stopped_pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        # leaving the lifespan stops every instance (comfyui_stop_instances_on_exit)
    out["left_after_shutdown"] = len(processes_under(ws.instances))
    return out


def run(instances: int, hung: int) -> dict:
    result: dict = {
        "benchmark": "heartbeat_sweep",
        "machine": machine(),
        "instances": instances,
        "hung": hung,
        "health_timeout_s": HEALTH_TIMEOUT,
    }
    with Workspace("heartbeat") as ws:
        migrate(f"sqlite+aiosqlite:///{ws.root / 'comfyhub.db'}")  # runs its own event loop
        out = asyncio.run(run_async(ws, instances, hung))
    result.update(out)
    sweep_median_s = out["sweep_with_hung"]["median_ms"] / 1000
    ratio = sweep_median_s / HEALTH_TIMEOUT
    ok = (
        out["offline_projects_match"]
        and out["first_sweep_counts"] == {"online": instances - hung, "offline": hung}
        and out["online_after_first_sweep"] == instances - hung
        and out["left_after_shutdown"] == 0
    )
    result.update(
        ratio=round(ratio, 3),
        ratio_vs_single_hung_check=round(sweep_median_s / out["single_hung_check_s"], 3),
        target_ratio=TARGET_RATIO,
        met=ratio <= TARGET_RATIO,
        checks_ok=ok,
        leftover_processes=ws.leftovers,
    )
    return result


def main() -> int:
    clean_environment()
    logging.getLogger("comfyhub").setLevel(logging.ERROR)  # the sweep logs each hung instance; expected here
    args = parse_args(
        __doc__.splitlines()[0],
        instances=(int, 100, "instances online"),
        hung=(int, 10, "instances made to hang (SIGSTOP)"),
    )
    res = run(args.instances, args.hung)
    print(f"heartbeat sweep ({res['instances']} instances online, {res['hung']} hung by SIGSTOP, in-process app)")
    print(
        f"  opening all ({OPEN_CONCURRENCY} at a time): {res['open_all_s']} s; fake RSS ~{res['fake_rss_mib_each']} MiB each"
    )
    print(f"  sweep, all healthy:       {fmt(res['sweep_all_healthy'])}")
    print(
        f"  one hung check alone:     {res['single_hung_check_s'] * 1000:.1f} ms (baseline, health timeout {HEALTH_TIMEOUT} s)"
    )
    print(f"  sweep, {res['hung']} hung:           {fmt(res['sweep_with_hung'])}")
    print(
        f"  first sweep: {res['first_sweep_counts']}, offline = exactly the hung ones: {res['offline_projects_match']} "
        f"(healthy marked offline: {res['healthy_marked_offline']}, hung left online: {res['hung_not_marked_offline']})"
    )
    print(
        f"  sweep / health timeout:   {res['ratio']:.3f}x  (target <= {TARGET_RATIO}x: {verdict(res['met'])}); "
        f"vs one hung check measured: {res['ratio_vs_single_hung_check']:.3f}x"
    )
    print(f"  processes left after shutdown: {res['left_after_shutdown']}")
    return finish(res, args.json)


if __name__ == "__main__":
    sys.exit(main())
