"""scripts/test.sh asks for what the tests need: a CJK font among them, checked with fc-list
(without one, Chromium draws Chinese as boxes in the browser tests and the screenshots)."""

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_test_sh(tmp_path, fonts: str) -> subprocess.CompletedProcess:
    """scripts/test.sh as a non-root user, with fc-list answering `fonts`. apt-get and
    service are stubs that fail, so nothing is ever installed from here."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stubs = {
        "fc-list": f"printf '%s' '{fonts}'",
        "id": "echo 1000",
        "apt-get": "echo 'stub apt-get must not run' >&2; exit 99",
        "service": "exit 99",
    }
    for name, body in stubs.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "COMFYHUB_TEST_RAY_PASS": "0"}
    # `--version`: should every need be met, the pytest it then runs only prints its version.
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "test.sh"), "--version"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_asks_for_a_cjk_font_when_none_is_installed(tmp_path):
    r = run_test_sh(tmp_path, fonts="")
    assert r.returncode == 1, r.stderr
    asked = next(line for line in r.stderr.splitlines() if line.startswith("the tests need:"))
    assert "fonts-wqy-zenhei" in asked and "sudo apt-get install -y" in asked
    assert "stub apt-get" not in r.stderr


def test_does_not_ask_when_one_is_there(tmp_path):
    r = run_test_sh(tmp_path, fonts="/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc: WenQuanYi Zen Hei:style=Regular\n")
    assert "fonts-wqy-zenhei" not in r.stderr, r.stderr
