"""Settings: defaults, validation with one clear line, the generated secret key."""

import os
import stat
import subprocess
import sys

import pytest

from comfyhub.config import SettingsError, load_settings


def test_defaults_are_the_contract_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = load_settings(_env_file=None)
    assert s.port_range == (8200, 8299)
    assert s.comfyui_listen == "127.0.0.1"
    assert s.comfyui_startup_timeout_seconds == 240
    assert s.comfyui_heartbeat_interval_seconds == 30
    assert s.comfyui_health_timeout_seconds == 2.5
    assert s.comfyui_instance_base_dir == tmp_path / "runtime/comfy_instances"
    assert s.comfyui_log_dir == tmp_path / "runtime/comfy_logs"
    assert s.database_url == f"sqlite+aiosqlite:///{tmp_path}/runtime/comfyhub.db"


def test_defaults_protect_a_shared_box(tmp_path, monkeypatch):
    """Out of the box one user cannot take every port and GPU, and a forgotten tab is culled.
    (The tests' own settings lift both: tests/conftest.py make_settings, tests/support/hub.py.)"""
    monkeypatch.chdir(tmp_path)
    s = load_settings(_env_file=None)
    assert s.comfyui_max_instances_per_user == 2
    assert s.comfyui_idle_timeout_seconds == 2 * 3600


@pytest.mark.parametrize(
    "name, value",
    [
        ("COMFYUI_PORT_RANGE", "9000-8000"),
        ("COMFYUI_PORT_RANGE", "abc"),
        ("COMFYUI_PORT_RANGE", "0-10"),
        ("COMFYUI_STARTUP_TIMEOUT_SECONDS", "soon"),
        ("COMFYUI_HEARTBEAT_INTERVAL_SECONDS", "-1"),
        ("COMFYUI_HEALTH_TIMEOUT_SECONDS", "0"),
        ("COMFYUI_LAUNCHER", "docker"),
        ("COMFYUI_GPUS", "first"),
        ("COMFYHUB_DATABASE_URL", "mysql://x"),
        ("COMFYUI_EXTRA_ARGS", "--cpu 'unclosed"),
    ],
)
def test_invalid_value_names_the_setting(name, value, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as err:
        load_settings(_env_file=None)
    assert name in str(err.value)
    assert len(str(err.value).splitlines()) == 1


def test_env_file_is_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("COMFYUI_PORT_RANGE=9100-9110\nCOMFYUI_EXTRA_ARGS=--cpu --lowvram\n")
    s = load_settings()
    assert s.port_range == (9100, 9110)
    assert s.extra_args == ["--cpu", "--lowvram"]


def test_serve_refuses_bad_setting_with_one_line(tmp_path):
    env = {**os.environ, "COMFYUI_PORT_RANGE": "9000-8000"}
    r = subprocess.run(
        [sys.executable, "-m", "comfyhub.cli", "serve"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0
    assert "COMFYUI_PORT_RANGE" in r.stderr
    assert not (tmp_path / "runtime" / "comfyhub.db").exists()


def test_secret_key_generated_once_and_private(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = load_settings(_env_file=None)
    key = s.secret_key()
    path = tmp_path / "runtime" / "secret_key"
    assert len(key) >= 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_settings(_env_file=None).secret_key() == key


def test_configured_secret_key_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COMFYHUB_SECRET_KEY", "from-env")
    assert load_settings(_env_file=None).secret_key() == "from-env"
    assert not (tmp_path / "runtime" / "secret_key").exists()
