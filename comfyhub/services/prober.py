"""The heartbeat's health checks, in a helper process of its own: the prober.

A thousand `GET /system_stats` per interval cost the hub ~80 ms of CPU per sweep, on the
event loop that serves users, mostly in the kernel's loopback send and receive, which no
tuning in Python removes (measured: docs/benchmarks.md, "Scale"). The prober takes that
work to a child process. The hub hands it a page of targets (where an instance listens,
its secret and binding, and its folder) and gets back one verdict per target: *healthy
and ours*, or not. It is the verdict `HealthChecker.is_ours` gives in the hub, made by
the same code.

The protocol is one JSON object per line. The child says `{"ready": pid}` once, then
answers each `{"id", "timeout", "group", "tick", "targets"}` with `{"id", "ours"}` (a
list of booleans, in the targets' order) or, when something unforeseen broke the page,
`{"id", "error"}`; answers come in any order. It starts its checks a
group at a time like the heartbeat does (fair.paced), and exits when its stdin closes,
so it never outlives the hub, even one killed outright.

The heartbeat never depends on it. When the child cannot start, dies, or misses a page's
deadline, `check` returns None and the heartbeat checks that page itself. A new child is
tried at a later sweep, at most once every RETRY_SECONDS.

This module is also the child's program (`python -m comfyhub.services.prober`), so it
imports only what the checks need: no settings, no database, no web framework.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import sys
import time

from comfyhub.fair import paced
from comfyhub.net.endpoint import Endpoint
from comfyhub.services.health import HealthChecker

log = logging.getLogger("comfyhub.prober")

START_TIMEOUT_SECONDS = 15.0  # a child not ready by then is given up (a cold start takes ~0.1 s)
GRACE_SECONDS = 2.0  # a page's answer is due within its checks' spread + one timeout + this
RETRY_SECONDS = 60.0  # after a failure, the checks stay in the hub this long
LINE_LIMIT = 64 << 20  # a request line: ~150 bytes per target
NICE = 5  # the prober's CPU priority below the hub's (see _yield_to_the_hub)


class Prober:
    """The hub's side: starts the child when first needed and asks it for verdicts."""

    def __init__(self) -> None:
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task | None = None
        self._pending: dict[int, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()
        self._failed_at: float | None = None
        self.failures = 0  # times the child was given up (for tests and logs)
        self.answered = 0  # pages it answered

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def check(
        self, targets: list[tuple[Endpoint, str]], timeout: float, group: int, tick: float
    ) -> list[bool] | None:
        """For each (endpoint, base_dir): does it answer within `timeout`, and is it ours
        (services.health.HealthChecker.is_ours)? None when the prober cannot tell (not
        running, died, late): then the caller checks in its own process."""
        if not targets:
            return []
        process = await self._running()
        if process is None:
            return None
        ident = next(self._ids)
        answer = self._pending[ident] = asyncio.get_running_loop().create_future()
        request = {
            "id": ident,
            "timeout": timeout,
            "group": group,
            "tick": tick,
            "targets": [[e.host, e.port, e.secret, e.binding, base_dir] for e, base_dir in targets],
        }
        spread = (len(targets) - 1) // group * tick
        try:
            process.stdin.write(json.dumps(request).encode() + b"\n")
            async with asyncio.timeout(spread + timeout + GRACE_SECONDS):
                await process.stdin.drain()
                ours = await answer
        except (TimeoutError, OSError) as e:
            self._give_up(f"page of {len(targets)} unanswered: {e!r}")
            return None
        finally:
            self._pending.pop(ident, None)
        if ours is None or len(ours) != len(targets):
            return None  # the child died meanwhile (already given up) or answered nonsense
        self.answered += 1
        return [bool(x) for x in ours]

    async def _running(self) -> asyncio.subprocess.Process | None:
        """The child, started now if needed; None while it is being given a rest."""
        async with self._lock:
            if self._process is not None and self._process.returncode is None:
                return self._process
            if self._failed_at is not None and time.monotonic() - self._failed_at < RETRY_SECONDS:
                return None
            try:
                self._process = await self._spawn()
            except (OSError, ValueError, TimeoutError) as e:
                self._give_up(f"could not start: {e!r}")
                return None
            self._failed_at = None
            self._reader = asyncio.ensure_future(self._read_answers(self._process))
            log.info("prober: started (pid %s)", self._process.pid)
            return self._process

    async def _spawn(self) -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "comfyhub.services.prober",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=LINE_LIMIT,
        )
        try:
            async with asyncio.timeout(START_TIMEOUT_SECONDS):
                hello = json.loads(await process.stdout.readline() or b"{}")
            if hello.get("ready") != process.pid:
                raise ValueError(f"unexpected greeting {hello!r}")
        except BaseException:
            _kill(process)
            raise
        return process

    async def _read_answers(self, process: asyncio.subprocess.Process) -> None:
        try:
            while line := await process.stdout.readline():
                answer = json.loads(line)
                waiting = self._pending.get(answer.get("id"))
                if waiting is not None and not waiting.done():
                    waiting.set_result(answer.get("ours"))  # None with an "error": checked here
                if "error" in answer:
                    log.warning("prober: a page failed there (%s); checked in the hub", answer["error"])
        except (ValueError, OSError) as e:
            log.warning("prober: unreadable answer: %r", e)
        if process is self._process:
            self._give_up(f"exited ({process.returncode})")

    def _give_up(self, why: str) -> None:
        """Stop using the child (kill it if it lives); its pending pages get None."""
        log.warning("prober: %s; checks run in the hub for now", why)
        self.failures += 1
        self._failed_at = time.monotonic()
        if self._process is not None:
            _kill(self._process)
            self._process = None
        self._release_pending()

    def _release_pending(self) -> None:
        """Every page still waiting gets None: its caller checks it in the hub."""
        for waiting in self._pending.values():
            if not waiting.done():
                waiting.set_result(None)

    async def aclose(self) -> None:
        """End the child: close its stdin (it exits), kill it if it has not within a second."""
        process, self._process = self._process, None
        if self._reader is not None:
            self._reader.cancel()
        self._release_pending()
        if process is None:
            return
        with contextlib.suppress(OSError):
            process.stdin.close()
        try:
            async with asyncio.timeout(1.0):
                await process.wait()
        except TimeoutError:
            _kill(process)
            await process.wait()


def _kill(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.kill()


# --- the child -------------------------------------------------------------------------------


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    requests = asyncio.StreamReader(limit=LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(requests), sys.stdin)
    checker = HealthChecker(timeout=2.5)  # each request names its own timeout
    answering: set[asyncio.Task] = set()
    _say({"ready": os.getpid()})
    while line := await requests.readline():
        task = asyncio.ensure_future(_answer(checker, json.loads(line)))
        answering.add(task)
        task.add_done_callback(answering.discard)
    # stdin closed: the hub is gone or done with us; checks in flight are not waited for


async def _answer(checker: HealthChecker, request: dict) -> None:
    timeout = float(request["timeout"])

    async def ours(target: list) -> bool:
        host, port, secret, binding, base_dir = target
        return await checker.is_ours(Endpoint(host, port, secret, binding), base_dir, timeout)

    try:
        verdicts = await paced(ours, request["targets"], int(request["group"]), float(request["tick"]))
    except Exception as e:  # noqa: BLE001 — never a guess: the hub checks this page itself
        log.exception("page %s not checked", request.get("id"))
        _say({"id": request["id"], "error": repr(e)})
    else:
        _say({"id": request["id"], "ours": verdicts})


def _say(message: dict) -> None:
    # Blocking is fine: answers are small and the hub reads them at once.
    sys.stdout.buffer.write(json.dumps(message).encode() + b"\n")
    sys.stdout.buffer.flush()


def _yield_to_the_hub() -> None:
    """Run behind the hub for the CPU: a check may wait a few milliseconds more, a user's
    request should not wait for a check. SCHED_BATCH: the prober's many wake-ups (an
    answer each) never preempt a running thread; nice: on a busy machine the hub's threads
    go first. Neither needs a privilege; where the system refuses, it runs as it is."""
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    with contextlib.suppress(OSError):
        os.nice(NICE)


def main() -> None:
    # Ctrl+C in a terminal reaches the whole process group: the hub ends the prober (by
    # closing its stdin), a traceback from here would only be noise.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _yield_to_the_hub()
    logging.basicConfig(level=logging.WARNING, format="prober: %(message)s")
    try:
        import uvloop  # the hub's own loop, when installed
    except ImportError:
        asyncio.run(_serve())
    else:
        uvloop.run(_serve())


if __name__ == "__main__":
    main()
