"""The Ray launcher on a real local Ray cluster: a head and two nodes with one fake GPU each.

Through the whole app (manager, heartbeat, proxy), on PostgreSQL, as a cluster
deployment would run it.
"""

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

from comfyhub.launchers.ray import NAMESPACE, actor_name
from comfyhub.launchers.ray_actor import ComfyUIActor
from comfyhub.launchers.ray_check import unreachable
from tests.conftest import login
from tests.support.app import running_app
from tests.support.comfy import new_project, pid_alive, service, user_id
from tests.support.net import free_port, wait_for, wait_for_sync

ray = pytest.importorskip("ray")
from tests.support.ray_cluster import comfyhub_actors, free_gpus, total_gpus  # noqa: E402

pytestmark = pytest.mark.usefixtures("ray_cluster")


def ray_hub(pg_url, tmp_path, users=("alice", "bob"), **overrides):
    overrides.setdefault("comfyui_launcher", "ray")
    overrides.setdefault("ray_address", ray.get_runtime_context().gcs_address)
    overrides.setdefault("comfyui_gpus_per_instance", 1)
    return running_app(pg_url, tmp_path, users=users, **overrides)


async def open_comfy(c, headers, pid):
    return await c.post(f"/api/projects/{pid}/open_comfy", headers=headers)


async def record_of(c, pid):
    return await c.manager.get(pid)


async def open_one(c):
    """alice opens a new project; (her headers, the project id, its record once online)."""
    alice = c.headers_of["alice"]
    p = await new_project(c, alice)
    assert (await open_comfy(c, alice, p)).json()["data"]["status"] == "online"
    return alice, p, await record_of(c, p)


def node_of(record) -> str:
    return record.launcher_state["extra"]["node_id"]


async def test_instances_are_placed_on_gpu_nodes_and_reached_at_node_address(pg_url, tmp_path):
    async with ray_hub(pg_url, tmp_path) as c:
        alice = c.headers_of["alice"]
        a, b = await new_project(c, alice, "A"), await new_project(c, alice, "B")
        opened = await asyncio.gather(open_comfy(c, alice, a), open_comfy(c, alice, b))
        assert [r.json()["data"]["status"] for r in opened] == ["online", "online"], [r.text for r in opened]
        ra, rb = await record_of(c, a), await record_of(c, b)
        # one GPU per node: the two instances are on different nodes, each with its GPU
        assert node_of(ra) != node_of(rb)
        assert free_gpus() == 0
        # Ray's CUDA_VISIBLE_DEVICES as the actor saw it, and the node: what the workbench shows
        assert ra.gpu == rb.gpu == f"0 @ {ra.host}"
        assert psutil.Process(ra.pid).environ()["CUDA_VISIBLE_DEVICES"] == "0"
        # ComfyUI listens on the node's address (not loopback), with the local launcher's arguments
        assert ra.host == ray.util.get_node_ip_address() and not ra.host.startswith("127.")
        argv = psutil.Process(ra.pid).cmdline()
        assert argv[argv.index("--listen") + 1] == ra.host and "--cpu" not in argv
        uid = await user_id(c, alice)
        assert actor_name(f"u{uid}-p{a}") in comfyhub_actors()
        # health checks and the proxy go to node_ip:port
        assert (await c.manager.heartbeat_once())["online"] == 2
        comfy = f"http://testserver:{c.settings.instance_port}/comfy/{a}"  # the instance origin
        assert (await c.get(f"{comfy}/system_stats")).status_code == 401  # still owner-only
        r = await c.get(f"{comfy}/system_stats", headers=alice)
        assert r.status_code == 200, r.text
        assert r.json()["system"]["argv"][r.json()["system"]["argv"].index("--port") + 1] == str(ra.port)


async def test_zero_gpus_per_instance_runs_on_the_cpu(pg_url, tmp_path):
    async with ray_hub(pg_url, tmp_path, comfyui_gpus_per_instance=0) as c:
        _alice, _p, record = await open_one(c)
        assert "--cpu" in psutil.Process(record.pid).cmdline() and record.gpu == ""
        assert free_gpus() == total_gpus()


async def test_third_instance_waits_for_a_gpu_until_one_stops(pg_url, tmp_path):
    async with ray_hub(pg_url, tmp_path) as c:
        alice = c.headers_of["alice"]
        a, b, third = [await new_project(c, alice, code) for code in ("A", "B", "C")]
        for p in (a, b):
            assert (await open_comfy(c, alice, p)).json()["data"]["status"] == "online"
        freed_node = node_of(await record_of(c, a))
        waiting = asyncio.create_task(open_comfy(c, alice, third))
        queued = await wait_for(lambda: _queued(c, third), timeout=20, what="third instance queued")
        assert queued.status == "starting" and queued.status_detail == "排队中（等待空闲 GPU）"
        assert not waiting.done()
        # the workbench shows why it waits
        assert (await service(c, alice, third))["status_detail"] == "排队中（等待空闲 GPU）"

        stopped = await c.post(f"/api/projects/{a}/stop_comfy", headers=alice)
        assert stopped.status_code == 200
        r = await asyncio.wait_for(waiting, 60)
        assert r.json()["data"]["status"] == "online", r.text
        assert node_of(await record_of(c, third)) == freed_node  # it got the GPU that stop freed


async def _queued(c, pid):
    record = await record_of(c, pid)
    return record if record is not None and record.status_detail.startswith("排队中") else None


async def test_waiting_for_a_gpu_gives_up_at_the_startup_timeout(pg_url, tmp_path):
    # Another user of the cluster holds both GPUs.
    blockers = [ray.remote(num_gpus=1, num_cpus=0)(_Idle).remote() for _ in range(2)]
    await asyncio.to_thread(ray.get, [b.ping.remote() for b in blockers])
    try:
        async with ray_hub(pg_url, tmp_path, comfyui_startup_timeout_seconds=3) as c:
            alice = c.headers_of["alice"]
            p = await new_project(c, alice)
            r = await open_comfy(c, alice, p)
            data = r.json()["data"]
            assert data["status"] == "failed", r.text
            assert data["last_error"] == "启动超时（3 秒内仍在排队中（等待空闲 GPU））"
            # nothing is left waiting in the cluster for it
            await wait_for(lambda: not comfyhub_actors(), timeout=10, what="pending actor removed")
    finally:
        for b in blockers:
            ray.kill(b)


async def test_more_gpus_than_any_node_has_fails_at_once(pg_url, tmp_path):
    async with ray_hub(pg_url, tmp_path, comfyui_gpus_per_instance=2) as c:
        alice = c.headers_of["alice"]
        p = await new_project(c, alice)
        data = (await open_comfy(c, alice, p)).json()["data"]
        assert data["status"] == "failed"
        assert "COMFYUI_GPUS_PER_INSTANCE=2" in data["last_error"] and "最多 1 个" in data["last_error"]
        await wait_for(lambda: not comfyhub_actors(), timeout=10, what="actor removed")
        assert free_gpus() == total_gpus()


async def test_stop_kills_the_actor_frees_the_gpu_and_keeps_files(pg_url, tmp_path):
    async with ray_hub(pg_url, tmp_path) as c:
        alice, p, record = await open_one(c)
        (tmp_path / "instances" / f"u{record.user_id}" / f"p{p}" / "output" / "keep.png").write_bytes(b"x")
        assert free_gpus() == total_gpus() - 1
        r = await c.post(f"/api/projects/{p}/stop_comfy", headers=alice)
        assert r.json()["data"]["status"] == "stopped"
        assert not pid_alive(record.pid)
        assert "Stopped server" in open(record.log_path).read()  # SIGINT first: a clean stop
        await wait_for(lambda: free_gpus() == total_gpus(), timeout=20, what="GPU freed")
        assert not comfyhub_actors()
        assert (tmp_path / "instances" / f"u{record.user_id}" / f"p{p}" / "output" / "keep.png").exists()


async def test_stale_handle_never_stops_the_newer_actor_of_the_same_name(pg_url, tmp_path):
    """Invariant 2 on Ray: a stop reaches only the actor it was started as, even though the
    project's next actor carries the same name."""
    async with ray_hub(pg_url, tmp_path) as c:
        alice, p, first = await open_one(c)
        stale = c.manager.launcher.restore(first.launcher_state)
        await c.post(f"/api/projects/{p}/stop_comfy", headers=alice)
        assert (await open_comfy(c, alice, p)).json()["data"]["status"] == "online"
        second = await record_of(c, p)
        assert second.launcher_state["extra"]["actor"] == first.launcher_state["extra"]["actor"]
        assert second.launcher_state["extra"]["actor_id"] != first.launcher_state["extra"]["actor_id"]

        await c.manager.launcher.stop(stale, 1.0)
        assert pid_alive(second.pid)
        assert (await c.manager.heartbeat_once())["online"] == 1
        assert c.manager.launcher.poll(stale) is not None  # the old one is known to be gone


async def test_node_death_marks_offline_in_one_heartbeat_and_next_open_moves(pg_url, tmp_path, ray_cluster):
    async with ray_hub(pg_url, tmp_path) as c:
        alice, p, record = await open_one(c)
        node = next(n for n in ray_cluster.worker_nodes if n.node_id == node_of(record))
        try:
            ray_cluster.remove_node(node)
            # the ComfyUI process dies with its actor (parent-death signal), not only the actor
            await wait_for(lambda: not pid_alive(record.pid), timeout=20, what="ComfyUI gone with its node")
            await c.manager.heartbeat_once()
            dead = await record_of(c, p)
            assert dead.status == "offline" and dead.last_error
            r = await open_comfy(c, alice, p)
            assert r.json()["data"]["status"] == "online", r.text
            assert node_of(await record_of(c, p)) != node.node_id
        finally:
            ray_cluster.add_node(num_cpus=4, num_gpus=1)
            ray_cluster.wait_for_nodes()


async def test_backend_restart_adopts_running_actors_and_drops_abandoned_ones(pg_url, tmp_path):
    async with ray_hub(pg_url, tmp_path) as c:
        _alice, p, before = await open_one(c)
        uid = before.user_id
    # The backend is gone (instances keep running); an actor whose start it abandoned
    # still waits for a GPU it will never need.
    assert pid_alive(before.pid)
    orphan = (
        ray.remote(ComfyUIActor)
        .options(name=actor_name(f"u{uid}-p999"), namespace=NAMESPACE, lifetime="detached", num_gpus=5, num_cpus=0)
        .remote()
    )
    assert actor_name(f"u{uid}-p999") in comfyhub_actors()

    async with ray_hub(pg_url, tmp_path, users=()) as c:
        await wait_for(lambda: c.manager.heartbeat.leading, timeout=10, what="reconcile")
        after = await record_of(c, p)
        assert after.status == "online"
        assert (after.pid, after.port, after.launcher_state["extra"]["actor_id"]) == (
            before.pid,
            before.port,
            before.launcher_state["extra"]["actor_id"],
        )
        r = await open_comfy(c, await login(c, "alice"), p)
        assert r.json()["data"]["status"] == "online"
        assert (await record_of(c, p)).pid == before.pid  # reused, not restarted
        await wait_for(
            lambda: actor_name(f"u{uid}-p999") not in comfyhub_actors(), timeout=20, what="abandoned actor removed"
        )
    del orphan


class _Idle:
    def ping(self):
        return True


def test_backend_outlives_the_ray_head(tmp_path):
    """A Ray driver ends its own process when the head (GCS) is gone for a while; comfyhub's must not.

    The head here tells its processes to give up after 2 s; the backend's launcher must keep
    its own process alive well past that.
    """
    port = free_port()
    temp = tempfile.mkdtemp(prefix="/tmp/rh")  # Ray's socket paths must stay short
    env = {**os.environ, "RAY_gcs_rpc_server_reconnect_timeout_s": "2"}
    head = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            f"--port={port}",
            "--num-cpus=0",
            "--include-dashboard=false",
            "--block",
            f"--temp-dir={temp}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    driver = None
    try:
        wait_for_sync(lambda: unreachable(f"127.0.0.1:{port}") is None, timeout=60, interval=0.1, what="Ray head")
        code = (
            "import time\n"
            "from comfyhub.config import load_settings\n"
            "from comfyhub.launchers.ray import RayLauncher\n"
            f"RayLauncher(load_settings(_env_file=None, ray_address='127.0.0.1:{port}'))._connect()\n"
            "print('connected', flush=True)\n"
            "time.sleep(120)\n"  # the backend just lives on; the test watches whether it does
        )
        driver = subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        lines = []
        while "connected" not in (line := driver.stdout.readline()):
            lines.append(line)
            assert line, "driver ended before connecting:\n" + "".join(lines[-20:])
        gcs = [p for p in psutil.Process(head.pid).children(recursive=True) if "gcs_server" in p.name()]
        assert gcs, "no gcs_server under the head"
        for proc in gcs:
            proc.kill()
        # Without the launcher's setting the driver exits 2 s after the GCS is gone.
        with pytest.raises(subprocess.TimeoutExpired):
            driver.wait(timeout=10)
    finally:
        if driver is not None:
            driver.kill()
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
