"""`comfyhub doctor`: every check can fail, and each failure says how to fix it."""

import os
import socket
import subprocess
import sys

import pytest


def doctor(cwd, **env):
    return subprocess.run([sys.executable, "-m", "comfyhub.cli", "doctor"], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **env})


@pytest.fixture
def ready(tmp_path):
    """A folder where everything passes: migrated database, a ComfyUI-looking repo, a python with 'torch'."""
    repo = tmp_path / "comfy"
    repo.mkdir()
    (repo / "main.py").write_text("")
    fake_torch = tmp_path / "site" / "torch"
    fake_torch.mkdir(parents=True)
    (fake_torch / "__init__.py").write_text("__version__ = '0.0-fake'\nclass cuda:\n    is_available = staticmethod(lambda: False)\n")
    python = tmp_path / "python"
    python.write_text(f"#!/bin/sh\nPYTHONPATH={tmp_path / 'site'} exec {sys.executable} \"$@\"\n")
    python.chmod(0o755)
    r = subprocess.run([sys.executable, "-m", "comfyhub.cli", "user", "create", "x", "--password-stdin"], cwd=tmp_path,
                       input="x-password\n", capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return {"COMFYUI_REPO_PATH": str(repo), "COMFYUI_PYTHON": str(python), "COMFYUI_GPUS": "none",
            "COMFYUI_PORT_RANGE": "47200-47209"}


def test_all_checks_pass_when_ready(tmp_path, ready):
    r = doctor(tmp_path, **ready)
    assert r.returncode == 0, r.stdout
    assert "ok    comfyui torch: torch 0.0-fake, CUDA available: False" in r.stdout
    assert "fail" not in r.stdout


def _squat(port):
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


@pytest.mark.parametrize(
    "case, change, expected, fix",
    [
        ("settings", {"COMFYUI_STARTUP_TIMEOUT_SECONDS": "soon"}, "fail  settings", "fix the named setting"),
        ("database", {"COMFYHUB_DATABASE_URL": "sqlite+aiosqlite:////nonexistent/dir/x.db"}, "fail  database",
         "run `comfyhub serve` once"),
        ("not configured", {"COMFYUI_REPO_PATH": "", "COMFYUI_PYTHON": ""}, "fail  comfyui:",
         "comfyhub comfyui install"),
        ("no main.py", {"COMFYUI_REPO_PATH": "/tmp"}, "fail  comfyui repo", "COMFYUI_REPO_PATH"),
        ("python missing", {"COMFYUI_PYTHON": "/no/python"}, "fail  comfyui python", "COMFYUI_PYTHON"),
        ("no torch", {"COMFYUI_PYTHON": sys.executable}, "fail  comfyui torch: import torch failed", "pip install torch"),
        ("dirs", {"COMFYUI_LOG_DIR": "/proc/version/logs"}, "fail  log dir", "writable"),
        ("ports", {"COMFYUI_PORT_RANGE": "47299-47299"}, "fail  port range", "COMFYUI_PORT_RANGE"),
        ("listen", {"COMFYUI_LISTEN": "0.0.0.0"}, "warn  listen address", "COMFYUI_LISTEN=127.0.0.1"),
        ("gpus", {"COMFYUI_GPUS": "3"}, "fail  gpus", "COMFYUI_GPUS"),
    ],
)
def test_each_check_fails_with_its_fix(tmp_path, ready, case, change, expected, fix):
    squatter = _squat(47299) if case == "ports" else None
    try:
        r = doctor(tmp_path, **{**ready, **change})
    finally:
        if squatter:
            squatter.close()
    assert expected in r.stdout, r.stdout
    line = r.stdout.split(expected, 1)[1].split("\n\n")[0]
    assert "fix:" in line and fix in line, r.stdout
    assert r.returncode == (0 if case == "listen" else 1)
