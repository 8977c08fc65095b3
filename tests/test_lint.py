"""ruff (lint and format check) over the Python code, with the rules in pyproject.toml."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATHS = ["comfyhub", "tests", "bench"]


@pytest.mark.parametrize(
    "command, fix",
    [
        (
            ["check", "--no-cache", "--output-format", "concise"],
            "ruff check --fix comfyhub tests bench (the rest by hand)",
        ),
        (["format", "--check", "--no-cache", "--output-format", "concise"], "ruff format comfyhub tests bench"),
    ],
    ids=["check", "format"],
)
def test_ruff(command, fix):
    r = subprocess.run(
        [sys.executable, "-m", "ruff", *command, *PATHS], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, f"ruff {' '.join(command)} failed; to fix: .venv/bin/{fix}\n{r.stdout}{r.stderr}"
