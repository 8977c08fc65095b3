"""The FastAPI application: wiring only. The lifecycle lives in services/manager.py."""

from __future__ import annotations

import gc
import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from comfyhub.api import api_router, health
from comfyhub.api.errors import install_error_handlers
from comfyhub.auth import TokenCache
from comfyhub.config import Settings, get_settings
from comfyhub.db import create_engine, session_factory
from comfyhub.jobs.runner import JobRunner
from comfyhub.metrics import Metrics
from comfyhub.proxy import ComfyProxy, ProxyAccess, UpstreamPool
from comfyhub.services.manager import ServiceManager

log = logging.getLogger("comfyhub")
WEB_DIR = Path(__file__).parent / "web"
# Young-generation thresholds while the hub runs (Python's default: 700, 10, 10).
GC_THRESHOLDS = (10_000, 10, 10)


class _RevalidatedStaticFiles(StaticFiles):
    """The page's files, revalidated on every load: after an upgrade no browser runs old scripts."""

    def file_response(self, *args, **kwargs):
        response = super().file_response(*args, **kwargs)
        response.headers["cache-control"] = "no-cache"
        return response


class _Hub(FastAPI):
    """FastAPI, with /comfy/… handed to the proxy before FastAPI's own middleware stack
    (telemetry check, body limit, error middleware: about 10 µs per request and a wrapper
    per send; see the Proxy analysis in docs/benchmarks.md). It also hands the proxy
    uvicorn's own `send`, which the large-download relay (proxy/relay.py) needs."""

    proxy: ComfyProxy
    instance_port: int

    async def __call__(self, scope, receive, send):
        if scope["type"] != "lifespan":
            # What arrives on the instance listener is the instance origin, whatever its
            # Host says: ComfyUI alone is served there (docs/architecture.md, "Two origins").
            server = scope.get("server")
            if server and server[1] == self.instance_port:
                return await self.proxy.instance(scope, receive, send)
            if scope["path"].startswith("/comfy/"):
                return await self.proxy(scope, receive, send)
        return await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. The database must already be migrated (`comfyhub serve` does it)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine = create_engine(settings.database_url)
        app.state.engine = engine
        app.state.sessions = session_factory(engine)
        app.state.manager = ServiceManager(settings, app.state.sessions, metrics=app.state.metrics)
        app.state.tokens = TokenCache(app.state.sessions, app.state.secret_key)  # the API's and the proxy's
        app.state.proxy_access = ProxyAccess(app.state.sessions, app.state.secret_key, app.state.tokens)
        app.state.upstream_pool = UpstreamPool()
        app.state.manager.listeners.append(app.state.proxy_access.forget_target)
        app.state.jobs = JobRunner(settings, app.state.sessions, app.state.manager)
        await app.state.manager.startup()
        app.state.jobs.start()
        # What exists now (modules, the app, its pools) lives as long as the process: keep it
        # out of the collector's full passes, which otherwise walk it all and stall every
        # request for 50-90 ms (measured by bench/outputs.py and bench/scale.py) from time
        # to time. And collect the young generation less often: then a sweep's rows and a
        # request's objects are mostly gone before a collection looks at them, instead of
        # being promoted to the oldest generation, whose growth sets off full passes.
        gc.collect()
        gc.freeze()
        thresholds = gc.get_threshold()
        gc.set_threshold(*GC_THRESHOLDS)
        try:
            yield
        finally:
            await app.state.jobs.close()
            await app.state.manager.shutdown()
            app.state.upstream_pool.close()
            await engine.dispose()
            gc.set_threshold(*thresholds)
            gc.unfreeze()  # another app in this process (tests) starts afresh

    app = _Hub(
        title="comfyhub",
        version="0.1.0",
        description="每个用户、每个项目一个 ComfyUI：按需启动、健康复用、崩溃重启、仅所有者可访问。",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.secret_key = settings.secret_key()
    app.state.metrics = Metrics()
    install_error_handlers(app)
    app.proxy = ComfyProxy(None, hub=app)
    app.instance_port = settings.instance_port
    app.state.instance_origin = app.proxy.origin
    app.include_router(api_router)
    app.include_router(health.router)

    # The workbench: static files, no build step. One page; its script shows login,
    # workbench or admin view by path.
    app.mount("/static", _RevalidatedStaticFiles(directory=WEB_DIR), name="static")

    @app.get("/", include_in_schema=False)
    @app.get("/login", include_in_schema=False)
    @app.get("/admin", include_in_schema=False)
    async def page():
        return FileResponse(WEB_DIR / "index.html", headers={"cache-control": "no-cache"})

    return app
