"""The shipped per-user limit, as a user meets it: the next 数据生成 answers 429 in Chinese."""

from pathlib import Path

from comfyhub.config import Settings
from tests.support.app import running_app
from tests.support.comfy import new_project, service

README = Path(__file__).resolve().parents[2] / "README.md"
PER_USER = Settings.model_fields["comfyui_max_instances_per_user"].default


async def test_opening_past_the_default_per_user_limit_is_429(db_url, tmp_path):
    # make_settings lifts the limit for other tests: put the shipped default back.
    async with running_app(db_url, tmp_path, users=("alice", "bob"), comfyui_max_instances_per_user=PER_USER) as c:
        alice, bob = c.headers_of["alice"], c.headers_of["bob"]
        projects = [await new_project(c, alice, f"A{i}") for i in range(PER_USER + 1)]
        for pid in projects[:PER_USER]:
            assert (await c.post(f"/api/projects/{pid}/open_comfy", headers=alice)).status_code == 200
        r = await c.post(f"/api/projects/{projects[-1]}/open_comfy", headers=alice)
        assert r.status_code == 429
        assert r.json()["msg"] == (
            f"您的实例数已达上限（COMFYUI_MAX_INSTANCES_PER_USER={PER_USER}），请先停止其他项目的 ComfyUI"
        )
        assert r.json()["msg"] in README.read_text()  # the README's defaults paragraph quotes it
        assert await service(c, alice, projects[-1]) is None  # nothing was started
        # the limit is per user: someone else still gets theirs
        theirs = await new_project(c, bob, "B0")
        assert (await c.post(f"/api/projects/{theirs}/open_comfy", headers=bob)).status_code == 200
