"""/api/tokens: a user's personal access tokens, for scripts (`Authorization: Bearer chp_…`).

A token acts as its owner everywhere a login session's bearer token does (the API and
the /comfy/ proxy). Managing tokens needs a login session, not a token: a leaked token
must not be able to mint more, or to hide itself by revoking the others.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request

from comfyhub import auth
from comfyhub.api.deps import MAX_ID, CurrentUser, DbSession, request_token
from comfyhub.api.errors import ApiError, envelope
from comfyhub.api.schemas import TokenCreate
from comfyhub.api.views import token_view
from comfyhub.models import User, utcnow
from comfyhub.security import is_api_token

router = APIRouter(prefix="/tokens", tags=["tokens"])

NEEDS_SESSION = "访问令牌不能管理访问令牌，请登录后操作"
TOKEN_NOT_FOUND = "访问令牌不存在"
TOO_MANY = f"访问令牌已达上限（{auth.MAX_API_TOKENS} 个），请先撤销不用的令牌"

TokenId = Annotated[int, Path(ge=1, le=MAX_ID, description="访问令牌 ID")]


async def session_user(request: Request, user: CurrentUser) -> User:
    """The caller, if they came with a login session (cookie or its bearer token)."""
    token, _ = request_token(request)
    if is_api_token(token):
        raise ApiError(403, NEEDS_SESSION)
    return user


SessionUser = Annotated[User, Depends(session_user)]


@router.get("", summary="我的访问令牌")
async def list_tokens(user: SessionUser, db: DbSession):
    now = utcnow()
    return envelope([token_view(t, now) for t in await auth.api_tokens_of(db, user.id)])


@router.post("", summary="创建访问令牌", status_code=201)
async def create_token(body: TokenCreate, request: Request, user: SessionUser, db: DbSession):
    try:
        row, token = await auth.create_api_token(
            db, user.id, request.app.state.secret_key, body.name, body.expires_days
        )
    except auth.TooManyTokens:
        raise ApiError(400, TOO_MANY) from None
    return envelope({**token_view(row, utcnow()), "token": token}, "访问令牌已创建：请立即复制保存，它不会再显示", 201)


@router.delete("/{token_id}", summary="撤销访问令牌")
async def revoke_token(token_id: TokenId, request: Request, user: SessionUser, db: DbSession):
    # Another user's token id answers as if it did not exist: ids reveal nothing.
    if not await auth.revoke_api_token(db, user.id, token_id):
        raise ApiError(404, TOKEN_NOT_FOUND)
    # The proxy caches tokens for a few seconds; in this process it forgets them now.
    request.app.state.proxy_access.forget_user(user.id)
    return envelope(None, "访问令牌已撤销")
