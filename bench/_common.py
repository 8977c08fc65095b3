"""Shared helpers for the benchmarks in bench/: paths, a temp workspace, a live server,
statistics, machine facts and process clean-up.

Every benchmark is a script that can run on its own (`python bench/<name>.py`) and
prints its numbers; with `--json FILE` it also writes them for bench/run_all.py.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psutil  # noqa: E402

from comfyhub.launchers.base import argv_value  # noqa: E402
from comfyhub.launchers.process import read_secret  # noqa: E402
from comfyhub.net.ports import port_is_free  # noqa: E402


def instance_headers(port: int) -> dict[str, str]:
    """The secret header that lets a benchmark talk to an instance comfyhub started, directly
    (as comfyhub does): read from the file its process was given. {} when it has none."""
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmdline = proc.info["cmdline"] or []
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if "main.py" in cmdline and argv_value(cmdline, "--port") == str(port):
            secret = read_secret(argv_value(cmdline, "--base-directory") or "/nonexistent")
            return {"X-Comfyhub-Secret": secret} if secret else {}
    return {}


FAKE_COMFYUI = ROOT / "tests" / "fake_comfyui"
PYTHON = Path(sys.executable)  # run the benchmarks with the project's venv python
ADMIN_USER = "benchadmin"
ADMIN_PASSWORD = "bench-password-123"

# Ports handed to instances: outside the kernel's ephemeral range (32768+), where the
# tests pick their ports, so a benchmark and a test run do not fight over ports.
PORT_SEARCH_START = 20000


def clean_environment() -> None:
    """A developer's own COMFYUI_*/COMFYHUB_*/FAKE_COMFYUI_* settings must not leak in."""
    for key in list(os.environ):
        if key.startswith(("COMFYUI_", "COMFYHUB_", "FAKE_COMFYUI_")):
            del os.environ[key]


# --- docs/benchmarks.md ---------------------------------------------------------------

DOC = ROOT / "docs" / "benchmarks.md"


def write_doc_section(section: str, generated: str, begin: str, end: str, after: str | None = None) -> None:
    """Put `generated` (which starts with `begin` and ends with `end`) into `## section`.

    Only the part between the markers is replaced, so hand-written text in the section
    survives; a missing section is created after `## after` (or at the end).
    """
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    heading = re.compile(rf"^## {re.escape(section)}\s*$", re.M)
    m = heading.search(text)
    if m is None:
        anchor = re.compile(rf"^## {re.escape(after)}\s*$", re.M).search(text) if after else None
        nxt = re.compile(r"^## ", re.M).search(text, anchor.end()) if anchor else None
        at = nxt.start() if nxt else len(text)
        block = f"## {section}\n\n{generated}\n"
        text = text[:at].rstrip("\n") + "\n\n" + block + ("\n" + text[at:] if at < len(text) else "")
    else:
        nxt = re.compile(r"^## ", re.M).search(text, m.end())
        body_end = nxt.start() if nxt else len(text)
        body = text[m.end() : body_end]
        if begin in body and end in body:
            b, e = body.index(begin), body.index(end) + len(end)
            body = body[:b] + generated + body[e:]
        else:
            body = f"\n\n{generated}\n\n"
        text = text[: m.end()] + body + text[body_end:]
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)


# --- ports ---------------------------------------------------------------------------


def _port_free(port: int) -> bool:
    return port_is_free("127.0.0.1", port)


def free_port_range(size: int, start: int = PORT_SEARCH_START) -> tuple[int, int]:
    """The first run of `size` consecutive free loopback ports at or above `start`."""
    low = start
    while low + size <= 32000:
        busy = next((p for p in range(low, low + size) if not _port_free(p)), None)
        if busy is None:
            return low, low + size - 1
        low = busy + 1
    raise RuntimeError(f"no {size} consecutive free ports between {start} and 32000")


# --- statistics ----------------------------------------------------------------------


def summary(samples_s: list[float]) -> dict:
    """median / min / max / p90 / n of samples given in seconds, reported in milliseconds."""
    ms = sorted(x * 1000 for x in samples_s)
    p90 = ms[min(len(ms) - 1, int(round(0.9 * (len(ms) - 1))))]
    return {
        "n": len(ms),
        "median_ms": round(statistics.median(ms), 3),
        "min_ms": round(ms[0], 3),
        "max_ms": round(ms[-1], 3),
        "p90_ms": round(p90, 3),
    }


def fmt(s: dict) -> str:
    return (
        f"median {s['median_ms']:.2f} ms, min {s['min_ms']:.2f}, max {s['max_ms']:.2f}, "
        f"p90 {s['p90_ms']:.2f} (n={s['n']})"
    )


# --- machine -------------------------------------------------------------------------


def machine() -> dict:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    # run_all.py --commit benchmarks a clean export of a commit and says which one here.
    commit = os.environ.get("BENCH_SOURCE_LABEL", "")
    if not commit:
        with contextlib.suppress(Exception):
            commit = subprocess.run(
                ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
            dirty = subprocess.run(
                ["git", "-C", str(ROOT), "status", "--porcelain", "--", "comfyhub"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            if dirty:
                commit += " (working tree; comfyhub/ has uncommitted changes)"
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "commit": commit,
    }


# --- processes -----------------------------------------------------------------------


def processes_under(path: Path | str) -> list[psutil.Process]:
    """Live (non-zombie) processes with `path` somewhere in an argument of their command line."""
    needle = str(path)
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if any(needle in arg for arg in proc.info["cmdline"] or []):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def instance_processes(base_dir: Path | str) -> list[psutil.Process]:
    """Processes whose command line has exactly this instance folder as an argument."""
    needle = str(base_dir)
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and needle in (proc.info["cmdline"] or []):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def kill_processes_under(path: Path | str) -> int:
    """SIGCONT then SIGKILL every process naming `path`; returns how many were found."""
    procs = processes_under(path)
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGCONT)
            proc.kill()
    psutil.wait_procs(procs, timeout=5)
    return len(procs)


# --- workspace and live server -------------------------------------------------------


class Workspace:
    """A temp dir holding the server's working dir, database, instances and logs.

    On exit every process naming the temp dir is killed and the dir is removed.
    """

    def __init__(self, prefix: str):
        self.root = Path(tempfile.mkdtemp(prefix=f"comfyhub-bench-{prefix}-"))
        self.instances = self.root / "instances"
        self.logs = self.root / "logs"
        self.shared = self.root / "shared"
        (self.shared / "custom_nodes").mkdir(parents=True)
        (self.shared / "models").mkdir(parents=True)
        self.leftovers = 0

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc) -> None:
        self.leftovers = kill_processes_under(self.root)
        if self.leftovers:
            print(f"  clean-up: killed {self.leftovers} leftover process(es) under {self.root}", file=sys.stderr)
        shutil.rmtree(self.root, ignore_errors=True)

    def server_env(self, port_range: tuple[int, int], **extra: str) -> dict[str, str]:
        env = {
            "COMFYHUB_DATABASE_URL": f"sqlite+aiosqlite:///{self.root / 'comfyhub.db'}",
            "COMFYHUB_SECRET_KEY": "bench-secret-key-not-for-production",
            "COMFYHUB_ADMIN_USER": ADMIN_USER,
            "COMFYHUB_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "COMFYUI_REPO_PATH": str(FAKE_COMFYUI),
            "COMFYUI_PYTHON": str(PYTHON),
            "COMFYUI_PORT_RANGE": f"{port_range[0]}-{port_range[1]}",
            "COMFYUI_INSTANCE_BASE_DIR": str(self.instances),
            "COMFYUI_LOG_DIR": str(self.logs),
            "COMFYUI_CUSTOM_NODES_DIR": str(self.shared / "custom_nodes"),
            "COMFYUI_MODELS_DIR": str(self.shared / "models"),
            "COMFYUI_STARTUP_TIMEOUT_SECONDS": "60",
            "COMFYUI_HEARTBEAT_INTERVAL_SECONDS": "3600",  # no sweep during a measurement
            "COMFYUI_STOP_INSTANCES_ON_EXIT": "true",
            # one user opens many instances, and none may be culled mid-measurement
            "COMFYUI_MAX_INSTANCES_PER_USER": "0",
            "COMFYUI_IDLE_TIMEOUT_SECONDS": "0",
        }
        env.update(extra)
        return env


@contextlib.contextmanager
def live_server(ws: Workspace, port_range: tuple[int, int], **extra_env: str):
    """`comfyhub serve` (tests.support.server.LiveServer) on SQLite in the workspace."""
    from tests.support.server import LiveServer

    server = LiveServer(ws.root / "work", env=ws.server_env(port_range, **extra_env))
    try:
        server.start(timeout=60)
        yield server
    except BaseException:
        # The workspace (and the server's log) is about to be deleted: show the log's end.
        tail = "\n".join(server.output().splitlines()[-60:])
        print(f"--- last lines of the comfyhub serve log ---\n{tail}\n---", file=sys.stderr)
        raise
    finally:
        server.stop()


def login_token(base_url: str) -> str:
    r = httpx.post(
        base_url + "/api/auth/login",
        json={"username": ADMIN_USER, "password": ADMIN_PASSWORD},
        timeout=30,
        trust_env=False,
    )
    r.raise_for_status()
    return r.json()["data"]["token"]


def api_client(server, timeout: float = 120) -> httpx.Client:
    """A keep-alive client to the server, logged in (bearer) as the benchmark admin."""
    return httpx.Client(
        base_url=server.url,
        timeout=timeout,
        trust_env=False,
        headers={"Authorization": f"Bearer {login_token(server.url)}"},
    )


def create_project(client: httpx.Client, code: str) -> int:
    r = client.post("/api/projects", json={"name": code, "code": code})
    assert r.status_code == 201, r.text
    return r.json()["data"]["id"]


def user_id(client: httpx.Client) -> int:
    return client.get("/api/auth/me").json()["data"]["id"]


# --- script plumbing -----------------------------------------------------------------


def parse_args(description: str, **extra: tuple[type, object, str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--json", type=Path, help="also write the result to this file")
    for name, (kind, default, help_) in extra.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=default, help=help_)
    return parser.parse_args()


def finish(result: dict, json_path: Path | None) -> int:
    """Write the JSON result if asked; exit 1 only when a correctness check failed."""
    result.setdefault("machine", machine())
    if json_path:
        json_path.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    ok = result.get("checks_ok", True)
    if not ok:
        print("CORRECTNESS CHECK FAILED", file=sys.stderr)
    return 0 if ok else 1


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"
