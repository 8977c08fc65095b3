"""/api/projects/{id}/outputs: owner only, paths never trusted, curation, the trash,
and what deleting a project keeps. Records come from files on disk (the scan), so no
ComfyUI runs here."""

import json

import pytest
from sqlalchemy import update

from comfyhub.models import Output
from tests.outputs.graphs import txt2img, write_png
from tests.support.comfy import new_project, user_id


async def project_with_outputs(client, settings, headers, n=3, code="P-1"):
    pid = await new_project(client, headers, code)
    out = settings.instance_dir(await user_id(client, headers), pid) / "output"
    for i in range(n):
        write_png(out / f"img_{i:05d}_.png", txt2img(f"prompt {i}", seed=i), colour=(i * 40, 90, 160))
    r = await client.post(f"/api/projects/{pid}/outputs/sync", headers=headers)
    assert r.status_code == 200 and r.json()["data"]["new"] == n, r.text
    return pid, out


async def items(client, headers, pid, **params):
    r = await client.get(f"/api/projects/{pid}/outputs", params=params, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["data"]


async def test_another_user_gets_403_on_every_outputs_route(client, settings, alice, bob):
    pid, _ = await project_with_outputs(client, settings, alice)
    oid = (await items(client, alice, pid))["items"][0]["id"]
    base = f"/api/projects/{pid}"
    calls = [
        ("GET", f"{base}/outputs", None),
        ("GET", f"{base}/outputs/{oid}", None),
        ("GET", f"{base}/outputs/{oid}/file", None),
        ("GET", f"{base}/outputs/{oid}/thumb", None),
        ("PUT", f"{base}/outputs/{oid}", {"mark": "pass"}),
        ("DELETE", f"{base}/outputs/{oid}", None),
        ("POST", f"{base}/outputs/{oid}/restore", None),
        ("POST", f"{base}/outputs/selection", {"ids": [oid], "mark": "fail"}),
        ("POST", f"{base}/outputs/sync", None),
        ("GET", f"{base}/generations", None),
        ("POST", f"{base}/exports", {}),
    ]
    for method, url, body in calls:
        r = await client.request(method, url, json=body, headers=bob)
        assert r.status_code == 403, (method, url, r.text)
        assert r.json()["msg"]
    r = await client.request("GET", f"{base}/outputs")
    assert r.status_code == 401
    item = (await items(client, alice, pid))["items"][0]
    assert item["mark"] is None and item["deleted_at"] is None  # nothing changed


async def test_listing_pages_newest_first_and_filters(client, settings, alice):
    pid, _ = await project_with_outputs(client, settings, alice, n=5)
    page = await items(client, alice, pid, limit=2)
    assert page["total"] == 5 and [i["prompt"] for i in page["items"]] == ["prompt 4", "prompt 3"]
    assert [i["prompt"] for i in (await items(client, alice, pid, limit=2, offset=4))["items"]] == ["prompt 0"]
    one = page["items"][0]
    assert {
        "id",
        "filename",
        "subfolder",
        "media_type",
        "prompt_id",
        "status",
        "created_at",
        "mark",
        "tags",
        "note",
        "width",
        "height",
    } <= set(one)
    assert (one["width"], one["height"], one["media_type"], one["seed"]) == (16, 12, "image", 4)
    assert (await items(client, alice, pid, q="prompt 3"))["total"] == 1
    assert (await items(client, alice, pid, status="success"))["total"] == 5
    assert (await items(client, alice, pid, status="error"))["total"] == 0
    assert (await items(client, alice, pid, since="2999-01-01"))["total"] == 0
    assert (await items(client, alice, pid, until="2999-01-01"))["total"] == 5


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 501},
        {"offset": -1},
        {"since": "yesterday"},
        {"mark": "maybe"},
        {"status": "x"},
        {"media_type": "pdf"},
        {"tag": ""},
    ],
)
async def test_bad_list_parameters_are_a_chinese_422(client, settings, alice, params):
    pid, _ = await project_with_outputs(client, settings, alice, n=1)
    r = await client.get(f"/api/projects/{pid}/outputs", params=params, headers=alice)
    assert r.status_code == 422 and r.json()["msg"].startswith(("请求参数无效", "since")), r.text


async def test_file_is_served_with_range_and_thumbnail_made_once(client, settings, alice):
    pid, out = await project_with_outputs(client, settings, alice, n=1)
    oid = (await items(client, alice, pid))["items"][0]["id"]
    whole = (out / "img_00000_.png").read_bytes()
    r = await client.get(f"/api/projects/{pid}/outputs/{oid}/file", headers=alice)
    assert r.status_code == 200 and r.content == whole and r.headers["content-type"] == "image/png"
    r = await client.get(f"/api/projects/{pid}/outputs/{oid}/file", headers={**alice, "range": "bytes=0-7"})
    assert r.status_code == 206 and r.content == whole[:8]
    r = await client.get(f"/api/projects/{pid}/outputs/{oid}/thumb", headers=alice)
    assert r.status_code == 200 and r.headers["content-type"] == "image/webp" and r.content[:4] == b"RIFF"
    cached = list(settings.comfyhub_thumbnail_dir.rglob("*.webp"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    assert (await client.get(f"/api/projects/{pid}/outputs/{oid}/thumb", headers=alice)).content == r.content
    assert cached[0].stat().st_mtime_ns == mtime  # served from the cache, not made again


async def test_a_path_leading_outside_the_output_folder_is_refused(client, settings, alice, tmp_path):
    pid, out = await project_with_outputs(client, settings, alice, n=2)
    first, second = (await items(client, alice, pid))["items"]
    secret = tmp_path / "secret.png"
    write_png(secret)
    # A recorded file replaced by a symlink to somewhere else.
    (out / first["filename"]).unlink()
    (out / first["filename"]).symlink_to(secret)
    # A record whose stored path climbs out (written straight to the table: no sync writes such rows).
    async with client._transport.app.state.sessions() as db:
        await db.execute(
            update(Output).where(Output.id == second["id"]).values(subfolder="../../..", filename="secret.png")
        )
        await db.commit()
    for oid in (first["id"], second["id"]):
        for what in ("file", "thumb"):
            r = await client.get(f"/api/projects/{pid}/outputs/{oid}/{what}", headers=alice)
            assert r.status_code == 403, (oid, what, r.text)
            assert secret.read_bytes()[:4] not in r.content or r.content == b""
    r = await client.delete(f"/api/projects/{pid}/outputs/{first['id']}", headers=alice)
    assert r.status_code == 403 and secret.exists()  # never moved either
    # A symlinked subfolder is not followed by the scan, and not served.
    (tmp_path / "elsewhere").mkdir()
    write_png(tmp_path / "elsewhere" / "x.png")
    (out / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    await client.post(f"/api/projects/{pid}/outputs/sync", headers=alice)
    assert all(i["subfolder"] != "linked" for i in (await items(client, alice, pid))["items"])


async def test_marks_tags_notes_one_by_one_and_by_selection(client, settings, alice):
    pid, _ = await project_with_outputs(client, settings, alice, n=3)
    a, b, c = (i["id"] for i in (await items(client, alice, pid))["items"])
    r = await client.put(
        f"/api/projects/{pid}/outputs/{a}", json={"mark": "pass", "tags": ["猫", "best"], "note": "好"}, headers=alice
    )
    assert r.status_code == 200 and r.json()["data"]["mark"] == "pass" and r.json()["data"]["tags"] == ["best", "猫"]
    r = await client.post(
        f"/api/projects/{pid}/outputs/selection",
        json={"ids": [b, c], "mark": "fail", "add_tags": ["猫"]},
        headers=alice,
    )
    assert r.status_code == 200 and r.json()["data"]["updated"] == 2
    assert [i["id"] for i in (await items(client, alice, pid, mark="pass"))["items"]] == [a]
    assert {i["id"] for i in (await items(client, alice, pid, mark="fail"))["items"]} == {b, c}
    assert (await items(client, alice, pid, tag="猫"))["total"] == 3
    assert (await items(client, alice, pid, tag=["猫", "best"]))["total"] == 1
    assert (await items(client, alice, pid, tag="%"))["total"] == 0  # LIKE wildcards are literal
    r = await client.put(f"/api/projects/{pid}/outputs/{a}", json={"mark": None}, headers=alice)
    assert r.json()["data"]["mark"] is None and r.json()["data"]["tags"] == ["best", "猫"]  # only what was sent changes
    for bad in ({"mark": "great"}, {"tags": "x"}, {"tags": [""]}, {"note": 5}, {"colour": "red"}):
        r = await client.put(f"/api/projects/{pid}/outputs/{a}", json=bad, headers=alice)
        assert r.status_code == 422 and "请求参数无效" in r.json()["msg"], bad
    r = await client.get(f"/api/projects/{pid}/outputs/999999", headers=alice)
    assert r.status_code == 404 and r.json()["msg"] == "产出不存在"


async def test_delete_moves_the_file_to_the_trash_and_restore_brings_it_back(client, settings, alice):
    pid, out = await project_with_outputs(client, settings, alice, n=2)
    item = (await items(client, alice, pid))["items"][0]
    original = out / item["filename"]
    data = original.read_bytes()
    r = await client.delete(f"/api/projects/{pid}/outputs/{item['id']}", headers=alice)
    assert r.status_code == 200 and "回收站" in r.json()["msg"]
    assert not original.exists()
    (trashed,) = list((out.parent / ".trash").rglob("*.png"))
    assert trashed.read_bytes() == data
    assert (await items(client, alice, pid))["total"] == 1
    assert (await items(client, alice, pid, deleted="true"))["items"][0]["id"] == item["id"]
    r = await client.post(f"/api/projects/{pid}/outputs/sync", headers=alice)
    assert r.json()["data"]["new"] == 0  # the trash is not output: nothing comes back by itself
    r = await client.post(f"/api/projects/{pid}/outputs/{item['id']}/restore", headers=alice)
    assert r.status_code == 200 and original.read_bytes() == data
    assert (await items(client, alice, pid))["total"] == 2


async def test_deleting_a_project_keeps_its_outputs_for_an_admin_to_restore(client, settings, alice, admin):
    pid, out = await project_with_outputs(client, settings, alice, n=2)
    r = await client.delete(f"/api/projects/{pid}", headers=alice)
    assert r.status_code == 200 and r.json()["data"]["outputs_kept"] == 2 and "仍保留" in r.json()["msg"]
    assert len(list(out.glob("*.png"))) == 2
    assert (await client.get(f"/api/projects/{pid}/outputs", headers=alice)).status_code == 404
    assert all(p["id"] != pid for p in (await client.get("/api/projects", headers=alice)).json()["data"])
    # The code is free again.
    again = await new_project(client, alice, "P-1")
    deleted = (await client.get("/api/admin/projects/deleted", headers=admin)).json()["data"]
    assert [(d["id"], d["code"], d["outputs_kept"]) for d in deleted] == [(pid, "P-1", 2)]
    assert (await items(client, admin, pid))["total"] == 2  # an admin still reads them
    r = await client.post(f"/api/admin/projects/{pid}/restore", headers=admin)
    assert r.status_code == 409 and "P-1" in r.json()["msg"]  # its code was taken meanwhile
    await client.put(f"/api/projects/{again}", json={"code": "P-2"}, headers=alice)
    r = await client.post(f"/api/admin/projects/{pid}/restore", headers=admin)
    assert r.status_code == 200
    assert (await items(client, alice, pid))["total"] == 2
    r = await client.post(f"/api/admin/projects/{pid}/restore", headers=alice)
    assert r.status_code == 403


async def test_generations_list_includes_records_without_files(client, settings, alice):
    pid, _ = await project_with_outputs(client, settings, alice, n=1)
    r = await client.get(f"/api/projects/{pid}/generations", headers=alice)
    (gen,) = r.json()["data"]
    assert gen["source"] == "file" and gen["status"] == "success" and json.dumps(gen)


async def test_a_new_file_under_a_deleted_outputs_name_is_a_new_output(client, settings, alice):
    # ComfyUI numbers a new file after the highest one it sees: deleting the newest output
    # makes the next generation reuse its name.
    pid, out = await project_with_outputs(client, settings, alice, n=2)
    newest = (await items(client, alice, pid))["items"][0]
    assert (await client.delete(f"/api/projects/{pid}/outputs/{newest['id']}", headers=alice)).status_code == 200
    write_png(out / newest["filename"], txt2img("a new one", seed=77))
    r = await client.post(f"/api/projects/{pid}/outputs/sync", headers=alice)
    assert r.json()["data"]["new"] == 1
    live = (await items(client, alice, pid))["items"]
    assert [i["prompt"] for i in live if i["filename"] == newest["filename"]] == ["a new one"]
    r = await client.post(f"/api/projects/{pid}/outputs/{newest['id']}/restore", headers=alice)
    assert r.status_code == 409 and r.json()["msg"]  # the name is taken by the new output
    assert (await items(client, alice, pid, deleted="true"))["items"][0]["id"] == newest["id"]
