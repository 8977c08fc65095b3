"""`comfyhub outputs export PROJECT_ID --out DIR`, run as a subprocess against the test's database.

The records come from real PNGs indexed through the API (test_export.py's helpers); the
command then reads the same database and folders, as an admin on the server would.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.outputs.test_export import (
    IMAGES,
    exported,
    load_imagefolder,
    metadata,
    outputs_by_name,
    project_with_images,
)


def comfyhub(settings, *args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMFYUI_", "COMFYHUB_"))}
    env |= {
        "COMFYHUB_DATABASE_URL": settings.database_url,
        "COMFYUI_INSTANCE_BASE_DIR": str(settings.comfyui_instance_base_dir),
    }
    return subprocess.run(
        [sys.executable, "-m", "comfyhub.cli", "outputs", "export", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


async def test_the_folder_is_the_zip_unpacked_and_loads(client, alice, settings, tmp_path):
    project, folder = await project_with_images(client, alice, settings)
    out = tmp_path / "dataset"
    r = comfyhub(settings, project, "--out", out, cwd=tmp_path / "cwd")
    assert r.returncode == 0, r.stderr
    assert f"exported 4 file(s), 0.0 MiB, of project {project} (P-1) to {out}" in r.stdout

    # the same files and the same metadata lines as the ZIP the API streams
    from_api = await exported(client, alice, project, {}, tmp_path / "zip")
    assert files_under(out) == files_under(tmp_path / "zip") == sorted([*IMAGES, "metadata.jsonl"])
    assert metadata(out) == from_api
    for name in IMAGES:
        assert (out / name).read_bytes() == (folder / name).read_bytes()
        assert (out / name).stat().st_ino != (folder / name).stat().st_ino  # a copy
    ds = load_imagefolder(out)
    assert ds.num_rows == 4 and sorted(ds["seed"]) == sorted(spec["seed"] for spec in IMAGES.values())
    assert set(ds["prompt"]) == {spec["prompt"] for spec in IMAGES.values()}

    # --link: the same files, hard-linked (same inode), into a new folder
    r = comfyhub(settings, project, "--out", tmp_path / "linked", "--link", cwd=tmp_path / "cwd")
    assert r.returncode == 0, r.stderr
    assert "4 hard-linked" in r.stdout
    for name in IMAGES:
        assert (tmp_path / "linked" / name).stat().st_ino == (folder / name).stat().st_ino
    assert load_imagefolder(tmp_path / "linked").num_rows == 4


def in_process(settings, *args: str | Path) -> int:
    """The command's main() in this process (faster than a subprocess, for the many filter cases)."""
    from comfyhub.cli import build_parser
    from comfyhub.outputs import folder_export

    return folder_export.main(settings, build_parser().parse_args(["outputs", "export", *map(str, args)]))


async def test_filters_as_flags(client, alice, settings, tmp_path, capsys):
    project, _ = await project_with_images(client, alice, settings)
    listed = await outputs_by_name(client, alice, project)
    for name, body in (
        ("red_00002_.png", {"mark": "pass", "tags": ["cat", "best"]}),
        ("sub/blue_00002_.png", {"mark": "pass"}),
        ("sub/blue_00001_.png", {"tags": ["best"]}),
    ):
        r = await client.put(f"/api/projects/{project}/outputs/{listed[name]['id']}", json=body, headers=alice)
        assert r.status_code == 200, r.text

    async def names(*flags: str) -> list[str]:
        out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"
        assert await asyncio.to_thread(in_process, settings, project, "--out", out, *flags) == 0
        lines = metadata(out)
        assert files_under(out) == sorted([line["file_name"] for line in lines] + ["metadata.jsonl"])
        assert load_imagefolder(out).num_rows == len(lines)
        return sorted(line["file_name"] for line in lines)

    assert await names("--mark", "pass") == ["red_00002_.png", "sub/blue_00002_.png"]
    assert await names("--mark", "none") == ["red_00001_.png", "sub/blue_00001_.png"]
    assert await names("--tag", "best") == ["red_00002_.png", "sub/blue_00001_.png"]
    assert await names("--tag", "best", "--tag", "cat") == ["red_00002_.png"]
    assert await names("--text", "小猫") == ["red_00002_.png"]
    assert await names("--since", "2026-01-10", "--until", "2026-01-15") == ["red_00002_.png", "sub/blue_00001_.png"]
    assert await names("--until", "2026-01-05T13:00", "--status", "success", "--media-type", "image") == [
        "red_00001_.png"
    ]

    capsys.readouterr()
    assert (
        await asyncio.to_thread(in_process, settings, project, "--out", tmp_path / "none", "--media-type", "video") == 1
    )
    assert capsys.readouterr().err == f"comfyhub: nothing to export: no file of project {project} matches\n"
    assert not (tmp_path / "none").exists()


async def test_refusals_are_one_clear_line(client, alice, settings, tmp_path, capsys):
    project, folder = await project_with_images(client, alice, settings)
    cwd = tmp_path / "cwd"

    r = comfyhub(settings, 999, "--out", tmp_path / "a", cwd=cwd)
    assert (r.returncode, r.stderr) == (2, "comfyhub: project 999 not found\n")

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    (taken / "red_00001_.png").write_text("an older file of the same name")
    r = comfyhub(settings, project, "--out", taken, cwd=cwd)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert f"--out {taken} is not empty" in r.stderr and "--force" in r.stderr
    assert files_under(taken) == ["notes.txt", "red_00001_.png"]  # untouched

    # the rest in this process: the same code, without a second's start-up each
    assert await asyncio.to_thread(in_process, settings, project, "--out", taken, "--force") == 0
    assert (taken / "notes.txt").read_text() == "mine"  # other files stay
    assert (taken / "red_00001_.png").read_bytes() == (folder / "red_00001_.png").read_bytes()
    assert load_imagefolder(taken).num_rows == 4

    capsys.readouterr()
    assert await asyncio.to_thread(in_process, settings, project, "--out", folder / "export") == 2
    assert "overlaps the instances folder" in capsys.readouterr().err
    assert not (folder / "export").exists()

    for flags, complaint in (
        (["--since", "last week"], "not a date or ISO time: 'last week'"),
        (["--until", "2026-02-30"], "not a date or ISO time: '2026-02-30'"),
        (["--mark", "maybe"], "invalid choice: 'maybe'"),
        (["--status", "done"], "invalid choice: 'done'"),
    ):
        with pytest.raises(SystemExit) as exited:
            in_process(settings, project, "--out", tmp_path / "b", *flags)
        assert exited.value.code == 2 and complaint in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


async def test_a_deleted_projects_outputs_are_still_exported(client, alice, settings, tmp_path):
    project, _ = await project_with_images(client, alice, settings)
    r = await client.delete(f"/api/projects/{project}", headers=alice)
    assert r.status_code == 200, r.text
    r = comfyhub(settings, project, "--out", tmp_path / "kept", cwd=tmp_path / "cwd")
    assert r.returncode == 0, r.stderr
    assert f"of project {project} (P-1)" in r.stdout
    assert {json.dumps(line["seed"]) for line in metadata(tmp_path / "kept")} == {
        json.dumps(spec["seed"]) for spec in IMAGES.values()
    }
