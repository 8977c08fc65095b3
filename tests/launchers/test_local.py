"""LocalLauncher against the fake ComfyUI: spawn, poll, identity, stop escalation."""

import asyncio
import signal
import subprocess
import sys
import time

import psutil
import pytest

from comfyhub.launchers.base import LaunchError, LaunchSpec, comfyui_argv
from comfyhub.launchers.local import LocalLauncher
from comfyhub.launchers.process import process_matches
from tests.conftest import FAKE_COMFYUI
from tests.support.comfy import pid_alive, system_argv
from tests.support.net import free_port, wait_for


def spec_for(tmp_path, port=None, **knobs):
    import json

    base = tmp_path / "inst"
    (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
    if knobs:
        (base / "fake_comfyui.json").write_text(json.dumps(knobs))
    port = port or free_port()
    argv = comfyui_argv(sys.executable, "127.0.0.1", port, base, [])
    return LaunchSpec(
        argv=argv,
        cwd=FAKE_COMFYUI,
        env={"PYTHONUNBUFFERED": "1", "PATH": "/usr/bin:/bin"},
        log_path=tmp_path / "logs" / "x.log",
        port=port,
        base_dir=base,
    )


async def test_start_poll_stop_with_sigint(tmp_path):
    launcher = LocalLauncher()
    spec = spec_for(tmp_path)
    handle = await launcher.start(spec)
    assert handle.cmdline == spec.argv and handle.port == spec.port
    await wait_for(lambda: system_argv(spec.port), what="fake ready")
    assert launcher.poll(handle) is None
    child = launcher._children[handle.pid]
    await launcher.stop(handle, grace=5)
    assert child.returncode == 0  # SIGINT: the clean exit
    assert not pid_alive(handle.pid)
    assert "Stopped server" in spec.log_path.read_text()


async def test_sigint_works_even_when_backend_ignores_it(tmp_path):
    """An ignored SIGINT is inherited across exec; the launcher resets it in the child."""
    launcher = LocalLauncher()
    spec = spec_for(tmp_path)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        handle = await launcher.start(spec)
    finally:
        signal.signal(signal.SIGINT, previous)
    await wait_for(lambda: system_argv(spec.port), what="fake ready")
    child = launcher._children[handle.pid]
    t0 = time.monotonic()
    await launcher.stop(handle, grace=5)
    assert child.returncode == 0 and time.monotonic() - t0 < 4


async def test_stop_escalates_without_blocking_the_loop(tmp_path):
    launcher = LocalLauncher()
    spec = spec_for(tmp_path, ignore_sigterm=True)
    handle = await launcher.start(spec)
    await wait_for(lambda: system_argv(spec.port), what="fake ready")
    ticks, worst = 0, 0.0

    async def ticker():
        nonlocal ticks, worst
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)  # the probe itself: how late does a 10 ms timer fire?
            now = time.monotonic()
            worst, last = max(worst, now - last), now
            ticks += 1

    t = asyncio.create_task(ticker())
    await launcher.stop(handle, grace=0.6)
    t.cancel()
    assert not pid_alive(handle.pid)
    assert launcher._children.get(handle.pid) is None
    assert worst < 0.2, f"event loop stalled for {worst:.2f}s during stop"
    assert ticks > 20


async def test_early_exit_is_reported_with_code(tmp_path):
    launcher = LocalLauncher()
    spec = spec_for(tmp_path, exit_code=5)
    handle = await launcher.start(spec)
    result = await wait_for(lambda: launcher.poll(handle), what="exit")
    assert result.code == 5 and "退出码 5" in result.reason
    assert not pid_alive(handle.pid)  # reaped: no zombie


async def test_identity_mismatch_is_never_signalled(tmp_path):
    launcher = LocalLauncher()
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    try:
        real = psutil.Process(stranger.pid)
        assert process_matches(stranger.pid, real.create_time(), real.cmdline())
        # Same pid, but the record says another start time / command: not ours.
        fake_state = {
            "pid": stranger.pid,
            "create_time": real.create_time() - 100,
            "cmdline": real.cmdline(),
            "host": "127.0.0.1",
            "port": 1,
        }
        handle = launcher.restore(fake_state)
        assert launcher.poll(handle) is not None
        await launcher.stop(handle, grace=0.2)
        other_cmd = dict(fake_state, create_time=real.create_time(), cmdline=["python", "main.py"])
        await launcher.stop(launcher.restore(other_cmd), grace=0.2)
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


async def test_adopted_process_is_watched_and_stopped(tmp_path):
    """A restored handle (backend restarted) is checked via psutil and stopped by identity."""
    first = LocalLauncher()
    spec = spec_for(tmp_path)
    handle = await first.start(spec)
    await wait_for(lambda: system_argv(spec.port), what="fake ready")
    second = LocalLauncher()  # a new backend process knows only the saved state
    adopted = second.restore(handle.state())
    assert second.poll(adopted) is None
    await second.stop(adopted, grace=5)
    await wait_for(lambda: first.poll(handle) is not None, what="gone")


@pytest.mark.parametrize("argv0", ["/no/such/python"])
async def test_missing_interpreter_is_a_launch_error(tmp_path, argv0):
    spec = spec_for(tmp_path)
    bad = LaunchSpec(
        argv=[argv0, *spec.argv[1:]],
        cwd=spec.cwd,
        env=spec.env,
        log_path=spec.log_path,
        port=spec.port,
        base_dir=spec.base_dir,
    )
    with pytest.raises(LaunchError, match="找不到 ComfyUI 程序"):
        await LocalLauncher().start(bad)
