"""/api/projects/{id}/outputs: a project's generated files, their records and their curation.

Owner only for changes; an admin may also read (and export, see exports.py), including
the outputs of a deleted project. Everything here works while the instance is stopped:
it reads comfyhub's tables and the files on disk, never the instance.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import FileResponse
from pydantic import Field
from sqlalchemy import select

from comfyhub.api.deps import MAX_ID, CurrentUser, DbSession, Manager, ProjectId, SettingsDep
from comfyhub.api.errors import ApiError, envelope, field_error
from comfyhub.api.projects import load_project
from comfyhub.api.schemas import Note, Strict
from comfyhub.models import Generation, Output, ServiceStatus
from comfyhub.outputs import curation, files, filters, query, thumbs
from comfyhub.outputs.client import InstanceUnreachable
from comfyhub.outputs.filters import OutputFilter
from comfyhub.outputs.media import content_type
from comfyhub.outputs.sync import Instance

router = APIRouter(prefix="/projects/{project_id}", tags=["outputs"])

OUTPUT_NOT_FOUND = "产出不存在"
FILE_MISSING = "文件已不在磁盘上"
FILE_OUTSIDE = "文件路径不安全，已拒绝"
NOT_AN_IMAGE = "该文件没有缩略图"
RESTORE_TAKEN = "原位置已有同名文件，无法恢复"
MAX_PAGE = 500
MAX_TAGS = 50

OutputId = Annotated[int, Field(ge=1, le=MAX_ID)]
OutputIdPath = Annotated[int, Path(ge=1, le=MAX_ID, description="产出 ID")]
Status = Literal["success", "error", "interrupted"]
MediaType = Literal["image", "video", "audio", "other"]
Tag = Annotated[str, Field(min_length=1, max_length=64)]


def parse_when(value: str | None, field: str, end: bool = False) -> datetime | None:
    """The filter's date (see `filters.parse_when`), or a Chinese 422 naming the field."""
    if value is None or value == "":
        return None
    try:
        when = filters.parse_when(value, end)
        when.astimezone(UTC)  # a time near year 1 or 9999 with an offset overflows
        return when
    except (ValueError, OverflowError):
        raise field_error(422, field, f"{field} 必须是日期（如 2026-12-01）或 ISO 时间") from None


class FilterIn(Strict):
    """The filter as JSON (exports, selections): every field optional; `{}` = everything."""

    since: str | None = Field(None, max_length=40, description="起始日期（含），如 2026-12-01")
    until: str | None = Field(None, max_length=40, description="截止日期（含当天）")
    status: Status | None = None
    mark: Literal["pass", "fail", "none"] | None = None
    tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS)
    text: str | None = Field(None, max_length=200)
    media_type: MediaType | None = None
    ids: list[OutputId] | None = Field(None, max_length=10000)

    def to_filter(self) -> OutputFilter:
        return OutputFilter(
            since=parse_when(self.since, "since"),
            until=parse_when(self.until, "until", end=True),
            status=self.status,
            mark=self.mark,
            tags=list(self.tags),
            text=self.text or None,
            media_type=self.media_type,
            ids=list(self.ids) if self.ids is not None else None,
        )


class AnnotateIn(Strict):
    mark: Literal["pass", "fail"] | None = None
    tags: list[Tag] | None = Field(None, max_length=MAX_TAGS)
    note: Note | None = None


class SelectionIn(Strict):
    """One action on several outputs: `ids`, and what to do to all of them."""

    ids: list[OutputId] = Field(min_length=1, max_length=10000)
    mark: Literal["pass", "fail"] | None = None
    clear_mark: bool = False
    add_tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS)
    remove_tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS)
    note: Note | None = None
    delete: bool = False


async def _project(db, project_id: int, user, *, write: bool = False):
    return await load_project(db, project_id, user, owner_only=write, deleted_ok=not write)


async def load_readable(db, project_id: int, user):
    """The project whose outputs the caller may read: the owner's, or any for an admin."""
    return await _project(db, project_id, user)


async def _output(db, project_id: int, output_id: int) -> Output:
    output = await db.get(Output, output_id)
    if output is None or output.project_id != project_id:
        raise ApiError(404, OUTPUT_NOT_FOUND)
    return output


def _refused(exc: files.FileRefused) -> ApiError:
    return ApiError(404, FILE_MISSING) if exc.missing else ApiError(403, FILE_OUTSIDE)


@router.get("/outputs", summary="产出列表（最新在前）")
async def list_outputs(
    project_id: ProjectId,
    user: CurrentUser,
    db: DbSession,
    limit: int = Query(100, ge=1, le=MAX_PAGE, description="每页条数"),
    offset: int = Query(0, ge=0, le=10_000_000, description="跳过条数"),
    since: str | None = Query(None, max_length=40, description="起始日期（含），如 2026-12-01"),
    until: str | None = Query(None, max_length=40, description="截止日期（含当天）"),
    status: Annotated[Status | None, Query(description="生成状态")] = None,
    mark: Literal["pass", "fail", "none"] | None = Query(None, description="标注：pass 通过、fail 不通过、none 未标注"),
    tag: Annotated[list[Tag], Query(max_length=MAX_TAGS, description="标签（可多个，须全部具备）")] = [],  # noqa: B006
    q: str | None = Query(None, max_length=200, description="提示词或文件名中的文字"),
    media_type: Annotated[MediaType | None, Query(description="文件类型")] = None,
    deleted: bool = Query(False, description="true：回收站"),
):
    await _project(db, project_id, user)
    flt = OutputFilter(
        since=parse_when(since, "since"),
        until=parse_when(until, "until", end=True),
        status=status,
        mark=mark,
        tags=list(tag),
        text=q or None,
        media_type=media_type,
        deleted=deleted,
    )
    matching = query.matching(project_id, flt)
    total = (await db.execute(query.count(matching))).scalar_one()
    rows = (await db.execute(query.newest_first(matching).limit(limit).offset(offset))).all()
    items = [query.item_view(o, status, prompt_id) for o, status, prompt_id in rows]
    return envelope({"total": total, "limit": limit, "offset": offset, "items": items})


@router.get("/outputs/{output_id}", summary="产出详情（含完整的 API 格式工作流）")
async def get_output(project_id: ProjectId, output_id: OutputIdPath, user: CurrentUser, db: DbSession):
    await _project(db, project_id, user)
    output = await _output(db, project_id, output_id)
    generation = await db.get(Generation, output.generation_id)
    view = query.item_view(output, generation.status, generation.prompt_id)
    view |= {
        "graph": generation.graph,
        "error": generation.error,
        "source": generation.source,
        "started_at": generation.started_at and generation.started_at.isoformat(),
        "finished_at": generation.finished_at and generation.finished_at.isoformat(),
    }
    return envelope(view)


@router.get("/outputs/{output_id}/file", summary="下载产出文件（支持 Range）")
async def output_file(
    project_id: ProjectId, output_id: OutputIdPath, user: CurrentUser, db: DbSession, settings: SettingsDep
):
    await _project(db, project_id, user)
    output = await _output(db, project_id, output_id)
    await db.commit()
    try:
        if output.deleted_at is not None:
            path = await asyncio.to_thread(
                files.resolve_trashed, settings, output.user_id, project_id, output.trash_path
            )
        else:
            path = await asyncio.to_thread(
                files.resolve, settings, output.user_id, project_id, output.subfolder, output.filename
            )
    except files.FileRefused as exc:
        raise _refused(exc) from None
    return FileResponse(
        path,
        media_type=content_type(output.filename),
        filename=output.filename,
        content_disposition_type="inline",
    )


@router.get("/outputs/{output_id}/thumb", summary="产出缩略图")
async def output_thumb(
    project_id: ProjectId, output_id: OutputIdPath, user: CurrentUser, db: DbSession, settings: SettingsDep
):
    await _project(db, project_id, user)
    output = await _output(db, project_id, output_id)
    await db.commit()
    if output.media_type != "image" or output.deleted_at is not None:
        raise ApiError(404, NOT_AN_IMAGE)
    try:
        source = await asyncio.to_thread(
            files.resolve, settings, output.user_id, project_id, output.subfolder, output.filename
        )
        thumb = await asyncio.to_thread(
            thumbs.ensure_thumb, settings.comfyhub_thumbnail_dir, project_id, output.id, source
        )
    except files.FileRefused as exc:
        raise _refused(exc) from None
    except (OSError, ValueError):
        raise ApiError(404, NOT_AN_IMAGE) from None
    # Immutable: the name carries the source's size and mtime; a new file gets a new URL check.
    return FileResponse(thumb, media_type="image/webp", headers={"cache-control": "private, max-age=3600"})


@router.put("/outputs/{output_id}", summary="标注产出：通过/不通过、标签、备注")
async def annotate_output(
    project_id: ProjectId, output_id: OutputIdPath, body: AnnotateIn, user: CurrentUser, db: DbSession
):
    await _project(db, project_id, user, write=True)
    output = await _output(db, project_id, output_id)
    if output.deleted_at is not None:
        raise ApiError(409, "产出已删除，请先恢复")
    fields = body.model_dump(exclude_unset=True)
    changes = {"mark": fields["mark"]} if "mark" in fields else {}
    await curation.annotate(db, project_id, [output_id], **changes, tags=fields.get("tags"), note=fields.get("note"))
    return await get_output(project_id, output_id, user, db)


@router.post("/outputs/selection", summary="批量操作所选产出：标注、标签、删除")
async def act_on_selection(
    project_id: ProjectId, body: SelectionIn, user: CurrentUser, db: DbSession, settings: SettingsDep
):
    await _project(db, project_id, user, write=True)
    if body.delete:
        rows = (
            (await db.execute(select(Output).where(Output.project_id == project_id, Output.id.in_(body.ids))))
            .scalars()
            .all()
        )
        done = await curation.trash(db, settings, rows)
        return envelope({"deleted": done}, f"已删除 {done} 个产出（文件移入回收站）")
    changes = {"mark": None} if body.clear_mark else ({"mark": body.mark} if body.mark else {})
    rows = await curation.annotate(
        db, project_id, body.ids, **changes, add_tags=body.add_tags, remove_tags=body.remove_tags, note=body.note
    )
    return envelope({"updated": len(rows)}, f"已更新 {len(rows)} 个产出")


@router.delete("/outputs/{output_id}", summary="删除产出（文件移入回收站）")
async def delete_output(
    project_id: ProjectId, output_id: OutputIdPath, user: CurrentUser, db: DbSession, settings: SettingsDep
):
    await _project(db, project_id, user, write=True)
    output = await _output(db, project_id, output_id)
    if output.deleted_at is None:
        done = await curation.trash(db, settings, [output])
        if not done:
            raise ApiError(403, FILE_OUTSIDE)
    days = settings.comfyhub_trash_days
    return envelope({"id": output_id}, f"已删除：文件移入回收站，保留 {days:g} 天")


@router.post("/outputs/{output_id}/restore", summary="从回收站恢复产出")
async def restore_output(
    project_id: ProjectId, output_id: OutputIdPath, user: CurrentUser, db: DbSession, settings: SettingsDep
):
    await _project(db, project_id, user, write=True)
    output = await _output(db, project_id, output_id)
    try:
        await curation.restore(db, settings, output)
    except FileExistsError:
        raise ApiError(409, RESTORE_TAKEN) from None
    except files.FileRefused as exc:
        raise _refused(exc) from None
    return envelope({"id": output_id}, "已恢复")


@router.post("/outputs/sync", summary="立即同步生成记录")
async def sync_outputs(project_id: ProjectId, user: CurrentUser, db: DbSession, manager: Manager):
    """Pull the instance's history now (if it runs) and index files no record names."""
    project = await _project(db, project_id, user, write=True)
    record = await manager.get(project_id)
    await db.commit()
    new = 0
    if record is not None and record.status == ServiceStatus.ONLINE:
        try:
            new += await manager.outputs.pull(Instance.of(record))
        except InstanceUnreachable:
            pass  # the files are scanned below all the same
    new += await manager.outputs.scan(project_id, project.owner_user_id)
    return envelope({"new": new}, f"已同步，新增 {new} 条记录" if new else "已是最新")


@router.get("/generations", summary="生成记录（含失败的）")
async def list_generations(
    project_id: ProjectId,
    user: CurrentUser,
    db: DbSession,
    limit: int = Query(100, ge=1, le=MAX_PAGE),
    offset: int = Query(0, ge=0, le=10_000_000),
    status: Annotated[Status | None, Query(description="生成状态")] = None,
):
    await _project(db, project_id, user)
    stmt = select(Generation).where(Generation.project_id == project_id)
    if status:
        stmt = stmt.where(Generation.status == status)
    rows = (
        (
            await db.execute(
                stmt.order_by(Generation.finished_at.desc(), Generation.id.desc()).limit(limit).offset(offset)
            )
        )
        .scalars()
        .all()
    )
    return envelope(
        [
            {
                "id": g.id,
                "prompt_id": g.prompt_id,
                "status": g.status,
                "source": g.source,
                "error": g.error,
                "started_at": g.started_at and g.started_at.isoformat(),
                "finished_at": g.finished_at and g.finished_at.isoformat(),
            }
            for g in rows
        ]
    )
