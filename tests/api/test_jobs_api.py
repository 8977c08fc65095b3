"""/api/projects/{id}/jobs without a running ComfyUI: what is refused, and what deleting a
project does to its jobs."""

from sqlalchemy import select

from comfyhub.models import ItemState, JobItem
from tests.support.comfy import new_project

WORKFLOW = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 0}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "job"}},
}


async def test_odd_bodies_are_a_chinese_4xx_and_create_nothing(client, alice):
    pid = await new_project(client, alice)
    url = f"/api/projects/{pid}/jobs"
    nan = '{"workflow": {"1": {"class_type": "X", "inputs": {"v": NaN}}}, "repeat": 2}'
    deep = '{"workflow": ' + "[" * 5000 + "]" * 5000 + "}"
    for body in (nan, deep, "{not json", '"a string"', "[]"):
        r = await client.post(url, content=body, headers={**alice, "content-type": "application/json"})
        assert r.status_code == 422 and r.json()["msg"], (body[:40], r.text)
    files = {"workflow": ("w.json", b'{"1": {"class_type": "X", "inputs": {}}}'), "repeat": ("r.txt", b"2")}
    r = await client.post(url, files=files, headers=alice)
    assert r.status_code == 422 and "repeat" in r.json()["msg"]
    r = await client.post(
        url, content=b"x", headers={**alice, "content-type": "application/json", "content-length": "99999999999"}
    )
    assert r.status_code == 413
    assert (await client.get(url, headers=alice)).json()["data"] == []


async def test_deleting_a_project_cancels_its_jobs(client, alice, app):
    pid = await new_project(client, alice)
    r = await client.post(
        f"/api/projects/{pid}/jobs", json={"workflow": WORKFLOW, "grid": {"1.width": [16, 24, 32]}}, headers=alice
    )
    assert r.status_code == 201, r.text
    jid = r.json()["data"]["id"]
    await app.state.jobs.close()  # the runner would start ComfyUI: here only the API is under test
    assert (await client.delete(f"/api/projects/{pid}", headers=alice)).status_code == 200
    async with app.state.sessions() as db:
        states = (await db.execute(select(JobItem.state).where(JobItem.job_id == jid))).scalars().all()
    assert states == [ItemState.CANCELLED] * 3
    r = await client.post(f"/api/projects/{pid}/open_comfy", headers=alice)
    assert r.status_code == 404  # nothing starts for a deleted project
