"""/api/projects/{id}/jobs: 批量生成 — a workflow over a table or grid of parameters.

Owner only, like the rest of a project. A job is validated whole on submit (every cell
against the workflow) and created with all its items in one transaction, or not at all.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from pydantic import Field
from sqlalchemy import func, select

from comfyhub.api.deps import MAX_ID, CurrentUser, DbSession, ProjectId, SettingsDep
from comfyhub.api.errors import ApiError, envelope, field_errors
from comfyhub.api.projects import load_project
from comfyhub.api.schemas import Name, Strict
from comfyhub.jobs.params import ParamsError, expand
from comfyhub.jobs.store import JobStore
from comfyhub.models import Generation, ItemState, Job, JobItem, JobState, Output

router = APIRouter(prefix="/projects/{project_id}/jobs", tags=["jobs"])

JOB_NOT_FOUND = "任务不存在"
TOO_LARGE = "请求体过大（工作流与参数表合计最多 32 MB）"
MAX_BODY = 32 << 20  # a workflow plus 100,000 rows of parameters fits well within this
JobId = Annotated[int, Path(ge=1, le=MAX_ID, description="任务 ID")]


class SeedIn(Strict):
    field: str = Field(min_length=3, max_length=200, description="如 3.seed")
    mode: Literal["random", "increment"] = "increment"
    start: int = Field(0, ge=0, le=2**63 - 1)
    random_seed: int | None = Field(None, ge=0, le=2**63 - 1)


class JobIn(Strict):
    name: Name = "批量生成"
    workflow: dict[str, Any] = Field(description="ComfyUI「导出（API）」得到的工作流 JSON")
    table: list[dict[str, Any]] | None = Field(None, description="参数表：每行一个对象，列名如 6.text、3.seed")
    grid: dict[str, list[Any]] | None = Field(None, description="参数网格：每列一个取值列表，取笛卡尔积")
    csv: str | None = Field(None, description="参数表（CSV 文本，首行为列名）")
    jsonl: str | None = Field(None, description="参数表（JSONL 文本）")
    repeat: int = Field(1, ge=1, le=10000)
    seed: SeedIn | None = None
    max_retries: int | None = Field(None, ge=0, le=20)


def _refused(exc: ParamsError) -> ApiError:
    """The first bad cell, said in Chinese, with its row and column for the page to point at."""
    where = exc.column or "workflow"
    data = field_errors((where, "invalid", exc.message)) | {"row": exc.row, "column": exc.column}
    return ApiError(422, exc.message, data)


async def _body(request: Request) -> JobIn:
    """The job from JSON, or from a multipart form with `workflow` and `params` files.

    Bodies are read with a running cap (MAX_BODY): a chunked request has no length to
    check up front, and an uploaded file may be of any size."""
    declared = request.headers.get("content-length") or "0"
    if not declared.isdigit() or int(declared) > MAX_BODY:
        raise ApiError(413, TOO_LARGE)
    kind = request.headers.get("content-type", "")
    if kind.startswith("multipart/form-data"):
        return await _form_body(request)
    raw = await _capped(request.stream())
    return _job_in(_json(raw, "请求参数无效：JSON 格式错误"))


async def _capped(chunks) -> bytes:
    body, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > MAX_BODY:
            raise ApiError(413, TOO_LARGE)
        body.append(chunk)
    return b"".join(body)


def _json(raw: bytes | str, refusal: str):
    try:
        return json.loads(raw or "null")
    except (ValueError, RecursionError):
        raise ApiError(422, refusal) from None


def _job_in(data) -> JobIn:
    try:
        job = JobIn.model_validate(data)
    except Exception as exc:  # noqa: BLE001 — pydantic's error, said in one Chinese line
        raise ApiError(422, f"请求参数无效：{_first_error(exc)}") from None
    try:
        json.dumps(job.workflow, allow_nan=False)  # NaN or Infinity: no database stores it as JSON
    except (ValueError, RecursionError):
        raise ApiError(422, "工作流中有无效的数值（NaN 或 Infinity）") from None
    return job


async def _form_body(request: Request) -> JobIn:
    form = await request.form(max_files=2, max_fields=10, max_part_size=1 << 20)
    fields: dict[str, Any] = {}
    for key in ("name", "repeat", "max_retries"):
        value = form.get(key)
        if isinstance(value, str) and value != "":
            fields[key] = value
        elif value not in (None, ""):
            raise ApiError(422, f"{key} 必须是文本字段，不能是文件")
    workflow, params = form.get("workflow"), form.get("params")
    raw = await _upload(workflow) if hasattr(workflow, "read") else (workflow or "")
    fields["workflow"] = _json(raw, "工作流文件不是有效的 JSON")
    if params is not None and hasattr(params, "read"):
        text = (await _upload(params)).decode("utf-8-sig", errors="replace")
        name = (params.filename or "").lower()
        fields["jsonl" if name.endswith((".jsonl", ".ndjson")) else "csv"] = text
    for key in ("repeat", "max_retries"):
        if key in fields:
            try:
                fields[key] = int(fields[key])
            except ValueError:
                raise ApiError(422, f"{key} 必须是整数") from None
    return _job_in(fields)


async def _upload(upload) -> bytes:
    if upload.size is not None and upload.size > MAX_BODY:
        raise ApiError(413, TOO_LARGE)
    return await _capped(_pieces(upload))


async def _pieces(upload):
    while chunk := await upload.read(1 << 20):
        yield chunk


def _first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ())) or "请求体"
        return f"{loc}（{first.get('msg', '格式无效')}）"
    return "格式无效"


@router.post("", summary="创建批量生成任务", status_code=201)
async def create_job(project_id: ProjectId, request: Request, user: CurrentUser, db: DbSession, settings: SettingsDep):
    project = await load_project(db, project_id, user, owner_only=True)
    await db.commit()
    body = await _body(request)
    sources = [s for s in ("table", "grid", "csv", "jsonl") if getattr(body, s) is not None]
    if len(sources) > 1:
        raise ApiError(422, "table、grid、csv、jsonl 只能给出其中一种")
    try:
        table, table_format = body.table, "json"
        if body.csv is not None:
            table, table_format = body.csv, "csv"
        elif body.jsonl is not None:
            table, table_format = body.jsonl, "jsonl"
        expanded = expand(
            body.workflow,
            table=table,
            table_format=table_format,
            grid=body.grid,
            repeat=body.repeat,
            seed=body.seed.model_dump() if body.seed else None,
        )
    except ParamsError as exc:
        raise _refused(exc) from None
    retries = body.max_retries if body.max_retries is not None else settings.comfyhub_job_max_retries
    job = await JobStore(request.app.state.sessions).create(
        project.id, user.id, body.name, body.workflow, expanded.columns, expanded.items, retries
    )
    request.app.state.jobs.wake.set()
    return envelope(
        {"id": job.id, "total": job.total, "columns": expanded.columns}, f"任务已创建，共 {job.total} 项", 201
    )


async def _job(db, project_id: int, job_id: int) -> Job:
    job = await db.get(Job, job_id)
    if job is None or job.project_id != project_id:
        raise ApiError(404, JOB_NOT_FOUND)
    return job


RATE_WINDOW = timedelta(minutes=2)


async def _rate(db, job: Job, done: int) -> float:
    """Items per second while the job runs: measured over the items finished in the last
    two minutes, so a pause or an instance restart earlier does not drag it down; a
    finished job's rate is over its whole run."""
    if job.finished_at is not None or job.state not in (JobState.QUEUED, JobState.RUNNING):
        elapsed = ((job.finished_at or datetime.now(UTC)) - (job.started_at or job.created_at)).total_seconds()
        return done / elapsed if done and elapsed > 0 else 0.0
    n, first, last = (
        await db.execute(
            select(func.count(), func.min(JobItem.finished_at), func.max(JobItem.finished_at)).where(
                JobItem.job_id == job.id,
                JobItem.state == ItemState.DONE,
                JobItem.finished_at >= datetime.now(UTC) - RATE_WINDOW,
            )
        )
    ).one()
    if n >= 2 and last > first:
        return (n - 1) / (last - first).total_seconds()
    return 0.0


async def job_view(db, job: Job) -> dict:
    rows = await db.execute(select(JobItem.state, func.count()).where(JobItem.job_id == job.id).group_by(JobItem.state))
    found = dict(rows.all())
    counts = {s.value: int(found.get(s.value, 0)) for s in ItemState}
    rate = await _rate(db, job, counts["done"])
    left = counts["pending"] + counts["running"]
    live = job.state in (JobState.QUEUED, JobState.RUNNING)
    return {
        "id": job.id,
        "project_id": job.project_id,
        "name": job.name,
        "state": job.state,
        "detail": job.detail,
        "total": job.total,
        "counts": counts,
        "columns": job.columns,
        "rate_per_minute": round(rate * 60, 2),
        "eta_seconds": round(left / rate) if rate and live else None,
        "max_retries": job.max_retries,
        "created_at": job.created_at.isoformat(),
        "started_at": job.started_at and job.started_at.isoformat(),
        "finished_at": job.finished_at and job.finished_at.isoformat(),
    }


@router.get("", summary="批量生成任务列表")
async def list_jobs(project_id: ProjectId, user: CurrentUser, db: DbSession, limit: int = Query(50, ge=1, le=200)):
    await load_project(db, project_id, user)
    jobs = (
        await db.execute(select(Job).where(Job.project_id == project_id).order_by(Job.id.desc()).limit(limit))
    ).scalars()
    return envelope([await job_view(db, j) for j in jobs])


@router.get("/{job_id}", summary="任务详情：各状态数量、速度、预计剩余时间")
async def get_job(project_id: ProjectId, job_id: JobId, user: CurrentUser, db: DbSession):
    await load_project(db, project_id, user)
    return envelope(await job_view(db, await _job(db, project_id, job_id)))


STATE_WORDS = {
    JobState.QUEUED: "排队中",
    JobState.RUNNING: "运行中",
    JobState.PAUSED: "已暂停",
    JobState.DONE: "已完成",
    JobState.FAILED: "失败",
    JobState.CANCELLED: "已取消",
}

_MOVES = {
    "pause": ((JobState.QUEUED, JobState.RUNNING), JobState.PAUSED, "已暂停"),
    "resume": ((JobState.PAUSED,), JobState.RUNNING, "已继续"),
    "cancel": ((JobState.QUEUED, JobState.RUNNING, JobState.PAUSED), JobState.CANCELLED, "已取消"),
}


@router.post("/{job_id}/{action}", summary="暂停、继续或取消任务")
async def move_job(
    project_id: ProjectId,
    job_id: JobId,
    action: Literal["pause", "resume", "cancel"],
    request: Request,
    user: CurrentUser,
    db: DbSession,
):
    await load_project(db, project_id, user, owner_only=True)
    job = await _job(db, project_id, job_id)
    await db.commit()
    allowed, target, said = _MOVES[action]
    if job.state not in allowed:
        raise ApiError(409, f"任务{STATE_WORDS.get(job.state, job.state)}，不能{said.removeprefix('已')}")
    store = JobStore(request.app.state.sessions)
    if not await store.set_state(job_id, target, "" if target != JobState.PAUSED else "用户暂停", only_from=allowed):
        raise ApiError(409, "任务状态已变化，请刷新")
    request.app.state.jobs.wake.set()
    async with request.app.state.sessions() as fresh:
        return envelope(await job_view(fresh, await fresh.get(Job, job_id)), f"任务{said}")


@router.get("/{job_id}/items", summary="任务的各项：参数、状态、prompt_id、产出、错误")
async def list_items(
    project_id: ProjectId,
    job_id: JobId,
    user: CurrentUser,
    db: DbSession,
    limit: int = Query(100, ge=1, le=500),
    offset: int = Query(0, ge=0, le=10_000_000),
    state: Annotated[Literal["pending", "running", "done", "failed", "cancelled"] | None, Query()] = None,
):
    await load_project(db, project_id, user)
    job = await _job(db, project_id, job_id)
    stmt = select(JobItem).where(JobItem.job_id == job.id)
    if state:
        stmt = stmt.where(JobItem.state == state)
    total = (await db.execute(select(func.count()).select_from(stmt.subquery()))).scalar_one()
    items = list((await db.execute(stmt.order_by(JobItem.idx).limit(limit).offset(offset))).scalars())
    prompt_ids = [i.prompt_id for i in items if i.prompt_id]
    outputs: dict[str, list[int]] = {}
    if prompt_ids:
        rows = await db.execute(
            select(Generation.prompt_id, Output.id)
            .join(Output, Output.generation_id == Generation.id)
            .where(Generation.project_id == project_id, Generation.prompt_id.in_(prompt_ids))
            .order_by(Output.id)
        )
        for pid, oid in rows:
            outputs.setdefault(pid, []).append(oid)
    return envelope(
        {
            "total": total,
            "items": [
                {
                    "idx": i.idx,
                    "params": i.params,
                    "state": i.state,
                    "prompt_id": i.prompt_id,
                    "outputs": outputs.get(i.prompt_id or "", []),
                    "error": i.error,
                    "submissions": i.submissions,
                    "retries": i.retries,
                    "resubmits": i.resubmits,
                    "submitted_at": i.submitted_at and i.submitted_at.isoformat(),
                    "finished_at": i.finished_at and i.finished_at.isoformat(),
                }
                for i in items
            ],
        }
    )


# --- /api/jobs/{job_id}: a job by its id alone --------------------------------------------
#
# `comfyhub jobs watch JOB_ID` knows only the job. The routes above stay nested under their
# project; this one answers the same view to whoever may read the job's project (its owner,
# or an admin), and 404 to anyone else, so that job ids reveal nothing. `router` is rebound
# to a parent of both, so that the API includes it as before.

_project_jobs = router
router = APIRouter(tags=["jobs"])
router.include_router(_project_jobs)


@router.get("/jobs/{job_id}", summary="任务详情（只凭任务 ID）：各状态数量、速度、预计剩余时间")
async def get_job_by_id(job_id: JobId, user: CurrentUser, db: DbSession):
    job = await db.get(Job, job_id)
    if job is None:
        raise ApiError(404, JOB_NOT_FOUND)
    try:
        await load_project(db, job.project_id, user)
    except ApiError:
        raise ApiError(404, JOB_NOT_FOUND) from None
    return envelope(await job_view(db, job))
