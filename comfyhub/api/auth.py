"""/api/auth: log in, log out, who am I."""

from __future__ import annotations

from fastapi import APIRouter, Request
from sqlalchemy import select

from comfyhub import auth
from comfyhub.api.deps import CurrentUser, DbSession, SettingsDep, from_this_site, request_token
from comfyhub.api.errors import ApiError, envelope
from comfyhub.api.schemas import LoginIn
from comfyhub.api.views import user_view
from comfyhub.config import Settings
from comfyhub.models import User
from comfyhub.security import SESSION_COOKIE, is_api_token

router = APIRouter(prefix="/auth", tags=["auth"])

BAD_CREDENTIALS = "用户名或密码错误"


@router.post("/login", summary="登录")
async def login(body: LoginIn, request: Request, db: DbSession, settings: SettingsDep):
    # A login form posted from another site would log the victim into the attacker's account.
    if request.headers.get("origin") and not from_this_site(request, settings):
        raise ApiError(403, "跨站请求被拒绝")
    client = request.client.host if request.client else "-"
    key = auth.throttle_key(body.username, client)
    wait = await auth.seconds_locked(db, key)
    if wait:
        raise ApiError(429, f"登录失败次数过多，请 {wait} 秒后再试", headers={"Retry-After": str(wait)})
    user = (await db.execute(select(User).where(User.username == body.username))).scalar_one_or_none()
    if not await auth.verify_password(user.password_hash if user else None, body.password):
        await auth.record_failure(
            db, key, settings.comfyhub_login_max_failures, settings.comfyhub_login_lockout_seconds
        )
        raise ApiError(401, BAD_CREDENTIALS)
    await auth.clear_failures(db, key)
    token = await auth.create_session(db, user, request.app.state.secret_key, settings.comfyhub_session_hours)
    response = envelope({"token": token, "token_type": "bearer", "user": user_view(user)}, "登录成功")
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(settings.comfyhub_session_hours * 3600),
        httponly=True,
        samesite="lax",
        secure=cookie_secure(request, settings),
        path="/",
    )
    return response


def cookie_secure(request: Request, settings: Settings) -> bool:
    """Whether the session cookie carries `Secure`: when browsers reach comfyhub over TLS.

    The scheme is https when uvicorn terminates TLS itself or a trusted reverse proxy says
    `X-Forwarded-Proto: https` (COMFYHUB_FORWARDED_ALLOW_IPS; uvicorn rewrites the scheme).
    A login from a page at an https origin listed in COMFYHUB_TRUSTED_ORIGINS comes through
    a proxy publishing the site over TLS that may say neither: that browser must never send
    the cookie over plain http either. Decided per login, not by the setting alone: a
    script or an admin on the backend's own http address still gets a cookie it can use.
    """
    if request.url.scheme == "https":
        return True
    origin = (request.headers.get("origin") or "").rstrip("/")
    return origin.startswith("https://") and origin in settings.trusted_origins


@router.post("/logout", summary="退出登录")
async def logout(request: Request, user: CurrentUser, db: DbSession, settings: SettingsDep):
    token, _ = request_token(request)
    if is_api_token(token):
        # Logging out ends a login; a script that thinks it revoked its token would be wrong.
        raise ApiError(400, "访问令牌不能退出登录；要停用它，请在访问令牌中撤销")
    await auth.revoke_session(db, request.app.state.secret_key, token)
    request.app.state.proxy_access.forget_token(token)
    response = envelope(None, "已退出登录")
    response.delete_cookie(
        SESSION_COOKIE, path="/", httponly=True, samesite="lax", secure=cookie_secure(request, settings)
    )
    return response


@router.get("/me", summary="当前用户")
async def me(user: CurrentUser):
    return envelope(user_view(user))
