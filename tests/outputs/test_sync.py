"""Generation records from a running (fake) ComfyUI: pulled while it runs, before every
stop and cull, and from the files when the history died with the process (invariant 8)."""

import asyncio
import os
import signal
from contextlib import asynccontextmanager

import httpx
from sqlalchemy import func, select

from comfyhub.models import Generation, Output
from comfyhub.outputs.sync import Instance
from tests.outputs.graphs import txt2img
from tests.support import launcher
from tests.support.app import running_app
from tests.support.comfy import as_comfyhub, new_project, pid_alive, service, set_knobs, user_id
from tests.support.net import wait_for

# The periodic loop stays out of the way unless a test asks for it: what is recorded
# then comes from the path under test (a stop's last pull, a scan after a crash).
QUIET = {"comfyhub_history_sync_seconds": 3600, "comfyhub_history_idle_sync_seconds": 3600}


@asynccontextmanager
async def hub(db_url, tmp_path, **overrides):
    async with running_app(db_url, tmp_path, users=("alice", "bob"), **{**QUIET, **overrides}) as c:
        c.alice, c.bob = c.headers_of["alice"], c.headers_of["bob"]
        yield c


async def started(c, code="P-1", **knobs):
    pid = await new_project(c, c.alice, code)
    if knobs:
        set_knobs(c.settings, await user_id(c, c.alice), pid, **knobs)
    r = await c.post(f"/api/projects/{pid}/open_comfy", headers=c.alice)
    assert r.json()["data"]["status"] == "online", r.text
    return pid, (await service(c, c.alice, pid))["port"]


def queue(port: int, graph: dict) -> str:
    r = httpx.post(
        f"http://{launcher.instance_host()}:{port}/prompt",
        json={"prompt": graph, "client_id": "t"},
        trust_env=False,
        headers=as_comfyhub(port),
    )
    assert r.status_code == 200, r.text
    return r.json()["prompt_id"]


def history(port: int) -> dict:
    return httpx.get(
        f"http://{launcher.instance_host()}:{port}/history", trust_env=False, headers=as_comfyhub(port)
    ).json()


def save_graph(text: str, seed: int = 1) -> dict:
    g = txt2img(text, seed=seed)
    g["9"]["inputs"]["images"] = ["1", 0]
    g["1"] = {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 24, "batch_size": 1, "color": 255}}
    return g


async def outputs(c, pid, headers=None, **params):
    r = await c.get(f"/api/projects/{pid}/outputs", params=params, headers=headers or c.alice)
    assert r.status_code == 200, r.text
    return r.json()["data"]


async def counts(c, pid) -> tuple[int, int]:
    async with c.manager.sessions() as db:
        gens = (await db.execute(select(func.count()).where(Generation.project_id == pid))).scalar_one()
        outs = (await db.execute(select(func.count()).where(Output.project_id == pid))).scalar_one()
    return gens, outs


async def test_outputs_appear_while_comfyui_runs_with_their_parameters(db_url, tmp_path):
    async with hub(db_url, tmp_path, comfyhub_history_sync_seconds=0.2) as c:
        pid, port = await started(c, job_seconds=0)
        ids = [queue(port, save_graph(f"a cat number {i}", seed=100 + i)) for i in range(3)]
        await wait_for(lambda: len(history(port)) == 3, what="three prompts done")

        async def three():
            return (await outputs(c, pid))["total"] == 3

        await wait_for(three, timeout=15, what="the periodic sync recorded them")
        items = (await outputs(c, pid))["items"]
        assert {i["prompt_id"] for i in items} == set(ids)
        newest = items[0]
        assert newest["prompt"] == "a cat number 2" and newest["seed"] == 102 and newest["status"] == "success"
        assert (newest["width"], newest["height"]) == (32, 24) and newest["sampler"] == "euler"
        detail = (await c.get(f"/api/projects/{pid}/outputs/{newest['id']}", headers=c.alice)).json()["data"]
        assert detail["graph"]["6"]["inputs"]["text"] == "a cat number 2" and detail["source"] == "history"


async def test_a_prompt_finished_then_culled_within_a_second_is_recorded(db_url, tmp_path):
    async with hub(db_url, tmp_path, comfyui_idle_timeout_seconds=1) as c:
        pid, port = await started(c, job_seconds=0)
        prompt_id = queue(port, save_graph("culled at once"))
        await wait_for(lambda: prompt_id in history(port), what="the prompt finished")

        async def culled():
            await c.manager.heartbeat_once()
            return (await service(c, c.alice, pid))["status"] == "stopped"

        await wait_for(culled, timeout=10, what="the idle cull")
        assert (await service(c, c.alice, pid))["reason"] == "idle"
        async with c.manager.sessions() as db:
            gen = (await db.execute(select(Generation).where(Generation.project_id == pid))).scalar_one()
        # From the history (the last pull before the cull), not from the file scan after it.
        assert gen.prompt_id == prompt_id and gen.source == "history" and gen.status == "success"
        items = (await outputs(c, pid))["items"]
        assert [i["prompt"] for i in items] == ["culled at once"]


async def test_a_file_written_just_before_a_kill_9_is_recorded_from_its_metadata(db_url, tmp_path):
    async with hub(db_url, tmp_path) as c:
        pid, port = await started(c, job_seconds=0)
        proc_pid = (await service(c, c.alice, pid))["pid"]
        out_dir = c.settings.instance_dir(await user_id(c, c.alice), pid) / "output"
        queue(port, save_graph("the last words", seed=9))
        await wait_for(lambda: any(out_dir.glob("*.png")), what="the file on disk")
        os.kill(proc_pid, signal.SIGKILL)  # the history dies with the process
        await wait_for(lambda: not pid_alive(proc_pid), what="the process gone")
        await c.manager.heartbeat_once()
        assert (await service(c, c.alice, pid))["status"] != "online"
        await c.manager.outputs.tick()
        await c.manager.outputs.wait_idle()
        (item,) = (await outputs(c, pid))["items"]
        assert item["prompt"] == "the last words" and item["seed"] == 9 and item["prompt_id"] is None
        before = await counts(c, pid)
        await c.manager.outputs.scan(pid, await user_id(c, c.alice))
        assert await counts(c, pid) == before  # scanning again records nothing twice


async def test_crash_after_save_then_restart_records_the_file_once(db_url, tmp_path):
    async with hub(db_url, tmp_path) as c:
        pid, port = await started(c, job_seconds=0, crash_after_save=True)
        queue(port, save_graph("saved, then crashed"))
        proc_pid = (await service(c, c.alice, pid))["pid"]
        await wait_for(lambda: not pid_alive(proc_pid), what="the crash")
        set_knobs(c.settings, await user_id(c, c.alice), pid, job_seconds=0)
        await c.manager.heartbeat_once()
        r = await c.post(f"/api/projects/{pid}/open_comfy", headers=c.alice)  # a new run
        assert r.json()["data"]["status"] == "online"
        await c.manager.outputs.tick()
        await c.manager.outputs.wait_idle()
        assert [i["prompt"] for i in (await outputs(c, pid))["items"]] == ["saved, then crashed"]
        assert await counts(c, pid) == (1, 1)


async def test_syncing_again_and_at_once_never_duplicates_and_long_histories_are_walked(db_url, tmp_path):
    async with hub(db_url, tmp_path) as c:
        pid, port = await started(c, job_seconds=0)
        n = 70  # more than one page of history
        for i in range(n):
            queue(port, save_graph(f"p{i}", seed=i))
        await wait_for(lambda: len(history(port)) == n, timeout=20, what="all prompts done")
        instance = Instance.of(await c.manager.get(pid))
        sync = c.manager.outputs
        results = await asyncio.gather(sync.pull(instance), sync.pull(instance), sync.pull(instance))
        assert sum(results) == n
        await sync.scan(pid, await user_id(c, c.alice))
        assert await sync.pull(instance) == 0
        assert await counts(c, pid) == (n, n)
        page = await outputs(c, pid, limit=50)
        assert page["total"] == n and [i["prompt"] for i in page["items"][:2]] == [f"p{n - 1}", f"p{n - 2}"]


async def test_a_history_cleared_or_trimmed_in_comfyui_loses_nothing_already_recorded(db_url, tmp_path):
    async with hub(db_url, tmp_path) as c:
        pid, port = await started(c, job_seconds=0)
        first = queue(port, save_graph("before the clear"))
        await wait_for(lambda: first in history(port), what="done")
        sync, instance = c.manager.outputs, Instance.of(await c.manager.get(pid))
        assert await sync.pull(instance) == 1
        httpx.post(
            f"http://{launcher.instance_host()}:{port}/history",
            json={"clear": True},
            trust_env=False,
            headers=as_comfyhub(port),
        )
        second = queue(port, save_graph("after the clear"))
        await wait_for(lambda: second in history(port), what="done")
        assert await sync.pull(instance) == 1
        assert {i["prompt"] for i in (await outputs(c, pid))["items"]} == {"before the clear", "after the clear"}


async def test_a_hung_instance_delays_no_other_sync(db_url, tmp_path):
    async def never_answer(reader, writer):
        await asyncio.sleep(3600)

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    hung_port = server.sockets[0].getsockname()[1]
    try:
        async with hub(db_url, tmp_path) as c:
            pid, port = await started(c, job_seconds=0)
            queue(port, save_graph("healthy"))
            await wait_for(lambda: len(history(port)) == 1, what="done")
            sync = c.manager.outputs
            hung = Instance(999, 1, "127.0.0.1", hung_port, 1, True)
            sync._spawn(hung.project_id, sync.pull(hung))  # hangs until its deadline
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            assert await sync.pull(Instance.of(await c.manager.get(pid))) == 1
            assert loop.time() - t0 < 2.0
            assert 999 in sync._busy  # still waiting on the hung one
    finally:
        server.close()
