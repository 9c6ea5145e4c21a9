"""Alembic environment: migrates the database named by DATABASE_URL (or -x url=...)."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine, pool

from flag_scheduler.store.alembic_runner import driver_url
from migrations.schema import metadata

config = context.config


def _database_url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or os.environ.get(
        "DATABASE_URL", ""
    )
    if not url:
        raise SystemExit("DATABASE_URL must be set to the PostgreSQL database to migrate")
    return driver_url(url)


def run_migrations_offline() -> None:
    context.configure(
        url=_database_url(),
        target_metadata=metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(_database_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            transaction_per_migration=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
