"""Binding a running instance to a project, end to end: the local launcher, the fake
ComfyUI loading comfyhub's real extension, and services/binding.py."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import httpx
import pytest
from PIL import Image

from comfyhub.config import load_settings
from comfyhub.launchers.base import Handle, LaunchSpec, comfyui_argv
from comfyhub.launchers.local import LocalLauncher
from comfyhub.net.endpoint import Endpoint, new_secret
from comfyhub.services import instances
from comfyhub.services.binding import AlreadyBound, BindError, bind
from comfyhub.services.health import HealthChecker
from tests.conftest import FAKE_COMFYUI
from tests.support.net import free_port, wait_for

PROMPT = {
    "1": {"class_type": "EmptyImage", "inputs": {}},
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "bound"}},
}


@pytest.fixture
async def warm(tmp_path):
    """A pre-started instance in a folder of its own, as a warm pool would have it."""
    settings = load_settings(_env_file=None, comfyui_instance_base_dir=tmp_path / "instances")
    base = instances.prepare_instance_dir(settings, 0, 0)  # a folder no project uses
    port = free_port()
    secret = new_secret()
    spec = LaunchSpec(
        argv=comfyui_argv(sys.executable, "127.0.0.1", port, base, []),
        cwd=FAKE_COMFYUI,
        env={"PYTHONUNBUFFERED": "1", "PATH": "/usr/bin:/bin", "FAKE_COMFYUI_JOB_SECONDS": "0"},
        log_path=tmp_path / "logs" / "warm.log",
        port=port,
        base_dir=base,
        secret=secret,
    )
    launcher = LocalLauncher()
    handle = await launcher.start(spec)
    target = handle.endpoint
    health = HealthChecker(timeout=2.0)
    try:
        await wait_for(lambda: health.is_ours(target, str(base)), what="warm instance ready")
        yield settings, target, base, health
    finally:
        await health.aclose()
        await launcher.stop(handle, grace=3)


def call(target: Endpoint, method: str, path: str, **kwargs) -> httpx.Response:
    url = f"http://{target.authority}{path}"
    return httpx.request(
        method, url, headers={"X-Comfyhub-Secret": target.secret}, trust_env=False, timeout=10, **kwargs
    )


async def test_bind_moves_outputs_inputs_and_views_to_the_projects_folders(warm):
    settings, target, base, health = warm
    dirs = instances.project_dirs(settings, 3, 7)
    assert dirs == {k: str((settings.instance_dir(3, 7) / k).resolve()) for k in ("output", "input", "temp", "user")}

    binding = await bind(target, 7, 3, dirs)
    assert binding == {"project_id": 7, "user_id": 3, "dirs": dirs}
    # The identity now says "bound to 7": a cold-start expectation no longer matches.
    assert await health.is_ours(Endpoint(target.host, target.port, target.secret, binding=7), str(base))
    assert not await health.is_ours(target, str(base))
    # Recorded in launcher_state, the binding is what every probe built from the record expects.
    state = {"pid": 1, "create_time": 0.0, "cmdline": [], "host": target.host, "port": target.port}
    state |= {"secret": target.secret, "binding": 7}
    assert await health.is_ours(Handle.from_state(state).endpoint, str(base))
    assert call(target, "GET", "/comfyhub/identity").json()["binding"] == binding

    queued = call(target, "POST", "/prompt", json={"prompt": PROMPT, "client_id": "t"}).json()

    def saved():
        entry = call(target, "GET", f"/history/{queued['prompt_id']}").json().get(queued["prompt_id"])
        return entry and entry["outputs"]

    outputs = await wait_for(saved, what="prompt done")
    name = outputs["2"]["images"][0]["filename"]
    assert (Path(dirs["output"]) / name).is_file()
    assert not (base / "output" / name).exists()
    viewed = call(target, "GET", f"/view?filename={name}&type=output")
    assert viewed.status_code == 200 and viewed.content == (Path(dirs["output"]) / name).read_bytes()

    png = io.BytesIO()
    Image.new("RGB", (4, 4)).save(png, "PNG")
    up = call(target, "POST", "/upload/image", files={"image": ("in.png", png.getvalue(), "image/png")})
    assert up.status_code == 200
    assert (Path(dirs["input"]) / "in.png").is_file() and not (base / "input" / "in.png").exists()


async def test_an_instance_is_bound_once(warm):
    settings, target, _, _ = warm
    await bind(target, 7, 3, instances.project_dirs(settings, 3, 7))
    with pytest.raises(AlreadyBound) as refused:
        await bind(target, 8, 3, instances.project_dirs(settings, 3, 8))
    assert refused.value.status == 409
    assert call(target, "GET", "/comfyhub/identity").json()["binding"]["project_id"] == 7


async def test_bind_needs_the_secret_and_sane_folders(warm):
    settings, target, _, _ = warm
    with pytest.raises(BindError) as refused:
        await bind(Endpoint(target.host, target.port, "wrong"), 7, 3, instances.project_dirs(settings, 3, 7))
    assert refused.value.status == 403
    with pytest.raises(BindError) as malformed:
        await bind(target, 7, 3, {"output": "relative"})
    assert malformed.value.status == 400
    assert call(target, "GET", "/comfyhub/identity").json()["binding"] is None
    assert json.loads(call(target, "GET", "/system_stats").text)["system"]["argv"]
