"""The README's settings table is generated from the settings class: the two never drift."""

import subprocess
import sys
from pathlib import Path

from comfyhub.config import README_END, README_START, Settings, markdown_table

README = Path(__file__).resolve().parents[1] / "README.md"
REGENERATE = ".venv/bin/python -m comfyhub.config --readme README.md"


def test_every_setting_has_a_meaning():
    missing = [name.upper() for name, field in Settings.model_fields.items() if not (field.description or "").strip()]
    assert not missing, f"settings without a description (Field(description=...)): {missing}"


def test_readme_table_is_the_generated_one():
    text = README.read_text()
    assert README_START in text and README_END in text, "the README lost its settings-table markers"
    shown = text.split(README_START, 1)[1].split(README_END, 1)[0].strip()
    assert shown == markdown_table().strip(), (
        f"README.md's settings table differs from comfyhub/config.py: run {REGENERATE}"
    )


def test_table_rows_show_name_default_and_meaning():
    rows = {line.split(" | ")[0].strip("| `"): line for line in markdown_table().splitlines()[2:]}
    assert len(rows) == len(Settings.model_fields)
    assert rows["COMFYUI_PORT_RANGE"] == "| `COMFYUI_PORT_RANGE` | `8200-8299` | ports handed to instances, inclusive |"
    assert rows["COMFYUI_REPO_PATH"].split(" | ")[1] == "—"  # no default
    assert rows["COMFYUI_EXTRA_ARGS"].split(" | ")[1] == "empty"
    assert rows["COMFYUI_AUTO_RESTART"].split(" | ")[1] == "`false`"
    assert rows["COMFYHUB_SESSION_HOURS"].split(" | ")[1] == "`168`"  # 24 * 7, shown as a number
    assert rows["COMFYUI_HEALTH_TIMEOUT_SECONDS"].split(" | ")[1] == "`2.5`"
    # computed defaults say what they are computed from
    assert rows["COMFYUI_CUSTOM_NODES_DIR"].split(" | ")[1] == "`COMFYUI_REPO_PATH/custom_nodes`"


def test_regenerating_rewrites_only_the_table(tmp_path):
    stale = README.read_text().replace("ports handed to instances, inclusive", "an old description")
    stale = stale.replace(
        "| `COMFYHUB_LIST_REFRESH_SECONDS`",
        "| `COMFYHUB_REMOVED_SETTING` | `1` | gone |\n| `COMFYHUB_LIST_REFRESH_SECONDS`",
    )
    readme = tmp_path / "README.md"
    readme.write_text(stale)
    r = subprocess.run(
        [sys.executable, "-m", "comfyhub.config", "--readme", str(readme)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert readme.read_text() == README.read_text()

    readme.write_text("# no markers here\n")
    r = subprocess.run(
        [sys.executable, "-m", "comfyhub.config", "--readme", str(readme)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode != 0 and "markers" in r.stderr
    assert readme.read_text() == "# no markers here\n"
