"""The dataset export (POST /api/projects/{id}/exports): a ZIP that `datasets` loads as an imagefolder.

Records are made without a ComfyUI: real PNGs carrying an API graph in their `prompt`
text chunk, as ComfyUI's SaveImage writes them (tests/outputs/graphs.py), are put into the project's output folder
and indexed by `POST /outputs/sync` (the folder scan). The helpers here are also used by
test_folder_export.py.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from datetime import UTC, datetime
from pathlib import Path

from comfyhub.config import Settings
from tests.outputs.graphs import txt2img, write_png
from tests.support.comfy import new_project, user_id

DATASET_COLUMNS = [
    "image",
    "prompt",
    "negative_prompt",
    "seed",
    "steps",
    "cfg",
    "sampler",
    "scheduler",
    "model",
    "width",
    "height",
    "mark",
    "tags",
    "note",
    "record_id",
    "generation_id",
    "prompt_id",
    "status",
    "created_at",
    "graph",
]


# --- records without a ComfyUI ----------------------------------------------------------


def output_dir(settings: Settings, owner: int, project_id: int) -> Path:
    return settings.instance_dir(owner, project_id) / "output"


def put_png(folder: Path, name: str, graph: dict | None, size=(64, 48), when: datetime | None = None) -> Path:
    """A PNG as SaveImage writes it (tests/outputs/graphs.py), made `when` (its mtime)."""
    path = write_png(folder / name, graph, size=size)
    if when is not None:
        os.utime(path, (when.timestamp(), when.timestamp()))
    return path


def api_graph(prompt: str, negative: str, seed: int) -> dict:
    return txt2img(prompt, negative, seed=seed, steps=20, cfg=7.5, sampler="euler", scheduler="karras")


async def sync(client, headers, project_id: int) -> int:
    r = await client.post(f"/api/projects/{project_id}/outputs/sync", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["data"]["new"]


async def outputs_by_name(client, headers, project_id: int) -> dict[str, dict]:
    """The project's outputs as the gallery lists them, by their path under output/."""
    r = await client.get(f"/api/projects/{project_id}/outputs", params={"limit": 500}, headers=headers)
    assert r.status_code == 200, r.text
    return {(f"{o['subfolder']}/" if o["subfolder"] else "") + o["filename"]: o for o in r.json()["data"]["items"]}


def day(month: int, d: int, hour: int = 12) -> datetime:
    return datetime(2026, month, d, hour, tzinfo=UTC)


# Four images, one in a subfolder, on four different days; a Chinese prompt among them.
IMAGES = {
    "red_00001_.png": dict(prompt="a red fox in snow", negative="blurry", seed=11, when=day(1, 5)),
    "red_00002_.png": dict(prompt="一只小猫在窗台上", negative="低质量", seed=22, when=day(1, 10)),
    "sub/blue_00001_.png": dict(prompt="a blue whale", negative="text, watermark", seed=2**40 + 3, when=day(1, 15)),
    "sub/blue_00002_.png": dict(prompt="a blue bird", negative="blurry", seed=44, when=day(1, 20)),
}


async def project_with_images(client, headers, settings: Settings, images: dict = IMAGES) -> tuple[int, Path]:
    """A project whose output folder holds `images`, all on record; returns (id, folder)."""
    project = await new_project(client, headers)
    folder = output_dir(settings, await user_id(client, headers), project)
    for name, spec in images.items():
        put_png(folder, name, api_graph(spec["prompt"], spec["negative"], spec["seed"]), when=spec["when"])
    assert await sync(client, headers, project) == len(images)
    return project, folder


# --- export helpers -----------------------------------------------------------------------


async def export(client, headers, project_id: int, body: dict):
    return await client.post(f"/api/projects/{project_id}/exports", json=body, headers=headers)


def unzip(content: bytes, into: Path) -> list[str]:
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        assert archive.testzip() is None  # every member's CRC checks out
        archive.extractall(into)
        return archive.namelist()


def metadata(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]


def load_imagefolder(folder: Path):
    import datasets

    datasets.disable_progress_bars()
    return datasets.load_dataset("imagefolder", data_dir=str(folder), split="train")


async def exported(client, headers, project_id: int, body: dict, into: Path) -> list[dict]:
    """Export, unzip into `into`, and return the metadata lines (checking files and lines agree)."""
    r = await export(client, headers, project_id, body)
    assert r.status_code == 200, r.text
    names = unzip(r.content, into)
    lines = metadata(into)
    assert names[-1] == "metadata.jsonl"
    assert sorted(names[:-1]) == sorted(line["file_name"] for line in lines)
    assert r.headers["x-export-files"] == str(len(lines))
    return lines


# --- the tests ------------------------------------------------------------------------------


async def test_export_is_an_imagefolder_that_datasets_loads(client, alice, settings, tmp_path):
    project, folder = await project_with_images(client, alice, settings)
    async with client.stream("POST", f"/api/projects/{project}/exports", json={}, headers=alice) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/zip"
        assert "content-length" not in r.headers  # streamed: no size is known up front
        assert r.headers["content-disposition"].startswith("attachment; filename*=UTF-8''P-1-outputs-")
        content = await r.aread()
    names = unzip(content, tmp_path / "ds")
    assert names == [*IMAGES, "metadata.jsonl"]  # oldest first, the metadata last
    for name in IMAGES:
        assert (tmp_path / "ds" / name).read_bytes() == (folder / name).read_bytes()

    ds = load_imagefolder(tmp_path / "ds")
    assert ds.column_names == DATASET_COLUMNS
    assert ds.num_rows == len(IMAGES)
    assert str(ds.features["seed"].dtype) == "int64" and str(ds.features["cfg"].dtype) == "float64"
    rows = sorted(ds, key=lambda row: row["created_at"])
    for row, spec in zip(rows, IMAGES.values(), strict=True):
        assert row["image"].size == (64, 48)
        assert (row["prompt"], row["negative_prompt"], row["seed"]) == (spec["prompt"], spec["negative"], spec["seed"])
        assert (row["steps"], row["cfg"], row["sampler"], row["scheduler"]) == (20, 7.5, "euler", "karras")
        assert row["model"] == "sd_xl_base_1.0.safetensors"
        assert (row["width"], row["height"]) == (64, 48)
        assert (row["mark"], row["tags"], row["note"], row["status"]) == ("", [], "", "success")
        assert datetime.fromisoformat(row["created_at"]) == spec["when"]
        assert json.loads(row["graph"])["3"]["inputs"]["seed"] == spec["seed"]
    listed = await outputs_by_name(client, alice, project)
    assert sorted(row["record_id"] for row in rows) == sorted(o["id"] for o in listed.values())
    assert all(row["generation_id"] == listed[name]["generation_id"] for row, name in zip(rows, IMAGES, strict=True))


async def test_an_export_whose_columns_hold_no_values_loads(client, alice, settings, tmp_path):
    """Files with no graph and no tags: every parameter is null and every tag list empty."""
    project = await new_project(client, alice)
    folder = output_dir(settings, await user_id(client, alice), project)
    put_png(folder, "plain_1.png", None)
    put_png(folder, "plain_2.png", None, size=(8, 8))
    assert await sync(client, alice, project) == 2

    lines = await exported(client, alice, project, {}, tmp_path / "ds")
    assert {line["seed"] for line in lines} == {None} and {str(line["tags"]) for line in lines} == {"[]"}
    ds = load_imagefolder(tmp_path / "ds")
    assert ds.column_names == DATASET_COLUMNS
    assert ds["seed"] == [None, None] and ds["tags"] == [[], []] and ds["prompt"] == ["", ""]
    assert sorted(row["image"].size for row in ds) == [(8, 8), (64, 48)]


async def test_a_large_export_keeps_each_column_typed(client, alice, settings, tmp_path):
    """`datasets` types the columns from the first 10 MB of metadata.jsonl and casts the rest
    to them. Here the oldest 11 MB of lines have no seed, steps, cfg or tags and a whole-second
    time, and only the newest output has them: it must still load, with every value."""
    project = await new_project(client, alice)
    folder = output_dir(settings, await user_id(client, alice), project)
    words = "a very long prompt " * 10_000  # 190 KB, in the prompt column and in the graph
    for i in range(32):
        put_png(
            folder,
            f"old_{i:02}.png",
            {"1": {"class_type": "CLIPTextEncode", "inputs": {"text": words}}},
            when=day(1, 1 + i % 28),
        )
    newest = put_png(
        folder, "new.png", api_graph("the one with a seed", "", 7), when=datetime(2026, 3, 1, 1, 2, 3, 456789, UTC)
    )
    assert await sync(client, alice, project) == 33
    new_id = (await outputs_by_name(client, alice, project))[newest.name]["id"]
    r = await client.put(f"/api/projects/{project}/outputs/{new_id}", json={"tags": ["keep"]}, headers=alice)
    assert r.status_code == 200, r.text

    await exported(client, alice, project, {}, tmp_path / "ds")
    assert (tmp_path / "ds" / "metadata.jsonl").stat().st_size > 11 << 20  # datasets reads 10 MiB first
    ds = load_imagefolder(tmp_path / "ds")
    assert ds.num_rows == 33
    types = {name: str(getattr(feature, "dtype", feature)) for name, feature in ds.features.items()}
    assert (types["seed"], types["steps"], types["cfg"], types["created_at"]) == ("int64", "int64", "float64", "string")
    assert "string" in types["tags"]
    row = next(row for row in ds if row["seed"] is not None)
    assert (row["seed"], row["steps"], row["tags"], row["prompt"]) == (7, 20, ["keep"], "the one with a seed")
    assert datetime.fromisoformat(row["created_at"]) == datetime(2026, 3, 1, 1, 2, 3, 456789, UTC)
    assert sum(1 for seed in ds["seed"] if seed is None) == 32


async def test_marked_outputs_export_exactly_those(client, alice, settings, tmp_path):
    project, _ = await project_with_images(client, alice, settings)
    listed = await outputs_by_name(client, alice, project)
    passed = ["red_00002_.png", "sub/blue_00002_.png"]
    for name in passed:
        r = await client.put(
            f"/api/projects/{project}/outputs/{listed[name]['id']}", json={"mark": "pass"}, headers=alice
        )
        assert r.status_code == 200, r.text
    r = await client.put(
        f"/api/projects/{project}/outputs/{listed['red_00001_.png']['id']}", json={"mark": "fail"}, headers=alice
    )
    assert r.status_code == 200, r.text

    lines = await exported(client, alice, project, {"mark": "pass"}, tmp_path / "pass")
    assert [line["file_name"] for line in lines] == passed
    assert {line["mark"] for line in lines} == {"pass"}
    assert sorted(p.relative_to(tmp_path / "pass").as_posix() for p in (tmp_path / "pass").rglob("*.png")) == sorted(
        passed
    )
    ds = load_imagefolder(tmp_path / "pass")
    assert sorted(ds["seed"]) == [22, 44] and set(ds["mark"]) == {"pass"}

    lines = await exported(client, alice, project, {"mark": "none"}, tmp_path / "none")
    assert [line["file_name"] for line in lines] == ["sub/blue_00001_.png"]


async def test_filters_tags_text_ids_and_dates(client, alice, settings, tmp_path):
    project, _ = await project_with_images(client, alice, settings)
    listed = await outputs_by_name(client, alice, project)
    for name, tags in (("red_00001_.png", ["fox", "best"]), ("sub/blue_00001_.png", ["best"])):
        r = await client.put(
            f"/api/projects/{project}/outputs/{listed[name]['id']}", json={"tags": tags}, headers=alice
        )
        assert r.status_code == 200, r.text

    async def names(body: dict) -> list[str]:
        into = tmp_path / f"x{len(list(tmp_path.iterdir()))}"
        return [line["file_name"] for line in await exported(client, alice, project, body, into)]

    assert await names({"tags": ["best"]}) == ["red_00001_.png", "sub/blue_00001_.png"]
    assert await names({"tags": ["best", "fox"]}) == ["red_00001_.png"]
    lines = await exported(client, alice, project, {"tags": ["fox"]}, tmp_path / "fox")
    assert lines[0]["tags"] == ["best", "fox"]
    assert await names({"text": "blue"}) == ["sub/blue_00001_.png", "sub/blue_00002_.png"]  # file name or prompt
    assert await names({"text": "小猫"}) == ["red_00002_.png"]
    assert await names({"text": "WATERMARK"}) == ["sub/blue_00001_.png"]  # the negative prompt, any case
    ids = [listed["red_00002_.png"]["id"], listed["sub/blue_00002_.png"]["id"]]
    assert await names({"ids": ids}) == ["red_00002_.png", "sub/blue_00002_.png"]
    # since: from that day on; until: up to and including that day
    assert await names({"since": "2026-01-10", "until": "2026-01-15"}) == ["red_00002_.png", "sub/blue_00001_.png"]
    assert await names({"since": "2026-01-15T12:00:00+00:00"}) == ["sub/blue_00001_.png", "sub/blue_00002_.png"]
    assert await names({"until": "2026-01-05", "status": "success", "media_type": "image"}) == ["red_00001_.png"]


BAD_FILTERS = [
    {"colour": "red"},  # an unknown field
    {"mark": "maybe"},
    {"tags": "best"},  # a string, not a list
    {"tags": [""]},
    {"ids": ["x"]},
    {"ids": [0]},
    {"since": "2026-13-01"},
    {"until": "yesterday"},
    {"status": "done"},
    {"media_type": "text"},
    {"text": "x" * 201},
    ["mark", "pass"],  # not an object
]


async def test_bad_filters_are_refused_before_anything_is_streamed(client, alice, settings):
    project, _ = await project_with_images(client, alice, settings, {"a.png": IMAGES["red_00001_.png"]})
    for body in BAD_FILTERS:
        r = await export(client, alice, project, body)
        assert r.status_code == 422, (body, r.text)
        assert r.headers["content-type"] == "application/json"
        reply = r.json()
        assert reply["code"] == 422 and any("\u4e00" <= c <= "\u9fff" for c in reply["msg"]), (body, reply)


async def test_nothing_matching_is_404(client, alice, settings):
    project, _ = await project_with_images(client, alice, settings)
    for body in ({"mark": "pass"}, {"text": "nothing like this"}, {"media_type": "video"}, {"since": "2027-01-01"}):
        r = await export(client, alice, project, body)
        assert r.status_code == 404, r.text
        assert r.json()["msg"] == "没有符合条件的文件可导出"
    empty = await new_project(client, alice, "P-EMPTY")
    r = await export(client, alice, empty, {})
    assert r.status_code == 404 and r.json()["msg"] == "没有符合条件的文件可导出"


async def test_who_may_export(client, alice, bob, admin, settings, tmp_path):
    project, _ = await project_with_images(client, alice, settings)
    r = await export(client, bob, project, {})
    assert r.status_code == 403 and r.json()["msg"] == "无操作权限"
    assert len(await exported(client, admin, project, {}, tmp_path / "admin")) == len(IMAGES)

    r = await client.delete(f"/api/projects/{project}", headers=alice)
    assert r.status_code == 200, r.text
    r = await export(client, alice, project, {})
    assert r.status_code == 404 and r.json()["msg"] == "项目不存在"
    r = await export(client, bob, project, {})
    assert r.status_code == 404
    # the records and files stay: an admin still exports them, named after the old code
    r = await export(client, admin, project, {"mark": "none"})
    assert r.status_code == 200
    assert "P-1-outputs-" in r.headers["content-disposition"]
    assert len(unzip(r.content, tmp_path / "deleted")) == len(IMAGES) + 1
    assert len(load_imagefolder(tmp_path / "deleted")) == len(IMAGES)


async def test_missing_and_escaping_files_are_left_out(client, alice, settings, tmp_path):
    project, folder = await project_with_images(client, alice, settings)
    secret = put_png(tmp_path / "elsewhere", "secret.png", None)
    escaping = folder / "red_00002_.png"
    escaping.unlink()
    escaping.symlink_to(secret)  # on record, but now a link leading out of output/
    (folder / "sub" / "blue_00001_.png").unlink()  # on record, gone from disk

    lines = await exported(client, alice, project, {}, tmp_path / "ds")
    assert [line["file_name"] for line in lines] == ["red_00001_.png", "sub/blue_00002_.png"]
    assert not (tmp_path / "ds" / "red_00002_.png").exists()
    assert load_imagefolder(tmp_path / "ds").num_rows == 2
    # a link to a file inside the folder is followed, and exported under the record's name
    escaping.unlink()
    escaping.symlink_to(folder / "red_00001_.png")
    names = [line["file_name"] for line in await exported(client, alice, project, {}, tmp_path / "ds2")]
    assert names == ["red_00001_.png", "red_00002_.png", "sub/blue_00002_.png"]
    # every file gone: nothing to export
    for path in (folder / "red_00001_.png", escaping, folder / "sub" / "blue_00002_.png"):
        path.unlink()
    r = await export(client, alice, project, {})
    assert r.status_code == 404
