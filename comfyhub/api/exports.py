"""/api/projects/{id}/exports: a project's outputs as a Hugging Face `imagefolder` ZIP, streamed."""

from __future__ import annotations

import asyncio
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from comfyhub.api.deps import CurrentUser, DbSession, ProjectId, SettingsDep
from comfyhub.api.errors import ApiError
from comfyhub.api.outputs import FilterIn, load_readable
from comfyhub.outputs import export

router = APIRouter(prefix="/projects/{project_id}", tags=["outputs"])

NOTHING_TO_EXPORT = "没有符合条件的文件可导出"


@router.post("/exports", summary="导出数据集（ZIP，Hugging Face imagefolder 格式）")
async def export_outputs(
    project_id: ProjectId, body: FilterIn, request: Request, user: CurrentUser, db: DbSession, settings: SettingsDep
):
    """Streams a ZIP of the files the filter selects (`{}`: every image) plus `metadata.jsonl`."""
    project = await load_readable(db, project_id, user)
    code = project.deleted_code or project.code
    flt = body.to_filter()
    await db.commit()
    sessions = request.app.state.sessions
    chosen = await export.members(settings, sessions, project_id, flt)
    if not chosen:
        raise ApiError(404, NOTHING_TO_EXPORT)
    name = export.archive_name(code)
    headers = {
        "content-disposition": f"attachment; filename*=UTF-8''{quote(name)}",
        "x-export-files": str(len(chosen)),
    }
    params = await export.param_columns(sessions, project_id, chosen)
    stream = export.zip_chunks(sessions, chosen, asyncio.get_running_loop(), params)
    return StreamingResponse(stream, media_type="application/zip", headers=headers)
