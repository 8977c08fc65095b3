"""The only writer of `jobs` and `job_items`.

Every item transition is a conditional UPDATE on the item's current state, so two
processes (a lease holder that stalled and its successor) can never both claim one
item: the second UPDATE matches no row.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import defer

from comfyhub.models import Generation, ItemState, Job, JobItem, JobState, utcnow

INSERT_BATCH = 2000
LIVE_JOBS = (JobState.QUEUED, JobState.RUNNING)
RATE_WINDOW = timedelta(minutes=5)


class JobStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]):
        self.sessions = sessions

    # --- creating ------------------------------------------------------------------------

    async def create(
        self,
        project_id: int,
        user_id: int,
        name: str,
        workflow: dict,
        columns: list[str],
        items: Sequence[dict],
        max_retries: int,
    ) -> Job:
        async with self.sessions() as session:
            job = Job(
                project_id=project_id,
                user_id=user_id,
                name=name,
                workflow=workflow,
                columns=columns,
                state=JobState.QUEUED,
                total=len(items),
                max_retries=max_retries,
            )
            session.add(job)
            await session.flush()
            for start in range(0, len(items), INSERT_BATCH):
                await session.execute(
                    JobItem.__table__.insert(),
                    [
                        {
                            "job_id": job.id,
                            "idx": start + i,
                            "params": params,
                            "state": ItemState.PENDING,
                            "submissions": 0,
                            "retries": 0,
                            "resubmits": 0,
                            "submitted_by": "",
                            "error": "",
                        }
                        for i, params in enumerate(items[start : start + INSERT_BATCH])
                    ],
                )
            await session.commit()
            return job

    # --- what the runner reads ---------------------------------------------------------------

    async def live_projects(self) -> list[int]:
        """Projects with a job to feed or an item in flight."""
        async with self.sessions() as session:
            feeding = select(Job.project_id).where(Job.state.in_(LIVE_JOBS))
            flying = (
                select(Job.project_id).join(JobItem, JobItem.job_id == Job.id).where(JobItem.state == ItemState.RUNNING)
            )
            rows = await session.execute(feeding.union(flying))
            return sorted(r[0] for r in rows)

    async def jobs_of(self, project_id: int, states: Sequence[str] = LIVE_JOBS) -> list[Job]:
        async with self.sessions() as session:
            rows = await session.execute(
                select(Job).where(Job.project_id == project_id, Job.state.in_(list(states))).order_by(Job.id)
            )
            return list(rows.scalars())

    async def jobs_by_id(self, ids) -> dict[int, Job]:
        """These jobs, without their workflows (not needed to settle items)."""
        if not ids:
            return {}
        async with self.sessions() as session:
            rows = await session.execute(select(Job).options(defer(Job.workflow)).where(Job.id.in_(list(ids))))
            return {j.id: j for j in rows.scalars()}

    async def in_flight(self, project_id: int) -> list[JobItem]:
        async with self.sessions() as session:
            rows = await session.execute(
                select(JobItem)
                .join(Job, Job.id == JobItem.job_id)
                .where(Job.project_id == project_id, JobItem.state == ItemState.RUNNING)
                .order_by(JobItem.id)
            )
            return list(rows.scalars())

    async def next_pending(self, job_id: int, limit: int) -> list[JobItem]:
        async with self.sessions() as session:
            rows = await session.execute(
                select(JobItem)
                .where(JobItem.job_id == job_id, JobItem.state == ItemState.PENDING)
                .order_by(JobItem.idx)
                .limit(limit)
            )
            return list(rows.scalars())

    async def outcomes(self, project_id: int, prompt_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
        """prompt_id → (status, error) of the generations on record among these."""
        if not prompt_ids:
            return {}
        async with self.sessions() as session:
            rows = await session.execute(
                select(Generation.prompt_id, Generation.status, Generation.error).where(
                    Generation.project_id == project_id, Generation.prompt_id.in_(list(prompt_ids))
                )
            )
            return {p: (s, e) for p, s, e in rows}

    # --- item transitions ------------------------------------------------------------------

    async def claim(self, item: JobItem, run: int, holder: str) -> str | None:
        """Mark a pending item submitted under a fresh prompt id; None if someone else did."""
        prompt_id = str(uuid.uuid4())
        async with self.sessions() as session:
            result = await session.execute(
                update(JobItem)
                .where(JobItem.id == item.id, JobItem.state == ItemState.PENDING)
                .values(
                    state=ItemState.RUNNING,
                    prompt_id=prompt_id,
                    run=run,
                    submissions=JobItem.submissions + 1,
                    submitted_by=holder,
                    submitted_at=utcnow(),
                )
            )
            await session.commit()
            return prompt_id if result.rowcount == 1 else None

    async def finish(self, item: JobItem, state: ItemState, error: str = "") -> bool:
        return await self._move(item, state, error=error, finished_at=utcnow())

    async def retry(self, item: JobItem, error: str) -> bool:
        """Back to pending after a ComfyUI error (counted against the job's retries)."""
        return await self._move(item, ItemState.PENDING, error=error, retries=JobItem.retries + 1)

    async def resubmit(self, item: JobItem, why: str, counted: bool = True) -> bool:
        """Back to pending: its instance lost it (a crash, a stop), or it never arrived.
        `counted`: whether it counts against the item (a crash may be the item's doing)."""
        values = {"resubmits": JobItem.resubmits + 1} if counted else {}
        return await self._move(item, ItemState.PENDING, error=why, **values)

    async def _move(self, item: JobItem, state: ItemState, **values) -> bool:
        async with self.sessions() as session:
            result = await session.execute(
                update(JobItem)
                .where(JobItem.id == item.id, JobItem.state == ItemState.RUNNING, JobItem.prompt_id == item.prompt_id)
                .values(state=state, **values)
            )
            await session.commit()
            return result.rowcount == 1

    # --- job transitions -------------------------------------------------------------------

    async def set_state(
        self, job_id: int, state: JobState, detail: str = "", only_from: Sequence[str] | None = None
    ) -> bool:
        values: dict = {"state": state, "detail": detail}
        if state in (JobState.DONE, JobState.FAILED, JobState.CANCELLED):
            values["finished_at"] = utcnow()
        if state == JobState.RUNNING:
            values["finished_at"] = None
        if state == JobState.RUNNING and only_from is not None and JobState.PAUSED in only_from:
            values["resumed_at"] = utcnow()  # a resume: a stop of the instance before now no longer holds it
        async with self.sessions() as session:
            stmt = update(Job).where(Job.id == job_id)
            if only_from is not None:
                stmt = stmt.where(Job.state.in_(list(only_from)))
            result = await session.execute(stmt.values(**values))
            if state == JobState.RUNNING:
                await session.execute(
                    update(Job).where(Job.id == job_id, Job.started_at.is_(None)).values(started_at=utcnow())
                )
            if state == JobState.CANCELLED:
                await session.execute(
                    update(JobItem)
                    .where(JobItem.job_id == job_id, JobItem.state == ItemState.PENDING)
                    .values(state=ItemState.CANCELLED)
                )
            await session.commit()
            return result.rowcount == 1

    async def counts(self, job_id: int) -> dict[str, int]:
        async with self.sessions() as session:
            rows = await session.execute(
                select(JobItem.state, func.count()).where(JobItem.job_id == job_id).group_by(JobItem.state)
            )
            found = dict(rows.all())
        return {s.value: int(found.get(s.value, 0)) for s in ItemState}

    async def recent_done(self, job_id: int, now: datetime) -> int:
        async with self.sessions() as session:
            return (
                await session.execute(
                    select(func.count()).where(
                        JobItem.job_id == job_id,
                        JobItem.state == ItemState.DONE,
                        JobItem.finished_at >= now - RATE_WINDOW,
                    )
                )
            ).scalar_one()
