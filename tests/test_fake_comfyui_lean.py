"""The lean fake ComfyUI (tests/fake_comfyui/lean.py): what comfyhub asks of every online
instance, with the imports of a bare interpreter — and comfyhub runs it like ComfyUI.

It runs as a real subprocess, as bench/scale.py runs it: a folder holding lean.py and a
two-line main.py that imports it, `python main.py ...` with that folder as cwd.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.app import running_app
from tests.support.comfy import new_project, pid_alive, service
from tests.support.net import wait_for_sync

LEAN = Path(__file__).resolve().parent / "fake_comfyui" / "lean.py"


def lean_repo(folder: Path) -> Path:
    """A COMFYUI_REPO_PATH whose main.py runs the lean stand-in."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(LEAN, folder / "lean.py")
    (folder / "main.py").write_text("import lean\n\nlean.main()\n")
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Lean:
    def __init__(self, tmp: Path, custom_nodes: bool = True, port: int | None = None):
        self.repo = lean_repo(tmp / "repo")
        self.base = tmp / "instance"
        (self.base / "custom_nodes").mkdir(parents=True) if custom_nodes else self.base.mkdir(parents=True)
        self.port = port or free_port()
        self.log_path = tmp / "lean.log"
        self.argv = [
            *("main.py", "--listen", "127.0.0.1", "--port", str(self.port), "--disable-auto-launch"),
            *("--base-directory", str(self.base), "--database-url", f"sqlite:///{self.base}/user/comfyui.db", "--cpu"),
        ]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, *self.argv],
                cwd=self.repo,
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                preexec_fn=_default_sigint,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def listening(self) -> bool:
        if self.proc.poll() is not None:
            pytest.fail(f"lean fake exited with {self.proc.returncode}:\n{self.log()}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def lean(tmp_path):
    started: list[Lean] = []

    def start(**kwargs) -> Lean:
        fake = Lean(tmp_path / f"l{len(started)}", **kwargs)
        started.append(fake)
        return fake

    yield start
    for fake in started:
        fake.stop()


def test_answers_what_comfyhub_asks_on_one_kept_alive_connection(lean):
    fake = lean()
    wait_for_sync(fake.listening, what="lean fake listening")
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=5)
    answers = {}
    for path in ("/system_stats", "/queue", "/api/queue", "/history", "/history?max_items=3", "/history/abc", "/nope"):
        conn.request("GET", path)
        r = conn.getresponse()
        body = r.read()
        answers[path] = (r.status, json.loads(body) if r.status == 200 else None)
    conn.close()
    status, stats = answers["/system_stats"]
    assert status == 200
    assert stats["system"]["argv"] == fake.argv  # the heartbeat's "is it ours" check reads this
    assert stats["devices"][0]["type"] == "cpu"
    assert answers["/queue"] == answers["/api/queue"] == (200, {"queue_running": [], "queue_pending": []})
    assert answers["/history"] == answers["/history?max_items=3"] == answers["/history/abc"] == (200, {})
    assert answers["/nope"][0] == 404
    for name in ("models", "input", "output", "user", "temp"):
        assert (fake.base / name).is_dir()
    assert (fake.base / "user" / "comfyui.db").is_file()


def test_tells_the_identity_the_extension_would_without_checking_the_secret(lean, tmp_path, monkeypatch):
    """Light enough for a thousand: no extension, but the heartbeat's identity check passes."""
    secret_file = tmp_path / "secret"
    secret_file.write_text("lean-secret")
    monkeypatch.setenv("COMFYHUB_SECRET_FILE", str(secret_file))
    fake = lean()
    wait_for_sync(fake.listening, what="lean fake listening")
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=5)
    for headers in ({}, {"X-Comfyhub-Secret": "lean-secret"}):
        conn.request("GET", "/system_stats", headers=headers)
        r = conn.getresponse()
        r.read()
        assert r.status == 200
        assert r.getheader("X-Comfyhub-Instance") == hashlib.sha256(b"lean-secret").hexdigest()
        assert r.getheader("X-Comfyhub-Binding") == ""
    conn.close()


def test_imports_no_more_than_a_bare_interpreter_and_three_c_modules():
    # -S: no site-packages hooks; os is what `site` would have imported anyway.
    code = "import os, sys; before = set(sys.modules); sys.path.insert(0, sys.argv[1]); import lean; "
    code += "print(' '.join(sorted(set(sys.modules) - before)))"
    added = subprocess.run(
        [sys.executable, "-S", "-c", code, str(LEAN.parent)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert set(added) <= {"lean", "_signal", "_socket", "select"}, added


def test_exits_1_without_custom_nodes(lean):
    fake = lean(custom_nodes=False)
    assert fake.proc.wait(10) == 1
    assert "FileNotFoundError" in fake.log() and "custom_nodes" in fake.log()


def test_a_taken_port_exits_1_with_address_already_in_use(lean):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        fake = lean(port=taken.getsockname()[1])
        assert fake.proc.wait(10) == 1
    assert "address already in use" in fake.log()


def test_sigint_stops_it_at_once(lean):
    fake = lean()
    wait_for_sync(fake.listening, what="lean fake listening")
    fake.proc.send_signal(signal.SIGINT)
    assert fake.proc.wait(5) == 0
    assert "Stopped server" in fake.log()


async def test_comfyhub_opens_sweeps_and_stops_it(db_url, tmp_path):
    repo = lean_repo(tmp_path / "lean-repo")
    async with running_app(db_url, tmp_path / "hub", comfyui_repo_path=repo) as c:
        h = c.headers_of["alice"]
        project = await new_project(c, h, "LEAN-1")
        r = await c.post(f"/api/projects/{project}/open_comfy", headers=h)
        assert r.status_code == 200 and r.json()["data"]["status"] == "online", r.text
        pid = (await service(c, h, project))["pid"]
        assert await c.manager.heartbeat_once() == {"online": 1, "offline": 0}
        queue = await c.get(f"/api/projects/{project}/queue", headers=h)
        assert queue.status_code == 200, queue.text
        assert (await c.post(f"/api/projects/{project}/stop_comfy", headers=h)).status_code == 200
        assert not pid_alive(pid)
        assert os.path.isdir(tmp_path / "hub" / "instances")
