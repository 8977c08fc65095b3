"""Keeping the generation records up to date: ComfyUI's /history, and files on disk.

Two sources, both needed (docs/architecture.md, "Generated data"):

- **history**, pulled from every online instance: every COMFYHUB_HISTORY_SYNC_SECONDS
  while it is in use, every COMFYHUB_HISTORY_IDLE_SYNC_SECONDS otherwise, and once more
  by the manager before any stop, cull or restart (`pull`);
- **files**, scanned when an instance is first seen in a run and whenever it went down
  (crash, stop): a file with no history entry (written just before a crash, or before
  comfyhub kept records) is recorded from its own metadata (`scan`, in scan.py).

A pull asks for the newest entry first (`/history?max_items=1`): when it is the one seen
last time, nothing changed and nothing else is read. Otherwise it reads the newest page;
only when the whole page is new does it walk the history from the start, page by page,
so a page is never large and its JSON is decoded off the event loop. Every pull and scan
of one instance runs in its own task with a deadline: a slow or hung instance delays
nobody else, neither the heartbeat nor the proxy.

The periodic loop runs only in the backend process that holds the heartbeat lease;
`pull` before a stop runs wherever the stop happens. Both are idempotent (store.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from comfyhub.config import Settings
from comfyhub.models import ComfyUIService
from comfyhub.net.endpoint import Endpoint, secret_of
from comfyhub.outputs import files
from comfyhub.outputs.client import ComfyClient, InstanceUnreachable
from comfyhub.outputs.graph import params_of
from comfyhub.outputs.history import FileRef, Finished, parse_history
from comfyhub.outputs.media import FileFacts, file_facts
from comfyhub.outputs.scan import scan_files
from comfyhub.outputs.store import OutputStore

log = logging.getLogger("comfyhub.outputs")

PAGE = 64  # history entries per request: small answers, parsed quickly
RECORDS_PAGE = 250  # instance records read per query each tick
ACTIVE_WINDOW = timedelta(minutes=10)  # "in use": proxied traffic or new records this recently
CONCURRENCY = 8  # pulls and scans at once
# Pulls and scans begun by one tick, at most. Each is a task, and a thousand begun at
# once (all idle instances falling due together) stalled every request for ~20 ms; the
# rest wait for the next tick (64 a second with the default 2 s tick, a thousand idle
# instances need 33). Due times also drift apart (JITTER) so they do not stay bunched.
SPAWNS_PER_TICK = 128
# What one turn of the loop holds of a tick: TURN_WEIGHT records looked at, a pull or scan
# begun (a task) counting as SPAWN_WEIGHT; a tick's thousand records and dozens of tasks
# in one turn were 4–11 ms that every request waited out, every 2 s (measured).
TURN_WEIGHT = 250
SPAWN_WEIGHT = 16
JITTER = 0.1  # each next pull is due after its interval ± 10 %
PULL_DEADLINE = 60.0  # one pull, all pages (seconds)
TRASH_PURGE_SECONDS = 3600.0


@dataclass(frozen=True)
class Instance:
    """What a sync needs to know of an instance record."""

    project_id: int
    user_id: int
    host: str
    port: int | None
    run: int  # the record's generation: a new start is a new run (a fresh ComfyUI history)
    online: bool
    status: str = ""
    last_activity: datetime | None = None
    secret: str = field(default="", repr=False)  # the instance secret (net/endpoint.py)

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.host, self.port, self.secret)

    @classmethod
    def of(cls, record: ComfyUIService, secret: str | None = None) -> Instance:
        """The instance of a record, or of a plain row of its columns given its `secret`."""
        return cls(
            record.project_id,
            record.user_id,
            record.host or "127.0.0.1",
            record.port,
            record.generation or 0,
            record.status == "online",
            record.status,
            record.last_activity,
            secret_of(record.launcher_state) if secret is None else secret,
        )


# What a tick reads of each record (`OutputSync._records`).
_SYNCED = (
    ComfyUIService.project_id,
    ComfyUIService.user_id,
    ComfyUIService.host,
    ComfyUIService.port,
    ComfyUIService.generation,
    ComfyUIService.status,
    ComfyUIService.last_activity,
)


class OutputSync:
    def __init__(
        self, settings: Settings, sessions: async_sessionmaker[AsyncSession], store: OutputStore | None = None
    ):
        self.settings = settings
        self.sessions = sessions
        self.store = store or OutputStore(sessions)
        self.client = ComfyClient(timeout=max(settings.comfyui_health_timeout_seconds, 5.0))
        self._newest: dict[int, tuple[int, str]] = {}  # project → (run, newest prompt id stored)
        self._scanned: dict[int, tuple[int, str]] = {}  # project → (run, status) last scanned in
        self._due: dict[int, float] = {}
        self._secrets: dict[int, tuple[int | None, str]] = {}  # project → (generation, its instance secret)
        self._found_at: dict[int, float] = {}  # project → monotonic time a pull last found something
        self._busy: dict[object, asyncio.Task] = {}  # project id (or a tagged key) → its task
        self._gate = asyncio.Semaphore(CONCURRENCY)
        self._purged_at = 0.0

    # --- history -------------------------------------------------------------------------

    async def pull(self, instance: Instance) -> int:
        """Store the prompts the instance finished that are not on record; returns how many.

        Raises InstanceUnreachable when the instance does not answer.
        """
        if not instance.port:
            return 0
        newest = await self._history(instance, "max_items=1")
        if not newest:
            return 0
        newest_id = next(reversed(newest))
        if self._newest.get(instance.project_id) == (instance.run, newest_id):
            return 0
        page = await self._history(instance, f"max_items={PAGE}")
        ids = list(page)
        known = await self.store.known_prompts(instance.project_id, ids)
        if len(ids) == PAGE and ids[0] not in known:
            stored = await self._pull_all(instance)  # more new entries than one page: walk it all
        else:
            stored = await self._store(instance, [f for f in parse_history(page) if f.prompt_id not in known])
        if ids:
            self._newest[instance.project_id] = (instance.run, ids[-1])
        if stored:
            self._found_at[instance.project_id] = time.monotonic()
        return stored

    async def _pull_all(self, instance: Instance) -> int:
        stored, offset = 0, 0
        while True:
            page = await self._history(instance, f"offset={offset}&max_items={PAGE}")
            ids = list(page)
            known = await self.store.known_prompts(instance.project_id, ids)
            stored += await self._store(instance, [f for f in parse_history(page) if f.prompt_id not in known])
            offset += len(ids)
            if len(ids) < PAGE:
                return stored

    async def _history(self, instance: Instance, query: str) -> dict:
        answer = await self.client.get_json(instance.endpoint, f"/history?{query}")
        return answer if isinstance(answer, dict) else {}

    async def _store(self, instance: Instance, finished: list[Finished]) -> int:
        if not finished:
            return 0
        facts, params = await asyncio.to_thread(self._read_files, instance, finished)
        return await self.store.record_finished(instance.project_id, instance.user_id, finished, facts, params)

    def _read_files(self, instance: Instance, finished: list[Finished]):
        """Facts of every file the entries name, and each graph's parameters (blocking)."""
        facts: dict[FileRef, FileFacts] = {}
        for f in finished:
            for ref in f.files:
                try:
                    path = files.resolve(
                        self.settings, instance.user_id, instance.project_id, ref.subfolder, ref.filename
                    )
                    facts[ref] = file_facts(path)
                except (files.FileRefused, OSError):
                    continue  # recorded without size: the history says it was written
        return facts, {f.prompt_id: params_of(f.graph) for f in finished}

    # --- files ---------------------------------------------------------------------------

    async def scan(self, project_id: int, user_id: int) -> int:
        """Record the project's output files that no record names yet (scan.py); returns how many."""
        return await scan_files(self.settings, self.store, project_id, user_id)

    # --- the periodic loop -----------------------------------------------------------------

    async def run(self, leading: Callable[[], bool]) -> None:
        """Sync every instance on its schedule, while this process leads (`leading()`)."""
        tick = min(self.settings.comfyhub_history_sync_seconds, self.settings.comfyhub_history_idle_sync_seconds)
        while True:
            try:
                if leading():
                    await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 — the loop must survive a database outage
                log.warning("output sync failed; retrying", exc_info=True)
            await asyncio.sleep(tick)

    async def tick(self) -> None:
        """Start the pulls and scans that are due (each in its own task) and return."""
        now = time.monotonic()
        budget = SPAWNS_PER_TICK
        weight = 0  # work since the loop's last turn: a record looked at is 1, a task begun SPAWN_WEIGHT
        for record in await self._records():
            if budget == 0:
                break
            if weight >= TURN_WEIGHT:
                weight = 0
                await asyncio.sleep(0)  # a turn of the loop for the others
            begun = record.project_id not in self._busy and self._begin_if_due(record, now)
            budget -= begun
            weight += SPAWN_WEIGHT if begun else 1
        if now - self._purged_at > TRASH_PURGE_SECONDS:
            self._purged_at = now
            self._spawn(0, self._purge())

    def _begin_if_due(self, record, now: float) -> bool:
        """Begin the pull (online) or scan (gone down) a record of `_records` is due for."""
        pid, run = record.project_id, record.generation or 0
        if record.status == "online":
            first = self._scanned.get(pid, (None,))[0] != run
            if not (first or now >= self._due.get(pid, 0.0)):
                return False
            self._due[pid] = now + self._interval(record, now) * random.uniform(1 - JITTER, 1 + JITTER)
            self._scanned[pid] = (run, record.status)
            instance = Instance.of(record, self._secret(pid, record.generation))
            self._spawn(pid, self._pull_and_scan(instance, scan=first))
            return True
        if self._scanned.get(pid) == (run, record.status):
            return False
        self._scanned[pid] = (run, record.status)
        self._newest.pop(pid, None)
        self._spawn(pid, self.scan(pid, record.user_id))
        return True

    async def wait_idle(self) -> None:
        """Wait for the pulls and scans started so far (tests, shutdown)."""
        while self._busy:
            await asyncio.gather(*list(self._busy.values()), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._busy.values()):
            task.cancel()
        await asyncio.gather(*list(self._busy.values()), return_exceptions=True)
        self.client.close()

    def _interval(self, record, now: float) -> float:
        """Seconds until the next pull of a record of `_records`: short while in use."""
        recent = record.last_activity is not None and datetime.now(UTC) - record.last_activity < ACTIVE_WINDOW
        found = now - self._found_at.get(record.project_id, -1e9) < ACTIVE_WINDOW.total_seconds()
        if recent or found:
            return self.settings.comfyhub_history_sync_seconds
        return self.settings.comfyhub_history_idle_sync_seconds

    def _spawn(self, key, work) -> None:
        async def gated():
            async with self._gate:
                with contextlib.suppress(asyncio.CancelledError):
                    try:
                        await asyncio.wait_for(work, PULL_DEADLINE)
                    except (InstanceUnreachable, TimeoutError) as exc:
                        log.debug("project %s: sync skipped: %s", key, exc)
                    except Exception:  # noqa: BLE001 — one instance's trouble stays its own
                        log.warning("project %s: sync failed", key, exc_info=True)

        task = asyncio.create_task(gated(), name=f"comfyhub-output-sync-{key}")
        task.add_done_callback(lambda _t: work.close())  # cancelled before it began: no "never awaited"
        self._busy[key] = task
        task.add_done_callback(lambda t: self._busy.pop(key) if self._busy.get(key) is t else None)

    def scan_soon(self, project_id: int, user_id: int) -> None:
        """Scan a project's files in the background (after a stop: what the last pull missed)."""
        self._spawn(("scan", project_id), self.scan(project_id, user_id))

    async def _pull_and_scan(self, instance: Instance, scan: bool) -> None:
        await self.pull(instance)
        if scan:  # files from before this run, or from before records were kept
            await self.scan(instance.project_id, instance.user_id)

    async def _purge(self) -> None:
        removed = await asyncio.to_thread(
            files.purge_trash, self.settings.comfyui_instance_base_dir, self.settings.comfyhub_trash_days
        )
        if removed:
            log.info(
                "removed %d file(s) from the trash (older than %s days)", removed, self.settings.comfyhub_trash_days
            )

    async def _records(self) -> list:
        """Every project's instance record as a plain row of small columns, RECORDS_PAGE
        per query with a turn of the loop between pages: read every tick, a thousand in
        one go held every request back ~5–10 ms (measured). The secret lives in
        `launcher_state` (JSON), decoding a thousand of which cost ~15 ms every tick; it
        changes only with the generation, so it is read once per run, for the online
        records whose run is new to this process."""
        rows: list = []
        while True:
            after = [ComfyUIService.project_id > rows[-1].project_id] if rows else []
            async with self.sessions() as session:
                page = (
                    await session.execute(
                        select(*_SYNCED)
                        .where(ComfyUIService.project_id.is_not(None), *after)  # a warm instance has no outputs
                        .order_by(ComfyUIService.project_id)
                        .limit(RECORDS_PAGE)
                    )
                ).all()
                await self._read_secrets(session, page)
            rows += page
            if len(page) < RECORDS_PAGE:
                return rows
            await asyncio.sleep(0)

    async def _read_secrets(self, session: AsyncSession, page: list) -> None:
        unknown = [
            r.project_id
            for r in page
            if r.status == "online" and self._secrets.get(r.project_id, (None,))[0] != r.generation
        ]
        if unknown:
            states = await session.execute(
                select(ComfyUIService.project_id, ComfyUIService.generation, ComfyUIService.launcher_state).where(
                    ComfyUIService.project_id.in_(unknown)
                )
            )
            for project_id, generation, state in states:
                self._secrets[project_id] = (generation, secret_of(state))

    def _secret(self, project_id: int, generation: int | None) -> str:
        known = self._secrets.get(project_id)
        return known[1] if known is not None and known[0] == generation else ""
