"""/api/meta: what the workbench page needs to know about this deployment."""

from __future__ import annotations

from fastapi import APIRouter

from comfyhub import __version__
from comfyhub.api.deps import CurrentUser, SettingsDep
from comfyhub.api.errors import envelope
from comfyhub.services.errors import NOT_CONFIGURED_HINT

router = APIRouter(tags=["meta"])


@router.get("/meta", summary="部署信息（页面使用）")
async def meta(_user: CurrentUser, settings: SettingsDep):
    return envelope(
        {
            "version": __version__,
            "list_refresh_seconds": settings.comfyhub_list_refresh_seconds,
            "trash_days": settings.comfyhub_trash_days,
            "comfyui_configured": settings.comfyui_configured,
            "comfyui_hint": None if settings.comfyui_configured else NOT_CONFIGURED_HINT,
        }
    )
