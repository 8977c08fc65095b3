"""Named dependencies shared by the routers: the database session, the caller, the settings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, Path, Request
from sqlalchemy.ext.asyncio import AsyncSession

from comfyhub.api.errors import FORBIDDEN, NOT_LOGGED_IN, ApiError
from comfyhub.auth import SESSION_COOKIE, user_for_token
from comfyhub.config import Settings
from comfyhub.models import User
from comfyhub.services.manager import ServiceManager

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# Ids are 32-bit integers in every database; anything larger cannot exist.
MAX_ID = 2**31 - 1


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_db(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.sessions() as session:
        yield session


def get_manager(request: Request) -> ServiceManager:
    return request.app.state.manager


SettingsDep = Annotated[Settings, Depends(get_settings)]
Manager = Annotated[ServiceManager, Depends(get_manager)]
DbSession = Annotated[AsyncSession, Depends(get_db)]
ProjectId = Annotated[int, Path(ge=1, le=MAX_ID, description="项目 ID")]


def request_token(request: Request) -> tuple[str | None, bool]:
    """The caller's session token and whether it came from the cookie."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip(), False
    cookie = request.cookies.get(SESSION_COOKIE)
    return (cookie, True) if cookie else (None, False)


def same_origin(request: Request, settings: Settings) -> bool:
    """Whether a browser request comes from a page of this site.

    SameSite=Lax does not stop a page on another port of the same host, so writes made
    with the cookie must carry an Origin (or Referer) naming this host.
    """
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source or source == "null":
        return False
    parts = urlsplit(source)
    origin = f"{parts.scheme}://{parts.netloc}"
    host = request.headers.get("host", "")
    return parts.netloc == host or origin in settings.trusted_origins


async def current_user(request: Request, db: DbSession, settings: SettingsDep) -> User:
    token, from_cookie = request_token(request)
    if token is None:
        raise ApiError(401, NOT_LOGGED_IN)
    user = await user_for_token(db, request.app.state.secret_key, token)
    if user is None:
        raise ApiError(401, NOT_LOGGED_IN)
    if from_cookie and request.method not in SAFE_METHODS and not same_origin(request, settings):
        raise ApiError(403, "跨站请求被拒绝")
    request.state.user = user
    return user


async def admin_user(user: Annotated[User, Depends(current_user)]) -> User:
    if not user.is_admin:
        raise ApiError(403, FORBIDDEN)
    return user


CurrentUser = Annotated[User, Depends(current_user)]
AdminUser = Annotated[User, Depends(admin_user)]
