"""Scale: N instances under one comfyhub, and whether users feel the heartbeat.

    .venv/bin/python bench/scale.py --instances 1000 --db sqlite
    .venv/bin/python bench/scale.py --instances 1000 --db postgresql
    (--no-write: print only; --json FILE: also write the numbers;
     BENCH_TRACE_STALLS=FILE: the hub writes what made each loop turn over 12 ms
     (BENCH_TRACE_OVER_MS) of: its callbacks, named, and garbage collections;
     BENCH_HUB_LOG=FILE: keep the hub's log; a run takes ~12 minutes)

One comfyhub process (uvicorn, one worker, as `comfyhub serve` runs it) with N lean
stand-ins (tests/fake_comfyui/lean.py, ~9 MB each) and the heartbeat every 5 s. Steps:

1. create N projects and open them all (`open_comfy`, 16 requests in flight; the hub's
   start cap COMFYUI_MAX_CONCURRENT_STARTS as configured): wall time;
2. offer 100 `open_comfy` calls per second (open loop, spread over all projects) in
   slices of one interval, the heartbeat running and paused in turn (32 of each, so that
   the machine's other load hits both alike; with 16 a run's p99 ratio moved by ±0.15
   from one run to the next): p50 and p99 of each; the same with proxied
   small GETs (`/comfy/{id}/queue`);
3. inside the hub, all along: each sweep's start and end, and every event-loop stall (a
   sampler sleeps 1 ms and records how late it woke, and the loop thread's CPU time over
   the gap: "busy" is what the loop did while the sampler waited, "wall" adds the time
   the process was not running at all — on a shared machine, mostly other people's
   load); the stalls during sweeps against those with the heartbeat paused;
4. hub RSS, and its prober's (the helper process that makes the sweeps' checks);
5. SIGKILL 10 % of the instances: time until all of them are `offline` (admin list,
   polled), and every healthy instance that was written `offline` meanwhile (a flicker).

Heartbeat off = the lease loop still runs, the sweep is skipped (a flag in this process
only; the product has no such switch). The hub's extra routes `/_bench/…` exist only here.

Every process the run starts is killed at the end, also on Ctrl-C, SIGTERM or an error:
the instances run in process groups of their own (the launcher's), so a guard process
(its own session) waits on a pipe from this one and, when this process is gone however
it ended, kills every process naming the run's temp dir — hub, instances, PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import (  # noqa: E402
    ADMIN_PASSWORD,
    ADMIN_USER,
    DOC,
    FAKE_COMFYUI,
    PYTHON,
    ROOT,
    Workspace,
    clean_environment,
    free_port_range,
    kill_processes_under,
    machine,
)

INTERVAL_S = 5.0
HEALTH_TIMEOUT_S = 2.5
RATE = 100  # calls per second offered
SLICE_S = 5.0  # one heartbeat interval: each "on" slice holds one sweep
PAIRS = 32  # slices of each kind, alternating, so that other load on the machine hits both alike
AA = False  # --aa: the heartbeat paused in both kinds of slice, to see how the ratio varies by itself
# Opens in flight at once: a browser tab's worth of users clicking; the hub's start cap
# (2) sets the pace anyway.
OPEN_IN_FLIGHT = 16
KILL_FRACTION = 0.10
STALL_RECORD_MS = 2.0  # stalls shorter than this are counted, not stored

TARGET_P99_RATIO = 1.2
TARGET_SWEEP_S = 3.0
TARGET_STALL_MS = 20.0
TARGET_RSS_MB = 300.0

SECTION = "Scale"

# --- the hub: `--hub PORT` runs comfyhub (as `comfyhub serve` does) with the instrumentation --


class _Watch:
    """What the hub process records about itself, read back through GET /_bench/stats."""

    paused = False
    sweeping = False
    sweeps: list[dict] = []
    # (monotonic end, wall ms, loop-thread CPU ms, whole-process CPU ms) of each late wake-up
    stalls: list[tuple[float, float, float, float]] = []
    samples = 0
    offline: list[tuple[float, int]] = []  # (monotonic, project id) written offline
    collections: list[tuple[float, float, int]] = []  # (monotonic end, ms, objects left) of full GCs
    stamps: list[tuple[float, float]] = []  # (start, end) of each heartbeat stamp write
    _gc_started = 0.0
    traced: list[tuple[float, str]] | None = None  # the current loop turn's callbacks (BENCH_TRACE_STALLS)


def _watch_full_collections(phase: str, info: dict) -> None:
    if phase == "start":
        _Watch._gc_started = time.monotonic()
        return
    now = time.monotonic()
    if _Watch.traced is not None:  # BENCH_TRACE_STALLS: every collection goes in the turn's list
        _Watch.traced.append(
            (now - _Watch._gc_started, f"gc of generation {info['generation']} ({info['collected']} freed)")
        )
    if info["generation"] == 2:
        _Watch.collections.append((now, round((now - _Watch._gc_started) * 1000, 2), len(gc.get_objects(2))))


async def _stall_sampler() -> None:
    """Sleep 1 ms at a time; a late wake-up is a stall of the event loop (or of the process)."""
    period = 0.001
    last, last_cpu, last_proc = time.monotonic(), time.thread_time(), time.process_time()
    while True:
        await asyncio.sleep(period)
        now, cpu, proc = time.monotonic(), time.thread_time(), time.process_time()
        late_ms = (now - last - period) * 1000
        _Watch.samples += 1
        if late_ms >= STALL_RECORD_MS:
            _Watch.stalls.append(
                (now, round(late_ms, 2), round((cpu - last_cpu) * 1000, 2), round((proc - last_proc) * 1000, 2))
            )
        last, last_cpu, last_proc = now, cpu, proc


def _instrument() -> None:
    from comfyhub.services.heartbeat import Heartbeat
    from comfyhub.services.manager import ServiceManager
    from comfyhub.services.records import Records

    sweep = Heartbeat.sweep

    async def timed_sweep(self, *args, **kwargs):
        if _Watch.paused:
            return {"online": 0, "offline": 0}
        _Watch.sweeping = True
        t0 = time.monotonic()
        try:
            counts = await sweep(self, *args, **kwargs)
        finally:
            _Watch.sweeping = False
        _Watch.sweeps.append({"start": t0, "end": time.monotonic(), "counts": counts})
        return counts

    update_many = Records.update_many

    async def logged_update_many(self, updates, *args, **kwargs):
        hits = await update_many(self, updates, *args, **kwargs)
        now = time.monotonic()
        for (record, values), hit in zip(updates, hits, strict=False):
            if hit and values.get("status") == "offline":
                _Watch.offline.append((now, record.project_id))
        return hits

    stamp = Records.stamp_heartbeats

    async def timed_stamp(self, records, at):
        t0 = time.monotonic()
        try:
            return await stamp(self, records, at)
        finally:
            _Watch.stamps.append((t0, time.monotonic()))

    Records.stamp_heartbeats = timed_stamp
    startup = ServiceManager.startup

    async def startup_and_sample(self):
        await startup(self)
        self._bench_sampler = asyncio.get_running_loop().create_task(_stall_sampler())
        if os.environ.get("BENCH_TRACE_STALLS"):
            self._bench_tracer = asyncio.get_running_loop().create_task(
                _trace_stalls(
                    os.environ["BENCH_TRACE_STALLS"], float(os.environ.get("BENCH_TRACE_OVER_MS", "12")) / 1000
                )
            )

    gc.callbacks.append(_watch_full_collections)
    Heartbeat.sweep = timed_sweep
    Records.update_many = logged_update_many
    ServiceManager.startup = startup_and_sample


async def _trace_stalls(path: str, over_s: float = 0.012) -> None:
    """What a long loop turn was made of (BENCH_TRACE_STALLS): every callback the loop ran
    is timed; when a 1 ms ticker wakes more than `over_s` late, the callbacks of over
    0.3 ms that ran since its last wake-up are written to `path`, named by their task's
    coroutine and where it waits now."""
    from time import perf_counter

    ran: list[tuple[float, str]] = []
    _Watch.traced = ran
    run = asyncio.events.Handle._run

    def timed_run(self) -> None:
        before = _callback_name(self)  # a task that ends in this step has no stack after it
        t0, c0 = perf_counter(), time.thread_time()
        run(self)
        took = perf_counter() - t0
        if took > 0.0003:
            cpu = (time.thread_time() - c0) * 1000
            ran.append((took, f"{_callback_name(self)}  [cpu {cpu:.2f} ms] (was at: {before})"))

    asyncio.events.Handle._run = timed_run
    last = time.monotonic()
    while True:
        await asyncio.sleep(0.001)
        now = time.monotonic()
        if now - last > over_s:
            lines = [
                f"=== {(now - last) * 1000:.1f} ms at {now:.3f}{' sweeping' if _Watch.sweeping else ''}{' paused' if _Watch.paused else ''}"
                f", callbacks over 0.3 ms: {sum(t for t, _ in ran) * 1000:.1f} ms"
            ]
            lines += [f"  {t * 1000:6.2f} ms  {name}" for t, name in sorted(ran, key=lambda x: -x[0])[:12]]
            with open(path, "a") as out:
                out.write("\n".join(lines) + "\n")
        ran.clear()
        last = now


def _callback_name(handle) -> str:
    """A task step as its coroutine's name and where it waits now; else the callback's name."""
    callback = handle._callback
    task = getattr(callback, "__self__", None)
    if isinstance(task, asyncio.Task):
        coro = task.get_coro()
        where = []
        while coro is not None and len(where) < 6:
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
            if frame is None:
                break
            where.append(f"{frame.f_code.co_qualname}:{frame.f_lineno}")
            scope = frame.f_locals.get("scope")
            if isinstance(scope, dict) and "path" in scope and not where[0].startswith("/"):
                where.insert(0, scope["path"])
            coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
        return "task " + " > ".join(where)
    return getattr(callback, "__qualname__", repr(callback))


def hub_main(port: int) -> int:
    import uvicorn

    from comfyhub.app import create_app
    from comfyhub.cli import ensure_first_admin
    from comfyhub.config import load_settings
    from comfyhub.db import migrate

    settings = load_settings()
    migrate(settings.database_url)
    ensure_first_admin(settings)
    _instrument()
    app = create_app(settings)

    @app.post("/_bench/heartbeat", include_in_schema=False)
    async def heartbeat_switch(on: bool):
        _Watch.paused = not on
        return {"paused": _Watch.paused}

    @app.get("/_bench/sweeping", include_in_schema=False)
    async def sweeping():
        return {"sweeping": _Watch.sweeping, "pid": os.getpid(), "prober": app.state.manager.prober.pid}

    @app.get("/_bench/stats", include_in_schema=False)
    async def stats():
        return {
            "paused": _Watch.paused,
            "sweeping": _Watch.sweeping,
            "sweeps": _Watch.sweeps,
            "stalls": _Watch.stalls,
            "samples": _Watch.samples,
            "offline": _Watch.offline,
            "collections": _Watch.collections,
            "stamps": _Watch.stamps,
        }

    @app.post("/_bench/full_gc", include_in_schema=False)
    async def full_gc():
        """What one full collection costs now, and what it walks (not what gc.freeze covered)."""
        from collections import Counter

        objects = gc.get_objects()
        kinds = Counter(type(o).__name__ for o in objects)
        lists = [o for o in objects if type(o) is list]
        held_by = Counter(
            type(r).__name__
            for lst in lists[:3000]
            for r in gc.get_referrers(lst)
            if r is not objects and r is not lists
        )
        del objects, lists
        t0 = time.thread_time()
        gc.collect()
        return {
            "cpu_ms": round((time.thread_time() - t0) * 1000, 2),
            "objects": sum(kinds.values()),
            "frozen": gc.get_freeze_count(),
            "kinds": kinds.most_common(12),
            "lists_held_by": held_by.most_common(6),
        }

    # Both listeners, as `comfyhub serve` binds them: the proxied GETs go to the instance origin.
    from comfyhub.serving import bind_listener

    sockets = [
        bind_listener("127.0.0.1", port, "hub"),
        bind_listener("127.0.0.1", settings.instance_port, "instance origin"),
    ]
    # uvloop runs callbacks in C, where the tracer cannot time them: trace on asyncio's loop.
    loop = "asyncio" if os.environ.get("BENCH_TRACE_STALLS") else "auto"
    uvicorn.Server(uvicorn.Config(app, log_level="warning", loop=loop)).run(sockets=sockets)
    return 0


# --- clean-up that survives this process ------------------------------------------------------

GUARD = r"""
import os, signal, sys, time
root = sys.argv[1]
signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C at the terminal reaches the whole group
sys.stdin.buffer.read()  # EOF: the benchmark ended, however it ended
def naming_root():
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if root.encode() in f.read():
                    yield int(pid)
        except OSError:
            pass
for _ in range(5):
    found = list(naming_root())
    if not found:
        break
    for pid in found:
        try:
            os.kill(pid, signal.SIGCONT); os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    time.sleep(0.5)
import shutil
shutil.rmtree(root, ignore_errors=True)
"""


def start_guard(root: Path) -> subprocess.Popen:
    """A process in its own session that outlives this one and kills what the run left behind."""
    return subprocess.Popen(
        [sys.executable, "-c", GUARD, str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _interrupt_on_signals() -> None:
    """SIGINT and SIGTERM end the run through its clean-up (finally blocks), even when
    SIGINT was ignored at start-up (a background job of a script)."""

    def handler(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


# --- the lean stand-in --------------------------------------------------------------------------


def lean_comfyui(ws: Workspace) -> tuple[Path, Path]:
    """(COMFYUI_REPO_PATH, COMFYUI_PYTHON) for lean instances.

    The folder holds lean.py with its bytecode and a two-line main.py that imports it: a
    script run as __main__ is compiled from source at every start (~1.3 MB of each
    process's memory). The interpreter is a bare venv of this one: no site-packages, no
    .pth files run at start-up (the project's venv adds ~2 MB to every process).
    """
    repo = ws.root / "lean_comfyui"
    repo.mkdir()
    shutil.copy(FAKE_COMFYUI / "lean.py", repo / "lean.py")
    (repo / "main.py").write_text("import lean\n\nlean.main()\n")
    venv = ws.root / "lean_python"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "py_compile", str(repo / "lean.py")], check=True)
    os.rename(next((repo / "__pycache__").glob("lean.*.pyc")), repo / "__pycache__" / _pyc_name(python))
    return repo, python


def _pyc_name(python: Path) -> str:
    tag = subprocess.run(
        [str(python), "-c", "import sys; print(sys.implementation.cache_tag)"], capture_output=True, text=True
    )
    return f"lean.{tag.stdout.strip()}.pyc"


# --- a light HTTP client (the hub's own: a generic client costs more than what is measured) ----


class Hub:
    def __init__(self, port: int):
        from comfyhub.net.http1 import UpstreamPool

        self.host, self.port = "127.0.0.1", port
        self.pool = UpstreamPool(connect_timeout=30)
        self.token = ""

    async def request(self, method: str, path: str, body: dict | None = None, timeout: float = 120):
        from comfyhub.net.http1 import UpstreamError

        try:
            return await self._request(method, path, body, timeout)
        except UpstreamError:
            # A pooled connection the hub had just closed (uvicorn drops idle ones after 5 s):
            # once more on a new one.
            return await self._request(method, path, body, timeout, fresh=True)

    async def _request(self, method: str, path: str, body: dict | None, timeout: float, fresh: bool = False):
        port = self.port + 1 if path.startswith("/comfy/") else self.port  # ComfyUI: the instance origin
        conn = await self.pool.acquire(self.host, port, fresh=fresh)
        ok = False
        try:
            data = json.dumps(body).encode() if body is not None else b""
            head = f"{method} {path} HTTP/1.1\r\nhost: {self.host}:{port}\r\ncontent-length: {len(data)}\r\n"
            if body is not None:
                head += "content-type: application/json\r\n"
            if self.token:
                head += f"authorization: Bearer {self.token}\r\n"
            await conn.write(head.encode() + b"\r\n" + data)
            conn.request_sent = True
            status, _ = await conn.response_head(timeout)
            chunks = [c async for c in conn.body_chunks()]
            ok = True
            return status, b"".join(chunks)
        finally:
            if ok:
                self.pool.release(conn)
            else:
                conn.close()

    async def json(self, method: str, path: str, body: dict | None = None, expect: int = 200):
        status, data = await self.request(method, path, body)
        if status != expect:
            raise AssertionError(f"{method} {path}: {status} {data[:300]!r}")
        return json.loads(data)

    async def login(self) -> None:
        reply = await self.json("POST", "/api/auth/login", {"username": ADMIN_USER, "password": ADMIN_PASSWORD})
        self.token = reply["data"]["token"]

    async def services(self) -> dict[int, dict]:
        return {s["project_id"]: s for s in (await self.json("GET", "/api/admin/services"))["data"]}

    async def heartbeat(self, on: bool) -> None:
        await self.json("POST", f"/_bench/heartbeat?on={'true' if on else 'false'}")

    async def stats(self) -> dict:
        return await self.json("GET", "/_bench/stats")

    def close(self) -> None:
        self.pool.close()


async def gather_limited(limit: int, coros) -> list:
    gate = asyncio.Semaphore(limit)

    async def one(coro):
        async with gate:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros))


async def offered_load(hub: Hub, paths: list[str], method: str, seconds: float) -> list[tuple[float, float, int]]:
    """RATE requests per second on schedule (open loop), whatever the answers' pace.

    Returns (monotonic send time, latency s, status) per request.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    tasks = []

    async def one(path: str):
        t0 = time.monotonic()
        try:
            status, _ = await hub.request(method, path, timeout=60)
        except Exception:  # noqa: BLE001 — a failed request is a result too
            status = 0
        return t0, time.monotonic() - t0, status

    for i in range(int(RATE * seconds)):
        delay = start + i / RATE - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(paths[i % len(paths)])))
    return await asyncio.gather(*tasks)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


# --- the run ----------------------------------------------------------------------------------


async def wait_quiet(hub: Hub) -> None:
    """Until no sweep is under way (a paused heartbeat lets the current sweep finish)."""
    deadline = time.monotonic() + 60
    while (await hub.json("GET", "/_bench/sweeping"))["sweeping"] and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def latency_phase(hub: Hub, paths: list[str], method: str, pids: dict[str, list[int]]) -> dict:
    samples: dict[str, list[tuple[float, float, int]]] = {"on": [], "off": []}
    windows: dict[str, list[tuple[float, float]]] = {"on": [], "off": []}
    slices: dict[str, list[list[float]]] = {"on": [], "off": []}  # latencies of 200s, per slice
    cpu = {"on": [0, 0], "off": [0, 0]}  # the machine's (busy, all) CPU ticks in the slices
    used = {state: dict.fromkeys(pids, 0) for state in ("on", "off")}  # CPU ticks of the hub, the instances
    for state in ("on", "off") * PAIRS:
        await hub.heartbeat(state == "on" and not AA)
        if state == "off":
            await wait_quiet(hub)
        used0 = {group: process_ticks(group_pids) for group, group_pids in pids.items()}
        t0, cpu0 = time.monotonic(), machine_cpu()
        rows = await offered_load(hub, paths, method, SLICE_S)
        cpu[state] = [a + b - c for a, b, c in zip(cpu[state], machine_cpu(), cpu0, strict=True)]
        for group, group_pids in pids.items():
            used[state][group] += process_ticks(group_pids) - used0[group]
        samples[state] += rows
        slices[state].append([lat for _t, lat, status in rows if status == 200])
        windows[state].append((t0, time.monotonic()))
    await hub.heartbeat(True)
    out = {}
    for state, rows in samples.items():
        ok = [lat for _t, lat, status in rows if status == 200]
        out[state] = {
            "n": len(rows),
            "errors": len(rows) - len(ok),
            "p50_ms": round(percentile(ok, 0.50) * 1000, 2),
            "p99_ms": round(percentile(ok, 0.99) * 1000, 2),
            "max_ms": round(max(ok) * 1000, 2) if ok else None,
        }
    out["ratio_p99"] = round(out["on"]["p99_ms"] / out["off"]["p99_ms"], 3)
    out["ratio_p99_ci90"] = ratio_interval(slices["on"], slices["off"])
    out["machine_busy"] = {state: round(busy / max(1, total), 3) for state, (busy, total) in cpu.items()}
    # CPU seconds per second of slice, by group
    tick = os.sysconf("SC_CLK_TCK")
    out["cpu_per_s"] = {
        state: {g: round(t / tick / (PAIRS * SLICE_S), 3) for g, t in groups.items()} for state, groups in used.items()
    }
    out["windows"] = windows
    out["samples"] = samples
    return out


def process_ticks(pids: list[int]) -> int:
    """CPU ticks (user + system) these processes used so far; the gone count for nothing."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total


def machine_cpu() -> tuple[int, int]:
    """(busy, all) CPU ticks of the whole machine since boot (/proc/stat)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return sum(ticks) - idle, sum(ticks)


def ratio_interval(on: list[list[float]], off: list[list[float]], rounds: int = 400) -> list[float]:
    """A 90 % interval of the p99 ratio (running / paused), by resampling the pairs of
    slices: how far the ratio moves with which seconds of other load the slices met (an A/A
    run, both columns paused, moves by ±20 % on this shared machine)."""
    rnd = random.Random(0)
    ratios = []
    for _ in range(rounds):
        picked = [rnd.randrange(len(on)) for _ in on]
        running = percentile([x for i in picked for x in on[i]], 0.99)
        paused = percentile([x for i in picked for x in off[i]], 0.99)
        ratios.append(running / paused if paused else math.inf)
    ratios.sort()
    return [round(ratios[int(0.05 * rounds)], 2), round(ratios[int(0.95 * rounds)], 2)]


def stall_summary(stats: dict, windows: dict[str, list[tuple[float, float]]]) -> dict:
    """The largest stalls inside sweeps (heartbeat on) against those with the heartbeat off."""
    sweeps = [(s["start"], s["end"]) for s in stats["sweeps"]]

    def inside(t: float, spans) -> bool:
        return any(a <= t <= b for a, b in spans)

    in_sweeps = [s for s in stats["stalls"] if inside(s[0], sweeps) and inside(s[0], windows["on"])]
    heartbeat_off = [s for s in stats["stalls"] if inside(s[0], windows["off"])]

    collections = stats["collections"]

    def with_full_gc(r) -> bool:  # a full collection ended within this wait
        return any(r[0] - r[1] / 1000 - 0.002 <= c[0] <= r[0] for c in collections)

    def overlap(spans_a, spans_b) -> float:
        return sum(max(0.0, min(b1, b2) - max(a1, a2)) for a1, b1 in spans_a for a2, b2 in spans_b)

    seconds = {"in_sweeps": overlap(sweeps, windows["on"]), "off": sum(b - a for a, b in windows["off"])}

    def top(rows, seconds: float):
        by_wall = sorted(rows, key=lambda r: -r[1])
        by_cpu = sorted(rows, key=lambda r: -r[2])
        return {
            # medium waits: each one a request in flight may meet (p99 is made of such meetings)
            "busy_over_4ms_per_s": round(sum(1 for r in rows if r[2] > 4) / seconds, 2) if seconds else None,
            "wall_over_4ms_per_s": round(sum(1 for r in rows if r[1] > 4) / seconds, 2) if seconds else None,
            "busy_over_20ms": sum(1 for r in rows if r[2] > TARGET_STALL_MS),
            "busy_over_20ms_full_gc": sum(1 for r in rows if r[2] > TARGET_STALL_MS and with_full_gc(r)),
            "max_busy_ms_without_full_gc": max((r[2] for r in rows if not with_full_gc(r)), default=0.0),
            "wall_over_20ms": sum(1 for r in rows if r[1] > TARGET_STALL_MS),
            "max_busy_ms": by_cpu[0][2] if rows else 0.0,
            "max_wall_ms": by_wall[0][1] if rows else 0.0,
            "top5_wall": [list(r[1:]) for r in by_wall[:5]],
            "top5_busy": [list(r[1:]) for r in by_cpu[:5]],
        }

    def full_gcs(spans):
        rows = [c for c in collections if inside(c[0], spans)]
        seconds = sum(b - a for a, b in spans)
        return {
            "count": len(rows),
            "per_minute": round(len(rows) / seconds * 60, 1) if seconds else None,
            "max_ms": max((c[1] for c in rows), default=0.0),
            "objects": max((c[2] for c in rows), default=0),
        }

    return {
        "during_sweeps": top(in_sweeps, seconds["in_sweeps"]),
        "heartbeat_off": top(heartbeat_off, seconds["off"]),
        "full_gc_heartbeat_on": full_gcs(windows["on"]),
        "full_gc_heartbeat_off": full_gcs(windows["off"]),
    }


def tail_causes(rows: list, stats: dict) -> dict:
    """Where the slowest 1 % of the calls made with the heartbeat running were sent: inside a
    sweep, overlapping a stamp write, or neither (for the analysis in docs/benchmarks.md)."""
    ok = sorted((lat, t0) for t0, lat, status in rows if status == 200)
    tail = ok[-max(1, len(ok) // 100) :]
    sweeps = [(s["start"], s["end"]) for s in stats["sweeps"]]
    stamps = stats["stamps"]

    def overlaps(t0, lat, spans):
        return any(a <= t0 + lat and t0 <= b for a, b in spans)

    in_sweep = [x for x in ok if overlaps(x[1], x[0], sweeps)]
    where = [0, 0, 0, 0, 0]  # tail calls sent before a sweep / in its 1st..4th quarter
    for lat, t0 in tail:
        for a, b in sweeps:
            if a <= t0 + lat and t0 <= b:
                where[1 + min(3, max(0, int((t0 - a) / (b - a) * 4)))] += 1 if t0 >= a else 0
                where[0] += 1 if t0 < a else 0
                break
    return {
        "tail_by_quarter_of_sweep": where,
        "tail_n": len(tail),
        "tail_in_sweep": sum(1 for lat, t0 in tail if overlaps(t0, lat, sweeps)),
        "tail_over_stamp": sum(1 for lat, t0 in tail if overlaps(t0, lat, stamps)),
        "share_of_calls_in_sweep": round(len(in_sweep) / len(ok), 3) if ok else None,
        "p50_in_sweep_ms": round(percentile([x[0] for x in in_sweep], 0.5) * 1000, 2) if in_sweep else None,
        "p99_in_sweep_ms": round(percentile([x[0] for x in in_sweep], 0.99) * 1000, 2) if in_sweep else None,
        "stamp_ms_max": round(max((b - a for a, b in stamps), default=0) * 1000, 1),
    }


async def kill_phase(hub: Hub, services: dict[int, dict], seed: int) -> dict:
    online = sorted(p for p, s in services.items() if s["status"] == "online")
    chosen = sorted(random.Random(seed).sample(online, max(1, int(len(online) * KILL_FRACTION))))
    before = len((await hub.stats())["offline"])
    t0 = time.monotonic()
    for p in chosen:
        with contextlib.suppress(ProcessLookupError):
            os.kill(services[p]["pid"], signal.SIGKILL)
    deadline = t0 + 3 * (INTERVAL_S + HEALTH_TIMEOUT_S) + 30
    all_offline_s = None
    flickers_seen: set[int] = set()
    while time.monotonic() < deadline:
        now = await hub.services()
        flickers_seen |= {p for p in online if p not in chosen and now[p]["status"] != "online"}
        if all_offline_s is None and all(now[p]["status"] == "offline" for p in chosen):
            all_offline_s = time.monotonic() - t0
            deadline = time.monotonic() + 2 * INTERVAL_S + 2  # then watch two more sweeps for flickers
        await asyncio.sleep(0.5)
    written = (await hub.stats())["offline"][before:]
    false_offline = sorted({p for _t, p in written if p not in chosen} | flickers_seen)
    return {
        "killed": len(chosen),
        "all_offline_s": round(all_offline_s, 2) if all_offline_s is not None else None,
        "false_offline": false_offline,
        "target_s": INTERVAL_S + HEALTH_TIMEOUT_S,
    }


async def drive(hub: Hub, n: int, seed: int) -> dict:
    out: dict = {}
    await hub.login()
    codes = [f"SCALE-{i}" for i in range(n)]
    created = await gather_limited(
        8, (hub.json("POST", "/api/projects", {"name": c, "code": c}, expect=201) for c in codes)
    )
    projects = [r["data"]["id"] for r in created]

    async def open_one(p: int) -> float:
        t0 = time.monotonic()
        status, data = await hub.request("POST", f"/api/projects/{p}/open_comfy", timeout=600)
        if status != 200:
            raise AssertionError(f"open_comfy {p}: {status} {data[:300]!r}")
        return time.monotonic() - t0

    t0 = time.monotonic()
    await gather_limited(OPEN_IN_FLIGHT, (open_one(p) for p in projects))
    out["open_all_s"] = round(time.monotonic() - t0, 1)
    services = await hub.services()
    out["online_after_open"] = sum(1 for s in services.values() if s["status"] == "online")
    if out["online_after_open"] != n:
        raise AssertionError(f"only {out['online_after_open']} of {n} online after opening")
    # Let the heartbeat sweep a few times with everything open (and warm its connections).
    await asyncio.sleep(2 * INTERVAL_S)

    order = list(projects)
    random.Random(seed).shuffle(order)
    hub_pids = await hub.json("GET", "/_bench/sweeping")
    pids = {
        "hub": [hub_pids["pid"]],
        "prober": [hub_pids["prober"]] if hub_pids["prober"] else [],  # the heartbeat's checks
        "instances": [s["pid"] for s in services.values() if s.get("pid")],
    }
    out["prober_pid"] = hub_pids["prober"]
    out["reuse"] = await latency_phase(hub, [f"/api/projects/{p}/open_comfy" for p in order], "POST", pids)
    out["proxied_get"] = await latency_phase(hub, [f"/comfy/{p}/queue" for p in order], "GET", pids)
    stats = await hub.stats()
    out["full_gc"] = await hub.json("POST", "/_bench/full_gc")
    windows = {k: out["reuse"]["windows"][k] + out["proxied_get"]["windows"][k] for k in ("on", "off")}
    out["stalls"] = stall_summary(stats, windows)
    healthy = [s for s in stats["sweeps"] if s["counts"].get("online") == n and s["counts"].get("offline") == 0]
    durations = [s["end"] - s["start"] for s in healthy]
    out["sweeps_healthy"] = {
        "n": len(durations),
        "median_s": round(percentile(durations, 0.5), 3) if durations else None,
        "max_s": round(max(durations), 3) if durations else None,
    }
    out["stall_samples"] = stats["samples"]
    out["tails"] = {k: tail_causes(out[k]["samples"]["on"], stats) for k in ("reuse", "proxied_get")}
    for rows in (out["reuse"], out["proxied_get"]):
        rows.pop("windows")
        rows.pop("samples")
    out["services_before_kill"] = services
    return out


def run(n: int, db: str, seed: int) -> dict:
    result: dict = {"benchmark": "scale", "machine": machine(), "instances": n, "db": db}
    with Workspace("scale") as ws:
        guard = start_guard(ws.root)
        pg = None
        hub_proc = None
        try:
            repo, python = lean_comfyui(ws)
            if db == "postgresql":
                from tests.support.postgres import running_postgres

                os.chmod(ws.root, 0o755)  # PostgreSQL runs as its own user when we are root
                tempfile.tempdir = str(ws.root)  # its data folder under the run's: the guard finds it
                try:
                    pg = running_postgres()
                    url = pg.__enter__()
                finally:
                    tempfile.tempdir = None
            else:
                url = f"sqlite+aiosqlite:///{ws.root / 'comfyhub.db'}"
            low, high = free_port_range(n + 50)
            hub_port = free_port_range(2, start=high + 1)[0]  # and the next one: the instance origin
            env = {
                **os.environ,
                **ws.server_env((low, high)),
                "COMFYHUB_DATABASE_URL": url,
                "COMFYHUB_INSTANCE_PORT": str(hub_port + 1),
                "COMFYUI_REPO_PATH": str(repo),
                "COMFYUI_PYTHON": str(python),
                "COMFYUI_HEARTBEAT_INTERVAL_SECONDS": str(INTERVAL_S),
                "COMFYUI_HEALTH_TIMEOUT_SECONDS": str(HEALTH_TIMEOUT_S),
                "COMFYUI_STOP_GRACE_SECONDS": "3",
                "PYTHONUNBUFFERED": "1",
            }
            (ws.root / "work").mkdir()
            hub_log = open(ws.root / "hub.log", "wb")
            hub_proc = subprocess.Popen(
                [str(PYTHON), str(HERE / "scale.py"), "--hub", str(hub_port), "--workspace", str(ws.root)],
                cwd=ws.root / "work",
                env=env,
                stdout=hub_log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            out = asyncio.run(_drive_and_kill(hub_port, hub_proc, n, seed))
            import psutil

            result.update(out)
            result["hub_rss_mb"] = round(psutil.Process(hub_proc.pid).memory_info().rss / 2**20, 1)
            peak = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{hub_proc.pid}/status").read_text())
            result["hub_rss_peak_mb"] = round(int(peak.group(1)) / 1024, 1) if peak else None
            # The prober is the hub's own helper: its memory counts with the hub's.
            prober_pid = out.pop("prober_pid", None)
            with contextlib.suppress(psutil.Error, TypeError):
                result["prober_rss_mb"] = round(psutil.Process(prober_pid).memory_info().rss / 2**20, 1)
            result["loadavg_at_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
            pss = []
            for s in list(out.pop("services_before_kill").values())[:20]:
                with contextlib.suppress(psutil.Error):
                    info = psutil.Process(s["pid"]).memory_full_info()
                    pss.append((info.rss, info.pss, info.uss))
            if pss:
                result["instance_mb"] = {
                    k: round(sum(x[i] for x in pss) / len(pss) / 2**20, 1) for i, k in enumerate(("rss", "pss", "uss"))
                }
        except BaseException:
            with contextlib.suppress(OSError):
                print("--- hub log (end) ---\n" + (ws.root / "hub.log").read_text()[-4000:], file=sys.stderr)
            raise
        finally:
            if hub_proc is not None:
                _stop_hub(hub_proc)
            if os.environ.get("BENCH_HUB_LOG"):  # keep the hub's log (the run's folder goes)
                with contextlib.suppress(OSError):
                    shutil.copyfile(ws.root / "hub.log", os.environ["BENCH_HUB_LOG"])
            if pg is not None:
                pg.__exit__(None, None, None)
            kill_processes_under(ws.root)
            guard.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                guard.wait(30)
    return result


def _stop_hub(proc: subprocess.Popen) -> None:
    """SIGTERM: the hub stops every instance (COMFYUI_STOP_INSTANCES_ON_EXIT); SIGKILL if slow."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


async def _drive_and_kill(hub_port: int, hub_proc: subprocess.Popen, n: int, seed: int) -> dict:
    hub = Hub(hub_port)
    try:
        deadline = time.monotonic() + 120
        while True:
            if hub_proc.poll() is not None:
                raise RuntimeError(f"hub exited with {hub_proc.returncode}")
            try:
                status, _ = await hub.request("GET", "/healthz", timeout=2)
                if status == 200:
                    break
            except Exception:  # noqa: BLE001 — not up yet
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("hub did not come up")
            await asyncio.sleep(0.2)
        out = await drive(hub, n, seed)
        out["kill"] = await kill_phase(hub, out["services_before_kill"], seed)
        return out
    finally:
        hub.close()


# --- report -----------------------------------------------------------------------------------


def verdicts(r: dict) -> dict:
    return {
        "reuse_p99_ratio": r["reuse"]["ratio_p99"] <= TARGET_P99_RATIO,
        "proxied_p99_ratio": r["proxied_get"]["ratio_p99"] <= TARGET_P99_RATIO,
        "sweep_s": r["sweeps_healthy"]["max_s"] is not None and r["sweeps_healthy"]["max_s"] <= TARGET_SWEEP_S,
        "stall_ms": r["stalls"]["during_sweeps"]["max_busy_ms"] <= TARGET_STALL_MS,
        "hub_rss": max(r["hub_rss_mb"], r["hub_rss_peak_mb"] or 0) + r.get("prober_rss_mb", 0) <= TARGET_RSS_MB,
        "killed_offline": r["kill"]["all_offline_s"] is not None
        and r["kill"]["all_offline_s"] <= r["kill"]["target_s"],
        "no_false_offline": not r["kill"]["false_offline"],
    }


def render(r: dict) -> str:
    m, v = r["machine"], r["verdicts"]

    def mark(ok: bool) -> str:
        return "met" if ok else "**missed**"

    ru, pg, st, k = r["reuse"], r["proxied_get"], r["stalls"], r["kill"]
    gon, goff = st["full_gc_heartbeat_on"], st["full_gc_heartbeat_off"]
    inst = r.get("instance_mb", {})
    lines = [
        begin_marker(r["db"]),
        f"**{r['db']}, N = {r['instances']}**{' (A/A: the heartbeat paused in both columns)' if r.get('aa') else ''} — measured {m['date']} on {m['nproc']} CPUs ({m['cpu']}), "
        f"Python {m['python']}, comfyhub at `{m['commit']}`; load average at start {m['loadavg_at_start']}, at the "
        f"end {r['loadavg_at_end']}. "
        f"Heartbeat every {INTERVAL_S:g} s, health timeout {HEALTH_TIMEOUT_S:g} s, start cap "
        f"{r['start_cap']}; lean stand-in RSS {inst.get('rss', '?')} MB (PSS {inst.get('pss', '?')}, "
        f"USS {inst.get('uss', '?')}).",
        "",
        "| what | heartbeat running | heartbeat paused (same run) | ratio | target | result |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| `open_comfy` reuse, {RATE}/s offered, p50 / p99 | {ru['on']['p50_ms']} / **{ru['on']['p99_ms']}** ms "
        f"| {ru['off']['p50_ms']} / **{ru['off']['p99_ms']}** ms | {ru['ratio_p99']:.2f}×{_interval(ru)} | p99 ≤ "
        f"{TARGET_P99_RATIO}× | {mark(v['reuse_p99_ratio'])} |",
        f"| proxied `GET /comfy/{{id}}/queue`, {RATE}/s, p50 / p99 | {pg['on']['p50_ms']} / **{pg['on']['p99_ms']}** "
        f"ms | {pg['off']['p50_ms']} / **{pg['off']['p99_ms']}** ms | {pg['ratio_p99']:.2f}×{_interval(pg)} | p99 ≤ "
        f"{TARGET_P99_RATIO}× | {mark(v['proxied_p99_ratio'])} |",
        f"| longest event-loop stall: loop busy (CPU of the loop thread in one wait) | **{st['during_sweeps']['max_busy_ms']}"
        f"** ms during sweeps | {st['heartbeat_off']['max_busy_ms']} ms | | ≤ {TARGET_STALL_MS:g} ms "
        f"| {mark(v['stall_ms'])} |",
        f"| longest event-loop stall: wall (also the machine's other load) | {st['during_sweeps']['max_wall_ms']} ms "
        f"during sweeps | {st['heartbeat_off']['max_wall_ms']} ms | | | |",
        "",
        "| what | result | target | result |",
        "| --- | --- | --- | --- |",
        f"| open all {r['instances']} (`open_comfy`, {OPEN_IN_FLIGHT} in flight) | {r['open_all_s']} s | | |",
        f"| one sweep of {r['instances']} healthy instances: median / max (n) | {r['sweeps_healthy']['median_s']} / "
        f"{r['sweeps_healthy']['max_s']} s ({r['sweeps_healthy']['n']}) | ≤ {TARGET_SWEEP_S:g} s "
        f"| {mark(v['sweep_s'])} |",
        f"| hub RSS at the end (peak), + its prober | {r['hub_rss_mb']} MB ({r['hub_rss_peak_mb']} MB) "
        f"+ {r.get('prober_rss_mb', 0)} MB | ≤ {TARGET_RSS_MB:g} MB "
        f"| {mark(v['hub_rss'])} |",
        f"| {k['killed']} killed (SIGKILL) → all `offline` | {k['all_offline_s']} s | ≤ {k['target_s']:g} s "
        f"(interval + health timeout) | {mark(v['killed_offline'])} |",
        f"| healthy instances written `offline` (flickers) | {len(k['false_offline'])} | 0 "
        f"| {mark(v['no_false_offline'])} |",
        "",
        f"Errors (non-200) among the offered calls: reuse {ru['on']['errors']} + {ru['off']['errors']}, "
        f"proxied {pg['on']['errors']} + {pg['off']['errors']}. The machine's CPUs busy (hub, instances, this "
        f"client, anything else), running / paused: {_busy(ru)} in the reuse slices, {_busy(pg)} in the proxied "
        f"ones. Waits of the loop over {TARGET_STALL_MS:g} ms, busy / "
        f"wall: {st['during_sweeps']['busy_over_20ms']} / {st['during_sweeps']['wall_over_20ms']} during sweeps, "
        f"{st['heartbeat_off']['busy_over_20ms']} / {st['heartbeat_off']['wall_over_20ms']} with the heartbeat paused. "
        f"Waits over 4 ms per second, busy / wall: {st['during_sweeps'].get('busy_over_4ms_per_s')} / "
        f"{st['during_sweeps'].get('wall_over_4ms_per_s')} during sweeps, {st['heartbeat_off'].get('busy_over_4ms_per_s')} / "
        f"{st['heartbeat_off'].get('wall_over_4ms_per_s')} paused. "
        f"Longest during sweeps (wall, loop CPU, process CPU; ms): {st['during_sweeps']['top5_wall']}. "
        f"Full garbage collections (of what `gc.freeze` did not cover: {gon['objects']} objects at most): "
        f"{gon['count']} with the heartbeat running ({gon['per_minute']}/min, longest {gon['max_ms']} ms), "
        f"{goff['count']} paused ({goff['per_minute']}/min, longest {goff['max_ms']} ms); busy waits over "
        f"{TARGET_STALL_MS:g} ms with a full collection in them: {st['during_sweeps']['busy_over_20ms_full_gc']} of "
        f"{st['during_sweeps']['busy_over_20ms']} during sweeps, {st['heartbeat_off']['busy_over_20ms_full_gc']} of "
        f"{st['heartbeat_off']['busy_over_20ms']} paused; longest busy wait without one: "
        f"{st['during_sweeps']['max_busy_ms_without_full_gc']} ms during sweeps, "
        f"{st['heartbeat_off']['max_busy_ms_without_full_gc']} ms paused.",
        end_marker(r["db"]),
    ]
    return "\n".join(lines)


def _busy(phase: dict) -> str:
    busy, used = phase.get("machine_busy"), phase.get("cpu_per_s")
    text = f"{busy['on'] * 100:.0f} % / {busy['off'] * 100:.0f} %" if busy else "?"
    if used:
        text += " (of which the hub " + " / ".join(f"{used[s]['hub'] * 100:.0f} %" for s in ("on", "off"))
        if "prober" in used["on"]:
            text += ", its prober " + " / ".join(f"{used[s]['prober'] * 100:.0f} %" for s in ("on", "off"))
        text += ", the instances " + " / ".join(f"{used[s]['instances'] * 100:.0f} %" for s in ("on", "off"))
        text += " of one CPU)"
    return text


def _interval(phase: dict) -> str:
    low_high = phase.get("ratio_p99_ci90")
    return f" (90 %: {low_high[0]:.2f}–{low_high[1]:.2f}×)" if low_high else ""


def begin_marker(db: str) -> str:
    return f"<!-- BEGIN generated by bench/scale.py --db {db} -->"


def end_marker(db: str) -> str:
    return f"<!-- END generated by bench/scale.py --db {db} -->"


def write_doc(r: dict) -> None:
    """Replace this database's block in `## Scale`; add the section or the block when missing."""
    text = DOC.read_text()
    block = render(r)
    begin, end = begin_marker(r["db"]), end_marker(r["db"])
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        heading = re.search(rf"^## {SECTION}\s*$", text, re.M)
        if heading is None:
            text = text.rstrip("\n") + f"\n\n## {SECTION}\n\n{block}\n"
        else:
            nxt = re.search(r"^#{2,3} ", text[heading.end() :], re.M)
            at = heading.end() + nxt.start() if nxt else len(text)
            text = text[:at].rstrip("\n") + f"\n\n{block}\n\n" + text[at:]
    DOC.write_text(text)


def main() -> int:
    global PAIRS, AA
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--pairs", type=int, default=PAIRS, help="on/off slices of each kind (default %(default)s)")
    parser.add_argument("--aa", action="store_true", help="pause the heartbeat in the 'on' slices too (A/A check)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument("--hub", type=int, help=argparse.SUPPRESS)  # internal: run the hub on this port
    parser.add_argument("--workspace", help=argparse.SUPPRESS)  # internal: names the run's folder (for the guard)
    args = parser.parse_args()
    if args.hub:
        return hub_main(args.hub)
    clean_environment()
    _interrupt_on_signals()
    PAIRS, AA = args.pairs, args.aa
    from comfyhub.config import Settings

    result = run(args.instances, args.db, args.seed)
    result["start_cap"] = Settings.model_fields["comfyui_max_concurrent_starts"].default
    result["verdicts"] = verdicts(result)
    result["aa"] = AA
    print(render(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    if not args.no_write and not AA:
        write_doc(result)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
