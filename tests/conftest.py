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
from argon2 import PasswordHasher

import comfyhub.auth
from comfyhub.auth import hash_password_sync
from comfyhub.config import Settings, load_settings
from comfyhub.db import create_engine, migrate, session_factory
from comfyhub.models import User
from tests.support import launcher
from tests.support.net import free_port_block
from tests.support.postgres import running_postgres

ROOT = Path(__file__).resolve().parent.parent
FAKE_COMFYUI = ROOT / "tests" / "fake_comfyui"
ORIGIN = "http://testserver"

# Passwords are still hashed and checked with argon2id by the app's own code, at a test
# cost: the production parameters (64 MiB, 3 passes, 4 lanes) take a sixth of a second of
# CPU per hash or check, and the suite makes and checks users' passwords hundreds of times.
# The parameters travel inside each hash, so the servers the tests start check these
# passwords at the same low cost. The check fails loudly if the hasher is renamed.
assert hasattr(comfyhub.auth, "_hasher"), "comfyhub.auth no longer has _hasher: update tests/conftest.py"
comfyhub.auth._hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


def pytest_addoption(parser):
    parser.addoption(
        "--launcher",
        choices=("local", "ray"),
        default="local",
        help="run the lifecycle tests' instances with this launcher (ray: on a local Ray cluster)",
    )


def pytest_configure(config):
    config.addinivalue_line("markers", "local_only: only meaningful with the local launcher")


def pytest_collection_modifyitems(config, items):
    _unique_node_ids(items)
    if config.getoption("--launcher") != "ray":
        return
    skip_local = pytest.mark.skip(reason="local launcher only")
    skip_sqlite = pytest.mark.skip(reason="with Ray the suite runs on PostgreSQL, as a cluster deployment does")
    for item in items:
        if "local_only" in item.keywords:
            item.add_marker(skip_local)
        elif getattr(item, "callspec", None) is not None and item.callspec.params.get("db_url") == "sqlite":
            item.add_marker(skip_sqlite)


def _unique_node_ids(items):
    """schemathesis names its items per operation (`test[GET /api/x]`) but, under pytest 9,
    gives them all the function's node id; pytest-xdist tells tests apart by node id (with
    `--dist loadfile` it stops with an internal error on a shared one; other modes run one
    of them and drop the rest). Put the operation into the node id."""
    for item in items:
        suffix = item.name[len(item.originalname) :] if getattr(item, "originalname", None) else ""
        if suffix.startswith("[") and not item.nodeid.endswith(suffix):
            if getattr(getattr(item, "_id", None), "params", "") is None:  # pytest >= 9: a structured id
                item._id = item._id.with_params(suffix[1:-1])
            elif not hasattr(item, "_id"):
                item._nodeid += suffix


@pytest.fixture(scope="session", autouse=True)
def _launcher_under_test(request):
    if request.config.getoption("--launcher") == "ray":
        import ray

        from tests.support import launcher

        request.getfixturevalue("ray_cluster")
        launcher.use_ray(ray.get_runtime_context().gcs_address, ray.util.get_node_ip_address())


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
        comfyhub_thumbnail_dir=tmp_path / "thumbnails",
        comfyui_custom_nodes_dir=tmp_path / "shared" / "custom_nodes",
        comfyui_models_dir=tmp_path / "shared" / "models",
        comfyui_heartbeat_interval_seconds=3600,
        comfyui_startup_timeout_seconds=20,
        # no per-user limit and no culling, as the tests expect unless they set their own
        comfyui_max_instances_per_user=0,
        comfyui_idle_timeout_seconds=0,
        # no warm pool unless a test asks for one: its starts would slow every test down
        comfyui_warm_pool_size=0,
    )
    values.update(launcher.settings_overrides())
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


# --- Ray ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ray_cluster():
    """One real local Ray cluster for the session (starting one takes seconds)."""
    pytest.importorskip("ray")
    from tests.support.ray_cluster import running_ray_cluster

    with running_ray_cluster() as cluster:
        yield cluster


@pytest.fixture(autouse=True)
def _no_leftover_actors(request):
    """Detached actors outlive their test unless removed; the next test needs the GPUs."""
    yield
    if "ray_cluster" in request.fixturenames or launcher.kind() == "ray":
        from tests.support.ray_cluster import kill_comfyhub_actors, total_gpus, wait_gpus_free

        kill_comfyhub_actors()
        wait_gpus_free(total_gpus())
