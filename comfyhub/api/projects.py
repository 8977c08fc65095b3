"""/api/projects: a user's projects, and the 数据生成 actions on each one."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Query
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from comfyhub.api.deps import CurrentUser, DbSession, Manager, ProjectId
from comfyhub.api.errors import FORBIDDEN, PROJECT_NOT_FOUND, ApiError, envelope, field_error
from comfyhub.api.schemas import ProjectCreate, ProjectUpdate
from comfyhub.api.views import PROJECT_SHOWN, SERVICE_SHOWN, open_view, project_view, service_view
from comfyhub.fair import map_in_slices
from comfyhub.models import (
    ComfyUIService,
    ItemState,
    Job,
    JobItem,
    JobState,
    Output,
    Project,
    ServiceStatus,
    User,
    utcnow,
)
from comfyhub.reasons import Reason

router = APIRouter(prefix="/projects", tags=["projects"])

CODE_TAKEN = "项目号已存在"
LIVE_OR_PAUSED = (JobState.QUEUED, JobState.RUNNING, JobState.PAUSED)
MAX_LOG_LINES = 2000


async def load_project(
    db, project_id: int, user: User, *, owner_only: bool = False, deleted_ok: bool = False
) -> Project:
    """The project, if the caller may see it: its owner, or an admin unless `owner_only`.

    A deleted project is gone for everyone, except for an admin where `deleted_ok` (its
    outputs and records stay readable and exportable)."""
    project = await db.get(Project, project_id)
    if project is None or (project.deleted_at is not None and not (deleted_ok and user.is_admin)):
        raise ApiError(404, PROJECT_NOT_FOUND)
    if project.owner_user_id != user.id and (owner_only or not user.is_admin):
        raise ApiError(403, FORBIDDEN)
    return project


async def _service_of(db, project_id: int) -> ComfyUIService | None:
    return (
        await db.execute(select(ComfyUIService).where(ComfyUIService.project_id == project_id))
    ).scalar_one_or_none()


async def code_taken(db, code: str, except_id: int | None = None) -> bool:
    query = select(Project.id).where(Project.code == code)
    if except_id is not None:
        query = query.where(Project.id != except_id)
    return (await db.execute(query)).first() is not None


@router.get("", summary="项目列表")
async def list_projects(
    user: CurrentUser,
    db: DbSession,
    scope: Literal["mine", "all"] | None = Query(None, description="mine 或 all（仅管理员）；管理员默认 all"),
):
    if scope == "all" and not user.is_admin:
        raise ApiError(403, FORBIDDEN)
    show_all = user.is_admin and scope != "mine"
    query = (
        select(*PROJECT_SHOWN, *SERVICE_SHOWN, ComfyUIService.project_id.label("service_of"), User.username)
        .outerjoin(ComfyUIService, ComfyUIService.project_id == Project.id)
        .join(User, User.id == Project.owner_user_id)
        .order_by(Project.id)
    )
    query = query.where(Project.deleted_at.is_(None))
    if not show_all:
        query = query.where(Project.owner_user_id == user.id)
    rows = (await db.execute(query)).all()
    # One plain row holds the project, its record (all NULL without one) and the owner's name.
    return envelope(await map_in_slices(lambda r: project_view(r, r if r.service_of is not None else None, r), rows))


@router.post("", summary="创建项目", status_code=201)
async def create_project(body: ProjectCreate, user: CurrentUser, db: DbSession):
    if await code_taken(db, body.code):
        raise field_error(400, "code", CODE_TAKEN, "taken")
    project = Project(name=body.name, code=body.code, note=body.note, owner_user_id=user.id)
    db.add(project)
    try:
        await db.commit()
    except IntegrityError:
        # Lost a race with a concurrent create of the same code.
        await db.rollback()
        raise field_error(400, "code", CODE_TAKEN, "taken") from None
    return envelope(project_view(project, None, user), "项目已创建", 201)


@router.get("/{project_id}", summary="项目详情")
async def get_project(project_id: ProjectId, user: CurrentUser, db: DbSession):
    project = await load_project(db, project_id, user)
    return envelope(project_view(project, await _service_of(db, project_id)))


@router.put("/{project_id}", summary="修改项目")
async def update_project(project_id: ProjectId, body: ProjectUpdate, user: CurrentUser, db: DbSession):
    project = await load_project(db, project_id, user)
    changes = body.model_dump(exclude_none=True)
    if "code" in changes and await code_taken(db, changes["code"], except_id=project.id):
        raise field_error(400, "code", CODE_TAKEN, "taken")
    for field, value in changes.items():
        setattr(project, field, value)
    try:
        await db.commit()
    except IntegrityError:
        await db.rollback()
        raise field_error(400, "code", CODE_TAKEN, "taken") from None
    return envelope(project_view(project, await _service_of(db, project_id)), "项目已更新")


@router.delete("/{project_id}", summary="删除项目（产出与生成记录保留）")
async def delete_project(project_id: ProjectId, user: CurrentUser, db: DbSession, manager: Manager):
    project = await load_project(db, project_id, user)
    await db.commit()
    # The instance goes first: no ComfyUI may outlive its project. Its history is pulled
    # on the way (manager.stop), and its files stay on disk.
    await manager.stop(project_id, reason=Reason.PROJECT_DELETED, actor=user.username)
    project = await load_project(db, project_id, user)
    kept = (
        await db.execute(
            select(func.count()).select_from(Output).where(Output.project_id == project_id, Output.deleted_at.is_(None))
        )
    ).scalar_one()
    project.deleted_at = utcnow()
    project.deleted_code = project.code
    # Its jobs end here: nothing may start an instance for a deleted project.
    live = select(Job.id).where(Job.project_id == project_id, Job.state.in_(LIVE_OR_PAUSED))
    await db.execute(
        update(JobItem)
        .where(JobItem.job_id.in_(live), JobItem.state == ItemState.PENDING)
        .values(state=ItemState.CANCELLED)
    )
    await db.execute(
        update(Job)
        .where(Job.project_id == project_id, Job.state.in_(LIVE_OR_PAUSED))
        .values(state=JobState.CANCELLED, detail="项目已删除", finished_at=utcnow())
    )
    project.code = tombstone(project.id)  # frees the code for a new project
    await db.commit()
    msg = (
        f"项目已删除。它的 {kept} 个产出文件和生成记录仍保留在服务器上，管理员可以恢复或导出" if kept else "项目已删除"
    )
    return envelope({"id": project_id, "outputs_kept": kept}, msg)


def tombstone(project_id: int) -> str:
    """The code a deleted project holds: no user code can look like it (codes start alphanumeric)."""
    return f"~deleted-{project_id}"


@router.post("/{project_id}/open_comfy", summary="数据生成：打开（必要时启动）ComfyUI")
async def open_comfy(project_id: ProjectId, user: CurrentUser, db: DbSession, manager: Manager):
    # Project and service in one query: the reuse path must stay within milliseconds.
    row = (
        await db.execute(
            select(Project, ComfyUIService)
            .outerjoin(ComfyUIService, ComfyUIService.project_id == Project.id)
            .where(Project.id == project_id, Project.deleted_at.is_(None))
        )
    ).first()
    await db.commit()  # hand the connection back: a start can take minutes
    if row is None:
        raise ApiError(404, PROJECT_NOT_FOUND)
    project, service = row
    if project.owner_user_id != user.id:
        raise ApiError(403, FORBIDDEN)
    record = await manager.ensure(user.id, project, actor=user.username, record=service)
    if record.status == ServiceStatus.ONLINE:
        return envelope(open_view(record), "ComfyUI 已就绪")
    if record.status == ServiceStatus.FAILED:
        reason = record.last_error.splitlines()[0] if record.last_error else "未知原因"
        return envelope(open_view(record), f"ComfyUI 启动失败：{reason}", 503)
    return envelope(open_view(record), "启动已取消", 409)


@router.post("/{project_id}/stop_comfy", summary="停止 ComfyUI")
async def stop_comfy(project_id: ProjectId, user: CurrentUser, db: DbSession, manager: Manager):
    await load_project(db, project_id, user, owner_only=True)
    await db.commit()  # hand the connection back while the process stops
    record = await manager.stop(project_id, reason=Reason.USER, actor=user.username)
    return envelope(service_view(record), "ComfyUI 已停止")


@router.get("/{project_id}/queue", summary="ComfyUI 的任务：运行中与排队中的数量")
async def comfy_queue(project_id: ProjectId, user: CurrentUser, db: DbSession, manager: Manager):
    """What a 停止 would interrupt, asked of the instance when asked here (the page asks
    on 停止, so the list itself never waits on any instance). `data` is null when the
    instance is not online or does not answer: then nothing is known to be running."""
    await load_project(db, project_id, user)
    record = await _service_of(db, project_id)
    await db.commit()  # hand the connection back while the instance answers
    if record is None or record.status != ServiceStatus.ONLINE or not record.port:
        return envelope(None)
    queue = await manager.queue(record)
    if queue is None:
        return envelope(None)
    return envelope({"running": _count(queue.get("queue_running")), "pending": _count(queue.get("queue_pending"))})


def _count(items) -> int:
    return len(items) if isinstance(items, list) else 0


@router.get("/{project_id}/comfy_log", summary="ComfyUI 日志（末尾若干行）")
async def comfy_log(
    project_id: ProjectId,
    user: CurrentUser,
    db: DbSession,
    manager: Manager,
    tail: int = Query(200, ge=1, le=MAX_LOG_LINES, description=f"行数，最多 {MAX_LOG_LINES}"),
):
    await load_project(db, project_id, user)
    record = await _service_of(db, project_id)
    text = await manager.log_tail(record, tail) if record else ""
    return envelope({"lines": text.splitlines(), "log_file": record and _log_name(record.log_path)})


def _log_name(path: str) -> str | None:
    # Only the file name: a full path would reveal the server's layout.
    return path.rsplit("/", 1)[-1] if path else None
