"""The fake ComfyUI (tests/fake_comfyui/main.py) behaves like the real one where
comfyhub can see it. It runs here as a real subprocess on a free port, like comfyhub
runs it: `python main.py ...` with cwd = its folder."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.support.net import wait_for

FAKE_DIR = Path(__file__).resolve().parent / "fake_comfyui"
READY_TIMEOUT = 15.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Fake:
    def __init__(self, proc: subprocess.Popen, port: int, base: Path, log_path: Path, started: float):
        self.proc = proc
        self.port = port
        self.base = base
        self.log_path = log_path
        self.started = started

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_exit(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"fake still running after {timeout} s; log:\n{self.log()}")

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> float:
        """Poll /system_stats until 200; returns seconds since spawn."""
        import httpx

        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    pytest.fail(f"fake exited early with {self.proc.returncode}; log:\n{self.log()}")
                try:
                    if client.get(self.url + "/system_stats").status_code == 200:
                        return time.monotonic() - self.started
                except httpx.TransportError:
                    pass
                time.sleep(0.01)
        pytest.fail(f"fake not ready within {timeout} s; log:\n{self.log()}")

    def wait_listening(self, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"fake exited early with {self.proc.returncode}; log:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.01)
        pytest.fail(f"fake not listening within {timeout} s; log:\n{self.log()}")


def _default_sigint_in_child():
    # If pytest itself runs with SIGINT ignored (started with `&` from a script), the
    # child would inherit that; reset it, as a launcher must.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def spawn(
    tmp: Path,
    *,
    env: dict | None = None,
    knobs_file: dict | None = None,
    port: int | None = None,
    custom_nodes: bool = True,
    preexec=None,
) -> Fake:
    base = tmp / "instance"
    base.mkdir(parents=True, exist_ok=True)
    if custom_nodes:
        (base / "custom_nodes").mkdir(exist_ok=True)
    if knobs_file is not None:
        (base / "fake_comfyui.json").write_text(json.dumps(knobs_file))
    port = port or free_port()
    full_env = {
        k: v for k, v in os.environ.items() if not k.startswith("FAKE_COMFYUI_") and k != "CUDA_VISIBLE_DEVICES"
    }
    full_env["PYTHONUNBUFFERED"] = "1"
    full_env.update(env or {})
    log_path = tmp / "fake.log"
    with open(log_path, "wb") as log_file:
        started = time.monotonic()
        proc = subprocess.Popen(
            [
                sys.executable,
                "main.py",
                "--listen",
                "127.0.0.1",
                "--port",
                str(port),
                "--disable-auto-launch",
                "--base-directory",
                str(base),
                "--database-url",
                f"sqlite:///{base}/user/comfyui.db",
                "--cpu",
                "--preview-method",
                "auto",
            ],
            cwd=FAKE_DIR,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            preexec_fn=preexec or _default_sigint_in_child,
        )
    return Fake(proc, port, base, log_path, started)


def _kill(fake: Fake) -> None:
    if fake.proc.poll() is None:
        fake.proc.kill()
        fake.proc.wait(5)


@pytest.fixture
def fakes(tmp_path):
    """Factory: start fakes in sub-folders of tmp_path; all are killed afterwards."""
    started: list[Fake] = []
    counter = iter(range(1000))

    def start(**kwargs) -> Fake:
        fake = spawn(tmp_path / f"f{next(counter)}", **kwargs)
        started.append(fake)
        return fake

    yield start
    for fake in started:
        _kill(fake)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One fake shared by the HTTP behaviour tests (fresh folders, 0.5 s jobs, 2 GPUs)."""
    tmp = tmp_path_factory.mktemp("shared-fake")
    (tmp / "instance" / "temp").mkdir(parents=True)
    (tmp / "instance" / "temp" / "stale.txt").write_text("from a previous run")
    fake = spawn(tmp, env={"FAKE_COMFYUI_JOB_SECONDS": "0.5", "CUDA_VISIBLE_DEVICES": "2,5"})
    fake.ready_seconds = fake.wait_ready()
    yield fake
    _kill(fake)


async def get_json(session: aiohttp.ClientSession, url: str) -> dict:
    async with session.get(url) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def receive_until(ws, predicate, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail("websocket: expected message did not arrive")
        msg = await ws.receive(timeout=remaining)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        data = json.loads(msg.data)
        if predicate(data):
            return data


# --- start-up ----------------------------------------------------------------------------


def test_ready_fast_with_argv_devices_and_folders(server):
    import httpx

    print(f"\nfake ComfyUI: spawn to first 200 on /system_stats: {server.ready_seconds:.3f} s")
    assert server.ready_seconds < 5.0
    for prefix in ("", "/api"):
        stats = httpx.get(server.url + prefix + "/system_stats").json()
        argv = stats["system"]["argv"]
        assert argv[0] == "main.py"
        assert argv[argv.index("--port") + 1] == str(server.port)
        assert argv[argv.index("--base-directory") + 1] == str(server.base)
        assert stats["system"]["embedded_python"] is False
        assert stats["system"]["comfyui_version"] == "0.3.64-fake"
        assert [(d["type"], d["name"]) for d in stats["devices"]] == [("cuda", "fake-cuda:2"), ("cuda", "fake-cuda:5")]
    for name in ("models", "input", "output", "user", "temp", "custom_nodes"):
        assert (server.base / name).is_dir(), name
    assert (server.base / "user" / "comfyui.db").is_file()
    assert list((server.base / "temp").iterdir()) == []  # wiped at start
    log = server.log()
    assert f"To see the GUI go to: http://127.0.0.1:{server.port}" in log
    assert "knobs:" in log and "job_seconds=0.5" in log


def test_missing_custom_nodes_exits_1_at_once(fakes):
    fake = fakes(custom_nodes=False)
    assert fake.wait_exit(5) == 1
    assert time.monotonic() - fake.started < 2.0
    log = fake.log()
    assert "Traceback" in log and "custom_nodes" in log
    assert not (fake.base / "output").exists()


def test_exit_code_knob(fakes):
    fake = fakes(env={"FAKE_COMFYUI_EXIT_CODE": "7"})
    assert fake.wait_exit(5) == 7
    lines = fake.log().strip().splitlines()
    assert lines[-1] == "fatal: exiting with code 7"
    assert "fake log line 1" in lines and "fake log line 30" in lines


def test_port_in_use_exits_1_after_the_delay(fakes):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    try:
        fake = fakes(port=holder.getsockname()[1], env={"FAKE_COMFYUI_START_DELAY": "0.8"})
        assert fake.wait_exit(10) == 1
        assert time.monotonic() - fake.started >= 0.8
        log = fake.log()
        assert "EADDRINUSE" in log and "address already in use" in log
    finally:
        holder.close()


def test_start_delay_then_sigint_exits_0_and_removes_temp(fakes):
    import httpx

    fake = fakes(env={"FAKE_COMFYUI_START_DELAY": "1.0"})
    assert fake.wait_ready() >= 1.0
    devices = httpx.get(fake.url + "/system_stats").json()["devices"]
    assert [d["type"] for d in devices] == ["cpu"]
    (fake.base / "temp" / "scratch.png").write_bytes(b"x")
    (fake.base / "output" / "keep.png").write_bytes(b"x")
    sent = time.monotonic()
    fake.proc.send_signal(signal.SIGINT)
    assert fake.wait_exit(5) == 0
    assert time.monotonic() - sent < 1.0
    assert not (fake.base / "temp").exists()
    assert (fake.base / "output" / "keep.png").exists()
    assert "Stopped server" in fake.log()


def _ignore_sigint_in_child():
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_ignored_signals_knob_and_inherited_sigint(fakes):
    stubborn = fakes(knobs_file={"ignore_sigterm": True})  # via the per-instance JSON file
    inherited = fakes(preexec=_ignore_sigint_in_child)
    stubborn.wait_ready()
    inherited.wait_ready()
    stubborn.proc.send_signal(signal.SIGINT)
    stubborn.proc.send_signal(signal.SIGTERM)
    inherited.proc.send_signal(signal.SIGINT)
    # A negative condition needs a window: both must survive it and still answer.
    with pytest.raises(subprocess.TimeoutExpired):
        stubborn.proc.wait(0.5)
    assert inherited.proc.poll() is None
    stubborn.wait_ready(2)
    inherited.wait_ready(2)
    stubborn.proc.kill()
    assert stubborn.wait_exit(5) == -signal.SIGKILL
    inherited.proc.terminate()
    assert inherited.wait_exit(5) == -signal.SIGTERM


def test_crash_after_knob(fakes):
    fake = fakes(env={"FAKE_COMFYUI_CRASH_AFTER": "0.3"})
    fake.wait_ready()
    assert fake.wait_exit(5) == 3
    assert "fatal" in fake.log()


async def test_health_status_knob_json_overrides_env(fakes):
    fake = fakes(env={"FAKE_COMFYUI_HEALTH_STATUS": "200"}, knobs_file={"health_status": 503})
    fake.wait_listening()
    async with aiohttp.ClientSession() as session:

        async def stats_status():
            try:
                async with session.get(fake.url + "/system_stats") as r:
                    return r.status
            except aiohttp.ClientConnectionError:
                return None

        assert await wait_for(stats_status, what="an answer") == 503
        async with session.get(fake.url + "/api/queue") as r:
            assert r.status == 200


async def test_hang_knob_accepts_tcp_but_never_answers(fakes):
    fake = fakes(env={"FAKE_COMFYUI_HANG": "1"})
    fake.wait_listening()
    reader, writer = await asyncio.open_connection("127.0.0.1", fake.port)
    try:
        writer.write(b"GET /system_stats HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await writer.drain()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(reader.read(1), timeout=1.0)
    finally:
        writer.close()
    assert fake.proc.poll() is None


# --- HTTP behaviour (shared instance) ------------------------------------------------------


async def test_prompt_runs_writes_png_and_reports_on_websocket(server):
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(server.url + "/ws?clientId=client-1") as ws:
            first = await receive_until(ws, lambda m: True)
            assert first["type"] == "status" and first["data"]["sid"] == "client-1"
            prompt = {"9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "ComfyUI"}}}
            async with session.post(server.url + "/prompt", json={"prompt": prompt, "client_id": "client-1"}) as r:
                assert r.status == 200
                body = await r.json()
            prompt_id = body["prompt_id"]
            assert body["node_errors"] == {} and isinstance(body["number"], int)

            async def running():
                queue = await get_json(session, server.url + "/api/queue")
                return [e for e in queue["queue_running"] if e[1] == prompt_id]

            entry = (await wait_for(running, what="job in queue_running"))[0]
            assert entry[2] == prompt and entry[3]["client_id"] == "client-1" and entry[4] == ["9"]

            done = await receive_until(ws, lambda m: m["type"] == "execution_success")
            assert done["data"]["prompt_id"] == prompt_id

        history = await get_json(session, server.url + f"/history/{prompt_id}")
        images = history[prompt_id]["outputs"]["9"]["images"]
        assert images == [{"filename": "ComfyUI_00001_.png", "subfolder": "", "type": "output"}]
        assert history[prompt_id]["status"]["status_str"] == "success"
        assert prompt_id in await get_json(session, server.url + "/api/history")
        png = (server.base / "output" / "ComfyUI_00001_.png").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        async with session.get(server.url + "/view", params={"filename": "ComfyUI_00001_.png", "type": "output"}) as r:
            assert r.status == 200 and await r.read() == png
        assert await get_json(session, server.url + "/queue") == {"queue_running": [], "queue_pending": []}


async def test_interrupt_and_queue_clear(server):
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(server.url + "/api/ws?clientId=client-2") as ws:
            ids = []
            for _ in range(2):
                async with session.post(
                    server.url + "/api/prompt",
                    json={"prompt": {"1": {"class_type": "SaveImage", "inputs": {}}}, "client_id": "client-2"},
                ) as r:
                    ids.append((await r.json())["prompt_id"])

            async def first_running():
                queue = await get_json(session, server.url + "/queue")
                return [e[1] for e in queue["queue_running"]] == [ids[0]] and queue

            queue = await wait_for(first_running, what="first job running")
            assert [e[1] for e in queue["queue_pending"]] == [ids[1]]
            async with session.post(server.url + "/queue", json={"clear": True}) as r:
                assert r.status == 200
            async with session.post(server.url + "/interrupt") as r:
                assert r.status == 200
            msg = await receive_until(ws, lambda m: m["type"] == "execution_interrupted")
            assert msg["data"]["prompt_id"] == ids[0]
        history = await get_json(session, server.url + f"/history/{ids[0]}")
        assert history[ids[0]]["status"]["status_str"] == "error"
        assert await get_json(session, server.url + f"/history/{ids[1]}") == {}
        for path in ("/free", "/api/free"):
            async with session.post(server.url + path, json={"unload_models": True}) as r:
                assert r.status == 200
        info = await get_json(session, server.url + "/object_info")
        assert "SaveImage" in info and info == await get_json(session, server.url + "/api/object_info")


async def test_view_streams_large_file_and_refuses_traversal(server):
    sub = server.base / "input" / "sub"
    sub.mkdir(exist_ok=True)
    blob = os.urandom(1024 * 1024) * 52  # 52 MiB
    (sub / "big.bin").write_bytes(blob)
    async with aiohttp.ClientSession() as session:
        digest = hashlib.sha256()
        size = 0
        async with session.get(
            server.url + "/api/view", params={"filename": "big.bin", "type": "input", "subfolder": "sub"}
        ) as r:
            assert r.status == 200
            async for chunk in r.content.iter_chunked(1 << 20):
                digest.update(chunk)
                size += len(chunk)
        assert size == len(blob) and digest.hexdigest() == hashlib.sha256(blob).hexdigest()

        async def status(params):
            async with session.get(server.url + "/view", params=params) as r:
                return r.status

        assert await status({"filename": "nope.png", "type": "output"}) == 404
        assert await status({"filename": "big.bin", "type": "input", "subfolder": "../.."}) == 403
        assert await status({"filename": "big.bin", "type": "input", "subfolder": "/etc"}) == 403
        assert await status({"filename": "../input/sub/big.bin", "type": "output"}) == 400
        assert await status({"filename": "big.bin", "type": "bogus"}) == 400


async def test_upload_image(server):
    data = os.urandom(300_000)
    async with aiohttp.ClientSession() as session:

        async def upload(content: bytes, **fields):
            form = aiohttp.FormData()
            form.add_field("image", content, filename="pic.png", content_type="image/png")
            for key, value in fields.items():
                form.add_field(key, value)
            async with session.post(server.url + "/upload/image", data=form) as r:
                return r.status, (await r.json() if r.status == 200 else None)

        assert await upload(data) == (200, {"name": "pic.png", "subfolder": "", "type": "input"})
        assert (server.base / "input" / "pic.png").read_bytes() == data
        # Same name, same bytes: reused. Same name, other bytes: renamed. overwrite: replaced.
        assert (await upload(data))[1]["name"] == "pic.png"
        assert (await upload(b"other"))[1]["name"] == "pic (1).png"
        assert (await upload(b"new", overwrite="true"))[1]["name"] == "pic.png"
        assert (server.base / "input" / "pic.png").read_bytes() == b"new"
        assert await upload(data, subfolder="up") == (200, {"name": "pic.png", "subfolder": "up", "type": "input"})
        assert (server.base / "input" / "up" / "pic.png").read_bytes() == data
        assert (await upload(data, subfolder="../..", overwrite="1"))[0] == 400
    assert [p.name for p in (server.base / "temp").iterdir()] == []  # no leftover part files


async def test_echo_streams_body_back(server):
    chunk = os.urandom(1 << 20)

    async def body():
        for _ in range(8):
            yield chunk

    async with (
        aiohttp.ClientSession() as session,
        session.post(server.url + "/echo", data=body(), headers={"Content-Type": "application/octet-stream"}) as r,
    ):
        assert r.status == 200
        assert r.headers.get("Transfer-Encoding") == "chunked"
        assert await r.read() == chunk * 8


async def test_websocket_echo_and_close_code(server):
    async with aiohttp.ClientSession() as session, session.ws_connect(server.url + "/ws?clientId=echo-1") as ws:
        status = await receive_until(ws, lambda m: True)
        assert status == {
            "type": "status",
            "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "echo-1"},
        }
        await ws.send_str("hello")
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.TEXT, "hello")
        payload = os.urandom(100_000)
        await ws.send_bytes(payload)
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.BINARY, payload)
        await ws.send_str("close:4001")
        msg = await ws.receive(timeout=5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        await ws.close()
        assert ws.close_code == 4001


async def test_foreign_origin_on_loopback_host_is_403(server):
    port = server.port
    cases = [
        ({"Host": f"127.0.0.1:{port}", "Origin": "http://evil.example"}, 403),
        ({"Host": f"127.0.0.1:{port}", "Origin": "http://localhost:8000"}, 403),  # proxy rewrote Host
        ({"Host": f"localhost:{port}", "Origin": f"http://localhost:{port}"}, 200),
        ({"Host": "localhost:8000", "Origin": "http://localhost:8000"}, 200),  # proxy kept Host
        ({"Host": "comfy.example.com", "Origin": "http://elsewhere.example"}, 200),  # not loopback
        ({"Host": f"127.0.0.1:{port}"}, 200),  # no Origin
    ]
    async with aiohttp.ClientSession() as session:
        for headers, expected in cases:
            async with session.get(server.url + "/api/system_stats", headers=headers) as r:
                assert r.status == expected, headers
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await session.ws_connect(
                server.url + "/ws?clientId=x", headers={"Host": f"127.0.0.1:{port}", "Origin": "http://evil.example"}
            )
        assert err.value.status == 403


async def test_page_uses_relative_urls_and_loads_a_script(server):
    async with aiohttp.ClientSession() as session:
        async with session.get(server.url + "/") as r:
            assert r.status == 200 and r.content_type == "text/html"
            html = await r.text()
        assert "<title>Fake ComfyUI</title>" in html
        assert 'id="status"' in html and 'id="ws"' in html
        assert 'src="scripts/app.js"' in html and 'src="/' not in html
        async with session.get(server.url + "/scripts/app.js") as r:
            assert r.status == 200
            js = await r.text()
        assert '"api/system_stats"' in js and '"ws?clientId=abc"' in js and "ws: connected" in js
