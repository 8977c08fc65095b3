"""`comfyhub doctor`'s look at a Ray cluster, run as a child process with a time limit
(joining a cluster that is not there can hang for a long time).

    python -m comfyhub.launchers.ray_check ADDRESS MARKER_DIR...

Prints one JSON object: the alive nodes (IP, GPUs) and, for each node, which of the
MARKER_DIRs it does not see. Each MARKER_DIR holds a marker file the caller just
wrote there on the comfyhub host: a node that sees all markers shares those folders.
"""

from __future__ import annotations

import json
import os
import socket
import sys

CONNECT_TIMEOUT = 3.0


def unreachable(address: str) -> str | None:
    """Why a host:port RAY_ADDRESS cannot be reached, or None (also for `auto`).

    Checked with a plain TCP connect first: ray.init keeps retrying an address where
    nothing listens for over a minute before it gives up.
    """
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return None
    try:
        socket.create_connection((host.strip("[]"), int(port)), CONNECT_TIMEOUT).close()
    except OSError as exc:
        return f"{target} 无法连接（{exc.strerror or type(exc).__name__}）"
    return None


def _missing_on_node(paths: list[str]) -> dict:
    import ray

    return {"ip": ray.util.get_node_ip_address(), "missing": [p for p in paths if not os.path.exists(p)]}


def main(argv: list[str]) -> int:
    address, markers = argv[0], argv[1:]
    problem = unreachable(address)
    if problem:
        print(problem, file=sys.stderr)
        return 1
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    probe = ray.remote(num_cpus=0)(_missing_on_node)
    refs = [
        probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(markers)
        for n in nodes
    ]
    seen = ray.get(refs, timeout=60)
    print(
        json.dumps(
            {
                "nodes": [{"ip": n["NodeManagerAddress"], "gpus": n["Resources"].get("GPU", 0)} for n in nodes],
                "shared": seen,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
