"""`comfyhub doctor`: every check can fail, and each failure says how to fix it."""

import os
import socket
import subprocess
import sys

import pytest


def doctor(cwd, **env):
    return subprocess.run(
        [sys.executable, "-m", "comfyhub.cli", "doctor"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )


@pytest.fixture
def ready(tmp_path):
    """A folder where everything passes: migrated database, a ComfyUI-looking repo, a python with 'torch'."""
    repo = tmp_path / "comfy"
    repo.mkdir()
    (repo / "main.py").write_text("")
    fake_torch = tmp_path / "site" / "torch"
    fake_torch.mkdir(parents=True)
    (fake_torch / "__init__.py").write_text(
        "__version__ = '0.0-fake'\nclass cuda:\n    is_available = staticmethod(lambda: False)\n"
    )
    (tmp_path / "site" / "torchvision").mkdir()
    (tmp_path / "site" / "torchvision" / "__init__.py").write_text("")
    python = tmp_path / "python"
    python.write_text(f'#!/bin/sh\nPYTHONPATH={tmp_path / "site"} exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    r = subprocess.run(
        [sys.executable, "-m", "comfyhub.cli", "user", "create", "x", "--password-stdin"],
        cwd=tmp_path,
        input="x-password\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    return {
        "COMFYUI_REPO_PATH": str(repo),
        "COMFYUI_PYTHON": str(python),
        "COMFYUI_GPUS": "none",
        "COMFYUI_PORT_RANGE": "47200-47209",
    }


def test_all_checks_pass_when_ready(tmp_path, ready):
    r = doctor(tmp_path, **ready)
    assert r.returncode == 0, r.stdout
    assert "ok    comfyui torch: torch 0.0-fake, CUDA available: False" in r.stdout
    assert not [line for line in r.stdout.splitlines() if line.startswith(("fail", "warn"))], r.stdout
    assert r.stdout.endswith(" ok, 0 warnings, 0 failed\n")


def _squat(port):
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


@pytest.mark.parametrize(
    "case, change, expected, fix",
    [
        ("settings", {"COMFYUI_STARTUP_TIMEOUT_SECONDS": "soon"}, "fail  settings", "fix the named setting"),
        (
            "database",
            {"COMFYHUB_DATABASE_URL": "sqlite+aiosqlite:////nonexistent/dir/x.db"},
            "fail  database",
            "run `.venv/bin/comfyhub serve` once",
        ),
        (
            "not configured",
            {"COMFYUI_REPO_PATH": "", "COMFYUI_PYTHON": ""},
            "fail  comfyui:",
            "comfyhub comfyui install",
        ),
        ("no main.py", {"COMFYUI_REPO_PATH": "/tmp"}, "fail  comfyui repo", "COMFYUI_REPO_PATH"),
        ("python missing", {"COMFYUI_PYTHON": "/no/python"}, "fail  comfyui python", "COMFYUI_PYTHON"),
        (
            "no torch",
            {"COMFYUI_PYTHON": sys.executable},
            "fail  comfyui torch: import torch, torchvision failed",
            "pip install torch torchvision",
        ),
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


# --- with COMFYUI_LAUNCHER=ray ----------------------------------------------------------


def test_ray_cluster_unreachable_fails_fast_with_its_fix(tmp_path, ready):
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    r = doctor(tmp_path, **ready, COMFYUI_LAUNCHER="ray", RAY_ADDRESS=address)
    assert f"fail  ray cluster: cannot join RAY_ADDRESS={address}" in r.stdout, r.stdout
    assert "fix: start the cluster" in r.stdout
    assert r.returncode == 1


def test_ray_cluster_checks_nodes_gpus_shared_folders_and_ports(tmp_path, ready, ray_cluster):
    import ray

    env = {**ready, "COMFYUI_LAUNCHER": "ray", "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    r = doctor(tmp_path, **env)
    assert "ok    ray cluster: 3 nodes, 2 GPUs" in r.stdout, r.stdout
    assert "ok    ray gpus" in r.stdout
    assert "ok    shared folders: every node sees" in r.stdout  # the nodes run on this machine
    assert "warn  node ports" in r.stdout and "only the comfyhub host" in r.stdout
    assert "listen address" not in r.stdout  # the nodes' addresses, not COMFYUI_LISTEN, matter here
    assert r.returncode == 0, r.stdout

    r = doctor(tmp_path, **{**env, "COMFYUI_GPUS_PER_INSTANCE": "4", "COMFYUI_PYTHON": "/no/python"})
    assert "fail  ray gpus: COMFYUI_GPUS_PER_INSTANCE=4 but no node has more than 1 GPUs" in r.stdout, r.stdout
    assert "fail  shared folders: nodes missing what instances need" in r.stdout and "/no/python" in r.stdout
    assert "fix: put COMFYUI_INSTANCE_BASE_DIR" in r.stdout
    assert r.returncode == 1


# --- what a newcomer reads first: which .env, and a summary that counts warnings ---------


def test_says_which_env_file_it_read(tmp_path, ready):
    r = doctor(tmp_path, **ready)
    first = r.stdout.splitlines()[0]
    assert first == f"ok    settings: all valid, read from the environment and the defaults (no .env in {tmp_path})"

    (tmp_path / ".env").write_text("COMFYUI_LISTEN=127.0.0.1\n")
    r = doctor(tmp_path, **ready)
    env_file = (tmp_path / ".env").resolve()
    assert r.stdout.splitlines()[0].endswith(f"read from {env_file} and the environment (the environment wins)")

    # a bad value names the file it may have come from
    (tmp_path / ".env").write_text("COMFYUI_PORT_RANGE=9-1\n")
    r = doctor(tmp_path, **{k: v for k, v in ready.items() if k != "COMFYUI_PORT_RANGE"})
    assert r.stdout.startswith("fail  settings: invalid setting COMFYUI_PORT_RANGE") and str(env_file) in r.stdout


def test_summary_counts_warnings_apart_from_passes(tmp_path, ready):
    r = doctor(tmp_path, **ready, COMFYUI_LISTEN="0.0.0.0")
    lines = r.stdout.splitlines()
    oks = sum(line.startswith("ok ") for line in lines)
    assert "warn  listen address" in r.stdout
    assert lines[-1] == f"{oks} ok, 1 warning, 0 failed, see the fixes above", r.stdout
    assert r.returncode == 0

    r = doctor(tmp_path, **ready)
    assert r.stdout.splitlines()[-1] == f"{oks + 1} ok, 0 warnings, 0 failed"


def test_nvml_is_explained_once_by_doctor(tmp_path, ready):
    """Without an NVIDIA driver (as here) doctor says so in its gpus line, and nowhere else;
    with one it names the GPUs, once too."""
    r = doctor(tmp_path, **{**ready, "COMFYUI_GPUS": "auto"})
    assert "NVML" not in r.stderr, r.stderr
    said = [line for line in r.stdout.splitlines() if "NVML" in line]
    assert len(said) == 1 and said[0][6:].startswith("gpus: NVML"), r.stdout
