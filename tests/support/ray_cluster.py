"""A real local Ray cluster for the Ray launcher tests: a head and GPU nodes with fake GPUs.

Every node runs on this machine (each its own raylet and workers), so node death is
real: removing a node kills its raylet and workers, and with them their ComfyUIs.
Health checks are tuned so that the cluster notices a dead node within a second.
"""

from __future__ import annotations

from contextlib import contextmanager

import ray
from ray.cluster_utils import Cluster

from comfyhub.launchers.ray import ACTOR_PREFIX, NAMESPACE
from tests.support.net import wait_for_sync

FAST_HEALTH = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 300,
    "health_check_timeout_ms": 500,
    "health_check_failure_threshold": 2,
}


@contextmanager
def running_ray_cluster(gpu_nodes: int = 2, gpus_per_node: int = 1):
    cluster = Cluster(
        initialize_head=True,
        # The head gets no GPU: instances (0 CPUs, 1 GPU) land on the GPU nodes only.
        head_node_args={"num_cpus": 1, "num_gpus": 0, "include_dashboard": False, "_system_config": FAST_HEALTH},
    )
    try:
        for _ in range(gpu_nodes):
            # Instances need no CPU; the CPUs only let the node start several actor
            # workers at once (Ray starts at most num_cpus worker processes in parallel).
            cluster.add_node(num_cpus=4, num_gpus=gpus_per_node)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, namespace=NAMESPACE, log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def comfyhub_actors() -> list[str]:
    return [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a.get("namespace") == NAMESPACE and a["name"].startswith(ACTOR_PREFIX)
    ]


def kill_comfyhub_actors() -> None:
    for name in comfyhub_actors():
        try:
            ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
        except ValueError:
            pass


def free_gpus() -> float:
    return ray.available_resources().get("GPU", 0.0)


def total_gpus() -> float:
    return ray.cluster_resources().get("GPU", 0.0)


def wait_gpus_free(count: float, timeout: float = 30.0) -> None:
    """Until `count` GPUs are free (Ray frees an actor's GPUs once its worker is gone)."""
    wait_for_sync(lambda: free_gpus() >= count, timeout, interval=0.05, what=f"{count} free GPUs")
