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
import struct
import subprocess
import sys
import time
import zlib
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
    args: tuple[str, ...] = (),
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
                *args,
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


# --- execution, history and the execution log (fakes of their own, jobs of 0 s) -------------


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """A fake whose prompts run at once; tests add to its history and read it relative to
    what they submitted."""
    fake = spawn(tmp_path_factory.mktemp("quick-fake"), env={"FAKE_COMFYUI_JOB_SECONDS": "0"})
    fake.wait_ready()
    yield fake
    _kill(fake)


async def submit(session: aiohttp.ClientSession, fake: Fake, prompt: dict, **body) -> str:
    async with session.post(fake.url + "/prompt", json={"prompt": prompt, **body}) as r:
        assert r.status == 200, await r.text()
        return (await r.json())["prompt_id"]


async def finished(session: aiohttp.ClientSession, fake: Fake, prompt_id: str) -> dict:
    """The history entry, once the prompt has one."""

    async def entry():
        return (await get_json(session, f"{fake.url}/history/{prompt_id}")).get(prompt_id)

    return await wait_for(entry, what=f"history of {prompt_id}")


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, data) of each chunk, CRCs checked."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        tag, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])[0] == zlib.crc32(tag + body)
        chunks.append((tag, body))
        pos += 12 + length
    return chunks


def png_facts(path: Path) -> tuple[int, int, set[bytes], list[tuple[str, str]], list[bytes]]:
    """(width, height, the distinct RGB pixels, tEXt (key, value)s, chunk types in order)."""
    chunks = png_chunks(path.read_bytes())
    width, height, depth, colour = struct.unpack(">IIBB", chunks[0][1][:10])
    assert (depth, colour) == (8, 2)
    raw = zlib.decompress(b"".join(body for tag, body in chunks if tag == b"IDAT"))
    stride = 1 + 3 * width
    assert len(raw) == stride * height
    pixels = {raw[y * stride + 1 + 3 * x : y * stride + 4 + 3 * x] for y in range(height) for x in range(width)}
    texts = [tuple(part.decode("latin-1") for part in body.split(b"\0", 1)) for tag, body in chunks if tag == b"tEXt"]
    return width, height, pixels, texts, [tag for tag, _body in chunks]


def digest(graph: dict) -> str:
    canonical = json.dumps(graph, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


SAVE = {"9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "hist"}}}


async def test_history_max_items_and_offset_like_get_history(quick):
    async with aiohttp.ClientSession() as session:
        for _ in range(5):
            await finished(session, quick, await submit(session, quick, SAVE))

        async def ids(query: str = "") -> list[str]:
            return list(await get_json(session, f"{quick.url}/history{query}"))

        every = await ids()
        assert len(every) >= 5
        assert await ids("?max_items=2") == every[-2:]  # the newest 2, oldest first
        assert await ids("?max_items=0") == []
        assert await ids(f"?max_items={len(every) + 5}") == every
        assert await ids("?offset=1") == every[1:]  # from the second oldest
        assert await ids("?offset=1&max_items=2") == every[1:3]
        assert await ids("?offset=0&max_items=0") == every[:1]  # the real loop adds before it counts
        assert await ids(f"?offset={len(every)}") == []
        assert list(await get_json(session, f"{quick.url}/api/history?max_items=1")) == every[-1:]
        one = await get_json(session, f"{quick.url}/history/{every[2]}")
        assert list(one) == [every[2]] and one[every[2]]["prompt"][1] == every[2]
        for query in ("?max_items=x", "?offset=1.5"):
            async with session.get(f"{quick.url}/history{query}") as r:
                assert r.status == 500, query  # server.py's int() raises

        async with session.post(quick.url + "/history", json={"delete": [every[0]]}) as r:
            assert r.status == 200
        assert await ids() == every[1:]


async def test_history_keeps_cap_plus_one_newest_and_extra_data_keeps_client_id(fakes):
    fake = fakes(env={"FAKE_COMFYUI_JOB_SECONDS": "0", "FAKE_COMFYUI_HISTORY_CAP": "3"})
    fake.wait_ready()
    extra = {"extra_pnginfo": {"workflow": {}}, "api_key_comfy_org": "secret"}
    async with aiohttp.ClientSession() as session:
        submitted = [await submit(session, fake, SAVE, client_id="c-1", extra_data=extra) for _ in range(6)]
        await wait_for(lambda: len(read_log(fake.base / "fake_executions.jsonl")) == 6, what="6 executions")
        history = await get_json(session, fake.url + "/history")
    # task_done drops the oldest only when it already holds more than the cap.
    assert list(history) == submitted[-4:]
    kept = history[submitted[-1]]["prompt"][3]
    assert kept == {"extra_pnginfo": {"workflow": {}}, "client_id": "c-1"}  # the API key is not kept
    assert "history_cap=3" in fake.log()


async def test_empty_image_feeds_size_batch_colour_and_prefix_subfolder(quick):
    graph = {
        "5": {"class_type": "EmptyImage", "inputs": {"width": 24, "height": 10, "batch_size": 3, "color": 0x336699}},
        "7": {"class_type": "ImageInvert", "inputs": {"image": ["5", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "shots/cat"}},
        "11": {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}},
    }
    extra = {"extra_pnginfo": {"workflow": {"nodes": [1, 2]}, "note": "猫"}}
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(quick.url + "/ws?clientId=painter") as ws:
            prompt_id = await submit(session, quick, graph, client_id="painter", extra_data=extra)
            executed = await receive_until(ws, lambda m: m["type"] == "executed" and m["data"]["node"] == "9")
            await receive_until(ws, lambda m: m["type"] == "execution_success")
            done = await receive_until(ws, lambda m: m["type"] == "executing" and m["data"]["node"] is None)
            assert done["data"]["prompt_id"] == prompt_id
        entry = await finished(session, quick, prompt_id)
        again = await finished(session, quick, await submit(session, quick, graph))

    saved = entry["outputs"]["9"]["images"]
    assert saved == [{"filename": f"cat_0000{n}_.png", "subfolder": "shots", "type": "output"} for n in (1, 2, 3)]
    assert executed["data"]["output"] == {"images": saved}
    assert [i["filename"] for i in again["outputs"]["9"]["images"]] == [f"cat_0000{n}_.png" for n in (4, 5, 6)]
    previews = entry["outputs"]["11"]["images"]
    assert len(previews) == 3 and all(p["type"] == "temp" and p["subfolder"] == "" for p in previews)
    assert previews[0]["filename"].startswith("ComfyUI_temp_") and previews[0]["filename"].endswith("_00001_.png")
    assert (quick.base / "temp" / previews[2]["filename"]).is_file()
    assert entry["meta"]["9"] == {"node_id": "9", "display_node": "9", "parent_node": None, "real_node_id": "9"}
    assert set(entry["prompt"][4]) == {"9", "11"}

    width, height, pixels, texts, order = png_facts(quick.base / "output" / "shots" / "cat_00002_.png")
    assert (width, height, pixels) == (24, 10, {bytes([0x33, 0x66, 0x99])})
    assert texts == [
        ("prompt", json.dumps(graph)),
        ("workflow", json.dumps({"nodes": [1, 2]})),
        ("note", json.dumps("猫")),
    ]
    assert order == [b"IHDR", b"tEXt", b"tEXt", b"tEXt", b"IDAT", b"IEND"]


async def test_pillow_reads_the_text_chunks(quick):
    image_module = pytest.importorskip("PIL.Image")
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 12, "batch_size": 1, "color": 0xFF0000}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "pil"}},
    }
    async with aiohttp.ClientSession() as session:
        entry = await finished(
            session, quick, await submit(session, quick, graph, extra_data={"extra_pnginfo": {"workflow": {"v": 1}}})
        )
    image = entry["outputs"]["2"]["images"][0]
    with image_module.open(quick.base / "output" / image["filename"]) as img:
        assert (img.size, img.mode) == ((16, 12), "RGB")
        assert img.text == {"prompt": json.dumps(graph), "workflow": json.dumps({"v": 1})}
        assert img.getpixel((3, 3)) == (255, 0, 0)


async def test_sizes_and_batch_are_capped_and_plain_saves_are_8x8(quick):
    big = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 5000, "height": 3000, "batch_size": 40, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "big"}},
    }
    async with aiohttp.ClientSession() as session:
        entry = await finished(session, quick, await submit(session, quick, big))
        plain = await finished(session, quick, await submit(session, quick, {"3": SAVE["9"]}))
        escape = await finished(
            session,
            quick,
            await submit(session, quick, {"4": {"class_type": "SaveImage", "inputs": {"filename_prefix": "../x"}}}),
        )
    images = entry["outputs"]["2"]["images"]
    assert len(images) == 16
    assert png_facts(quick.base / "output" / images[15]["filename"])[:2] == (2048, 2048)
    name = plain["outputs"]["3"]["images"][0]["filename"]
    assert png_facts(quick.base / "output" / name)[:2] == (8, 8)
    # A prefix that leaves the output folder is the real error, not a file elsewhere.
    assert escape["status"]["status_str"] == "error" and escape["outputs"] == {}
    event, data = escape["status"]["messages"][-1]
    assert event == "execution_error" and data["exception_type"] == "Exception"
    assert "outside the output folder" in data["exception_message"]
    assert not (quick.base / "x_00001_.png").exists()


async def test_disable_metadata_writes_no_text(fakes):
    fake = fakes(env={"FAKE_COMFYUI_JOB_SECONDS": "0"}, args=("--disable-metadata",))
    fake.wait_ready()
    async with aiohttp.ClientSession() as session:
        extra = {"extra_pnginfo": {"workflow": {}}}
        entry = await finished(session, fake, await submit(session, fake, SAVE, extra_data=extra))
    _w, _h, _pixels, texts, order = png_facts(fake.base / "output" / entry["outputs"]["9"]["images"][0]["filename"])
    assert texts == [] and order == [b"IHDR", b"IDAT", b"IEND"]


async def test_requested_failures_write_nothing_and_report_like_execution_error(quick):
    flagged = {
        "3": {"class_type": "KSampler", "inputs": {"seed": 1, "fake_fail": True, "model": ["4", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "x.safetensors"}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "never"}},
    }
    worded = {
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat FAKE_FAIL please"}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "never"}},
    }
    log_path = quick.base / "fake_executions.jsonl"
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(quick.url + "/ws?clientId=failing") as ws:
            first = await submit(session, quick, flagged, client_id="failing")
            error = await receive_until(ws, lambda m: m["type"] == "execution_error")
        entry = await finished(session, quick, first)
        second = await finished(session, quick, await submit(session, quick, worded))

    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    assert entry["outputs"] == {} and entry["meta"] == {}
    events = [event for event, _data in entry["status"]["messages"]]
    assert events == ["execution_start", "execution_cached", "execution_error"]
    data = entry["status"]["messages"][-1][1]
    assert error["data"] == data
    assert set(data) == {
        "prompt_id",
        "node_id",
        "node_type",
        "executed",
        "exception_message",
        "exception_type",
        "traceback",
        "current_inputs",
        "current_outputs",
        "timestamp",
    }
    assert (data["prompt_id"], data["node_id"], data["node_type"]) == (first, "3", "KSampler")
    assert data["executed"] == ["4"] and data["exception_type"] == "RuntimeError"
    assert "fake_fail" in data["exception_message"]
    assert data["traceback"] and all(isinstance(line, str) for line in data["traceback"])
    assert data["current_inputs"]["seed"] == [1] and data["current_outputs"] == []
    assert second["status"]["messages"][-1][1]["node_id"] == "6"
    assert not (quick.base / "output" / "never_00001_.png").exists()
    logged = {line["prompt_id"]: line for line in read_log(log_path)}
    assert logged[first]["status"] == "error" and logged[first]["files"] == []
    assert "!!! Exception during processing !!!" in quick.log()


async def test_fail_every_and_the_execution_log(fakes, tmp_path):
    log_path = tmp_path / "elsewhere" / "executions.jsonl"
    fake = fakes(
        env={
            "FAKE_COMFYUI_JOB_SECONDS": "0",
            "FAKE_COMFYUI_FAIL_EVERY": "2",
            "FAKE_COMFYUI_EXECUTION_LOG": str(log_path),
        }
    )
    fake.wait_ready()
    graphs = [{"9": {"class_type": "SaveImage", "inputs": {"filename_prefix": f"n{i}"}}} for i in range(4)]
    async with aiohttp.ClientSession() as session:
        ids = [await submit(session, fake, graph) for graph in graphs]
        entries = [await finished(session, fake, prompt_id) for prompt_id in ids]
    assert [e["status"]["status_str"] for e in entries] == ["success", "error", "success", "error"]
    assert entries[1]["status"]["messages"][-1][1]["node_id"] == "9"

    lines = read_log(log_path)
    assert not (fake.base / "fake_executions.jsonl").exists()
    assert [line["prompt_id"] for line in lines] == ids
    assert [line["status"] for line in lines] == ["success", "error", "success", "error"]
    for line, entry, graph in zip(lines, entries, graphs, strict=True):
        assert set(line) == {"prompt_id", "number", "status", "started", "finished", "files", "graph_digest"}
        assert line["number"] == entry["prompt"][0]
        assert line["files"] == entry["outputs"].get("9", {}).get("images", [])
        assert line["graph_digest"] == digest(graph)
        assert line["started"] <= line["finished"] <= time.time()
    assert lines[0]["files"] == [{"filename": "n0_00001_.png", "subfolder": "", "type": "output"}]
    assert sorted(p.name for p in (fake.base / "output").iterdir()) == ["n0_00001_.png", "n2_00001_.png"]

    fake.proc.kill()  # the log is on disk already: nothing of it waits in the process
    fake.wait_exit(5)
    assert read_log(log_path) == lines


async def test_crash_after_save_leaves_files_without_history(fakes):
    fake = fakes(env={"FAKE_COMFYUI_JOB_SECONDS": "0", "FAKE_COMFYUI_CRASH_AFTER_SAVE": "1"})
    fake.wait_ready()
    async with aiohttp.ClientSession() as session:
        await submit(session, fake, SAVE)
    assert fake.wait_exit(10) == 3
    assert [p.name for p in (fake.base / "output").iterdir()] == ["hist_00001_.png"]
    assert not (fake.base / "fake_executions.jsonl").exists()
    assert "FAKE_COMFYUI_CRASH_AFTER_SAVE" in fake.log()
