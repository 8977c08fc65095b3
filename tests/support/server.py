"""`comfyhub serve` as a real subprocess, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.support.net import free_port, wait_for_sync


class LiveServer:
    """A running `comfyhub serve` in `workdir` with `env` added to the environment."""

    def __init__(
        self,
        workdir: Path,
        env: dict[str, str] | None = None,
        workers: int = 1,
        port: int | None = None,
        log_level: str = "warning",
    ):
        self.workdir = workdir
        self.log_level = log_level
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        # The instance origin's port: a free one of its own (`--port` + 1 may be taken here).
        self.instance_port = int(self.env.get("COMFYHUB_INSTANCE_PORT") or 0)
        while self.instance_port in (0, self.port):
            self.instance_port = free_port()
        self.env["COMFYHUB_INSTANCE_PORT"] = str(self.instance_port)
        self.comfy = f"http://127.0.0.1:{self.instance_port}"  # where ComfyUI is served
        self.workers = workers
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / f"serve-{self.port}.out"

    def start(self, timeout: float = 180) -> LiveServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "comfyhub.cli",
                "serve",
                "--port",
                str(self.port),
                "--workers",
                str(self.workers),
                "--log-level",
                self.log_level,
            ],
            cwd=self.workdir,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for_sync(self._ready, timeout=timeout, interval=0.1, what=f"comfyhub serve on {self.port}")
        except BaseException:
            self.stop(signal.SIGKILL)  # a server that never came up must not outlive the test
            raise
        return self

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"comfyhub serve exited {self.proc.returncode}:\n{self.output()}")
        try:
            return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            if self.proc is not None and not self._log.closed:
                self._log.close()
            return self.proc.returncode if self.proc else None
        os.killpg(self.proc.pid, sig) if sig == signal.SIGKILL else self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def login(self, username: str, password: str) -> dict:
        r = httpx.post(self.url + "/api/auth/login", json={"username": username, "password": password}, timeout=10)
        assert r.status_code == 200, r.text
        return {"Authorization": f"Bearer {r.json()['data']['token']}"}

    def enter(self, client: httpx.Client, project_id: int, path: str = "") -> httpx.Response:
        """The browser's way into a project's ComfyUI: `client` (logged in on the main origin)
        follows the hand-off to the instance origin, and its jar keeps the instance cookie."""
        hop = client.get(f"{self.url}/comfy/{project_id}/{path}", follow_redirects=False)
        assert hop.status_code == 303, hop.text
        landed = client.get(hop.headers["location"], follow_redirects=False)
        assert landed.status_code == 303, landed.text
        return landed

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def initial_admin_password(workdir: Path, timeout: float = 10) -> str:
    """The generated first password, as `comfyhub serve` keeps it: the file holds it alone."""
    path = workdir / "runtime" / "initial_admin_password"
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return path.read_text().removesuffix("\n")
