"""/api/admin: what administrators see and do across all users."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from comfyhub.api.deps import AdminUser, DbSession
from comfyhub.api.errors import envelope
from comfyhub.api.views import user_view
from comfyhub.models import User

router = APIRouter(prefix="/admin", tags=["admin"])


@router.get("/users", summary="用户列表（管理员）")
async def list_users(_admin: AdminUser, db: DbSession):
    users = (await db.execute(select(User).order_by(User.id))).scalars().all()
    return envelope([user_view(u) for u in users])
