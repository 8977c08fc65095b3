"""Which launcher the lifecycle tests run their instances with.

`pytest --launcher ray` runs the same tests with COMFYUI_LAUNCHER=ray against a real
local Ray cluster (tests/support/ray_cluster.py): every instance is then an actor on a
GPU node, listening on the node's address. Tests that only make sense for local
subprocesses are marked `local_only` and skipped there.
"""

from __future__ import annotations

_current = {"kind": "local", "ray_address": "", "host": "127.0.0.1"}


def use_ray(address: str, node_ip: str) -> None:
    _current.update(kind="ray", ray_address=address, host=node_ip)


def kind() -> str:
    return _current["kind"]


def settings_overrides() -> dict:
    if _current["kind"] != "ray":
        return {}
    # A tenth of a GPU each: the 2-GPU test cluster holds 20 instances, as many as the
    # largest of these tests opens at once.
    # Starting an actor's worker process takes a second or more on a busy 2-core machine.
    return {
        "comfyui_launcher": "ray",
        "ray_address": _current["ray_address"],
        "comfyui_gpus_per_instance": 0.1,
        "comfyui_startup_timeout_seconds": 60,
    }


def hub_env() -> dict[str, str]:
    return {k.upper(): str(v) for k, v in settings_overrides().items()}


def start_allowance() -> float:
    """Seconds a start may take on top of the local launcher's (placing an actor, starting its worker)."""
    return 10.0 if _current["kind"] == "ray" else 0.0


def instance_host() -> str:
    """Where the test reaches an instance directly (the Ray launcher listens on the node's address)."""
    return _current["host"]
