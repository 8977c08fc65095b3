"""The heartbeat: one backend process (the lease holder) sweeps every instance each
COMFYUI_HEARTBEAT_INTERVAL_SECONDS, marks it online or offline, culls idle ones and
runs the automatic restarts that are due. Taking the lease reconciles first.

A sweep must not be felt by the users of the same process, however many instances it
checks (measured with a thousand: docs/benchmarks.md, "Scale"). So it never does one
thing for every instance in a single event-loop turn, and keeps its load on the machine
low while it runs:

- records are read PAGE rows per query, only the columns a sweep needs, as light objects
  (swept.Swept), not ORM objects: 16 µs instead of 26 to build, and 4.5 objects for the
  garbage collector instead of 10; a record's launcher state (JSON) is decoded only when
  its generation or pid changed, not every sweep;
- checks start a few at a time, PROBE_TICK_SECONDS apart, at least PROBES_PER_SECOND
  (`_start_checks`): a thousand started together was a thousand callbacks in one loop
  turn ahead of every user's request (100+ ms, measured), and a sweep at full speed took
  a fifth of the machine from the users for its duration;
- from COMFYUI_HEARTBEAT_PROBER_MIN_INSTANCES on, the HTTP checks are made by the prober,
  a helper process (services/prober.py), so their system calls and parsing (~80 ms of
  CPU a sweep at a thousand) are not spent by the process that serves users; the process
  checks stay here, and a page the prober cannot answer is checked here;
- each page of records is settled as soon as its checks are done (`_settle`), and only
  what changed is written: a change of status at once, record by record, and announced
  as every write is; the records that passed their check and were already online only
  get their `last_heartbeat` stamped, all together when the sweep ends, one statement per
  HEARTBEAT_BATCH (records.stamp_heartbeats), which tells no listener — and only about
  every STAMP_SECONDS (`stamp_every`): every sweep with the default interval.

The process's garbage collection is set for it while the heartbeat runs (`run`): what
start-up made is frozen out of full collections, and the young generations are
collected less often, so that a sweep's objects die young instead of reaching the
oldest generation and setting off a full collection (30–70 ms at a thousand instances,
3–5 a minute with the defaults; none with these settings, measured).

Sweeps start at a fixed rate, one interval apart whatever each took. A healthy record's
`last_heartbeat` is the start of the last stamping sweep that found it healthy, so what
users see ("最近心跳") is at most about STAMP_SECONDS plus one sweep old while the
heartbeat runs (`max_heartbeat_age`: 39 s for 1,000 instances with the defaults, 34 s
with a 5 s interval); a dead instance is written `offline` within one interval plus its
page's checks, whatever the stamps.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from comfyhub.config import Settings
from comfyhub.fair import map_in_slices, paced
from comfyhub.launchers import Launcher
from comfyhub.metrics import Metrics
from comfyhub.models import ServiceStatus, utcnow
from comfyhub.reasons import Reason
from comfyhub.services import instances
from comfyhub.services.audit import Audit
from comfyhub.services.coordination import HeartbeatLease
from comfyhub.services.liveness import Liveness, Probe
from comfyhub.services.prober import GRACE_SECONDS as PROBER_GRACE_SECONDS
from comfyhub.services.prober import Prober
from comfyhub.services.reconcile import Reconciler
from comfyhub.services.records import PAGE, Records
from comfyhub.services.restarts import RestartRunner, restart_plan
from comfyhub.services.swept import Swept, SweptRecords

log = logging.getLogger("comfyhub.heartbeat")

# What a sweep works on: the record's columns it needs, by their names, not an ORM object.
Record = Swept

# Checks start in small groups this far apart, PROBES_PER_SECOND in all (more when
# needed to start every check within half an interval): a thousand instances are checked
# over 2 s. A group is a few checks, well under a millisecond of the loop's time.
PROBE_TICK_SECONDS = 0.01
PROBES_PER_SECOND = 500
READ_PAUSE_SECONDS = 0.02  # between two pages of records read at a sweep's start
# `last_heartbeat` is written about every STAMP_SECONDS, and at least every STAMP_SWEEPS
# sweeps: every sweep with the default interval (30 s), every fifth with a 5 s one.
STAMP_SECONDS = 30
STAMP_SWEEPS = 5


@dataclass(eq=False)
class Heartbeat:
    settings: Settings
    records: Records
    launcher: Launcher
    liveness: Liveness
    reconciler: Reconciler
    restarts: RestartRunner
    audit: Audit
    metrics: Metrics
    lease: HeartbeatLease
    stop: Callable[..., Awaitable]  # the manager's stop, for culling
    prober: Prober  # the helper process that makes a large sweep's HTTP checks
    leading: bool = field(default=False, init=False)  # holds the lease and sweeps
    sweeps: int = field(default=0, init=False)  # sweeps done by this process
    swept: SweptRecords = field(init=False)  # what each sweep reads

    def __post_init__(self) -> None:
        self.swept = SweptRecords(self.records.sessions)

    async def run(self) -> None:
        """Sweep every interval while holding the lease; reconcile on taking it. Runs until cancelled.

        Sweeps start one interval apart (a sweep that overran starts the next at once), so
        an instance is checked about once per interval and a dead one is seen within one
        interval plus its place in the sweep.
        """
        await self._loop()

    async def _loop(self) -> None:
        next_at = time.monotonic()
        while True:
            try:
                if await self.lease.acquire_or_renew():
                    if not self.leading:
                        log.info("heartbeat: this process leads (%s); reconciling", self.lease.holder)
                        self.leading = True
                        await self.reconcile()
                    else:
                        await self.sweep()
                elif self.leading:
                    log.warning("heartbeat: lease lost to another process")
                    self.leading = False
            except Exception:  # noqa: BLE001 — a failed sweep (database away...) must not end the loop
                log.exception("heartbeat sweep failed; retrying next interval")
            next_at = max(next_at + self.settings.comfyui_heartbeat_interval_seconds, time.monotonic())
            await asyncio.sleep(next_at - time.monotonic())

    def max_heartbeat_age(self, instances: int) -> float:
        """The oldest `last_heartbeat`, in seconds, that a healthy online record can show
        while this process leads (the database's own time aside).

        A sweep's stamp is its start; it is written when the sweep ends, within the
        checks' spread plus one health timeout. Every `stamp_every()`-th sweep stamps, and
        sweeps start one interval apart, or one right after another that took longer.
        """
        s = self.settings
        sweep = instances / self._probe_rate(instances) + s.comfyui_health_timeout_seconds
        miss = 0.0
        if instances >= s.comfyui_heartbeat_prober_min_instances:
            # A page the prober does not answer waits out its deadline, then is checked
            # here. That lengthens one sweep at most in the window: the hub then checks
            # by itself for prober.RETRY_SECONDS, longer than the window.
            miss = PAGE / self._probe_rate(instances) + s.comfyui_health_timeout_seconds + PROBER_GRACE_SECONDS
        return self.stamp_every() * max(s.comfyui_heartbeat_interval_seconds, sweep) + sweep + miss

    def stamp_every(self) -> int:
        """A sweep stamps `last_heartbeat` every this many sweeps (STAMP_SECONDS apart, at
        least every STAMP_SWEEPS). Writing a thousand stamps is the sweep's one real cost to
        the database, felt by users (measured: the slowest requests were mostly those that
        met a stamp); with a short interval the stamps need not follow every sweep."""
        interval = self.settings.comfyui_heartbeat_interval_seconds
        return max(1, min(STAMP_SWEEPS, int(STAMP_SECONDS // interval)))

    async def reconcile(self) -> None:
        """Adopt processes missing from their records, then sweep (which resolves abandoned starts)."""
        await self.reconciler.adopt_orphans()
        await self.sweep()

    async def sweep(self) -> dict[str, int]:
        """Check every watched instance; mark it online or offline; write only what changed.

        The checks overlap (each bounded by COMFYUI_HEALTH_TIMEOUT_SECONDS), so one hung
        instance costs the sweep at most one timeout, whatever the number of instances;
        they start a few at a time (`_start_checks`), and each page of records is settled
        once its checks are done. Starts that nobody is running any more (their backend
        died) are resolved too.
        """
        stamping = self.sweeps % self.stamp_every() == 0
        self.sweeps += 1
        # The pages are read a few ticks apart, not back to back: the slowest requests
        # (measured) were those that met the burst of reads at a sweep's start.
        records = await self.swept.watched(pause=READ_PAUSE_SECONDS)
        await self.reconciler.resolve_abandoned_starts(await self.records.starting_ids())
        await self.launcher.refresh(await self._handles(records))
        counts = {"online": 0, "offline": 0}
        idle: list[Record] = []
        beats: list[Record] = []
        stamp = utcnow()  # no later than any check of this sweep
        pages: asyncio.Queue = asyncio.Queue()
        checks: list[asyncio.Future] = []
        starting = asyncio.ensure_future(self._start_checks(records, pages, checks))
        try:
            for _ in range(0, len(records), PAGE):
                page, began, probes = await pages.get()
                await self._settle(page, await probes, began, counts, idle, beats)
        finally:
            starting.cancel()  # a cancelled sweep (shutdown) leaves no check running
            for check in checks:
                check.cancel()  # no-op for those done
        if stamping:
            await self.records.stamp_heartbeats(beats, stamp)
        await asyncio.gather(*(self._cull_if_idle(r) for r in idle))
        await self.restarts.run_due(utcnow())
        return counts

    async def _handles(self, records: list[Record]) -> list:
        """The records' process handles (for the launcher's refresh), a page at a time."""
        return [h for h in await map_in_slices(self.liveness.handle, records, PAGE) if h is not None]

    def _probe_rate(self, instances: int) -> float:
        """Checks started per second: PROBES_PER_SECOND, or enough to start them all within
        half an interval."""
        return max(PROBES_PER_SECOND, instances / (0.5 * self.settings.comfyui_heartbeat_interval_seconds))

    async def _start_checks(self, records: list[Record], pages: asyncio.Queue, checks: list) -> None:
        """Start each page's checks, one page after another at the probe rate; hand each
        page of records on with the time its checks began and the future of its probes."""
        rate = self._probe_rate(len(records))
        group = max(1, math.ceil(rate * PROBE_TICK_SECONDS))
        by_prober = len(records) >= self.settings.comfyui_heartbeat_prober_min_instances
        for i in range(0, len(records), PAGE):
            if i:
                await asyncio.sleep(PAGE / rate)  # the previous page's checks are all started
            page, began = records[i : i + PAGE], utcnow()
            checks.append(asyncio.ensure_future(self._check_page(page, group, by_prober)))
            pages.put_nowait((page, began, checks[-1]))

    async def _check_page(self, page: list[Record], group: int, by_prober: bool) -> list[Probe]:
        """The page's probes, their HTTP checks made by the prober process when asked to and
        able; otherwise here, started `group` at a time, PROBE_TICK_SECONDS apart."""
        if by_prober:
            probes = await self.liveness.probe_page(page, self.prober, group, PROBE_TICK_SECONDS)
            if probes is not None:
                return probes
        return await paced(self.liveness.probe, page, group, PROBE_TICK_SECONDS)

    async def _settle(
        self, page: list[Record], probes: list[Probe], began, counts: dict, idle: list, beats: list
    ) -> None:
        """Write the changes one page's checks found, one by one, at once; add the records
        that passed and are otherwise as they were to `beats` (stamped when the sweep ends,
        one statement per records.HEARTBEAT_BATCH: two commits for a thousand, not ten)."""
        changes: list[tuple[Record, dict]] = []
        for record, probe in zip(page, probes, strict=False):
            counts["online" if probe.healthy else "offline"] += 1
            if probe.healthy:
                if self._idle_too_long(record, began):
                    idle.append(record)
                if record.status == ServiceStatus.ONLINE and not record.last_error and not record.reason:
                    beats.append(record)  # as it was: only the heartbeat moves
                    continue
                values = dict(status=ServiceStatus.ONLINE, last_heartbeat=began, last_error="", reason="")
            elif record.status == ServiceStatus.OFFLINE and (probe.exited is None or record.pid is None):
                continue  # already offline: keep the first, most precise reason
            else:
                values = await self._lost(record, probe, began)
            changes.append((record, values))
        await self.records.update_many(changes)

    async def _lost(self, record: Record, probe: Probe, now) -> dict:
        """The values that mark a record offline (and plan its restart when it died)."""
        self.metrics.health_failures.inc()
        values = dict(status=ServiceStatus.OFFLINE, last_error=probe.why, reason=probe.reason)
        if probe.exited is not None:
            # The process is gone: forget it, so nothing ever signals that pid again.
            values.update(pid=None, launcher_state=None)
            values.update(restart_plan(self.settings, record, now))
            await asyncio.to_thread(instances.mark_event, record.log_path, probe.why)
            await self.audit.record("crash", record.project_id, record.user_id, "system", "offline", probe.why)
        log.warning("project %s: offline: %s", record.project_id, probe.why)
        return values

    # --- idle culling ----------------------------------------------------------------------

    def _idle_too_long(self, record: Record, now) -> bool:
        timeout = self.settings.comfyui_idle_timeout_seconds
        if not timeout:
            return False
        last = record.last_activity or record.started_at
        return last is not None and (now - last).total_seconds() >= timeout

    async def _cull_if_idle(self, record: Record) -> None:
        """Stop an idle instance — unless ComfyUI has queued or running work."""
        queue = await self.liveness.queue(record)
        if queue is None:
            return  # cannot tell: never cull on a guess
        if queue.get("queue_running") or queue.get("queue_pending"):
            await self.records.note_activity(record.project_id)  # a job is activity too
            return
        log.info("project %s: idle for %ss, stopping", record.project_id, self.settings.comfyui_idle_timeout_seconds)
        self.metrics.culls.inc()
        await self.stop(record.project_id, reason=Reason.IDLE, actor="system")
