"""Jobs run to the last item against the fake ComfyUI, through crashes, stops and
restarts of comfyhub itself, and never submit an item ComfyUI finished (invariant 9).

The fake ComfyUI appends one line per executed prompt to DIR/fake_executions.jsonl,
with a digest of the graph: each item's graph differs, so the log counts how many
times each item ran.
"""

import json
import os
import signal
from collections import Counter
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from sqlalchemy import func, select

from comfyhub.models import Job
from tests.support import launcher
from tests.support.app import running_app
from tests.support.comfy import as_comfyhub, new_project, pid_alive, service, set_knobs, user_id
from tests.support.hub import LiveHub, create_project, service_of
from tests.support.net import wait_for, wait_for_sync

QUIET = {"comfyhub_history_sync_seconds": 3600, "comfyhub_history_idle_sync_seconds": 3600}


def workflow() -> dict:
    """EmptyImage → SaveImage, plus a text node whose value each item sets (never linked)."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "job"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["4", 1]}},
    }


def table(n: int) -> list[dict]:
    return [{"6.text": f"item {i}", "1.color": i} for i in range(n)]


@asynccontextmanager
async def hub(db_url, tmp_path, **overrides):
    async with running_app(db_url, tmp_path, users=("alice", "bob"), **{**QUIET, **overrides}) as c:
        c.alice, c.bob = c.headers_of["alice"], c.headers_of["bob"]
        yield c


async def submit(c, pid, headers=None, **body):
    r = await c.post(f"/api/projects/{pid}/jobs", json={"workflow": workflow(), **body}, headers=headers or c.alice)
    return r


async def job(c, pid, jid) -> dict:
    r = await c.get(f"/api/projects/{pid}/jobs/{jid}", headers=c.alice)
    assert r.status_code == 200, r.text
    return r.json()["data"]


async def until_state(c, pid, jid, *states, timeout=60):
    async def reached():
        return (await job(c, pid, jid))["state"] in states

    await wait_for(reached, timeout=timeout, interval=0.1, what=f"job in {states}")
    return await job(c, pid, jid)


def executions(base: Path) -> Counter:
    log = base / "fake_executions.jsonl"
    lines = log.read_text().splitlines() if log.exists() else []
    return Counter(json.loads(line)["graph_digest"] for line in lines if line.strip())


async def test_a_50_item_job_ends_with_50_done_each_output_linked_to_its_parameters(db_url, tmp_path):
    async with hub(db_url, tmp_path) as c:
        pid = await new_project(c, c.alice)
        base = set_knobs(c.settings, await user_id(c, c.alice), pid, job_seconds=0.02)
        r = await submit(c, pid, name="五十", table=table(50))
        assert r.status_code == 201, r.text
        jid = r.json()["data"]["id"]
        assert r.json()["data"]["total"] == 50
        deepest = 0
        port = None

        async def done():
            nonlocal deepest, port
            svc = await service(c, c.alice, pid)
            if svc and svc["status"] == "online":
                port = svc["port"]
                q = httpx.get(
                    f"http://{launcher.instance_host()}:{port}/queue", trust_env=False, headers=as_comfyhub(port)
                ).json()
                deepest = max(deepest, len(q["queue_running"]) + len(q["queue_pending"]))
            return (await job(c, pid, jid))["state"] == "done"

        await wait_for(done, timeout=90, interval=0.05, what="the job done")
        final = await job(c, pid, jid)
        assert final["counts"] == {"pending": 0, "running": 0, "done": 50, "failed": 0, "cancelled": 0}
        assert deepest <= c.settings.comfyhub_job_queue_depth  # ComfyUI's queue never held more
        assert sorted(executions(base).values()) == [1] * 50  # each item ran exactly once
        items = (await c.get(f"/api/projects/{pid}/jobs/{jid}/items", params={"limit": 100}, headers=c.alice)).json()
        for item in items["data"]["items"]:
            (oid,) = item["outputs"]
            out = (await c.get(f"/api/projects/{pid}/outputs/{oid}", headers=c.alice)).json()["data"]
            assert out["graph"]["6"]["inputs"]["text"] == item["params"]["6.text"]
            assert out["graph"]["1"]["inputs"]["color"] == item["params"]["1.color"]


async def test_kill_9_of_the_instance_mid_job_only_in_flight_items_run_twice(db_url, tmp_path):
    async with hub(db_url, tmp_path) as c:
        pid = await new_project(c, c.alice)
        base = set_knobs(c.settings, await user_id(c, c.alice), pid, job_seconds=0.15)
        jid = (await submit(c, pid, table=table(24))).json()["data"]["id"]

        async def some_done():
            return (await job(c, pid, jid))["counts"]["done"] >= 5

        await wait_for(some_done, timeout=60, what="five items done")
        victim = (await service(c, c.alice, pid))["pid"]
        os.kill(victim, signal.SIGKILL)
        await wait_for(lambda: not pid_alive(victim), what="the instance gone")
        await c.manager.heartbeat_once()  # notices the crash; the runner starts a new instance
        final = await until_state(c, pid, jid, "done", "failed", timeout=90)
        assert final["state"] == "done" and final["counts"]["done"] == 24
        runs = executions(base)
        assert len(runs) == 24
        twice = [d for d, n in runs.items() if n > 1]
        assert len(twice) <= c.settings.comfyhub_job_queue_depth and all(runs[d] == 2 for d in twice)


async def test_a_user_stop_pauses_the_job_and_resume_finishes_it(db_url, tmp_path):
    async with hub(db_url, tmp_path) as c:
        pid = await new_project(c, c.alice)
        base = set_knobs(c.settings, await user_id(c, c.alice), pid, job_seconds=0.1)
        jid = (await submit(c, pid, table=table(12))).json()["data"]["id"]

        async def started():
            return (await job(c, pid, jid))["counts"]["done"] >= 2

        await wait_for(started, timeout=60, what="two done")
        assert (await c.post(f"/api/projects/{pid}/stop_comfy", headers=c.alice)).status_code == 200
        paused = await until_state(c, pid, jid, "paused")
        assert "停止" in paused["detail"]
        assert (await service(c, c.alice, pid))["status"] == "stopped"  # the runner did not restart it
        r = await c.post(f"/api/projects/{pid}/jobs/{jid}/resume", headers=c.alice)
        assert r.status_code == 200, r.text
        final = await until_state(c, pid, jid, "done", timeout=60)
        assert final["counts"]["done"] == 12
        assert len(executions(base)) == 12


async def test_a_failing_item_is_retried_then_failed_and_the_job_goes_on(db_url, tmp_path):
    async with hub(db_url, tmp_path) as c:
        pid = await new_project(c, c.alice)
        set_knobs(c.settings, await user_id(c, c.alice), pid, job_seconds=0.01)
        rows = table(6)
        rows[2]["6.text"] = "FAKE_FAIL please"
        jid = (await submit(c, pid, table=rows, max_retries=1)).json()["data"]["id"]
        final = await until_state(c, pid, jid, "done", timeout=60)
        assert final["counts"]["done"] == 5 and final["counts"]["failed"] == 1
        failed = (
            await c.get(f"/api/projects/{pid}/jobs/{jid}/items", params={"state": "failed"}, headers=c.alice)
        ).json()
        (item,) = failed["data"]["items"]
        assert item["idx"] == 2 and item["submissions"] == 2 and item["error"]


async def test_cancel_stops_feeding_and_other_users_are_refused(db_url, tmp_path):
    async with hub(db_url, tmp_path) as c:
        pid = await new_project(c, c.alice)
        set_knobs(c.settings, await user_id(c, c.alice), pid, job_seconds=0.3)
        jid = (await submit(c, pid, table=table(40))).json()["data"]["id"]
        for path in ("", f"/{jid}", f"/{jid}/items"):
            assert (await c.get(f"/api/projects/{pid}/jobs{path}", headers=c.bob)).status_code == 403
        for action in ("pause", "resume", "cancel"):
            assert (await c.post(f"/api/projects/{pid}/jobs/{jid}/{action}", headers=c.bob)).status_code == 403
        assert (await submit(c, pid, headers=c.bob, table=table(1))).status_code == 403
        r = await c.post(f"/api/projects/{pid}/jobs/{jid}/cancel", headers=c.alice)
        assert r.status_code == 200 and r.json()["data"]["state"] == "cancelled"
        r = await c.post(f"/api/projects/{pid}/jobs/{jid}/resume", headers=c.alice)
        assert r.status_code == 409 and r.json()["msg"]
        final = await job(c, pid, jid)
        assert final["counts"]["cancelled"] + final["counts"]["running"] + final["counts"]["done"] == 40

        async def nothing_in_flight():
            return (await job(c, pid, jid))["counts"]["running"] == 0

        await wait_for(nothing_in_flight, timeout=30, what="in-flight items settled")
        assert (await job(c, pid, jid))["counts"]["done"] <= 2


async def test_bad_tables_are_refused_with_the_cell_named_and_nothing_created(db_url, tmp_path):
    async with hub(db_url, tmp_path) as c:
        pid = await new_project(c, c.alice)
        bad = [
            {"table": [{"9.text": "x"}]},  # no such node
            {"table": [{"6.texts": "x"}]},  # no such input
            {"table": [{"6.clip": "x"}]},  # a link, not a value
            {"table": [{"1.color": 1}, {"1.color": "red"}]},  # wrong type in row 2
            {"csv": "1.width\n16\nwide\n"},
            {"grid": {"1.width": []}},
            {"table": [{"6.text": "x"}], "grid": {"1.width": [1]}},
            {"workflow": "not a graph", "table": [{"6.text": "x"}]},
            {"table": [{"6.text": "x"}], "repeat": 0},
        ]
        for body in bad:
            r = await c.post(f"/api/projects/{pid}/jobs", json={"workflow": workflow(), **body}, headers=c.alice)
            assert 400 <= r.status_code < 500 and r.status_code != 404, (body, r.text)
            assert r.json()["msg"], body
        r = await c.post(
            f"/api/projects/{pid}/jobs",
            json={"workflow": workflow(), "table": [{"1.color": 1}, {"1.color": "red"}]},
            headers=c.alice,
        )
        assert "1.color" in r.json()["msg"] and "2" in r.json()["msg"]
        async with c.manager.sessions() as db:
            assert (await db.execute(select(func.count()).select_from(Job))).scalar_one() == 0


def test_backend_kill_9_mid_job_resumes_after_restart(tmp_path):
    hub = LiveHub(tmp_path / "hub", comfyui_heartbeat_interval_seconds=1)
    hub.start()
    hub.add_user("alice")
    try:
        with hub.client("alice") as c:
            pid = create_project(c, "JOB")
            uid = c.get("/api/auth/me").json()["data"]["id"]
            base = hub.instance_dir(uid, pid)
            base.mkdir(parents=True, exist_ok=True)
            (base / "fake_comfyui.json").write_text(json.dumps({"job_seconds": 0.15}))
            r = c.post(f"/api/projects/{pid}/jobs", json={"workflow": workflow(), "table": table(20)})
            assert r.status_code == 201, r.text
            jid = r.json()["data"]["id"]
            wait_for_sync(
                lambda: c.get(f"/api/projects/{pid}/jobs/{jid}").json()["data"]["counts"]["done"] >= 4, timeout=60
            )
        hub.stop(signal.SIGKILL)
        hub.start()
        with hub.client("alice") as c:
            wait_for_sync(
                lambda: c.get(f"/api/projects/{pid}/jobs/{jid}").json()["data"]["state"] == "done", timeout=90
            )
            assert c.get(f"/api/projects/{pid}/jobs/{jid}").json()["data"]["counts"]["done"] == 20
            assert service_of(c, pid)["status"] == "online"
        runs = executions(base)
        assert len(runs) == 20 and sum(n - 1 for n in runs.values()) <= 2
    finally:
        hub.stop()


def test_two_workers_submit_every_item_exactly_once(pg_url, tmp_path):
    hub = LiveHub(tmp_path / "hub", db_url=pg_url, workers=2, ports=10, comfyui_heartbeat_interval_seconds=1)
    hub.start()
    hub.add_user("alice")
    try:
        with hub.client("alice") as c:
            pid = create_project(c, "TWO")
            uid = c.get("/api/auth/me").json()["data"]["id"]
            base = hub.instance_dir(uid, pid)
            base.mkdir(parents=True, exist_ok=True)
            (base / "fake_comfyui.json").write_text(json.dumps({"job_seconds": 0.02}))
            jids = []
            for n in (30, 30):  # submitted to whichever worker answers
                r = c.post(
                    f"/api/projects/{pid}/jobs", json={"workflow": workflow(), "table": table(n), "name": str(n)}
                )
                assert r.status_code == 201, r.text
                jids.append(r.json()["data"]["id"])
            for jid in jids:
                wait_for_sync(
                    lambda jid=jid: c.get(f"/api/projects/{pid}/jobs/{jid}").json()["data"]["state"] == "done",
                    timeout=120,
                )
        runs = executions(base)
        # The two jobs share their 30 graphs: each graph ran exactly twice (once per job).
        assert len(runs) == 30 and set(runs.values()) == {2}
    finally:
        hub.stop()


async def test_the_export_carries_each_items_parameters_as_columns(db_url, tmp_path):
    import io
    import zipfile

    import datasets

    async with hub(db_url, tmp_path) as c:
        pid = await new_project(c, c.alice)
        set_knobs(c.settings, await user_id(c, c.alice), pid, job_seconds=0)
        grid = {"6.text": ["红", "绿"], "1.width": [16, 24, 32]}
        jid = (await submit(c, pid, grid=grid)).json()["data"]["id"]
        await until_state(c, pid, jid, "done", timeout=60)
        # One file that no job made: its parameter columns are null.
        out = c.settings.instance_dir(await user_id(c, c.alice), pid) / "output"
        from tests.outputs.graphs import txt2img, write_png

        write_png(out / "by_hand.png", txt2img("by hand"))
        await c.post(f"/api/projects/{pid}/outputs/sync", headers=c.alice)
        r = await c.post(f"/api/projects/{pid}/exports", json={}, headers=c.alice)
        assert r.status_code == 200
        folder = tmp_path / "export"
        zipfile.ZipFile(io.BytesIO(r.content)).extractall(folder)
        ds = datasets.load_dataset("imagefolder", data_dir=str(folder), split="train")
        assert {"6.text", "1.width"} <= set(ds.column_names) and ds.num_rows == 7
        rows = sorted((r["6.text"], r["1.width"], r["image"].size[0]) for r in ds if r["6.text"] is not None)
        assert rows == sorted((t, w, w) for t in grid["6.text"] for w in grid["1.width"])
        assert [r["6.text"] for r in ds if r["prompt"] == "by hand"] == [None]
