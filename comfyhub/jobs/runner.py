"""Feeding job items to each project's ComfyUI and following them to the end.

One process runs this (the holder of the `jobs` lease). Every tick, per project with a
live job or an item in flight:

1. The instance. Not running → start it through the normal `ensure` path. Stopped by
   its user → the project's jobs pause (a user's 停止 means "not now"). Stopped by an
   admin, culled, crashed, or comfyhub restarted → it is started again and the jobs go
   on. While items are pending the instance counts as in use, so it is never culled.
2. Items in flight. Their outcome comes from the generation records (the history
   sync, pulled here first): success → done; an error → back to pending until the
   job's retries are spent. An item whose instance run is gone (a crash, a stop) is
   looked for in the records once more, then submitted again. An item that neither
   ComfyUI's queue nor its history knows, LOST_AFTER seconds after submission, never
   arrived, and is submitted again.
3. Refill: while fewer than COMFYHUB_JOB_QUEUE_DEPTH items of the project are in
   ComfyUI, the next pending item is claimed (its new `prompt_id` written first) and
   submitted with that `prompt_id`.

So an item ComfyUI finished is never submitted again (its record is checked first);
an item in flight when its instance died runs again once; and two processes never
claim one item (store.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from comfyhub.config import Settings
from comfyhub.jobs.listen import QueueListeners
from comfyhub.jobs.params import apply
from comfyhub.jobs.store import JobStore
from comfyhub.models import ItemState, Job, JobItem, JobState, ServiceStatus, utcnow
from comfyhub.outputs.client import ComfyClient, InstanceUnreachable
from comfyhub.outputs.sync import Instance
from comfyhub.reasons import Reason
from comfyhub.services.coordination import HeartbeatLease
from comfyhub.services.errors import ServiceError
from comfyhub.services.manager import ServiceManager

log = logging.getLogger("comfyhub.jobs")

ACTIVE_TICK = 0.2  # seconds between ticks while some job is live
IDLE_TICK = 2.0
LEASE_TTL = 10.0
LOST_AFTER = timedelta(seconds=15)  # submitted, yet unknown to ComfyUI's queue and history
MAX_RESUBMITS = 3  # an item whose instance died under it this often is failed
PROJECT_DEADLINE = 30.0
START_RETRY_SECONDS = 10.0  # a start refused (limits) or failed is asked for again after this

PAUSED_BY_USER = "ComfyUI 已被停止，任务已暂停；点击“继续”重新启动"
START_FAILED = "ComfyUI 启动失败，任务已暂停：{why}"
WAITING_FOR_SLOT = "等待实例名额：{why}"
LOST = "实例已退出，重新提交"
NEVER_ARRIVED = "ComfyUI 未收到该项，重新提交"
KILLED_TOO_OFTEN = "实例多次在执行该项时退出"


class JobRunner:
    def __init__(self, settings: Settings, sessions: async_sessionmaker[AsyncSession], manager: ServiceManager):
        self.settings = settings
        self.store = JobStore(sessions)
        self.manager = manager
        self.lease = HeartbeatLease(sessions, "jobs", ttl_seconds=LEASE_TTL)
        self.client = ComfyClient(timeout=5.0)
        self.depth = settings.comfyhub_job_queue_depth
        self.leading = False
        self._renewed = 0.0
        self._starts: dict[int, asyncio.Task] = {}
        self._tried: dict[int, float] = {}  # project → when a start was last asked for
        self._task: asyncio.Task | None = None
        self.wake = asyncio.Event()
        # A tick at once when a ComfyUI finishes a prompt, not at the next poll (listen.py).
        self.listeners = QueueListeners(self.wake)

    # --- lifespan ------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="comfyhub-jobs")

    async def close(self) -> None:
        tasks = [t for t in (self._task, *self._starts.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.listeners.close()
        if self.leading:
            with contextlib.suppress(Exception):
                await self.lease.release()
        self.client.close()

    async def run(self) -> None:
        while True:
            busy = False
            # Cleared before the tick, not after: a wake that comes during the tick (a prompt
            # finished, a job submitted) runs the next tick at once instead of being lost.
            self.wake.clear()
            try:
                if await self._hold_lease():
                    busy = await self.tick()
                else:
                    self.listeners.keep_only(())
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 — a database hiccup must not end the runner
                log.warning("job runner tick failed; retrying", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), ACTIVE_TICK if busy else IDLE_TICK)

    async def _hold_lease(self) -> bool:
        now = time.monotonic()
        if self.leading and now - self._renewed < LEASE_TTL / 4:
            return True
        self.leading = await self.lease.acquire_or_renew()
        self._renewed = now
        return self.leading

    # --- one tick ------------------------------------------------------------------------

    async def tick(self) -> bool:
        """Advance every project with live jobs, each in its own task; True if any."""
        projects = await self.store.live_projects()
        self.listeners.keep_only(projects)
        if projects:
            await asyncio.gather(*(self._bounded(pid) for pid in projects))
        return bool(projects)

    async def _bounded(self, project_id: int) -> None:
        try:
            await asyncio.wait_for(self.project_step(project_id), PROJECT_DEADLINE)
        except (TimeoutError, InstanceUnreachable) as exc:
            log.info("project %s: jobs wait (%s)", project_id, exc or type(exc).__name__)
        except Exception:  # noqa: BLE001 — one project's trouble stays its own
            log.warning("project %s: job step failed", project_id, exc_info=True)

    async def project_step(self, project_id: int) -> None:
        jobs = await self.store.jobs_of(project_id, (JobState.QUEUED, JobState.RUNNING))
        record = await self.manager.get(project_id)
        status = record.status if record else None
        if status != ServiceStatus.ONLINE:
            await self._settle_lost_runs(project_id, record)
            await self._close_finished(project_id)
            await self._instance_down(await self.store.jobs_of(project_id, (JobState.QUEUED, JobState.RUNNING)), record)
            return
        self.manager.touch(project_id)  # a job in progress is activity: never culled
        instance = Instance.of(record)
        self.listeners.follow(project_id, instance.endpoint, instance.run)
        flying = await self._follow(project_id, instance)
        for job in jobs:
            if flying >= self.depth:
                break
            flying += await self._refill(job, instance, self.depth - flying)
        await self._close_finished(project_id)

    # --- the instance ----------------------------------------------------------------------

    async def _instance_down(self, jobs: list[Job], record) -> None:
        """Start the instance, or pause the jobs when its user stopped it or it cannot start.

        A job created or resumed after that stop or failure (its `resumed_at` is later than
        the record's last change) starts the instance again instead.
        """
        status = record.status if record else None
        if status == ServiceStatus.STARTING or not jobs:
            return
        if status == ServiceStatus.STOPPED and record.reason == Reason.PROJECT_DELETED:
            for job in jobs:
                await self.store.set_state(job.id, JobState.CANCELLED, "项目已删除")
            return
        held = None
        if status == ServiceStatus.STOPPED and record.reason == Reason.USER:
            held = PAUSED_BY_USER
        elif status == ServiceStatus.FAILED and record.reason != Reason.INTERRUPTED:
            held = START_FAILED.format(why=(record.last_error or "").split("\n")[0][:120])
        if held is not None:
            resumed = [j for j in jobs if j.resumed_at > record.updated_at]
            await self._pause([j for j in jobs if j not in resumed], held)
            jobs = resumed
        if jobs:
            self._start(jobs[0])

    def _start(self, job: Job) -> None:
        now = time.monotonic()
        if job.project_id in self._starts or now - self._tried.get(job.project_id, -1e9) < START_RETRY_SECONDS:
            return
        self._tried[job.project_id] = now

        async def start():
            try:
                project = await self._project(job.project_id)
                await self.manager.ensure(job.user_id, project, actor=f"job:{job.id}")
            except ServiceError as exc:
                if exc.status == 404:  # the project was deleted meanwhile
                    await self.store.set_state(job.id, JobState.CANCELLED, "项目已删除")
                    return
                state = JobState.RUNNING if exc.status == 429 else JobState.PAUSED
                why = WAITING_FOR_SLOT.format(why=exc.msg) if exc.status == 429 else START_FAILED.format(why=exc.msg)
                await self.store.set_state(job.id, state, why, only_from=(JobState.QUEUED, JobState.RUNNING))
            finally:
                self._starts.pop(job.project_id, None)
                self.wake.set()

        self._starts[job.project_id] = asyncio.create_task(start(), name=f"comfyhub-job-start-{job.project_id}")

    async def _project(self, project_id: int):
        from comfyhub.models import Project

        async with self.manager.sessions() as session:
            return await session.get(Project, project_id)

    async def _pause(self, jobs: list[Job], why: str) -> None:
        for job in jobs:
            await self.store.set_state(job.id, JobState.PAUSED, why, only_from=(JobState.QUEUED, JobState.RUNNING))

    # --- items in flight -------------------------------------------------------------------

    async def _follow(self, project_id: int, instance: Instance) -> int:
        """Settle the items whose outcome is known; returns how many are still in ComfyUI."""
        items = await self.store.in_flight(project_id)
        if not items:
            return 0
        # ComfyUI moves a prompt from its queue to its history in one step: reading the queue
        # *before* the history means an item in neither really is lost, never just finished.
        stale = [i for i in items if i.run == instance.run and utcnow() - i.submitted_at > LOST_AFTER]
        queued = await self._queued_ids(instance) if stale else set()
        try:
            await self.manager.outputs.pull(instance)
        except InstanceUnreachable:
            pass
        except Exception:  # noqa: BLE001 — a bad history entry must not stall the jobs
            log.warning("project %s: history pull failed", project_id, exc_info=True)
        outcomes = await self.store.outcomes(project_id, [i.prompt_id for i in items])
        orphans = [i for i in items if i.prompt_id not in outcomes and i.run != instance.run]
        if orphans:
            outcomes |= await self._outcomes_on_disk(project_id, instance.user_id, orphans)
        jobs = await self.store.jobs_by_id({i.job_id for i in items})
        still = 0
        for item in items:
            if item.prompt_id in outcomes:
                await self._settle(item, jobs[item.job_id], *outcomes[item.prompt_id])
            elif item.run != instance.run:
                await self._lost(item, LOST)
            elif item in stale and item.prompt_id not in queued:
                await self._lost(item, NEVER_ARRIVED)
            else:
                still += 1
        return still

    async def _settle(self, item: JobItem, job: Job, status: str, error: str) -> None:
        if status == "success":
            await self.store.finish(item, ItemState.DONE)
        elif item.retries < job.max_retries and job.state not in (JobState.CANCELLED,):
            await self.store.retry(item, error or status)
        else:
            await self.store.finish(item, ItemState.FAILED, error or status)

    async def _lost(self, item: JobItem, why: str) -> None:
        if item.resubmits >= MAX_RESUBMITS:
            await self.store.finish(item, ItemState.FAILED, KILLED_TOO_OFTEN)
        else:
            await self.store.resubmit(item, why)

    async def _settle_lost_runs(self, project_id: int, record) -> None:
        """Instance down: items it had are looked up in the records (the last pull before
        a stop may have them) and in its files, the rest go back to pending.

        Only when its run is really gone: an instance marked offline because it did not
        answer a health check may still be executing them (its process is kept, same run)."""
        items = await self.store.in_flight(project_id)
        if not items:
            return
        outcomes = await self.store.outcomes(project_id, [i.prompt_id for i in items])
        jobs = await self.store.jobs_by_id({i.job_id for i in items})
        gone = [i for i in items if i.prompt_id not in outcomes and _run_gone(record, i)]
        if gone:
            outcomes |= await self._outcomes_on_disk(project_id, jobs[gone[0].job_id].user_id, gone)
        stopped = record is not None and record.status == ServiceStatus.STOPPED
        for item in items:
            if item.prompt_id in outcomes:
                await self._settle(item, jobs[item.job_id], *outcomes[item.prompt_id])
            elif _run_gone(record, item):
                if stopped:  # stopped on purpose (a user, an admin): not the item's fault
                    await self.store.resubmit(item, LOST, counted=False)
                else:
                    await self._lost(item, LOST)

    async def _outcomes_on_disk(self, project_id: int, user_id: int, items: list[JobItem]) -> dict:
        """Outcomes of items whose instance died, from the files it wrote: each job PNG names
        its prompt id, so a file written just before the crash marks its item done instead
        of running it again. Scanning records what it finds (as the output sync would)."""
        await self.manager.outputs.scan(project_id, user_id)
        return await self.store.outcomes(project_id, [i.prompt_id for i in items])

    async def _queued_ids(self, instance: Instance) -> set[str]:
        queue = await self.client.get_json(instance.endpoint, "/queue")
        ids = set()
        for key in ("queue_running", "queue_pending"):
            for entry in queue.get(key) or [] if isinstance(queue, dict) else []:
                if isinstance(entry, list) and len(entry) > 1 and isinstance(entry[1], str):
                    ids.add(entry[1])
        return ids

    # --- submitting ----------------------------------------------------------------------

    async def _refill(self, job: Job, instance: Instance, room: int) -> int:
        pending = await self.store.next_pending(job.id, room)
        if not pending:
            return 0
        if job.state == JobState.QUEUED:
            await self.store.set_state(job.id, JobState.RUNNING, only_from=(JobState.QUEUED,))
        elif job.detail:
            await self.store.set_state(job.id, JobState.RUNNING, only_from=(JobState.RUNNING,))
        sent = 0
        for item in pending:
            if not self.leading:
                break
            prompt_id = await self.store.claim(item, instance.run, self.lease.holder)
            if prompt_id is None:
                continue
            item.prompt_id = prompt_id
            sent += 1
            await self._submit(job, item, instance)
        return sent

    async def _submit(self, job: Job, item: JobItem, instance: Instance) -> None:
        body = {
            "prompt": apply(job.workflow, item.params),
            "prompt_id": item.prompt_id,
            "client_id": f"comfyhub-job-{job.id}",
            # Also written into each PNG: the file alone tells which job and item made it.
            "extra_data": {
                "extra_pnginfo": {
                    "comfyhub": {"job": job.id, "item": item.idx, "prompt_id": item.prompt_id, "params": item.params}
                }
            },
        }
        try:
            status, answer = await self.client.post_json(instance.endpoint, "/prompt", body)
        except InstanceUnreachable:
            return  # unknown whether it arrived: LOST_AFTER later the queue and history tell
        if status != 200:
            # ComfyUI refused the graph (validation): the same graph would be refused again.
            await self.store.finish(item, ItemState.FAILED, refusal_text(answer, status))

    async def _close_finished(self, project_id: int) -> None:
        for job in await self.store.jobs_of(project_id, (JobState.RUNNING,)):
            counts = await self.store.counts(job.id)
            if counts[ItemState.PENDING] or counts[ItemState.RUNNING]:
                continue
            state = JobState.FAILED if counts[ItemState.DONE] == 0 and counts[ItemState.FAILED] else JobState.DONE
            await self.store.set_state(job.id, state, only_from=(JobState.RUNNING,))


def refusal_text(answer, status: int) -> str:
    """ComfyUI's reason for refusing a prompt, in one line."""
    if isinstance(answer, dict):
        error = answer.get("error")
        if isinstance(error, dict):
            text = str(error.get("message") or error.get("type") or "")
            nodes = answer.get("node_errors")
            if isinstance(nodes, dict) and nodes:
                first = next(iter(nodes.values()))
                errors = first.get("errors") if isinstance(first, dict) else None
                if isinstance(errors, list) and errors and isinstance(errors[0], dict):
                    text += f"：{errors[0].get('message', '')} {errors[0].get('details', '')}".rstrip()
            return text[:500] or f"HTTP {status}"
    return f"ComfyUI 拒绝了该项（HTTP {status}）"


def _run_gone(record, item: JobItem) -> bool:
    """Whether the instance run that had `item` has ended (its process is gone)."""
    if record is None or record.generation != item.run:
        return True
    if record.status in (ServiceStatus.STOPPED, ServiceStatus.FAILED):
        return True
    return record.status == ServiceStatus.OFFLINE and record.pid is None
