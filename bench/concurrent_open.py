"""Concurrent open: 50 simultaneous `open_comfy` clicks on one stopped project start
exactly one ComfyUI.

One `comfyhub serve` (SQLite). Each round, alternating:

* **baseline**: one `open_comfy` on the stopped project, timed to its reply; stop;
* **burst**: 50 `open_comfy` at once (asyncio, one httpx.AsyncClient, 50 connections),
  timed from the first request to the last reply. While the burst runs, a watcher
  counts (psutil) the processes whose command line names the project's instance
  folder every 20 ms; after it, the count must be exactly 1, the maximum seen must
  be 1, and all 50 replies must be 200 `online` with the same port; then the same
  burst again on the now-online instance (the cost of 50 concurrent requests without
  a start, informative). Then stop.

Printed: burst wall time and its ratio to the single cold open of the same round
(ideally ~1: the 49 extra clicks join the one start).
"""

from __future__ import annotations

import asyncio
import sys
import threading
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
    instance_processes,
    live_server,
    login_token,
    machine,
    parse_args,
    summary,
    user_id,
)


class Watcher(threading.Thread):
    """Counts the instance's processes every `interval` s until stopped; keeps the max."""

    def __init__(self, base_dir, interval: float = 0.02):
        super().__init__(daemon=True)
        self.base_dir, self.interval = base_dir, interval
        self.max_seen = 0
        self.pids: set[int] = set()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            procs = instance_processes(self.base_dir)
            self.pids.update(p.pid for p in procs)
            self.max_seen = max(self.max_seen, len(procs))
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


async def burst(url: str, token: str, project: int, clicks: int) -> tuple[float, list[httpx.Response]]:
    limits = httpx.Limits(max_connections=clicks, max_keepalive_connections=clicks)
    async with httpx.AsyncClient(
        base_url=url, timeout=120, trust_env=False, limits=limits, headers={"Authorization": f"Bearer {token}"}
    ) as client:
        t0 = time.perf_counter()
        replies = await asyncio.gather(*(client.post(f"/api/projects/{project}/open_comfy") for _ in range(clicks)))
        return time.perf_counter() - t0, replies


def run(rounds: int, clicks: int) -> dict:
    result: dict = {"benchmark": "concurrent_open", "machine": machine(), "rounds": rounds, "clicks": clicks}
    with Workspace("concurrent") as ws:
        ports = free_port_range(20)
        with live_server(ws, ports) as server, api_client(server) as api:
            token = login_token(server.url)
            project = create_project(api, "BENCH-BURST")
            base_dir = ws.instances / f"u{user_id(api)}" / f"p{project}"
            singles, bursts, warm_bursts, problems = [], [], [], []
            max_seen_all, distinct_pids = 0, set()
            for i in range(rounds + 1):  # round 0 warms up, untimed
                t0 = time.perf_counter()
                r = api.post(f"/api/projects/{project}/open_comfy")
                single = time.perf_counter() - t0
                assert r.status_code == 200, r.text
                api.post(f"/api/projects/{project}/stop_comfy").raise_for_status()
                if instance_processes(base_dir):
                    problems.append(f"round {i}: process left after stop_comfy")

                watcher = Watcher(base_dir)
                watcher.start()
                try:
                    wall, replies = asyncio.run(burst(server.url, token, project, clicks))
                    after = instance_processes(base_dir)
                finally:
                    watcher.stop()
                codes = {r.status_code for r in replies}
                ports_seen = {r.json()["data"]["port"] for r in replies if r.status_code == 200}
                statuses = {r.json()["data"]["status"] for r in replies if r.status_code == 200}
                if codes != {200} or len(ports_seen) != 1 or statuses != {"online"}:
                    problems.append(f"round {i}: codes {codes}, ports {ports_seen}, statuses {statuses}")
                if len(after) != 1 or watcher.max_seen != 1:
                    problems.append(
                        f"round {i}: {len(after)} process(es) after the burst, max {watcher.max_seen} during"
                    )
                max_seen_all = max(max_seen_all, watcher.max_seen)
                distinct_pids |= watcher.pids
                # The same burst on the now-online instance: the cost of 50 concurrent requests alone.
                warm_wall, warm_replies = asyncio.run(burst(server.url, token, project, clicks))
                if {r.status_code for r in warm_replies} != {200} or len(instance_processes(base_dir)) != 1:
                    problems.append(f"round {i}: burst on the online instance went wrong")
                api.post(f"/api/projects/{project}/stop_comfy").raise_for_status()
                if i > 0:
                    singles.append(single)
                    bursts.append(wall)
                    warm_bursts.append(warm_wall)
    s, b = summary(singles), summary(bursts)
    result.update(
        single_open=s,
        burst=b,
        burst_online=summary(warm_bursts),
        ratio=round(b["median_ms"] / s["median_ms"], 3),
        processes_after_burst_ok=not problems,
        max_processes_seen=max_seen_all,
        problems=problems,
        checks_ok=not problems,
        met=not problems,
        leftover_processes=ws.leftovers,
    )
    return result


def main() -> int:
    clean_environment()
    args = parse_args(
        __doc__.splitlines()[0], rounds=(int, 5, "timed rounds"), clicks=(int, 50, "concurrent open_comfy per burst")
    )
    res = run(args.rounds, args.clicks)
    print(f"concurrent open ({res['clicks']} simultaneous open_comfy on one stopped project)")
    print(f"  single cold open:       {fmt(res['single_open'])}")
    print(f"  burst of {res['clicks']}, wall:      {fmt(res['burst'])}")
    print(f"  burst on online inst.:  {fmt(res['burst_online'])}")
    print(f"  ratio of medians:       {res['ratio']:.3f}x (burst / single cold open)")
    print(
        f"  processes per instance: max {res['max_processes_seen']} seen during bursts, "
        f"exactly 1 after every burst: {res['processes_after_burst_ok']}"
    )
    for p in res["problems"]:
        print(f"  PROBLEM: {p}")
    return finish(res, args.json)


if __name__ == "__main__":
    sys.exit(main())
