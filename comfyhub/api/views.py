"""How rows are shown in replies: one function per resource, used by every route."""

from __future__ import annotations

from datetime import datetime

from comfyhub.models import ApiToken, ComfyUIService, Event, Project, User

# The columns the views below show. The lists read just these, as plain rows, not ORM
# objects: a thousand records as objects (each with its launcher_state JSON, which no view
# shows) took ~36 ms of the event loop per call (measured), felt by every user of the
# process each time an administrator's page refreshed its lists.
SERVICE_SHOWN = (
    ComfyUIService.status,
    ComfyUIService.status_detail,
    ComfyUIService.comfy_url,
    ComfyUIService.port,
    ComfyUIService.pid,
    ComfyUIService.gpu,
    ComfyUIService.started_at,
    ComfyUIService.last_heartbeat,
    ComfyUIService.last_activity,
    ComfyUIService.last_error,
    ComfyUIService.stopped_reason,
    ComfyUIService.reason,
)
PROJECT_SHOWN = (
    Project.id,
    Project.name,
    Project.code,
    Project.note,
    Project.owner_user_id,
    Project.created_at,
    Project.updated_at,
)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def user_view(user: User) -> dict:
    return {
        "id": user.id,
        "username": user.username,
        "is_admin": user.is_admin,
        "created_at": _iso(user.created_at),
    }


def service_view(service: ComfyUIService | None) -> dict | None:
    if service is None:
        return None
    return {
        "status": service.status,
        "status_detail": service.status_detail,
        "comfy_url": service.comfy_url,
        "port": service.port,
        "pid": service.pid,
        "gpu": service.gpu,
        "started_at": _iso(service.started_at),
        "last_heartbeat": _iso(service.last_heartbeat),
        "last_activity": _iso(service.last_activity),
        "last_error": service.last_error,
        "stopped_reason": service.stopped_reason,
        "reason": service.reason,  # the code of stopped_reason / last_error (comfyhub.reasons.Reason)
    }


def open_view(service: ComfyUIService) -> dict:
    """The reply to open_comfy: where the instance is and its status, plus what the page
    needs to explain a failure."""
    return {
        "comfy_url": service.comfy_url,
        "status": service.status,
        "port": service.port,
        "started_at": _iso(service.started_at),
        "last_error": service.last_error,
    }


def project_view(project: Project, service: ComfyUIService | None, owner: User | None = None) -> dict:
    view = {
        "id": project.id,
        "name": project.name,
        "code": project.code,
        "note": project.note,
        "owner_user_id": project.owner_user_id,
        "created_at": _iso(project.created_at),
        "updated_at": _iso(project.updated_at),
        "service": service_view(service),
    }
    if owner is not None:
        view["owner_username"] = owner.username
    return view


def event_view(event: Event) -> dict:
    return {
        "id": event.id,
        "at": _iso(event.at),
        "actor": event.actor,
        "action": event.action,
        "project_id": event.project_id,
        "user_id": event.user_id,
        "outcome": event.outcome,
        "detail": event.detail,
    }


def token_view(token: ApiToken, now: datetime) -> dict:
    """A personal access token as its owner sees it in a list: never the token itself."""
    return {
        "id": token.id,
        "name": token.name,
        "prefix": token.prefix,
        "created_at": _iso(token.created_at),
        "expires_at": _iso(token.expires_at),
        "last_used_at": _iso(token.last_used_at),
        "expired": token.expires_at <= now,
    }
