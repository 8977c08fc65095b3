"""Migrations from empty on both databases, and the SQLite pragmas."""

import asyncio

from sqlalchemy import inspect, text

from comfyhub.db import create_engine, current_revision, head_revision, migrate

TABLES = {"users", "auth_sessions", "api_tokens", "login_throttle", "projects", "comfyui_services", "leases"}


async def _tables(url):
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda c: inspect(c).get_table_names())), await current_revision(engine)
    finally:
        await engine.dispose()


async def test_migrations_up_from_empty_sqlite(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path}/fresh.db"
    await asyncio.to_thread(migrate, url)
    tables, rev = await _tables(url)
    assert tables >= TABLES
    assert rev == head_revision()
    await asyncio.to_thread(migrate, url)  # a second run is a no-op
    assert (await _tables(url))[1] == head_revision()


async def test_migrations_up_from_empty_postgres(pg_admin_url):
    from tests.conftest import _pg_exec

    await _pg_exec(pg_admin_url, "CREATE DATABASE fresh_migrate")
    url = pg_admin_url.rsplit("/", 1)[0] + "/fresh_migrate"
    await asyncio.to_thread(migrate, url)
    tables, rev = await _tables(url)
    assert tables >= TABLES
    assert rev == head_revision()


async def test_sqlite_uses_wal_and_foreign_keys(tmp_path):
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path}/x.db")
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar() == 1
    finally:
        await engine.dispose()


async def test_a_port_belongs_to_one_live_record(db_url):
    """Invariant 3 at the database level: two live rows cannot hold the same port."""
    import pytest
    from sqlalchemy.exc import IntegrityError

    from comfyhub.db import session_factory
    from comfyhub.models import ComfyUIService, Project, User

    engine = create_engine(db_url)
    try:
        async with session_factory(engine)() as db:
            user = User(username="u", password_hash="x")
            db.add(user)
            await db.flush()
            projects = [Project(name=f"p{i}", code=f"C{i}", owner_user_id=user.id) for i in range(3)]
            db.add_all(projects)
            await db.flush()
            db.add(ComfyUIService(user_id=user.id, project_id=projects[0].id, port=8200, status="online"))
            db.add(ComfyUIService(user_id=user.id, project_id=projects[1].id, port=8200, status="stopped"))
            await db.commit()  # a stopped row may remember the port
            db.add(ComfyUIService(user_id=user.id, project_id=projects[2].id, port=8200, status="starting"))
            with pytest.raises(IntegrityError):
                await db.commit()
    finally:
        await engine.dispose()


async def test_the_migrations_build_exactly_the_tables_the_models_declare(db_url):
    """A column, index or table added to models.py without a migration (or the reverse) fails here."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from comfyhub.models import Base

    engine = create_engine(db_url)
    try:
        async with engine.connect() as conn:
            diffs = await conn.run_sync(lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata))
    finally:
        await engine.dispose()
    assert diffs == []
