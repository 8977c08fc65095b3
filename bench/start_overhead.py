"""Start overhead: what comfyhub adds to a cold start, beyond ComfyUI's own start time.

In one run, alternating:

* **open_comfy**: `POST /api/projects/{id}/open_comfy` on a stopped project, timed
  from the request to its reply (`online`); then `stop_comfy` (not timed);
* **direct**: the fake ComfyUI spawned directly with the same command line (same
  interpreter, cwd, flags, a fresh instance folder with `custom_nodes/`), polling
  `GET /system_stats` every 2 ms until it answers 200; then SIGINT.

overhead = median(open_comfy) − median(direct). Target: ≤ 100 ms
(polling once a second would cost ~0.6 s on average).

Two series, both with per-instance knobs (`fake_comfyui.json`) so that both sides run
the very same fake: first with `start_delay` = 1 s (a ComfyUI that takes a fixed time
to load: the fake binds its port 1 s after it started, so the ±200 ms jitter of its
Python imports on a busy 2-core machine is absorbed and the difference is what
comfyhub adds; this is the series the target applies to), then without a delay (the
fake's own imports only, ~0.4 s; informative, noisier).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from _common import (
    FAKE_COMFYUI,
    PYTHON,
    Workspace,
    api_client,
    clean_environment,
    create_project,
    finish,
    fmt,
    free_port_range,
    live_server,
    machine,
    parse_args,
    summary,
    user_id,
    verdict,
)
from comfyhub.launchers.base import comfyui_argv

TARGET_OVERHEAD_MS = 100.0
DIRECT_POLL_SECONDS = 0.002


def write_knobs(base: Path, start_delay: float) -> None:
    base.mkdir(parents=True, exist_ok=True)
    (base / "fake_comfyui.json").write_text(json.dumps({"start_delay": start_delay or None}))


def direct_ready_time(ws: Workspace, port: int, n: str, client: httpx.Client, start_delay: float) -> float:
    """Spawn the fake directly on `port`, poll at 2 ms until 200; return seconds."""
    base = ws.root / "direct" / f"d{n}"
    (base / "custom_nodes").mkdir(parents=True)
    write_knobs(base, start_delay)
    argv = comfyui_argv(PYTHON, "127.0.0.1", port, base, [])
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMFYHUB_")}
    env["PYTHONUNBUFFERED"] = "1"
    log = open(ws.root / "direct" / f"d{n}.log", "ab", buffering=0)
    url = f"http://127.0.0.1:{port}/system_stats"
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        cwd=FAKE_COMFYUI,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        close_fds=True,
    )
    try:
        deadline = t0 + 60
        while True:
            try:
                if client.get(url, timeout=1.0).status_code == 200:
                    elapsed = time.perf_counter() - t0
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise AssertionError(f"direct fake exited {proc.returncode}")
            if time.perf_counter() > deadline:
                raise AssertionError("direct fake not ready in 60 s")
            time.sleep(DIRECT_POLL_SECONDS)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    return elapsed


def measure(
    ws: Workspace,
    api,
    project: int,
    knob_dir: Path,
    direct_port: int,
    n: int,
    start_delay: float,
    poller: httpx.Client,
    tag: str,
) -> dict:
    """n timed rounds (after one untimed warm-up) of: cold open_comfy, stop, direct spawn."""
    write_knobs(knob_dir, start_delay)
    opens, directs, pids = [], [], set()
    for i in range(n + 1):
        t0 = time.perf_counter()
        r = api.post(f"/api/projects/{project}/open_comfy")
        elapsed = time.perf_counter() - t0
        if r.status_code != 200 or r.json()["data"]["status"] != "online":
            raise AssertionError(f"open_comfy failed: {r.status_code} {r.text}")
        pids.add(api.get(f"/api/projects/{project}").json()["data"]["service"]["pid"])
        r = api.post(f"/api/projects/{project}/stop_comfy")
        assert r.status_code == 200, r.text
        d = direct_ready_time(ws, direct_port, f"{tag}{i}", poller, start_delay)
        if i > 0:
            opens.append(elapsed)
            directs.append(d)
    o, d = summary(opens), summary(directs)
    overhead = o["median_ms"] - d["median_ms"]
    return dict(
        start_delay_s=start_delay,
        open_comfy=o,
        direct_ready=d,
        paired_overhead=summary([a - b for a, b in zip(opens, directs, strict=False)]),
        overhead_ms=round(overhead, 2),
        ratio=round(o["median_ms"] / d["median_ms"], 3),
        distinct_pids=len(pids),
        checks_ok=len(pids) == n + 1,
    )


def run(n: int, start_delay: float, raw_n: int) -> dict:
    result: dict = {"benchmark": "start_overhead", "machine": machine(), "n": n}
    with Workspace("start") as ws:
        low, high = free_port_range(20)
        # comfyhub gets low..high-1; the direct spawns use `high`, outside its range.
        direct_port = high
        with live_server(ws, (low, high - 1)) as server, api_client(server) as api:
            project = create_project(api, "BENCH-START")
            knob_dir = ws.instances / f"u{user_id(api)}" / f"p{project}"
            # No keep-alive for the direct polls: each poll before readiness is a refused connect.
            with httpx.Client(trust_env=False, limits=httpx.Limits(max_keepalive_connections=0)) as poller:
                main_run = measure(ws, api, project, knob_dir, direct_port, n, start_delay, poller, "a")
                raw = measure(ws, api, project, knob_dir, direct_port, raw_n, 0.0, poller, "b") if raw_n else None
    result.update(main_run)
    result.update(
        raw=raw,
        target_overhead_ms=TARGET_OVERHEAD_MS,
        met=main_run["overhead_ms"] <= TARGET_OVERHEAD_MS,
        checks_ok=main_run["checks_ok"] and (raw is None or raw["checks_ok"]),
        leftover_processes=ws.leftovers,
    )
    return result


def _print(res: dict, label: str) -> None:
    print(f"  {label}")
    print(f"    open_comfy, cold:       {fmt(res['open_comfy'])}")
    print(f"    direct spawn to 200:    {fmt(res['direct_ready'])}")
    print(f"    paired open - direct:   {fmt(res['paired_overhead'])}")
    print(f"    ratio of medians:       {res['ratio']:.3f}x")
    print(f"    overhead (medians):     {res['overhead_ms']:.1f} ms")


def main() -> int:
    clean_environment()
    args = parse_args(
        __doc__.splitlines()[0],
        n=(int, 20, "timed starts of each kind, with the start delay"),
        start_delay=(float, 1.0, "fake's simulated loading time, s (its start_delay knob); 0 = none"),
        raw_n=(int, 10, "timed starts of each kind without a start delay (0 = skip)"),
    )
    res = run(args.n, args.start_delay, args.raw_n)
    print("start overhead (cold start through comfyhub vs the fake spawned directly)")
    _print(res, f"fake with start_delay={args.start_delay:g} s (the measurement the target applies to):")
    if res["raw"]:
        _print(res["raw"], "fake without start delay (its own imports only; noisier):")
    print(f"  overhead {res['overhead_ms']:.1f} ms (target <= {TARGET_OVERHEAD_MS:.0f} ms: {verdict(res['met'])})")
    return finish(res, args.json)


if __name__ == "__main__":
    sys.exit(main())
