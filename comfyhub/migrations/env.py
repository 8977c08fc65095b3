"""Alembic environment: runs migrations on the async engine of the configured URL."""

import asyncio

from alembic import context
from sqlalchemy import text

from comfyhub.db import create_engine, is_sqlite
from comfyhub.models import Base

config = context.config
target_metadata = Base.metadata

# Any constant works; it only has to be the same for every comfyhub process.
_PG_MIGRATION_LOCK = 0x636F6D6679


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite cannot ALTER most things in place
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _main() -> None:
    url = config.get_main_option("sqlalchemy.url")
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            if not is_sqlite(url):
                # Two `serve` processes starting together must not both migrate.
                await conn.execute(text(f"SELECT pg_advisory_lock({_PG_MIGRATION_LOCK})"))
                await conn.commit()
            await conn.run_sync(_run)
            if not is_sqlite(url):
                await conn.execute(text(f"SELECT pg_advisory_unlock({_PG_MIGRATION_LOCK})"))
                await conn.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported")
asyncio.run(_main())
