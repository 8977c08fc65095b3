"""Every script of the page parses as an ES module (the browser loads them as such), with
no build step: `node --check` on a copy named .mjs. A .js name would let node parse it as
CommonJS (sloppy mode, no top-level await) or guess, and miss module-only errors."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

JS_DIR = ROOT / "comfyhub" / "web" / "js"
NODE = shutil.which("node")
SCRIPTS = sorted(JS_DIR.glob("*.js"))

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed: the page's JS syntax is not checked")


def check(path: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    copy = tmp_path / f"{path.stem}.mjs"
    shutil.copyfile(path, copy)
    return subprocess.run([NODE, "--check", str(copy)], capture_output=True, text=True, timeout=60, check=False)


def test_the_page_has_scripts():
    assert len(SCRIPTS) >= 5, SCRIPTS


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_script_parses_as_a_module(path, tmp_path):
    result = check(path, tmp_path)
    assert result.returncode == 0, f"{path.name}:\n{result.stderr}"


@pytest.mark.parametrize(
    "source",
    [
        "export const a = ;\n",  # a plain syntax error
        "const x = 010;\n",  # legal in sloppy CommonJS (what `node --check x.js` reads), not in a module
        "with ({}) {}\n",  # the same: no `with` in a module
    ],
)
def test_the_check_fails_on_a_broken_module(source, tmp_path):
    broken = tmp_path / "src" / "broken.js"
    broken.parent.mkdir()
    broken.write_text(source)
    assert check(broken, tmp_path).returncode != 0
