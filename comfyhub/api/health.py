"""/healthz (liveness plus a database round trip) — outside /api, for load balancers."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text

from comfyhub.api.deps import DbSession
from comfyhub.api.errors import envelope

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="健康检查")
async def healthz(db: DbSession):
    try:
        await db.execute(text("SELECT 1"))
    except Exception:  # noqa: BLE001 — any database failure means "not healthy"
        return envelope({"database": "unreachable"}, "数据库不可用", 503)
    return envelope({"database": "ok"})


@router.get("/metrics", summary="Prometheus 指标", response_class=Response)
async def metrics(request: Request):
    state = request.app.state
    state.metrics.set_instances(await state.manager.count_by_status())
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
