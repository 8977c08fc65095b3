"""Shared fixtures: both databases, settings for a test, the app and logged-in clients.

Every test that takes `db_url` runs twice: on SQLite and on a real PostgreSQL server
that this session starts itself. Each test gets a fresh, migrated database cloned from
a template that was migrated once.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import sys
from pathlib import Path

import asyncpg
import httpx
import pytest

from comfyhub.auth import hash_password_sync
from comfyhub.config import Settings, load_settings
from comfyhub.db import create_engine, migrate, session_factory
from comfyhub.models import User
from tests.support.net import free_port_block
from tests.support.postgres import running_postgres

ROOT = Path(__file__).resolve().parent.parent
FAKE_COMFYUI = ROOT / "tests" / "fake_comfyui"
ORIGIN = "http://testserver"


@pytest.fixture(scope="session", autouse=True)
def _clean_environment():
    """A developer's own COMFYUI_*/COMFYHUB_* settings must not leak into the tests."""
    saved = {k: v for k, v in os.environ.items() if k.startswith(("COMFYUI_", "COMFYHUB_", "FAKE_COMFYUI_"))}
    for key in saved:
        del os.environ[key]
    yield
    os.environ.update(saved)


# --- databases --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_admin_url():
    with running_postgres() as url:
        yield url


def _raw_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


@pytest.fixture(scope="session")
def pg_template(pg_admin_url):
    asyncio.run(_pg_exec(pg_admin_url, "CREATE DATABASE comfyhub_template"))
    template_url = pg_admin_url.rsplit("/", 1)[0] + "/comfyhub_template"
    migrate(template_url)
    return template_url


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory):
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    migrate(f"sqlite+aiosqlite:///{path}")
    return path


async def _pg_exec(url: str, sql: str) -> None:
    conn = await asyncpg.connect(_raw_dsn(url))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


_db_counter = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A fresh, migrated database of each kind."""
    if request.param == "sqlite":
        path = tmp_path / "comfyhub.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite+aiosqlite:///{path}"
    admin = request.getfixturevalue("pg_admin_url")
    request.getfixturevalue("pg_template")
    name = f"t_{os.getpid()}_{next(_db_counter)}"
    asyncio.run(_pg_exec(admin, f"CREATE DATABASE {name} TEMPLATE comfyhub_template"))
    return admin.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
def pg_url(request):
    """A fresh, migrated PostgreSQL database (for tests that only make sense there)."""
    admin = request.getfixturevalue("pg_admin_url")
    request.getfixturevalue("pg_template")
    name = f"t_{os.getpid()}_{next(_db_counter)}"
    asyncio.run(_pg_exec(admin, f"CREATE DATABASE {name} TEMPLATE comfyhub_template"))
    return admin.rsplit("/", 1)[0] + f"/{name}"


# --- settings and app -----------------------------------------------------------------


def make_settings(db_url: str, tmp_path: Path, **overrides) -> Settings:
    low, high = free_port_block(12)
    values = dict(
        comfyhub_database_url=db_url,
        comfyhub_secret_key="test-secret-key-" + tmp_path.name,
        comfyui_repo_path=FAKE_COMFYUI,
        comfyui_python=Path(sys.executable),
        comfyui_port_range=f"{low}-{high}",
        comfyui_instance_base_dir=tmp_path / "instances",
        comfyui_log_dir=tmp_path / "logs",
        comfyui_custom_nodes_dir=tmp_path / "shared" / "custom_nodes",
        comfyui_models_dir=tmp_path / "shared" / "models",
        comfyui_heartbeat_interval_seconds=3600,
        comfyui_startup_timeout_seconds=20,
    )
    values.update(overrides)
    (tmp_path / "shared" / "custom_nodes").mkdir(parents=True, exist_ok=True)
    (tmp_path / "shared" / "models").mkdir(parents=True, exist_ok=True)
    return load_settings(_env_file=None, **values)


@pytest.fixture
def settings(db_url, tmp_path) -> Settings:
    return make_settings(db_url, tmp_path)


@pytest.fixture(autouse=True)
def _no_leftover_instances(tmp_path):
    """Safety net: whatever a test started under its tmp_path does not outlive it."""
    yield
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(str(tmp_path) in arg for arg in proc.info["cmdline"] or []):
                proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


@pytest.fixture
async def app(settings):
    from comfyhub.app import create_app

    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
def manager(app):
    return app.state.manager


@pytest.fixture
async def client(app):
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=ORIGIN) as c:
        yield c


async def add_user(settings: Settings, name: str, password: str = "password-123", admin: bool = False) -> int:
    engine = create_engine(settings.database_url)
    try:
        async with session_factory(engine)() as db:
            user = User(username=name, password_hash=hash_password_sync(password), is_admin=admin)
            db.add(user)
            await db.commit()
            return user.id
    finally:
        await engine.dispose()


async def login(client: httpx.AsyncClient, name: str, password: str = "password-123") -> dict:
    """Log in and return bearer headers for that user."""
    r = await client.post("/api/auth/login", json={"username": name, "password": password})
    assert r.status_code == 200, r.text
    client.cookies.clear()  # each test says which credential it uses
    return {"Authorization": f"Bearer {r.json()['data']['token']}"}


@pytest.fixture
async def alice(client, settings):
    await add_user(settings, "alice")
    return await login(client, "alice")


@pytest.fixture
async def bob(client, settings):
    await add_user(settings, "bob")
    return await login(client, "bob")


@pytest.fixture
async def admin(client, settings):
    await add_user(settings, "root", admin=True)
    return await login(client, "root")
