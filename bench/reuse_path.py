"""Reuse path: `open_comfy` on an instance that is already online, against the bare
health check it has to make.

One `comfyhub serve` (SQLite) with one online fake-ComfyUI instance. N sequential
`POST /api/projects/{id}/open_comfy` (nothing is started: the instance answers, so the
call only checks it and replies) are timed against N bare `GET /system_stats` to the
same instance — the one request the reuse path cannot avoid. Both go through one
keep-alive httpx.Client each; the two kinds alternate so that drift (other load on the
machine) hits both alike.

Target: median open_comfy ≤ 3 × median system_stats and ≤ 10 ms.
"""

from __future__ import annotations

import sys
import time

import httpx

from _common import (
    Workspace,
    api_client,
    clean_environment,
    create_project,
    finish,
    fmt,
    free_port_range,
    instance_headers,
    live_server,
    machine,
    parse_args,
    summary,
    verdict,
)

TARGET_RATIO = 3.0
TARGET_MEDIAN_MS = 10.0
WARMUP = 20


def run(n: int) -> dict:
    result: dict = {"benchmark": "reuse_path", "machine": machine(), "n": n}
    with Workspace("reuse") as ws:
        ports = free_port_range(20)
        with live_server(ws, ports) as server, api_client(server) as api:
            project = create_project(api, "BENCH-REUSE")
            r = api.post(f"/api/projects/{project}/open_comfy")
            assert r.status_code == 200, r.text
            port = r.json()["data"]["port"]
            pid_before = api.get(f"/api/projects/{project}").json()["data"]["service"]["pid"]
            with httpx.Client(
                base_url=f"http://127.0.0.1:{port}", timeout=10, trust_env=False, headers=instance_headers(port)
            ) as comfy:
                open_url = f"/api/projects/{project}/open_comfy"
                # Floors, for the breakdown (informative, not part of the target):
                floors = {
                    "index": lambda: api.get("/"),  # framework only, no database
                    "healthz": lambda: api.get("/healthz"),  # framework + 1 trivial query
                    "auth_me": lambda: api.get("/api/auth/me"),  # framework + the auth query
                    "get_project": lambda: api.get(f"/api/projects/{project}"),  # + project and service rows
                }
                for _ in range(WARMUP):
                    assert api.post(open_url).status_code == 200
                    assert comfy.get("/system_stats").status_code == 200
                    for call in floors.values():
                        assert call().status_code == 200
                opens, stats = [], []
                floor_times: dict[str, list[float]] = {k: [] for k in floors}
                for _ in range(n):
                    t0 = time.perf_counter()
                    r = api.post(open_url)
                    opens.append(time.perf_counter() - t0)
                    if r.status_code != 200 or r.json()["data"]["port"] != port:
                        raise AssertionError(f"reuse path did not reuse: {r.status_code} {r.text}")
                    t0 = time.perf_counter()
                    r = comfy.get("/system_stats")
                    stats.append(time.perf_counter() - t0)
                    assert r.status_code == 200
                    for name, call in floors.items():
                        t0 = time.perf_counter()
                        r = call()
                        floor_times[name].append(time.perf_counter() - t0)
                        assert r.status_code == 200
            pid_after = api.get(f"/api/projects/{project}").json()["data"]["service"]["pid"]
            api.post(f"/api/projects/{project}/stop_comfy")
    o, s = summary(opens), summary(stats)
    ratio = o["median_ms"] / s["median_ms"]
    result.update(
        open_comfy=o,
        system_stats=s,
        floors={k: summary(v) for k, v in floor_times.items()},
        ratio=round(ratio, 2),
        target_ratio=TARGET_RATIO,
        target_median_ms=TARGET_MEDIAN_MS,
        met=ratio <= TARGET_RATIO and o["median_ms"] <= TARGET_MEDIAN_MS,
        same_pid_throughout=pid_before == pid_after,
        checks_ok=pid_before == pid_after,
        leftover_processes=ws.leftovers,
    )
    return result


def main() -> int:
    clean_environment()
    args = parse_args(__doc__.splitlines()[0], n=(int, 300, "number of calls of each kind"))
    res = run(args.n)
    print("reuse path (one online instance, sequential, keep-alive)")
    print(f"  open_comfy (reuse):     {fmt(res['open_comfy'])}")
    print(f"  GET /system_stats:      {fmt(res['system_stats'])}")
    for name, label in (
        ("index", "GET / (no DB)"),
        ("healthz", "GET /healthz (1 query)"),
        ("auth_me", "GET /api/auth/me"),
        ("get_project", "GET /api/projects/{id}"),
    ):
        print(f"  {label + ':':24s}{fmt(res['floors'][name])}")
    print(
        f"  ratio of medians:       {res['ratio']:.2f}x  (target <= {TARGET_RATIO}x and <= {TARGET_MEDIAN_MS} ms: "
        f"{verdict(res['met'])})"
    )
    return finish(res, args.json)


if __name__ == "__main__":
    sys.exit(main())
