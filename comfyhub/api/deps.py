"""Named dependencies shared by the routers: the database session, the caller, the settings."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Path, Request
from sqlalchemy.ext.asyncio import AsyncSession

from comfyhub.api.errors import CROSS_SITE, FORBIDDEN, NOT_LOGGED_IN, ApiError
from comfyhub.config import Settings
from comfyhub.models import User
from comfyhub.security import origin_required, same_origin, session_token
from comfyhub.services.manager import ServiceManager

# Ids are 32-bit integers in every database; anything larger cannot exist.
MAX_ID = 2**31 - 1


# Dependencies are `async def` even when they only read a value: FastAPI runs a plain
# `def` dependency in a worker thread, a thread hop (~0.1 ms, more under load) per request.


async def app_settings(request: Request) -> Settings:
    """The settings this app was built with (not `config.get_settings()`, which reads the
    environment: tests and embedders pass their own to `create_app`)."""
    return request.app.state.settings


async def get_db(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.sessions() as session:
        yield session


async def get_manager(request: Request) -> ServiceManager:
    return request.app.state.manager


SettingsDep = Annotated[Settings, Depends(app_settings)]
Manager = Annotated[ServiceManager, Depends(get_manager)]
DbSession = Annotated[AsyncSession, Depends(get_db)]
ProjectId = Annotated[int, Path(ge=1, le=MAX_ID, description="项目 ID")]


def request_token(request: Request) -> tuple[str | None, bool]:
    """The caller's session token and whether it came from the cookie."""
    cookie = "; ".join(request.headers.getlist("cookie"))
    return session_token(request.headers.get("authorization", ""), cookie)


def from_this_site(request: Request, settings: Settings) -> bool:
    """Whether a browser request comes from a page of this site (see `security.same_origin`)."""
    headers = request.headers
    return not from_instance_page(request) and same_origin(
        headers.get("origin"), headers.get("referer"), headers.get("host", ""), settings.trusted_origins
    )


def from_instance_page(request: Request) -> bool:
    """Whether a request comes from a page of the instance origin: ComfyUI's, whose scripts
    (custom nodes) the API never serves, whatever the method (invariant 10)."""
    origin = request.app.state.instance_origin
    return origin.names(request.headers.get("origin")) or origin.names(request.headers.get("referer"))


async def current_user(request: Request, settings: SettingsDep) -> User:
    if from_instance_page(request):
        raise ApiError(403, CROSS_SITE)
    token, from_cookie = request_token(request)
    if token is None:
        raise ApiError(401, NOT_LOGGED_IN)
    user = await request.app.state.tokens.user(token)  # cached briefly (auth.TokenCache)
    if user is None:
        raise ApiError(401, NOT_LOGGED_IN)
    if origin_required(from_cookie, request.method) and not from_this_site(request, settings):
        raise ApiError(403, CROSS_SITE)
    request.state.user = user
    return user


async def admin_user(user: Annotated[User, Depends(current_user)]) -> User:
    if not user.is_admin:
        raise ApiError(403, FORBIDDEN)
    return user


CurrentUser = Annotated[User, Depends(current_user)]
AdminUser = Annotated[User, Depends(admin_user)]
