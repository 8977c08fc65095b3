"""The runner ticks when ComfyUI finishes a prompt, not only on its poll (jobs/listen.py)."""

import asyncio
import json

import pytest
from websockets.asyncio.server import serve

from comfyhub.jobs import listen, runner
from comfyhub.jobs.listen import QueueListeners, queue_remaining
from comfyhub.net.endpoint import Endpoint
from tests.jobs.test_runner import QUIET, submit, table
from tests.support.app import running_app
from tests.support.comfy import new_project, set_knobs, user_id
from tests.support.net import wait_for


def status(remaining: int) -> str:
    return json.dumps({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": remaining}}}})


def test_queue_remaining_is_read_from_status_messages_only():
    assert queue_remaining(status(3)) == 3
    assert queue_remaining(json.dumps({"type": "executing", "data": {"node": None}})) is None
    assert queue_remaining(b"\x00\x00\x00\x01png") is None
    assert queue_remaining("not json") is None
    assert queue_remaining(json.dumps({"type": "status", "data": {"status": {}}})) is None


async def test_a_shrinking_queue_wakes_the_runner_a_growing_one_does_not(monkeypatch):
    monkeypatch.setattr(listen, "RETRY_SECONDS", 0.0)
    scripts = [
        [status(0), status(1), status(2), json.dumps({"type": "progress"})],  # then the socket closes
        [status(2), status(1)],  # a prompt finished
    ]
    paths = []
    checked = asyncio.Event()

    async def comfyui(socket):
        paths.append(socket.request.path)
        if len(paths) > 1:
            await checked.wait()
        for message in scripts[len(paths) - 1]:
            await socket.send(message)
        if len(paths) > 1:
            await socket.wait_closed()  # the second socket stays open until the listener goes

    async with serve(comfyui, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        wake = asyncio.Event()
        listeners = QueueListeners(wake)
        try:

            def reconnected():
                # follow() opens a new socket only once the first listener has read all and ended
                listeners.follow(7, Endpoint("127.0.0.1", port), run=1)
                return len(paths) == 2

            await wait_for(reconnected, timeout=10, interval=0.05, what="a new socket after the first closed")
            assert not wake.is_set()  # 0, 1, 2: only new prompts
            checked.set()
            await wait_for(wake.is_set, timeout=10, what="the runner woken by 2 → 1")
            assert paths == ["/ws?clientId=comfyhub-jobs-7"] * 2
        finally:
            await listeners.close()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_job_runs_on_comfyuis_word_without_waiting_for_the_poll(db_url, tmp_path, monkeypatch):
    # With the poll two minutes apart, 8 items two at a time would take minutes without
    # the WebSocket: each finished prompt must bring the next tick at once.
    monkeypatch.setattr(runner, "ACTIVE_TICK", 120.0)
    monkeypatch.setattr(runner, "IDLE_TICK", 120.0)
    async with running_app(db_url, tmp_path, users=("alice",), **QUIET) as c:
        c.alice = c.headers_of["alice"]
        pid = await new_project(c, c.alice)
        set_knobs(c.settings, await user_id(c, c.alice), pid, job_seconds=0.3)
        r = await submit(c, pid, table=table(8))
        assert r.status_code == 201, r.text
        jid = r.json()["data"]["id"]

        async def done():
            view = (await c.get(f"/api/projects/{pid}/jobs/{jid}", headers=c.alice)).json()["data"]
            return view["state"] == "done" and view["counts"]["done"] == 8

        await wait_for(done, timeout=60, interval=0.1, what="the job done between polls")
