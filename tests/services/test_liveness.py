"""The reuse path at the floor: an online instance confirmed within the last second is
reused without another health check; only the process is checked."""

import os
import signal

from comfyhub.services.liveness import FRESH_SECONDS
from tests.support.comfy import new_project, pid_alive, service
from tests.support.net import wait_for


async def open_comfy(client, headers, pid):
    return await client.post(f"/api/projects/{pid}/open_comfy", headers=headers)


async def _lapsed(manager, pid):
    """Wait until the instance's last confirmation is older than FRESH_SECONDS."""
    record = await manager.get(pid)
    await wait_for(lambda: not manager.liveness.fresh(record), timeout=FRESH_SECONDS + 5, what="confirmation to lapse")


async def test_open_within_the_second_skips_the_check_and_after_it_checks_again(client, alice, manager):
    pid = await new_project(client, alice)
    first = await open_comfy(client, alice, pid)  # the start confirms it
    assert first.json()["data"]["status"] == "online"
    checks = manager.liveness.checks
    again = await open_comfy(client, alice, pid)
    assert again.status_code == 200 and again.json()["data"]["port"] == first.json()["data"]["port"]
    assert manager.liveness.checks == checks  # reused without a health check

    await _lapsed(manager, pid)
    assert (await open_comfy(client, alice, pid)).status_code == 200
    assert manager.liveness.checks == checks + 1  # past the second: checked again
    assert (await open_comfy(client, alice, pid)).status_code == 200
    assert manager.liveness.checks == checks + 1  # and that check counts as a confirmation


async def test_a_proxied_response_confirms_the_instance(client, alice, manager):
    pid = await new_project(client, alice)
    await open_comfy(client, alice, pid)
    await _lapsed(manager, pid)
    page = await client.get(
        f"http://testserver:{manager.settings.instance_port}/comfy/{pid}/system_stats", headers=alice
    )
    assert page.status_code == 200
    checks = manager.liveness.checks
    assert (await open_comfy(client, alice, pid)).status_code == 200
    assert manager.liveness.checks == checks


async def test_a_dead_process_is_never_reused_even_within_the_second(client, alice, manager):
    pid = await new_project(client, alice)
    await open_comfy(client, alice, pid)
    first = await service(client, alice, pid)
    record = await manager.get(pid)
    handle = manager.liveness.handle(record)
    os.kill(first["pid"], signal.SIGKILL)
    await wait_for(lambda: not pid_alive(first["pid"]), what="instance to die")

    async def launcher_knows():  # at once locally; a Ray actor reports it a moment later
        await manager.launcher.refresh([handle])
        return manager.launcher.poll(handle) is not None

    await wait_for(launcher_knows, what="the launcher to see the death")
    manager.liveness.confirm(pid, record.generation)  # as if a check had just passed
    assert manager.liveness.fresh(record)
    r = await open_comfy(client, alice, pid)  # the process check still runs: a new start
    assert r.json()["data"]["status"] == "online"
    second = await service(client, alice, pid)
    assert second["pid"] != first["pid"] and pid_alive(second["pid"])


async def test_a_new_generation_is_not_fresh(client, alice, manager):
    pid = await new_project(client, alice)
    await open_comfy(client, alice, pid)
    old = await manager.get(pid)
    assert manager.liveness.fresh(old)
    await client.post(f"/api/projects/{pid}/stop_comfy", headers=alice)
    await open_comfy(client, alice, pid)
    new = await manager.get(pid)
    assert new.generation != old.generation and manager.liveness.fresh(new)
    assert not manager.liveness.fresh(old)  # the old run's confirmation does not count
