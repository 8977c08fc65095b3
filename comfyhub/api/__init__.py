"""HTTP API: one router per resource, all under /api."""

from fastapi import APIRouter

from comfyhub.api import admin, auth, exports, health, jobs, meta, outputs, projects, tokens

api_router = APIRouter(prefix="/api")
api_router.include_router(auth.router)
api_router.include_router(tokens.router)
api_router.include_router(projects.router)
api_router.include_router(outputs.router)
api_router.include_router(exports.router)
api_router.include_router(jobs.router)
api_router.include_router(admin.router)
api_router.include_router(meta.router)

__all__ = ["api_router", "health"]
