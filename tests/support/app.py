"""The app in-process, with its own settings and logged-in users: for tests that need
settings other than the default `app` fixture's."""

from __future__ import annotations

from contextlib import asynccontextmanager

import httpx

from comfyhub.app import create_app


@asynccontextmanager
async def running_app(db_url, tmp_path, users=("alice",), admins=(), **overrides):
    """Yield an httpx client on a started app; `c.headers_of[name]` authenticates as `name`.

    Also on the client: `c.app`, `c.settings`, `c.manager`.
    """
    from tests.conftest import ORIGIN, add_user, login, make_settings

    settings = make_settings(db_url, tmp_path, **overrides)
    for name in users:
        await add_user(settings, name)
    for name in admins:
        await add_user(settings, name, admin=True)
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ORIGIN) as c,
    ):
        c.headers_of = {name: await login(c, name) for name in (*users, *admins)}
        c.app, c.settings, c.manager = app, settings, app.state.manager
        yield c
