"""/api/admin: what administrators see and do across all users."""

from __future__ import annotations

from fastapi import APIRouter, Query
from sqlalchemy import func, select

from comfyhub.api.deps import AdminUser, DbSession, Manager, ProjectId
from comfyhub.api.errors import ApiError, envelope, field_error
from comfyhub.api.projects import CODE_TAKEN, code_taken
from comfyhub.api.views import SERVICE_SHOWN, event_view, project_view, service_view, user_view
from comfyhub.fair import map_in_slices
from comfyhub.models import ComfyUIService, Output, Project, User
from comfyhub.reasons import Reason

router = APIRouter(prefix="/admin", tags=["admin"])


@router.get("/users", summary="用户列表（管理员）")
async def list_users(_admin: AdminUser, db: DbSession):
    users = (await db.execute(select(User).order_by(User.id))).scalars().all()
    return envelope([user_view(u) for u in users])


@router.get("/services", summary="所有 ComfyUI 实例（管理员）")
async def list_services(_admin: AdminUser, db: DbSession):
    rows = (
        await db.execute(
            select(
                *SERVICE_SHOWN,
                ComfyUIService.project_id,
                ComfyUIService.user_id,
                Project.name,
                Project.code,
                User.username,
            )
            .join(Project, Project.id == ComfyUIService.project_id)
            .join(User, User.id == ComfyUIService.user_id)
            .where(Project.deleted_at.is_(None))  # deleted projects are listed on their own
            .order_by(ComfyUIService.project_id)
        )
    ).all()
    return envelope(await map_in_slices(_listed_service, rows))


def _listed_service(row) -> dict:
    return {
        **service_view(row),
        "project_id": row.project_id,
        "project_name": row.name,
        "project_code": row.code,
        "user_id": row.user_id,
        "username": row.username,
    }


@router.get("/pool", summary="预热实例池（管理员）：已启动、尚未分配给任何项目的 ComfyUI")
async def list_pool(_admin: AdminUser, manager: Manager):
    rows = await manager.records.warm()
    return envelope(
        {
            "size": manager.pool.size,
            "instances": [
                {
                    "id": r.id,
                    "status": r.status,
                    "port": r.port,
                    "pid": r.pid,
                    "host": r.host,
                    "gpu": r.gpu,
                    "started_at": r.started_at.isoformat() if r.started_at else None,
                    "last_heartbeat": r.last_heartbeat.isoformat() if r.last_heartbeat else None,
                }
                for r in rows
            ],
        }
    )


@router.post("/services/{project_id}/stop", summary="停止某个实例（管理员）")
async def stop_service(project_id: ProjectId, admin: AdminUser, db: DbSession, manager: Manager):
    await db.commit()  # the admin check's transaction: release it while the process stops
    if await manager.get(project_id) is None:
        raise ApiError(404, "实例不存在")
    record = await manager.stop(project_id, reason=Reason.ADMIN, actor=admin.username)
    return envelope(service_view(record), "实例已停止")


@router.get("/events", summary="审计事件（管理员）")
async def list_events(_admin: AdminUser, manager: Manager, limit: int = Query(100, ge=1, le=1000)):
    return envelope([event_view(e) for e in await manager.events(limit)])


@router.get("/projects/deleted", summary="已删除的项目（管理员）：产出与记录仍保留")
async def list_deleted_projects(_admin: AdminUser, db: DbSession):
    kept = (
        select(Output.project_id, func.count().label("n"))
        .where(Output.deleted_at.is_(None))
        .group_by(Output.project_id)
        .subquery()
    )
    rows = (
        await db.execute(
            select(Project, User, kept.c.n)
            .join(User, User.id == Project.owner_user_id)
            .outerjoin(kept, kept.c.project_id == Project.id)
            .where(Project.deleted_at.is_not(None))
            .order_by(Project.deleted_at.desc())
        )
    ).all()
    return envelope(
        [
            {
                **project_view(p, None, u),
                "code": p.deleted_code,
                "deleted_at": p.deleted_at.isoformat(),
                "outputs_kept": n or 0,
            }
            for p, u, n in rows
        ]
    )


@router.post("/projects/{project_id}/restore", summary="恢复已删除的项目（管理员）")
async def restore_project(project_id: ProjectId, _admin: AdminUser, db: DbSession):
    project = await db.get(Project, project_id)
    if project is None or project.deleted_at is None:
        raise ApiError(404, "没有这个已删除的项目")
    if await code_taken(db, project.deleted_code):
        raise field_error(409, "code", f"{CODE_TAKEN}：{project.deleted_code}，请先修改占用它的项目", "taken")
    project.code, project.deleted_code, project.deleted_at = project.deleted_code, "", None
    await db.commit()
    return envelope(project_view(project, None), "项目已恢复")
