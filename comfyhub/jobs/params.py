"""PLACEHOLDER until the params module lands."""

import copy


def apply(workflow: dict, params: dict) -> dict:
    graph = dict(workflow)
    for key, value in params.items():
        node_id, _, name = key.rpartition(".")
        node = copy.deepcopy(graph[node_id])
        node["inputs"][name] = value
        graph[node_id] = node
    return graph
